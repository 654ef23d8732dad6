package namesagent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	controller "github.com/berthdev/berth/services/task-controller"
)

// appSource is the app the rolling deploy ships: an HTTP server on the address and with
// the version it is given, that drains its connections on SIGTERM; with -check it is its
// own health check.
const appSource = `package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if os.Args[1] == "-check" {
		c := &http.Client{Timeout: time.Second}
		r, err := c.Get(os.Args[2])
		if err != nil || r.StatusCode != 200 {
			os.Exit(1)
		}
		return
	}
	addr, version := os.Args[1], os.Args[2]
	srv := &http.Server{Addr: addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, version) })}
	go func() { fmt.Println(srv.ListenAndServe()) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
}
`

var (
	appOnce sync.Once
	appPath string
	appErr  error
)

// appBinary builds the app once per run (into binDir, removed by TestMain).
func appBinary(t *testing.T) string {
	t.Helper()
	agentBinary(t) // makes binDir
	appOnce.Do(func() {
		src := filepath.Join(binDir, "app.go")
		if appErr = os.WriteFile(src, []byte(appSource), 0o644); appErr != nil {
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = "/usr/local/go/bin/go"
		}
		appPath = filepath.Join(binDir, "app")
		cmd := exec.Command(goTool, "build", "-o", appPath, src)
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
		cmd.Dir = binDir
		if out, err := cmd.CombinedOutput(); err != nil {
			appErr = fmt.Errorf("build app: %v\n%s", err, out)
		}
	})
	if appErr != nil {
		t.Fatal(appErr)
	}
	return appPath
}

// webPkg is a package of app/web version v listening on BERTH_IP:port.
func webPkg(t *testing.T, dir, app string, port int, v string) (string, string) {
	return pkgFile(t, dir, "app-web-"+v+".tar.gz", map[string]string{
		"berth.yaml": fmt.Sprintf("service: app/web\nport: %d\nscripts:\n  start: start.sh\n  stop: stop.sh\n  health: health.sh\nhealth:\n  interval: 200ms\n  timeout: 150ms\n  rise: 1\n  fall: 2\n", port),
		"start.sh":   fmt.Sprintf("#!/bin/sh\n%s \"$BERTH_IP:$BERTH_PORT\" \"$BERTH_VERSION\" > app.log 2>&1 &\necho $! > ../../app.pid\n", app),
		"stop.sh":    "#!/bin/sh\npid=$(cat ../../app.pid)\nkill $pid\nwhile kill -0 $pid 2>/dev/null; do sleep 0.05; done\n",
		"health.sh":  fmt.Sprintf("#!/bin/sh\nexec %s -check \"http://$BERTH_IP:$BERTH_PORT/\"\n", app),
	})
}

// killApps kills the apps whose pid files are under dir (they run in sessions of their own).
func killApps(dir string) {
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Name() == "app.pid" {
			if b, err := os.ReadFile(p); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		return nil
	})
}

