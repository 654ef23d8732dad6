package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	"github.com/berthdev/berth/services/agent"
	coordsrv "github.com/berthdev/berth/services/coord"
	controller "github.com/berthdev/berth/services/task-controller"
)

// ctlFixture is a real Berth for the CLI: NATS, a one-member coord, an agent for host
// "h1" and a controller, all in process.
type ctlFixture struct {
	url  string
	dir  string
	host string
}

func newCtlFixture(t *testing.T) *ctlFixture {
	t.Helper()
	f := &ctlFixture{dir: t.TempDir(), host: "h1"}
	ns := natstest.RunServer(t)
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := coordsrv.New(coordsrv.Config{Name: "c1", DataDir: filepath.Join(f.dir, "coord"), ClientListener: cl, PeerListener: pl,
		InitialCluster: "c1=" + pl.Addr().String(), HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		RequestTimeout: 2 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var stops []func()
	t.Cleanup(func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	})
	goRun := func(name string, run func(ctx context.Context) error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx) }()
		var once sync.Once
		stops = append(stops, func() {
			once.Do(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("%s: %v", name, err)
				}
			})
		})
	}
	goRun("coord", srv.Run)
	cc, err := coordclient.New(context.Background(), coordclient.Config{Endpoints: []string{cl.Addr().String()}, RequestTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	stops = append(stops, func() { cc.Close() })
	bus, err := natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{ns.URL()}, Name: "cli-test"})
	if err != nil {
		t.Fatal(err)
	}
	stops = append(stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	})
	acfg := agent.DefaultConfig()
	acfg.HostID, acfg.DataDir, acfg.NATS = f.host, filepath.Join(f.dir, "agent"), ns.URL()
	acfg.ListenMetrics, acfg.DockerHost, acfg.KillGrace, acfg.DrainTimeout = "", "-", 500*time.Millisecond, time.Second
	acfg.PluginDirs = []string{filepath.Join(f.dir, "plugins")}
	if err := os.MkdirAll(acfg.PluginDirs[0], 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(acfg, agent.Deps{Bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	goRun("agent", a.Run)
	ccfg := controller.DefaultConfig()
	ccfg.Listen, ccfg.Replica, ccfg.SessionTTL = "127.0.0.1:0", "cli-test", time.Second
	ccfg.RetryBackoff, ccfg.RetryBackoffMax, ccfg.PollInterval = 50*time.Millisecond, 100*time.Millisecond, time.Second
	c, err := controller.New(ccfg, controller.Deps{Bus: bus, Coord: cc})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := c.Listen()
	if err != nil {
		t.Fatal(err)
	}
	f.url = "http://" + addr.String()
	goRun("controller", c.Run)
	t.Cleanup(func() {
		// Apps started by deploys are not the agent's; stop them with the test.
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if bytes.Contains(cmd, []byte(f.dir)) && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for a.Ready(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("agent not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		if _, err := cc.Leader(t.Context(), "controller"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no controller leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return f
}

// pkg builds a package of acc/web at version whose health passes when healthy; it
// returns its path and sha256.
func (f *ctlFixture) pkg(t *testing.T, version string, healthy bool) (string, string) {
	t.Helper()
	health := `[ "$(cat ../../running)" = ` + version + ` ]`
	if !healthy {
		health = "exit 1"
	}
	files := []struct{ name, body string }{
		{"berth.yaml", "service: acc/web\nscripts:\n  start: bin/start\n  stop: bin/stop\n  health: bin/health\nhealth:\n  interval: 200ms\n  timeout: 150ms\n  rise: 1\n"},
		{"bin/start", "#!/bin/sh\necho " + version + " > ../../running\n"},
		{"bin/stop", "#!/bin/sh\nrm -f ../../running\n"},
		{"bin/health", "#!/bin/sh\n" + health + "\n"},
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, fl := range files {
		if err := tw.WriteHeader(&tar.Header{Name: fl.name, Mode: 0o755, Size: int64(len(fl.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte(fl.body))
	}
	_ = tw.Close()
	_ = gz.Close()
	p := filepath.Join(f.dir, "web-"+version+strconv.FormatBool(healthy)+".tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(buf.Bytes())
	return p, hex.EncodeToString(s[:])
}

func (f *ctlFixture) running() string {
	b, _ := os.ReadFile(filepath.Join(f.dir, "agent", "apps", "acc", "web", "running"))
	return strings.TrimSpace(string(b))
}

// berthCmd runs the berth command tree against the fixture's controller.
func (f *ctlFixture) berthCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	for i, a := range args {
		if a == "--" {
			args = append(append(append([]string(nil), args[:i]...), "--controller", f.url), args[i:]...)
			return runBerth(t.Context(), t, args...)
		}
	}
	return runBerth(t.Context(), t, append(args, "--controller", f.url)...)
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ex *ExitError
	if errors.As(err, &ex) {
		return ex.Code
	}
	return 1
}

// TestDeployWaitExitCodes runs the acceptance flow in process: a deploy with --wait exits
// 0, and a release whose health never passes with --auto-rollback exits 5 (rolled back)
// and leaves the previous version running; without --auto-rollback it exits 3.
func TestDeployWaitExitCodes(t *testing.T) {
	f := newCtlFixture(t)
	if out, err := f.berthCmd(t, "tree", "set", "acc/web"); err != nil {
		t.Fatalf("tree set: %v: %s", err, out)
	}
	if out, err := f.berthCmd(t, "deployments", "ls"); err != nil || !strings.HasPrefix(out, "ID") {
		t.Fatalf("deployments ls: %v: %q", err, out)
	}
	p1, s1 := f.pkg(t, "1.0.0", true)
	out, err := f.berthCmd(t, "deploy", "acc/web", "--version", "1.0.0", "--package", p1, "--sha256", s1, "--hosts", f.host, "--wait")
	if exitCode(err) != 0 {
		t.Fatalf("deploy 1.0.0: got exit %d (%v), want 0: %s", exitCode(err), err, out)
	}
	if !strings.Contains(out, "succeeded") || !strings.Contains(out, "1 of 1 targets succeeded") {
		t.Errorf("deploy 1.0.0 output lacks the summary: %s", out)
	}
	if got := f.running(); got != "1.0.0" {
		t.Fatalf("after deploy: host runs %q, want 1.0.0", got)
	}
	bad, sb := f.pkg(t, "2.0.0", false)
	out, err = f.berthCmd(t, "deploy", "acc/web", "--version", "2.0.0", "--package", "file://"+bad, "--sha256", sb, "--hosts", f.host,
		"--auto-rollback", "--health-deadline", "1s", "--wait")
	if got := exitCode(err); got != ExitRolledBack {
		t.Fatalf("broken deploy with --auto-rollback: got exit %d (%v), want %d: %s", got, err, ExitRolledBack, out)
	}
	if got := f.running(); got != "1.0.0" {
		t.Errorf("after the rollback: host runs %q, want 1.0.0", got)
	}
	out, err = f.berthCmd(t, "deploy", "acc/web", "--version", "2.0.0", "--package", "file://"+bad, "--sha256", sb, "--hosts", f.host,
		"--health-deadline", "1s", "--wait")
	if got := exitCode(err); got != ExitFailed {
		t.Fatalf("broken deploy: got exit %d (%v), want %d: %s", got, err, ExitFailed, out)
	}
	if !strings.Contains(out, "health") {
		t.Errorf("failed deploy output does not show why: %s", out)
	}
	out, err = f.berthCmd(t, "deployments", "ls", "--service", "acc/web", "--json")
	if err != nil || strings.Count(out, `"id"`) != 3 {
		t.Errorf("deployments ls --json: %v: want 3 deployments: %s", err, out)
	}
	// Bad input is refused with the field named, and exits 1.
	_, err = f.berthCmd(t, "deploy", "acc/nope", "--version", "1", "--package", p1, "--sha256", s1, "--hosts", f.host)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "service") {
		t.Errorf("deploy of an unknown service: got %v, want exit 1 naming the service", err)
	}
	_, err = f.berthCmd(t, "deploy", "acc/web", "--version", "1", "--package", p1, "--sha256", s1, "--batches", "1,50%")
	if err == nil || !strings.Contains(err.Error(), "strategy.batches") {
		t.Errorf("deploy with a ramp not ending at 100%%: got %v, want an error naming strategy.batches", err)
	}
}

// TestDeploymentsControl pauses, shows, resumes and aborts through the CLI.
func TestDeploymentsControl(t *testing.T) {
	f := newCtlFixture(t)
	if _, err := f.berthCmd(t, "tree", "set", "acc/web", "--host", f.host, "--pause", "manual", "--batches", "1,100%"); err != nil {
		t.Fatal(err)
	}
	p, s := f.pkg(t, "1.0.0", true)
	out, err := f.berthCmd(t, "deploy", "acc/web", "--version", "1.0.0", "--package", p, "--sha256", s, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal([]byte(out), &created)
	id := created.ID
	if id == "" {
		t.Fatalf("no id in %s", out)
	}
	out, err = f.berthCmd(t, "deployments", "abort", id)
	if err != nil || !strings.Contains(out, "abort of "+id) {
		t.Fatalf("abort: %v: %s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err = f.berthCmd(t, "deployments", "show", id)
		if err == nil && strings.Contains(out, "state:     aborted") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("show: %v: %s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := f.berthCmd(t, "deployments", "resume", id); err == nil || !strings.Contains(err.Error(), "ended") {
		t.Errorf("resume of an aborted deployment: got %v, want a refusal", err)
	}
}

func TestDeployBody(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "spec.yaml")
	if err := os.WriteFile(spec, []byte("service: acc/web\nversion: 1.0.0\npackage: https://pkgs/web.tar.gz\nsha256: ABC\nhosts: [h1, h2]\nstrategy:\n  batches: [1, \"100%\"]\n  max_parallel: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := newDeployCmd()
	if err := cmd.ParseFlags([]string{"-f", spec, "--version", "2.0.0", "--max-failures", "10%", "--auto-rollback", "--pause", "manual"}); err != nil {
		t.Fatal(err)
	}
	o := deployOptions{file: spec, version: "2.0.0"}
	o.strategy.maxFailures, o.strategy.autoRollback, o.strategy.pause = "10%", true, "manual"
	body, err := deployBody(cmd.Flags(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := body["strategy"].(map[string]any)
	a := body["artifact"].(map[string]any)
	switch {
	case body["version"] != "2.0.0":
		t.Errorf("version: got %v, want the flag's 2.0.0", body["version"])
	case a["url"] != "https://pkgs/web.tar.gz" || a["sha256"] != "ABC":
		t.Errorf("artifact: got %v", a)
	case st["max_failures"] != "10%" || st["auto_rollback"] != true || st["pause"] != "manual" || st["max_parallel"] != 2:
		t.Errorf("strategy: got %v", st)
	}
	if _, err := deployBody(newDeployCmd().Flags(), deployOptions{}, []string{"acc/web"}); err == nil || !strings.Contains(err.Error(), "--version") {
		t.Errorf("without --version: got %v, want it named", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("service: acc/web\ncolour: blue\n"), 0o644)
	if _, err := deployBody(newDeployCmd().Flags(), deployOptions{file: bad}, nil); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown field in -f: got %v, want it named", err)
	}
	u, err := packageURL("rel/p.tar.gz")
	if err != nil || !strings.HasPrefix(u, "file:///") {
		t.Errorf("packageURL of a relative path: got %q, %v", u, err)
	}
}

func TestExitCodes(t *testing.T) {
	for state, want := range map[string]int{"succeeded": 0, "failed": 3, "aborted": 4, "rolled_back": 5} {
		if got := exitCodeOf(state); got != want {
			t.Errorf("exitCodeOf(%s): got %d, want %d", state, got, want)
		}
	}
}
