// Package controller_test runs berth-controller against real parts in process: a NATS
// server with JetStream (pkg/natstest), a berth-coord cluster of three members, real
// agents (services/agent, each with its own host id and data directory) running real
// packages and plugins, and one to three controller replicas.
package controller_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/services/agent"
	coordsrv "github.com/berthdev/berth/services/coord"
	controller "github.com/berthdev/berth/services/task-controller"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLogger writes logs to stderr when BERTH_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("BERTH_TEST_LOG") == "" {
		return logging.Discard()
	}
	l, _ := logging.New(logging.Config{Format: "text", Level: "debug"}, os.Stderr)
	return l
}

// handedOut are the addresses freeAddr gave this test process: the kernel may give a
// port that was just closed to the next listener, so two calls could name one port.
var handedOut = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// freeAddr returns a loopback address with a port that was free a moment ago and that it
// never returned before.
func freeAddr(t testing.TB) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut.m[addr] {
			handedOut.m[addr] = true
			return addr
		}
	}
	t.Fatal("no free address not handed out before")
	return ""
}

// coordCluster is a berth-coord cluster of three in-process members.
type coordCluster struct {
	endpoints []string
	stops     []func()
}

func startCoord(t testing.TB) *coordCluster {
	t.Helper()
	dir := t.TempDir()
	c := &coordCluster{}
	var initial []string
	var cfgs []coordsrv.Config
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		cfg := coordsrv.Config{Name: name, DataDir: filepath.Join(dir, name), ListenClient: freeAddr(t), ListenPeer: freeAddr(t),
			HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond, RequestTimeout: 3 * time.Second}
		initial = append(initial, name+"="+cfg.ListenPeer)
		c.endpoints = append(c.endpoints, cfg.ListenClient)
		cfgs = append(cfgs, cfg)
	}
	for _, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		srv, err := coordsrv.New(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("coord member %s: %v", cfg.Name, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		c.stops = append(c.stops, func() { cancel(); <-done })
	}
	t.Cleanup(func() {
		for _, s := range c.stops {
			s()
		}
	})
	cc := newCoordClient(t, c.endpoints)
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cc.Put(ctx, "/berth/ready", []byte("1"))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("coord cluster has no leader: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}

func newCoordClient(t testing.TB, eps []string) *coordclient.Client {
	t.Helper()
	cc, err := coordclient.New(context.Background(), coordclient.Config{Endpoints: eps, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// env is one test's Berth: NATS, coord, agents, controllers.
type env struct {
	t         testing.TB
	nats      *natstest.Server
	coord     *coordCluster
	cc        *coordclient.Client
	bus       *natsbus.Bus
	pluginDir string
	dir       string

	mu     sync.Mutex
	agents map[string]*agentProc
	ctrls  []*ctrlProc
}

type agentProc struct {
	host    string
	dataDir string
	reg     *prometheus.Registry
	stop    func()
}

// stepsRun counts the plugin runs that ended on the agent (its steps_total metric), by
// plugin.
func (p *agentProc) stepsRun(t testing.TB, plugin string) int {
	t.Helper()
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() != "berth_agent_steps_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "plugin" && l.GetValue() == plugin {
					n += int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return n
}

// ctrlProc is one controller replica with its own NATS and coord connections, so that a
// crash (crashController) cuts it off like a killed process.
type ctrlProc struct {
	name   string
	url    string
	bus    *natsbus.Bus
	cc     *coordclient.Client
	cancel context.CancelFunc
	done   chan error
	dead   bool
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, nats: natstest.RunServer(t), dir: t.TempDir(), agents: map[string]*agentProc{}}
	e.coord = startCoord(t)
	e.cc = newCoordClient(t, e.coord.endpoints)
	e.bus = connectBus(t, e.nats.URL(), "test")
	if err := e.bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	e.pluginDir = filepath.Join(e.dir, "plugins")
	if err := os.MkdirAll(e.pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.stopAll)
	killAppsUnder(t, e.dir)
	return e
}

func connectBus(t testing.TB, url, name string) *natsbus.Bus {
	t.Helper()
	bus, err := natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{url}, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	})
	return bus
}

// stopAll stops the controllers, then the agents.
func (e *env) stopAll() {
	e.mu.Lock()
	ctrls := e.ctrls
	agents := e.agents
	e.mu.Unlock()
	for _, c := range ctrls {
		e.stopController(c)
	}
	for _, a := range agents {
		a.stop()
	}
}

// plugin installs an executable shell plugin for every agent.
func (e *env) plugin(name, body string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.pluginDir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		e.t.Fatal(err)
	}
}

// startAgent runs a real agent for host and waits until it takes steps.
func (e *env) startAgent(host string) *agentProc {
	e.t.Helper()
	dataDir := filepath.Join(e.dir, "agents", host)
	cfg := agent.DefaultConfig()
	cfg.HostID = host
	cfg.DataDir = dataDir
	cfg.NATS = e.nats.URL()
	cfg.PluginDirs = []string{e.pluginDir}
	cfg.ListenMetrics = ""
	cfg.DockerHost = "-"
	cfg.KillGrace = 500 * time.Millisecond
	cfg.DrainTimeout = time.Second
	cfg.MaxConcurrentSteps = 16
	cfg.Deploy.ScriptTimeout = 10 * time.Second
	cfg.Deploy.HealthDeadline = 10 * time.Second
	bus := connectBus(e.t, e.nats.URL(), "agent-"+host)
	reg := prometheus.NewRegistry()
	a, err := agent.New(cfg, agent.Deps{Bus: bus, Logger: testLogger(), Registerer: reg})
	if err != nil {
		e.t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	var once sync.Once
	p := &agentProc{host: host, dataDir: dataDir, reg: reg}
	p.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				e.t.Errorf("agent %s: %v", host, err)
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.Ready(ctx) != nil {
		select {
		case err := <-errc:
			e.t.Fatalf("agent %s stopped while starting: %v", host, err)
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("agent %s not ready: %v", host, a.Ready(ctx))
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.mu.Lock()
	e.agents[host] = p
	e.mu.Unlock()
	return p
}

// ctrlOpts tweaks a controller's configuration.
type ctrlOpts func(*controller.Config)

// startController runs a controller replica and waits until its API answers.
func (e *env) startController(name string, opts ...ctrlOpts) *ctrlProc {
	e.t.Helper()
	cfg := controller.DefaultConfig()
	cfg.Replica = name
	cfg.Listen = "127.0.0.1:0"
	cfg.SessionTTL = time.Second
	cfg.RetryBackoff = 50 * time.Millisecond
	cfg.RetryBackoffMax = 200 * time.Millisecond
	cfg.PollInterval = time.Second
	cfg.ResultGrace = 2 * time.Second
	cfg.StepRequestTimeout = 2 * time.Second
	cfg.EnsureStreams = false
	for _, o := range opts {
		o(&cfg)
	}
	p := &ctrlProc{name: name, done: make(chan error, 1)}
	p.bus = connectBus(e.t, e.nats.URL(), "controller-"+name)
	cc, err := coordclient.New(context.Background(), coordclient.Config{Endpoints: e.coord.endpoints, RequestTimeout: 5 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	p.cc = cc
	c, err := controller.New(cfg, controller.Deps{Bus: p.bus, Coord: cc, Logger: testLogger().With("replica", name)})
	if err != nil {
		e.t.Fatalf("controller.New: %v", err)
	}
	addr, err := c.Listen()
	if err != nil {
		e.t.Fatal(err)
	}
	p.url = "http://" + addr.String()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { p.done <- c.Run(ctx) }()
	e.mu.Lock()
	e.ctrls = append(e.ctrls, p)
	e.mu.Unlock()
	return p
}

// stopController stops a replica gracefully (it resigns).
func (e *env) stopController(p *ctrlProc) {
	if p.dead {
		return
	}
	p.dead = true
	p.cancel()
	if err := <-p.done; err != nil {
		e.t.Errorf("controller %s: %v", p.name, err)
	}
}

// crashController cuts a replica off like a killed process: its NATS and coord
// connections close first (no resignation reaches coord, its session expires by TTL),
// then its goroutines are stopped.
func (e *env) crashController(p *ctrlProc) {
	if p.dead {
		return
	}
	p.dead = true
	p.bus.Conn().Close()
	p.cc.Close()
	p.cancel()
	<-p.done
}

// leader waits for a replica to lead and returns it.
func (e *env) leader(timeout time.Duration) *ctrlProc {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l, err := e.cc.Leader(ctx, "controller")
		cancel()
		if err == nil {
			e.mu.Lock()
			for _, c := range e.ctrls {
				if c.name == string(l.Value) && !c.dead {
					e.mu.Unlock()
					return c
				}
			}
			e.mu.Unlock()
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no controller leader within %s (last error %v)", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// api is a client of one replica's HTTP API.
type api struct {
	t    testing.TB
	base string
}

func (e *env) api(p *ctrlProc) *api { return &api{t: e.t, base: p.url} }

// do sends a request and returns the status and body.
func (a *api) do(method, path string, body any) (int, []byte) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			a.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// must sends a request that must answer want, and decodes the answer into m (if any).
func (a *api) must(want int, method, path string, body any, m proto.Message) {
	a.t.Helper()
	code, b := a.do(method, path, body)
	if code != want {
		a.t.Fatalf("%s %s: got status %d, want %d: %s", method, path, code, want, b)
	}
	if m != nil {
		if err := protojson.Unmarshal(b, m); err != nil {
			a.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// deployment reads a deployment.
func (a *api) deployment(id string) *controllerv1.Deployment {
	a.t.Helper()
	d := &controllerv1.Deployment{}
	a.must(200, "GET", "/v1/deployments/"+id, nil, d)
	return d
}

// waitDeployment polls until the deployment's state satisfies ok.
func (a *api) waitDeployment(id string, timeout time.Duration, ok func(*controllerv1.Deployment) bool) *controllerv1.Deployment {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d := a.deployment(id)
		if ok(d) {
			return d
		}
		if time.Now().After(deadline) {
			b, _ := protojson.Marshal(d)
			a.t.Fatalf("deployment %s: condition not met within %s: %s", id, timeout, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dump renders a deployment for failure messages.
func dump(d *controllerv1.Deployment) string {
	b, _ := protojson.Marshal(d)
	return string(b)
}

func stateIs(states ...string) func(*controllerv1.Deployment) bool {
	return func(d *controllerv1.Deployment) bool {
		for _, s := range states {
			if d.GetStatus().GetState() == s {
				return true
			}
		}
		return false
	}
}

// terminal reports whether a deployment ended and drained.
func terminal(d *controllerv1.Deployment) bool {
	switch d.GetStatus().GetState() {
	case "succeeded", "failed", "aborted", "rolled_back":
		return !d.GetStatus().GetDraining()
	}
	return false
}

// pkg is a built package.
type pkg struct {
	path, url, sha string
}

// pkgOpts vary a package.
type pkgOpts struct {
	// health replaces the health script's body (the default passes when this version
	// runs).
	health string
	// start is added to the start script (a sentinel, a sleep).
	start string
	// name tells packages of the same version apart.
	name string
}

// makePkg builds a real package for service and version: berth.yaml and four scripts. The
// start script records the running version in the service directory (outside the
// release) and the health script checks it, so the host's running version can be read
// with runningVersion.
func (e *env) makePkg(service, version string, o pkgOpts) pkg {
	e.t.Helper()
	health := `[ "$(cat ../../running 2>/dev/null)" = "` + version + `" ]` + "\n"
	if o.health != "" {
		health = o.health + "\n"
	}
	files := map[string]string{
		"berth.yaml": fmt.Sprintf("service: %s\nscripts:\n  start: bin/start\n  stop: bin/stop\n  health: bin/health\n  reload: bin/reload\nhealth:\n  interval: 200ms\n  timeout: 150ms\n  rise: 1\n  fall: 2\n", service),
		"bin/start":  "#!/bin/sh\n" + o.start + "\necho " + version + " > ../../running\necho started " + version + "\n",
		"bin/stop":   "#!/bin/sh\nrm -f ../../running\n",
		"bin/health": "#!/bin/sh\n" + health,
		"bin/reload": "#!/bin/sh\nexit 0\n",
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, name := range []string{"berth.yaml", "bin/start", "bin/stop", "bin/health", "bin/reload"} {
		mode := int64(0o644)
		if strings.HasPrefix(name, "bin/") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(files[name])), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			e.t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[name])); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		e.t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		e.t.Fatal(err)
	}
	dir := filepath.Join(e.dir, "pkgs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	name := strings.ReplaceAll(service, "/", "-") + "-" + version + o.name
	p := filepath.Join(dir, name+".tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		e.t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return pkg{path: p, url: "file://" + p, sha: hex.EncodeToString(sum[:])}
}

// runningVersion reads the version the service runs on host ("" when stopped).
func (e *env) runningVersion(host, service string) string {
	b, err := os.ReadFile(filepath.Join(e.dir, "agents", host, "apps", service, "running"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// deploymentBody builds a POST /v1/deployments body.
func deploymentBody(service, version string, p pkg, hosts []string, strategy map[string]any) map[string]any {
	b := map[string]any{"service": service, "version": version, "artifact": map[string]string{"url": p.url, "sha256": p.sha}, "hosts": hosts}
	if strategy != nil {
		b["strategy"] = strategy
	}
	return b
}

func hostNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + strconv.Itoa(i+1)
	}
	return out
}

// killAppsUnder kills, when the test ends, processes started from under dir.
func killAppsUnder(t testing.TB, dir string) {
	t.Cleanup(func() {
		ents, _ := os.ReadDir("/proc")
		for _, ent := range ents {
			pid, err := strconv.Atoi(ent.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			cmdline, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
			if strings.Contains(string(cmdline), dir) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}
