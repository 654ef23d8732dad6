package namesagent_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// backend is an HTTP server on loopback that answers its name.
func backend(t *testing.T, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, name) })}
	done := make(chan struct{})
	go func() { _ = srv.Serve(l); close(done) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return l.Addr().(*net.TCPAddr).Port
}

// nginxTemplate renders a whole nginx configuration whose upstream is app/backend.
const nginxTemplate = `worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s/tmp-body;
  proxy_temp_path %[1]s/tmp-proxy;
  upstream backend {
{{- range service "app/backend" }}
    server {{ .Address }};
{{- end }}
  }
  server {
    listen 127.0.0.1:%[2]d;
    location / {
      proxy_pass http://backend;
      proxy_next_upstream off;
    }
  }
}
`

func TestNginxEndToEnd(t *testing.T) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			t.Skip("nginx is not installed (Debian: apt-get install nginx)")
		}
		nginx = "/usr/sbin/nginx"
	}
	e := startEnv(t)
	e.tree("app/backend", time.Second)
	e.tree("edge/nginx", time.Second)
	cfg := e.agentCfg("h-lb")
	interval := 200 * time.Millisecond
	pa, pb := backend(t, "A"), backend(t, "B")
	da := static(t, cfg, "backend-a", webYAML("app/backend", pa, interval), map[string]string{"health.sh": healthScript})
	db := static(t, cfg, "backend-b", webYAML("app/backend", pb, interval), map[string]string{"health.sh": healthScript})
	setOK(t, da, true)
	setOK(t, db, true)
	listen := freePort(t)
	base := filepath.Join(cfg.DataDir, "services.d", "nginx")
	static(t, cfg, "nginx", fmt.Sprintf(`service: edge/nginx
port: %d
scripts:
  reload: reload.sh
templates:
  - source: nginx.conf.tmpl
    destination: nginx.conf
    services: [app/backend]
    wait: {min: 50ms, max: 500ms}
    check: %s -t -q -p %s -c {{path}}
`, listen, nginx, base), map[string]string{
		"nginx.conf.tmpl": fmt.Sprintf(nginxTemplate, base, listen),
		"reload.sh":       fmt.Sprintf("#!/bin/sh\necho reload >> reloads.log\nexec %s -p %s -c %s/nginx.conf -s reload\n", nginx, base, base),
	})
	conf := filepath.Join(base, "nginx.conf")
	e.startAgent(cfg)

	// The upstream file names both backends once both are registered.
	eventually(t, 10*time.Second, "both backends in nginx.conf", func() bool {
		b, _ := os.ReadFile(conf)
		return strings.Contains(string(b), "127.0.0.1:"+strconv.Itoa(pa)) && strings.Contains(string(b), "127.0.0.1:"+strconv.Itoa(pb))
	})
	cmd := exec.Command(nginx, "-p", base, "-c", conf)
	out, _ := os.Create(filepath.Join(base, "nginx.out"))
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	url := "http://127.0.0.1:" + strconv.Itoa(listen) + "/"
	get := func() string {
		resp, err := http.Get(url)
		if err != nil {
			return "error: " + err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	eventually(t, 10*time.Second, "nginx answering", func() bool { r := get(); return r == "A" || r == "B" })

	// Requests through nginx reach both backends.
	seen := map[string]int{}
	for range 20 {
		seen[get()]++
	}
	if seen["A"] == 0 || seen["B"] == 0 || seen["A"]+seen["B"] != 20 {
		t.Fatalf("20 requests through nginx: got %v, want both A and B and nothing else", seen)
	}

	// B's health fails: B leaves the upstream within interval × fall, plus the reload.
	setOK(t, db, false)
	onlyA := eventually(t, 10*time.Second, "B out of nginx's upstream", func() bool {
		for range 10 {
			if get() != "A" {
				return false
			}
		}
		return true
	})
	budget := interval*3 + 2*time.Second
	t.Logf("B out of the upstream %s after its health started failing (interval %s × fall 3 = %s)", onlyA.Round(time.Millisecond), interval, interval*3)
	if onlyA > budget {
		t.Errorf("B left the upstream after %s; want within interval × fall + the reload (%s)", onlyA, budget)
	}
	if b, _ := os.ReadFile(conf); strings.Contains(string(b), strconv.Itoa(pb)) {
		t.Errorf("nginx.conf still names B: %s", b)
	}
	if _, err := os.Stat(conf + ".bak"); err != nil {
		t.Errorf("no backup of the previous nginx.conf: %v", err)
	}
	reloads, _ := os.ReadFile(filepath.Join(base, "reloads.log"))
	if n := strings.Count(string(reloads), "reload"); n < 1 {
		t.Errorf("reload script runs: got %d, want at least 1", n)
	}
}
