package chaos

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/services/agent"
)

// controllerBin builds, once, berth-controller for the controller suites.
var controllerBin = sync.OnceValues(func() (string, error) {
	out := filepath.Join(binDir, "berth-controller")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", out, "./cmd/berth-controller")
	cmd.Dir = filepath.Join("..", "..", "services", "task-controller")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build berth-controller: %w\n%s", err, b)
	}
	return out, nil
})

// deployEnv is a Berth for the controller suites: NATS with JetStream in process, coord as
// three processes, real agents in process (each with its own NATS connection) and
// berth-controller replicas as processes, so that a leader can be killed with SIGKILL.
type deployEnv struct {
	t         *testing.T
	dir       string
	nats      *natstest.Server
	coord     *coordCluster
	cc        *coordclient.Client
	pluginDir string
	// sentinel collects one line "<service> <host>" per run of a deploy's start script.
	sentinel string

	mu     sync.Mutex
	agents map[string]*agentProc
	ctrls  []*ctrlProc
	// deployed counts the deployments created per host; created counts them all.
	deployed map[string]int
	created  int
}

type agentProc struct {
	host string
	reg  *prometheus.Registry
	stop func()
	// before counts the package-deploy steps that earlier processes of the host ran.
	before int
}

// ctrlProc is one berth-controller process.
type ctrlProc struct {
	name, url, logFile string
	cmd                *exec.Cmd
	done               chan struct{}
	dead               bool
}

func newDeployEnv(t *testing.T) *deployEnv {
	t.Helper()
	if _, err := controllerBin(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e := &deployEnv{t: t, dir: dir, agents: map[string]*agentProc{}, deployed: map[string]int{}, sentinel: filepath.Join(dir, "sentinel")}
	e.nats = natstest.RunServer(t)
	// coord is not under test here: berth-coord's default timings keep it steady on a busy
	// machine, so that the faults are the suite's own.
	e.coord = startCoordCluster(t, clusterConfig{binary: coordBin, dir: filepath.Join(dir, "coord"), heartbeat: 100 * time.Millisecond, election: time.Second, requestTimeout: 5 * time.Second})
	cc, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: e.coord.clientEndpoints(), RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	e.cc = cc
	bus := e.connectBus("test", e.nats.URL())
	if err := bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	e.pluginDir = filepath.Join(dir, "plugins")
	if err := os.MkdirAll(e.pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.stopAll)
	return e
}

func (e *deployEnv) connectBus(name, url string) *natsbus.Bus {
	e.t.Helper()
	bus, err := natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{url}, Name: name, ReconnectWait: 100 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	})
	return bus
}

// stopAll stops the controllers (SIGTERM), then the agents.
func (e *deployEnv) stopAll() {
	e.mu.Lock()
	ctrls, agents := e.ctrls, e.agents
	e.mu.Unlock()
	for _, c := range ctrls {
		if !c.dead {
			c.dead = true
			c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.done:
			case <-time.After(5 * time.Second):
				c.cmd.Process.Kill()
				<-c.done
			}
		}
	}
	for _, a := range agents {
		a.stop()
	}
	if e.t.Failed() {
		for _, c := range ctrls {
			e.t.Logf("controller %s log kept at %s", c.name, keepFile(e.t, c.logFile))
		}
	}
}