func TestRollingDeployNoFailedRequests(t *testing.T) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			t.Skip("nginx is not installed (Debian: apt-get install nginx)")
		}
		nginx = "/usr/sbin/nginx"
	}
	app := appBinary(t)
	e := startEnv(t)
	e.tree("app/web", time.Second)
	e.tree("edge/nginx", time.Second)
	t.Cleanup(func() { killApps(filepath.Join(e.dir, "agents")) })

	// Three web hosts (loopback addresses of their own) and a load balancer host.
	hosts := []string{"web-1", "web-2", "web-3"}
	for i, h := range hosts {
		cfg := e.agentCfg(h)
		cfg.AdvertiseIP = "127.0.0." + strconv.Itoa(i+2)
		e.startAgent(cfg)
	}
	lb := e.agentCfg("lb-1")
	listen := freePort(t)
	base := filepath.Join(lb.DataDir, "services.d", "nginx")
	static(t, lb, "nginx", fmt.Sprintf(`service: edge/nginx
port: %d
scripts:
  reload: reload.sh
templates:
  - source: nginx.conf.tmpl
    destination: nginx.conf
    services: [app/web]
    check: %s -t -q -p %s -c {{path}}
`, listen, nginx, base), map[string]string{
		"nginx.conf.tmpl": strings.ReplaceAll(fmt.Sprintf(nginxTemplate, base, listen), "app/backend", "app/web"),
		"reload.sh":       fmt.Sprintf("#!/bin/sh\nexec %s -p %s -c %s/nginx.conf -s reload\n", nginx, base, base),
	})
	e.startAgent(lb)

	// The controller.
	ccfg := controller.DefaultConfig()
	ccfg.Replica, ccfg.Listen, ccfg.SessionTTL = "c1", "127.0.0.1:0", time.Second
	ccfg.RetryBackoff, ccfg.RetryBackoffMax, ccfg.PollInterval = 50*time.Millisecond, 200*time.Millisecond, time.Second
	ccfg.ResultGrace, ccfg.StepRequestTimeout, ccfg.EnsureStreams = 2*time.Second, 2*time.Second, false
	cc, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{e.coordAddr}, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctrl, err := controller.New(ccfg, controller.Deps{Bus: e.connect("controller"), Coord: cc, Logger: logger(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	caddr, err := ctrl.Listen()
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	cdone := make(chan error, 1)
	go func() { cdone <- ctrl.Run(cctx) }()
	t.Cleanup(func() { ccancel(); <-cdone })
	capi := "http://" + caddr.String()

	port := freePort(t) // every web host listens on it, each on its own loopback address
	deploy := func(version string) {
		t.Helper()
		p, sum := webPkg(t, e.dir, app, port, version)
		body, _ := json.Marshal(map[string]any{"service": "app/web", "version": version, "hosts": hosts,
			"artifact": map[string]string{"url": "file://" + p, "sha256": sum},
			"strategy": map[string]any{"batches": []any{1, 2, "100%"}, "max_parallel": 1}})
		resp, err := http.Post(capi+"/v1/deployments", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /v1/deployments: %d %s", resp.StatusCode, b)
		}
		var d controllerv1.Deployment
		if err := protojson.Unmarshal(b, &d); err != nil {
			t.Fatalf("deployment: %v: %s", err, b)
		}
		deadline := time.Now().Add(90 * time.Second)
		for {
			resp, err := http.Get(capi + "/v1/deployments/" + d.GetId())
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var cur controllerv1.Deployment
			_ = protojson.Unmarshal(b, &cur)
			switch cur.GetStatus().GetState() {
			case "succeeded":
				if !cur.GetStatus().GetDraining() {
					// The health gate waited for each new instance in the name service.
					for _, tg := range cur.GetTargets() {
						if strings.Contains(tg.GetMessage(), "no name-service check") {
							t.Fatalf("target %s of %s skipped the name-service health gate: %s", tg.GetHost(), version, tg.GetMessage())
						}
					}
					return
				}
			case "failed", "aborted", "rolled_back":
				t.Fatalf("deployment of %s ended %s: %s", version, cur.GetStatus().GetState(), b)
			}
			if time.Now().After(deadline) {
				t.Fatalf("deployment of %s not done: %s", version, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	deploy("1.0")
	conf := filepath.Join(base, "nginx.conf")
	eventually(t, 10*time.Second, "three backends in nginx.conf", func() bool {
		b, _ := os.ReadFile(conf)
		return strings.Count(string(b), "    server 127.0.0.") == 3
	})
	cmd := exec.Command(nginx, "-p", base, "-c", conf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ndone := make(chan struct{})
	go func() { _ = cmd.Wait(); close(ndone) }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-ndone })
	url := "http://127.0.0.1:" + strconv.Itoa(listen) + "/"
	client := &http.Client{Timeout: 5 * time.Second}
	get := func() (string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		}
		return string(b), nil
	}
	eventually(t, 10*time.Second, "nginx answering 1.0", func() bool { v, err := get(); return err == nil && v == "1.0" })

	// Load through nginx during the rolling deploy of 2.0: not one request may fail.
	var total, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	seen := map[string]int{}
	lctx, lcancel := context.WithCancel(context.Background())
	var lwg sync.WaitGroup
	for range 4 {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			for lctx.Err() == nil {
				v, err := get()
				total.Add(1)
				mu.Lock()
				if err != nil {
					failed.Add(1)
					if len(failures) < 10 {
						failures = append(failures, err.Error())
					}
				} else {
					seen[v]++
				}
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	start := time.Now()
	deploy("2.0")
	took := time.Since(start)
	eventually(t, 10*time.Second, "nginx answering 2.0 only", func() bool {
		for range 10 {
			if v, err := get(); err != nil || v != "2.0" {
				return false
			}
		}
		return true
	})
	lcancel()
	lwg.Wait()
	t.Logf("rolling deploy of 3 hosts took %s; %d requests through nginx, %d failed; versions answered %v", took.Round(time.Millisecond), total.Load(), failed.Load(), seen)
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during the rolling deploy: %v", failed.Load(), total.Load(), failures)
	}
	if seen["1.0"] == 0 || seen["2.0"] == 0 {
		t.Errorf("versions answered during the deploy: %v, want both", seen)
	}
}
