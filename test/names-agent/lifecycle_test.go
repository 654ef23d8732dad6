package namesagent_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// webYAML is a static service whose health is the file ok in its directory.
func webYAML(service string, port int, interval time.Duration) string {
	return fmt.Sprintf(`service: %s
port: %d
scripts:
  health: health.sh
health:
  interval: %s
  timeout: %s
  rise: 2
  fall: 3
`, service, port, interval, interval/2)
}

const healthScript = "#!/bin/sh\ntest -f \"$BERTH_RELEASE_DIR/ok\"\n"

func setOK(t *testing.T, dir string, ok bool) {
	t.Helper()
	p := filepath.Join(dir, "ok")
	if ok {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func health(e *env, service, id string) namesv1.Health {
	in := e.instance(service, id)
	if in == nil {
		return -1
	}
	return in.GetHealth()
}

func TestInstanceLifecycle(t *testing.T) {
	e := startEnv(t)
	e.tree("app/web", time.Second)
	cfg := e.agentCfg("h-1")
	cfg.Health.FlapChanges, cfg.Health.FlapWindow = 2, 3*time.Second
	port := freePort(t)
	interval := 200 * time.Millisecond
	dir := static(t, cfg, "web", webYAML("app/web", port, interval), map[string]string{"health.sh": healthScript})
	setOK(t, dir, true)
	start := time.Now()
	e.startAgent(cfg)
	id := "h-1-" + strconv.Itoa(port)
	addr := "127.0.0.1:" + strconv.Itoa(port)

	// Healthy after rise (2) passes: registered, and answered by the name service.
	eventually(t, 5*time.Second, "registration", func() bool { return health(e, "app/web", id) == namesv1.Health_HEALTH_HEALTHY })
	reg := time.Since(start)
	in := e.instance("app/web", id)
	if in.GetIp() != "127.0.0.1" || in.GetPort() != uint32(port) || in.GetDc() != "dc1" || in.GetHost() != "h-1" ||
		in.GetState() != namesv1.InstanceState_INSTANCE_STATE_ACTIVE {
		t.Errorf("instance node: got %v", in)
	}
	eventually(t, 2*time.Second, "name service answer", func() bool { return equal(e.resolved("app/web"), []string{addr}) })
	t.Logf("registered and resolvable %s after the agent started", reg.Round(time.Millisecond))

	// Unhealthy after fall (3) failures: still registered, health UNHEALTHY, not answered.
	setOK(t, dir, false)
	failed := time.Now()
	took := eventually(t, 5*time.Second, "unhealthy", func() bool { return health(e, "app/web", id) == namesv1.Health_HEALTH_UNHEALTHY })
	if took < 2*interval {
		t.Errorf("unhealthy %s after the health started failing; want at least fall-1 intervals (%s)", took, 2*interval)
	}
	eventually(t, 2*time.Second, "name service drops it", func() bool { return len(e.resolved("app/web")) == 0 })
	t.Logf("unhealthy after %s, gone from answers after %s", took.Round(time.Millisecond), time.Since(failed).Round(time.Millisecond))

	// Back: healthy again (a second change within the 3 s window).
	setOK(t, dir, true)
	eventually(t, 5*time.Second, "healthy again", func() bool { return health(e, "app/web", id) == namesv1.Health_HEALTH_HEALTHY })
	// A third change within the window: flapping, held out although it is healthy again.
	setOK(t, dir, false)
	eventually(t, 5*time.Second, "flapping", func() bool { return health(e, "app/web", id) == namesv1.Health_HEALTH_FLAPPING })
	setOK(t, dir, true)
	stable := time.Now()
	time.Sleep(time.Second)
	if h := health(e, "app/web", id); h != namesv1.Health_HEALTH_FLAPPING {
		t.Errorf("health 1 s after a flapping instance passed again: got %v, want FLAPPING (held until stable)", h)
	}
	if got := e.resolved("app/web"); len(got) != 0 {
		t.Errorf("a flapping instance is answered: %v", got)
	}
	eventually(t, 8*time.Second, "stable again", func() bool { return health(e, "app/web", id) == namesv1.Health_HEALTH_HEALTHY })
	if held := time.Since(stable); held < 2*time.Second {
		t.Errorf("flapping instance trusted again after %s; want about the 3 s window", held)
	}
	eventually(t, 2*time.Second, "answered again", func() bool { return equal(e.resolved("app/web"), []string{addr}) })
}

func TestBadStaticEntries(t *testing.T) {
	e := startEnv(t)
	e.tree("app/good", time.Second)
	e.tree("app/tmpl", time.Second)
	e.tree("app/port", time.Second)
	cfg := e.agentCfg("h-bad")
	good := freePort(t)
	static(t, cfg, "good", fmt.Sprintf("service: app/good\nport: %d\n", good), nil)
	static(t, cfg, "port", "service: app/port\nhealth:\n  rise: 1\nport: 70000\n", nil)
	static(t, cfg, "tree", "service: app/not-in-tree\nport: 81\n", nil)
	static(t, cfg, "tmpl", `service: app/tmpl
port: 82
templates:
  - source: t.tmpl
    destination: t.conf
`, map[string]string{"t.tmpl": "line one\n{{ env \"HOME\" }}\n"})
	static(t, cfg, "typo", "service: app/good\nprot: 80\n", nil)
	a := e.startAgent(cfg)

	eventually(t, 5*time.Second, "the good entry registered", func() bool { return e.instance("app/good", "h-bad-"+strconv.Itoa(good)) != nil })
	errs := a.a.StaticErrors()
	want := map[string]string{
		"port.yaml": "port.yaml:4: port 70000 out of range 1..65535",
		"tree.yaml": `tree.yaml:1: service "app/not-in-tree" is not in the service tree`,
		"tmpl.yaml": `t.tmpl:2: function "env" not defined`,
		"typo.yaml": `typo.yaml:2: unknown field "prot" (did you mean "port"?)`,
	}
	for f, w := range want {
		var got error
		for path, err := range errs {
			if filepath.Base(path) == f {
				got = err
			}
		}
		if got == nil || !strings.Contains(got.Error(), w) {
			t.Errorf("%s: got %v, want an error containing %q", f, got, w)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("refused files: got %d (%v), want %d", len(errs), errs, len(want))
	}
	for _, svc := range []string{"app/port", "app/tmpl"} {
		if got := e.resolved(svc); len(got) != 0 {
			t.Errorf("%s registered from a refused file: %v", svc, got)
		}
	}
}

func TestRestartRegistersRunningApps(t *testing.T) {
	e := startEnv(t)
	e.tree("app/api", time.Second)
	cfg := e.agentCfg("h-r")
	port := freePort(t)
	rel := filepath.Join(cfg.DataDir, "apps", "app", "api", "releases", "1.4.2")
	if err := os.MkdirAll(rel, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"berth.yaml": fmt.Sprintf("service: app/api\nport: %d\nscripts:\n  start: start.sh\n  stop: stop.sh\n  health: health.sh\nhealth:\n  interval: 200ms\n  timeout: 100ms\n  rise: 2\n", port),
		"start.sh":   "#!/bin/sh\ntouch ok\n",
		"stop.sh":    "#!/bin/sh\nrm -f ok\n",
		"health.sh":  healthScript,
		"ok":         "",
	}
	for f, body := range files {
		if err := os.WriteFile(filepath.Join(rel, f), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join("releases", "1.4.2"), filepath.Join(cfg.DataDir, "apps", "app", "api", "current")); err != nil {
		t.Fatal(err)
	}
	id := "h-r-" + strconv.Itoa(port)
	a := e.startAgent(cfg)
	eventually(t, 5*time.Second, "registration of the running release", func() bool {
		in := e.instance("app/api", id)
		return in != nil && in.GetVersion() == "1.4.2" && in.GetHealth() == namesv1.Health_HEALTH_HEALTHY
	})
	// The agent stops: its session goes, and the instance with it; a new agent finds the
	// app running and registers it again after its health passes.
	a.stop()
	eventually(t, 3*time.Second, "deregistration with the session", func() bool { return e.instance("app/api", id) == nil })
	e.startAgent(cfg)
	eventually(t, 5*time.Second, "registration after the restart", func() bool { return health(e, "app/api", id) == namesv1.Health_HEALTH_HEALTHY })
}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// agentBinary builds berth-agent once per test run.
func agentBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "berth-agent-bin-")
		if binErr != nil {
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = "/usr/local/go/bin/go"
		}
		out, err := exec.Command(goTool, "build", "-o", filepath.Join(binDir, "berth-agent"), "github.com/berthdev/berth/services/agent/cmd/berth-agent").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build berth-agent: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "berth-agent")
}

func TestAgentKillRemovesInstances(t *testing.T) {
	bin := agentBinary(t)
	e := startEnv(t)
	e.tree("app/kill", time.Second)
	cfg := e.agentCfg("h-kill")
	port := freePort(t)
	static(t, cfg, "kill", fmt.Sprintf("service: app/kill\nport: %d\n", port), nil)
	const ttl = 2 * time.Second
	cmd := exec.Command(bin, "--host-id", cfg.HostID, "--data-dir", cfg.DataDir, "--config-dir", cfg.DataDir, "--nats", e.nats.URL(),
		"--coord", e.coordAddr, "--listen-metrics=", "--dns-listen=", "--name-api-listen=", "--docker-host", "-",
		"--advertise-ip", "127.0.0.1", "--session-ttl", ttl.String(), "--dc", "dc1", "--log-format", "text")
	if os.Getenv("BERTH_TEST_LOG") != "" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })

	id := "h-kill-" + strconv.Itoa(port)
	eventually(t, 15*time.Second, "registration", func() bool { return len(e.resolved("app/kill")) == 1 })
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-done
	var goneCoord time.Duration
	goneNames := eventually(t, ttl+5*time.Second, "removal from the name service", func() bool {
		if goneCoord == 0 && e.instance("app/kill", id) == nil {
			goneCoord = time.Since(killed)
		}
		return len(e.resolved("app/kill")) == 0
	})
	t.Logf("after kill -9: gone from coord after %s, from the name service's answers after %s (session TTL %s)",
		goneCoord.Round(time.Millisecond), goneNames.Round(time.Millisecond), ttl)
	if goneNames > ttl+time.Second {
		t.Errorf("instance of a killed agent answered for %s; want at most the session TTL + 1 s (%s)", goneNames, ttl+time.Second)
	}
}