// startAgent runs a real agent for host and waits until it takes steps. It reaches NATS at
// natsURL ("" for the server itself; a proxy's address cuts it off at will).
func (e *deployEnv) startAgent(host, natsURL string) *agentProc {
	e.t.Helper()
	if natsURL == "" {
		natsURL = e.nats.URL()
	}
	cfg := agent.DefaultConfig()
	cfg.HostID = host
	cfg.DataDir = filepath.Join(e.dir, "agents", host)
	cfg.NATS = natsURL
	cfg.PluginDirs = []string{e.pluginDir}
	cfg.ListenMetrics = ""
	cfg.DockerHost = "-"
	cfg.KillGrace = 500 * time.Millisecond
	// A planned stop (restartAgent) lets the steps in flight end, as an operator's restart
	// does: a step cut short would run again after the restart.
	cfg.DrainTimeout = 30 * time.Second
	cfg.MaxConcurrentSteps = 16
	cfg.Deploy.ScriptTimeout = 10 * time.Second
	cfg.Deploy.HealthDeadline = 10 * time.Second
	bus := e.connectBus("agent-"+host, natsURL)
	reg := prometheus.NewRegistry()
	a, err := agent.New(cfg, agent.Deps{Bus: bus, Logger: logging.Discard(), Registerer: reg})
	if err != nil {
		e.t.Fatalf("agent %s: %v", host, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	var once sync.Once
	p := &agentProc{host: host, reg: reg}
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
		if time.Now().After(deadline) {
			p.stop()
			e.t.Fatalf("agent %s not ready: %v", host, a.Ready(ctx))
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.mu.Lock()
	e.agents[host] = p
	e.mu.Unlock()
	return p
}

// restartAgent stops host's agent (a planned stop: steps in flight finish or are
// journaled as interrupted) and starts it again on the same data directory.
func (e *deployEnv) restartAgent(host string) {
	e.t.Helper()
	e.mu.Lock()
	old := e.agents[host]
	e.mu.Unlock()
	old.stop()
	n := old.stepsRun(e.t) // after the stop: steps that ended while it drained count too
	p := e.startAgent(host, "")
	p.before = n
}

// stepsRun is the agent's own count of package-deploy steps that ended.
func (p *agentProc) stepsRun(t *testing.T) int {
	t.Helper()
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := p.before
	for _, mf := range mfs {
		if mf.GetName() != "berth_agent_steps_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "plugin" && l.GetValue() == "package-deploy" {
					n += int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return n
}

// startController starts a berth-controller process and waits until its API answers;
// extra flags come last.
func (e *deployEnv) startController(name string, extra ...string) *ctrlProc {
	e.t.Helper()
	bin, err := controllerBin()
	if err != nil {
		e.t.Fatal(err)
	}
	addr, err := freePort()
	if err != nil {
		e.t.Fatal(err)
	}
	p := &ctrlProc{name: name, url: "http://" + addr, logFile: filepath.Join(e.dir, "controller-"+name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.logFile)
	if err != nil {
		e.t.Fatal(err)
	}
	p.cmd = exec.Command(bin,
		"--listen", addr, "--replica", name, "--nats", e.nats.URL(),
		"--coord", strings.Join(e.coord.clientEndpoints(), ","),
		"--session-ttl", "2s", "--retry-backoff", "50ms", "--retry-backoff-max", "1s",
		"--poll-interval", "1s", "--result-grace", "2s", "--step-request-timeout", "2s",
		"--ensure-streams=false", "--log-format", "text", "--log-level", "debug")
	p.cmd.Args = append(p.cmd.Args, extra...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		e.t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.ctrls = append(e.ctrls, p)
	e.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(p.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.done:
			e.t.Fatalf("controller %s exited while starting; log %s", name, p.logFile)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("controller %s does not answer /healthz: %v", name, err)
		}
	}
}

// kill sends SIGKILL to a controller and waits for it to exit.
func (e *deployEnv) kill(p *ctrlProc) {
	p.dead = true
	p.cmd.Process.Kill()
	<-p.done
}

// leader returns the live controller replica that holds the leadership, and its fencing
// token.
func (e *deployEnv) leader(timeout time.Duration) (*ctrlProc, uint64) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(e.t.Context(), time.Second)
		l, err := e.cc.Leader(ctx, "controller")
		cancel()
		last = err
		if err == nil {
			e.mu.Lock()
			for _, c := range e.ctrls {
				if c.name == string(l.Value) && !c.dead {
					e.mu.Unlock()
					return c, l.Token
				}
			}
			e.mu.Unlock()
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("no live controller leader within %v (last error %v)", timeout, last)
	return nil, 0
}

// live returns a live controller, or nil: the n-th one (modulo their number), so that
// retries go to each in turn.
func (e *deployEnv) live(n int) *ctrlProc {
	e.mu.Lock()
	defer e.mu.Unlock()
	var live []*ctrlProc
	for _, c := range e.ctrls {
		if !c.dead {
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		return nil
	}
	return live[n%len(live)]
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// call sends a JSON request to a live controller, retrying on the next one after a
// transport error or a 5xx (a replica may be dying, the cluster electing, the machine
// overloaded) for up to a minute. It returns the status and body of the first other answer.
func (e *deployEnv) call(method, path string, body any) (int, []byte, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return 0, nil, err
		}
	}
	deadline := time.Now().Add(time.Minute)
	for attempt := 0; ; attempt++ {
		code, rb := 0, []byte(nil)
		c := e.live(attempt)
		if c == nil {
			return 0, nil, fmt.Errorf("%s %s: no live controller", method, path)
		}
		req, err := http.NewRequest(method, c.url+path, bytes.NewReader(b))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := httpClient.Do(req)
		if err == nil {
			rb, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			code = resp.StatusCode
			if code < 500 {
				return code, rb, nil
			}
		}
		if time.Now().After(deadline) {
			return code, rb, fmt.Errorf("%s %s: no answer below 500 within a minute (last %d %v: %s)", method, path, code, err, rb)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// getDeployment reads a deployment.
func (e *deployEnv) getDeployment(id string) (*controllerv1.Deployment, error) {
	code, b, err := e.call("GET", "/v1/deployments/"+id, nil)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("get deployment %s: status %d: %s", id, code, b)
	}
	d := &controllerv1.Deployment{}
	if err := protojson.Unmarshal(b, d); err != nil {
		return nil, fmt.Errorf("get deployment %s: %w", id, err)
	}
	return d, nil
}

// makePkg builds a package whose start script records "<service> <host>" in the
// sentinel file, so that every run of a deploy step on a host is counted.
func (e *deployEnv) makePkg(service, version string) (url, sum string, err error) {
	files := []struct{ name, body string }{
		{"berth.yaml", fmt.Sprintf("service: %s\nscripts:\n  start: bin/start\n  stop: bin/stop\n  health: bin/health\n  reload: bin/reload\nhealth:\n  interval: 200ms\n  timeout: 150ms\n  rise: 1\n  fall: 2\n", service)},
		{"bin/start", "#!/bin/sh\necho \"$BERTH_SERVICE $BERTH_HOST_ID\" >> " + e.sentinel + "\nsleep 0.3\necho " + version + " > ../../running\n"},
		{"bin/stop", "#!/bin/sh\nrm -f ../../running\n"},
		{"bin/health", "#!/bin/sh\n[ \"$(cat ../../running 2>/dev/null)\" = \"" + version + "\" ]\n"},
		{"bin/reload", "#!/bin/sh\nexit 0\n"},
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range files {
		mode := int64(0o644)
		if strings.HasPrefix(f.name, "bin/") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: mode, Size: int64(len(f.body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return "", "", fmt.Errorf("package %s: %w", service, err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			return "", "", fmt.Errorf("package %s: %w", service, err)
		}
	}
	if err := tw.Close(); err != nil {
		return "", "", fmt.Errorf("package %s: %w", service, err)
	}
	if err := gz.Close(); err != nil {
		return "", "", fmt.Errorf("package %s: %w", service, err)
	}
	dir := filepath.Join(e.dir, "pkgs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("package %s: %w", service, err)
	}
	p := filepath.Join(dir, strings.ReplaceAll(service, "/", "-")+"-"+version+".tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		return "", "", fmt.Errorf("package %s: %w", service, err)
	}
	h := sha256.Sum256(buf.Bytes())
	return "file://" + p, hex.EncodeToString(h[:]), nil
}

// rampOneByOne is the strategy of the suites' deployments: one host, then the rest one at
// a time, so that each deployment has steps out for a while; with 20 infrastructure
// retries (the most allowed) and the controllers' backoff of at most 1 s, a host may be out
// of reach for about a minute before its target is given up as unreachable, which the
// faults stay well under.
var rampOneByOne = map[string]any{"batches": []any{1, "100%"}, "max_parallel": 1, "infra_retries": 20, "health_gate": map[string]any{"deadline": "10s"}}

// deployAll binds each of n services to hosts and starts a deployment of each with
// strategy, four at a time; it returns the deployment ids by service. It may run on a
// goroutine other than the test's: it reports failures as an error.
func (e *deployEnv) deployAll(prefix string, n int, hosts []string, strategy map[string]any) (map[string]string, error) {
	var mu sync.Mutex
	ids := map[string]string{}
	var errs []error
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i := range n {
		svc := fmt.Sprintf("%s/s%03d", prefix, i)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id, err := e.deploy(svc, hosts, strategy)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			ids[svc] = id
		}()
	}
	wg.Wait()
	return ids, errors.Join(errs...)
}

// deploy binds svc to hosts and starts a deployment of it.
func (e *deployEnv) deploy(svc string, hosts []string, strategy map[string]any) (string, error) {
	code, b, err := e.call("PATCH", "/v1/tree/"+svc, map[string]any{"hosts": hosts})
	if err != nil || (code != http.StatusCreated && code != http.StatusOK) {
		return "", fmt.Errorf("bind %s to %v: status %d %v: %s", svc, hosts, code, err, b)
	}
	url, sum, err := e.makePkg(svc, "1.0.0")
	if err != nil {
		return "", err
	}
	code, b, err = e.call("POST", "/v1/deployments", map[string]any{"service": svc, "version": "1.0.0",
		"artifact": map[string]string{"url": url, "sha256": sum}, "strategy": strategy})
	d := &controllerv1.Deployment{}
	switch {
	case err != nil:
		return "", err
	case code == http.StatusCreated:
		if err := protojson.Unmarshal(b, d); err != nil {
			return "", fmt.Errorf("deploy %s: %w: %s", svc, err, b)
		}
	case code == http.StatusConflict:
		// A retry of a create that was applied: the service's lock names it.
		var c struct {
			Details map[string]string `json:"details"`
		}
		if json.Unmarshal(b, &c) != nil || c.Details["running"] == "" {
			return "", fmt.Errorf("deploy %s: status 409: %s", svc, b)
		}
		d.Id = c.Details["running"]
	default:
		return "", fmt.Errorf("deploy %s: status %d: %s", svc, code, b)
	}
	e.mu.Lock()
	for _, h := range hosts {
		e.deployed[h]++
	}
	e.created++
	e.mu.Unlock()
	return d.GetId(), nil
}

// deployAsync runs deployAll on a goroutine; the returned function waits for it and fails
// the test on its error.
func (e *deployEnv) deployAsync(prefix string, n int, hosts []string, strategy map[string]any) (wait func() map[string]string) {
	type result struct {
		ids map[string]string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ids, err := e.deployAll(prefix, n, hosts, strategy)
		ch <- result{ids, err}
	}()
	return func() map[string]string {
		r := <-ch
		if r.err != nil {
			e.t.Fatal(r.err)
		}
		return r.ids
	}
}

// awaitTimeout is how long the controller suites wait for their deployments to end after
// the faults: 3 minutes for -short, 10 for the 100 deployments of a full run (a shared
// 2-core machine gets through about one deployment of three hosts per second).
func awaitTimeout() time.Duration {
	if testing.Short() {
		return 3 * time.Minute
	}
	return 10 * time.Minute
}

// deployOutcome is what the controller suites check at the end.
type deployOutcome struct {
	deployments, succeeded, notSucceeded, stuck, lost int
	steps, stepsLost, stepsTwice                      int
	// agentExtra are plugin runs the agents counted beyond one per deployment and host.
	agentExtra int
	took       time.Duration
}

func (o deployOutcome) String() string {
	return fmt.Sprintf("%d deployments: %d succeeded, %d ended otherwise, %d stuck, %d lost; %d steps: %d lost, %d started twice, %d extra plugin runs counted by agents; all ended %v after the first was created",
		o.deployments, o.succeeded, o.notSucceeded, o.stuck, o.lost, o.steps, o.stepsLost, o.stepsTwice, o.agentExtra, o.took.Round(100*time.Millisecond))
}

func terminalState(s string) bool {
	switch s {
	case "succeeded", "failed", "aborted", "rolled_back":
		return true
	}
	return false
}

// await waits up to timeout for every deployment to end, then counts the deploy steps run
// on every host from the sentinel file and, when every deployment has ended, from the
// agents' metrics.
func (e *deployEnv) await(ids map[string]string, hosts []string, start time.Time, timeout time.Duration) deployOutcome {
	e.t.Helper()
	out := deployOutcome{deployments: len(ids)}
	deadline := time.Now().Add(timeout)
	pending := map[string]string{}
	for svc, id := range ids {
		pending[svc] = id
	}
	last := map[string]*controllerv1.Deployment{}
	succeeded := map[string]bool{}
	for len(pending) > 0 && time.Now().Before(deadline) {
		for svc, id := range pending {
			d, err := e.getDeployment(id)
			if err != nil {
				continue
			}
			last[svc] = d
			if terminalState(d.GetStatus().GetState()) && !d.GetStatus().GetDraining() {
				delete(pending, svc)
				if d.GetStatus().GetState() == "succeeded" {
					out.succeeded++
					succeeded[svc] = true
				} else {
					out.notSucceeded++
					var why []string
					for _, tg := range d.GetTargets() {
						if tg.GetState() != "succeeded" {
							why = append(why, fmt.Sprintf("%s %s: %s", tg.GetHost(), tg.GetState(), tg.GetMessage()))
						}
					}
					e.t.Errorf("deployment %s of %s: got %s, want succeeded: %s (%s)", id, svc, d.GetStatus().GetState(), d.GetStatus().GetMessage(), strings.Join(why, "; "))
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	out.took = time.Since(start)
	for svc, id := range pending {
		if d, ok := last[svc]; ok {
			out.stuck++
			b, _ := protojson.Marshal(d)
			e.t.Errorf("deployment %s of %s did not end within %v: %s", id, svc, timeout, b)
		} else {
			out.lost++
			e.t.Errorf("deployment %s of %s cannot be read", id, svc)
		}
	}
	counts := map[string]int{}
	if f, err := os.Open(e.sentinel); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			counts[strings.TrimSpace(sc.Text())]++
		}
		f.Close()
	}
	svcs := make([]string, 0, len(ids))
	for svc := range ids {
		svcs = append(svcs, svc)
	}
	sort.Strings(svcs)
	for _, svc := range svcs {
		for _, h := range hosts {
			out.steps++
			switch c := counts[svc+" "+h]; {
			case c == 0 && succeeded[svc]:
				out.stepsLost++
				e.t.Errorf("%s on %s: the deploy step never ran", svc, h)
			case c > 1:
				out.stepsTwice++
				e.t.Errorf("%s on %s: the deploy step ran %d times, want once", svc, h, c)
			}
		}
	}
	e.mu.Lock()
	agents, deployed, everything := e.agents, maps.Clone(e.deployed), len(ids) == e.created
	e.mu.Unlock()
	for _, h := range hosts {
		// While other deployments may still run, only too many runs are a finding.
		got := agents[h].stepsRun(e.t)
		out.agentExtra += max(0, got-deployed[h])
		if got > deployed[h] || (everything && got != deployed[h]) {
			e.t.Errorf("agent %s counted %d package-deploy steps, want %d (one per deployment to it)", h, got, deployed[h])
		}
	}
	return out
}

// TestNATSRestartDuringDeployments restarts the NATS server (down for a second each time)
// while deployments run: no deployment may be lost or stuck, and every deploy step must
// run exactly once on its host.
func TestNATSRestartDuringDeployments(t *testing.T) {
	n, restarts := 12, 3
	if !testing.Short() {
		n, restarts = 100, 6
	}
	e := newDeployEnv(t)
	hosts := []string{"h1", "h2", "h3"}
	for _, h := range hosts {
		e.startAgent(h, "")
	}
	for i := range 2 {
		e.startController("c"+strconv.Itoa(i+1), "--session-ttl", "3s")
	}
	e.leader(15 * time.Second)
	start := time.Now()
	created := e.deployAsync("natsrestart", n, hosts, rampOneByOne)
	for r := range restarts {
		time.Sleep(1500 * time.Millisecond)
		e.nats.Shutdown()
		time.Sleep(time.Second)
		e.nats.Start()
		t.Logf("NATS restart %d at %v", r+1, time.Since(start).Round(100*time.Millisecond))
	}
	ids := created()
	out := e.await(ids, hosts, start, awaitTimeout())
	t.Logf("NATS restarted %d times: %s", restarts, out)
	fmt.Fprintf(os.Stderr, "chaos summary: nats restart: %d restarts, %s\n", restarts, out)
}

// TestControllerLeaderKilledDuringDeployments kills the controller leader with SIGKILL
// several times while deployments run on three replicas, starting a replacement each
// time: every deployment must succeed and every deploy step run exactly once (0 lost, 0
// duplicated).
func TestControllerLeaderKilledDuringDeployments(t *testing.T) {
	// -short: a kill every 2 s; full: a kill every 5 to 15 s, as long as deployments run.
	n, kills, every := 20, 2, func() time.Duration { return 2 * time.Second }
	if !testing.Short() {
		n, kills, every = 100, 12, func() time.Duration { return time.Duration(5000+rand.IntN(10000)) * time.Millisecond }
	}
	e := newDeployEnv(t)
	hosts := []string{"h1", "h2", "h3"}
	for _, h := range hosts {
		e.startAgent(h, "")
	}
	for i := range 3 {
		e.startController("c" + strconv.Itoa(i+1))
	}
	e.leader(15 * time.Second)
	start := time.Now()
	created := e.deployAsync("leaderkill", n, hosts, rampOneByOne)
	var failovers []time.Duration
	for k := range kills {
		time.Sleep(every())
		l, token := e.leader(15 * time.Second)
		killed := time.Now()
		e.kill(l)
		e.startController("c" + strconv.Itoa(4+k))
		if k == 0 && !testing.Short() {
			// An agent restarts too, while steps are out at it.
			e.restartAgent("h2")
			t.Logf("agent h2 restarted after kill 1")
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			next, nextToken := e.leader(20 * time.Second)
			if next != l && nextToken > token {
				failovers = append(failovers, time.Since(killed))
				t.Logf("kill %d: SIGKILL of leader %s (token %d); %s leads with token %d after %v", k+1, l.name, token, next.name, nextToken, time.Since(killed).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: no new leader within 20s", k+1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ids := created()
	out := e.await(ids, hosts, start, awaitTimeout())
	t.Logf("controller leader killed %d times (new leader after %v): %s", kills, failovers, out)
	fmt.Fprintf(os.Stderr, "chaos summary: controller leader kill: %d kills (new leader after %v), %s\n", kills, failovers, out)
}

// TestAgentCutOffDuringDeployments cuts one agent off the network (every byte between it
// and NATS dropped, as in a partition) for 10 s (-short) or 2 minutes while deployments
// to it and to other hosts run. Deployments that do not involve it must not wait for it;
// those that do must neither get stuck nor run a step twice, and with an infrastructure
// retry budget longer than the cut they succeed once it is back.
func TestAgentCutOffDuringDeployments(t *testing.T) {
	cut, n, others, backoffMax := 10*time.Second, 6, 4, "1s"
	if !testing.Short() {
		cut, n, others, backoffMax = 2*time.Minute, 30, 10, "10s"
	}
	e := newDeployEnv(t)
	proxy, err := newFaultProxy(strings.TrimPrefix(e.nats.URL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	pctx, stopProxy := context.WithCancel(context.Background())
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- proxy.Run(pctx) }()
	defer func() {
		stopProxy()
		if err := <-proxyDone; err != nil {
			t.Errorf("proxy: %v", err)
		}
	}()
	e.startAgent("h1", "")
	e.startAgent("h2", "")
	e.startAgent("h3", "nats://"+proxy.Addr())
	// Stop the agents (h3's NATS connection goes through the proxy) before the proxy.
	defer e.stopAll()
	for i := range 2 {
		e.startController("c"+strconv.Itoa(i+1), "--session-ttl", "3s", "--retry-backoff", "200ms", "--retry-backoff-max", backoffMax)
	}
	e.leader(15 * time.Second)
	start := time.Now()
	all := map[string]any{"batches": []any{"100%"}, "infra_retries": 20, "health_gate": map[string]any{"deadline": "10s"}}
	ids, err := e.deployAll("cutoff", n, []string{"h1", "h2", "h3"}, all)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	proxy.SetMode(linkBlackhole)
	cutAt := time.Now()
	t.Logf("h3 cut off at %v", cutAt.Sub(start).Round(100*time.Millisecond))
	// Deployments to the other hosts go on meanwhile.
	otherIDs, err := e.deployAll("cutoff-others", others, []string{"h1", "h2"}, all)
	if err != nil {
		t.Fatal(err)
	}
	otherOut := e.await(otherIDs, []string{"h1", "h2"}, cutAt, cut-time.Second)
	if since := time.Since(cutAt); since >= cut {
		t.Errorf("deployments to h1 and h2 took %v, longer than h3's cut (%v): they waited for it", since, cut)
	}
	time.Sleep(time.Until(cutAt.Add(cut)))
	proxy.SetMode(linkPass)
	t.Logf("h3 back at %v", time.Since(start).Round(100*time.Millisecond))
	out := e.await(ids, []string{"h1", "h2", "h3"}, start, awaitTimeout())
	t.Logf("h3 cut off for %v: deployments to h1, h2: %s", cut, otherOut)
	t.Logf("h3 cut off for %v: deployments to h1, h2, h3: %s", cut, out)
	fmt.Fprintf(os.Stderr, "chaos summary: agent cut off: %v; to other hosts meanwhile: %s; to it: %s\n", cut, otherOut, out)
}
