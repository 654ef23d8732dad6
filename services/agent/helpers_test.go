package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if buildDir != "" {
			_ = os.RemoveAll(buildDir)
		}
	}))
}

// harness is one agent host for a test: a NATS server, a client bus standing for the
// controller, the agent's data and plugin directories.
type harness struct {
	t         *testing.T
	nats      *natstest.Server
	client    *natsbus.Bus
	dataDir   string
	pluginDir string
	host      string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, nats: natstest.RunServer(t), dataDir: filepath.Join(t.TempDir(), "data"),
		pluginDir: t.TempDir(), host: "h-test"}
	bus, err := natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{h.nats.URL()}, Name: "test-controller"})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	})
	h.client = bus
	killAppsUnder(t, h.dataDir)
	return h
}

// config is the agent configuration of the harness.
func (h *harness) config() agent.Config {
	cfg := agent.DefaultConfig()
	cfg.HostID = h.host
	cfg.DataDir = h.dataDir
	cfg.NATS = h.nats.URL()
	cfg.PluginDirs = []string{h.pluginDir}
	cfg.ListenMetrics = ""
	cfg.DockerHost = "-"
	cfg.KillGrace = 500 * time.Millisecond
	cfg.DrainTimeout = 2 * time.Second
	cfg.Deploy.ScriptTimeout = 20 * time.Second
	cfg.Deploy.HealthDeadline = 20 * time.Second
	return cfg
}

// start runs an agent until the returned stop is called (or the test ends) and waits until
// it takes steps.
func (h *harness) start(cfg agent.Config) (stop func()) {
	h.t.Helper()
	a, err := agent.New(cfg, agent.Deps{Logger: testLogger(h.t)})
	if err != nil {
		h.t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				h.t.Errorf("agent Run: %v", err)
			}
		})
	}
	h.t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for a.Ready(ctx) != nil {
		select {
		case err := <-errc:
			errc <- err
			h.t.Fatalf("agent stopped while starting: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("agent not ready after 10s: %v", a.Ready(ctx))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return stop
}

// testLogger writes the agent's logs to stderr when BERTH_TEST_LOG is set.
func testLogger(*testing.T) *slog.Logger {
	if os.Getenv("BERTH_TEST_LOG") == "" {
		return logging.Discard()
	}
	l, _ := logging.New(logging.Config{Format: "text", Level: "debug"}, os.Stderr)
	return l
}

// plugin installs an executable shell plugin.
func (h *harness) plugin(name, body string) {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.pluginDir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		h.t.Fatal(err)
	}
}

// request builds a step request for the harness's host.
func (h *harness) request(task, step, plugin, action string, args map[string]string) *agentv1.StepRequest {
	return &agentv1.StepRequest{TaskId: task, StepId: step, Attempt: 1, FencingToken: 1, Host: h.host,
		Plugin: plugin, Action: action, Arguments: args, Timeout: durationpb.New(time.Minute)}
}

// send sends a step request and returns the reply.
func (h *harness) send(req *agentv1.StepRequest) *agentv1.StepReply {
	h.t.Helper()
	subject, err := subjects.AgentStep(h.host)
	if err != nil {
		h.t.Fatal(err)
	}
	var reply agentv1.StepReply
	ctx, cancel := context.WithTimeout(h.t.Context(), 10*time.Second)
	defer cancel()
	if err := h.client.Request(ctx, subject, req, &reply); err != nil {
		h.t.Fatalf("step request %s/%s: %v", req.GetTaskId(), req.GetStepId(), err)
	}
	return &reply
}

// watcher collects a task's progress and results.
type watcher struct {
	mu       sync.Mutex
	progress []*agentv1.StepProgress
	results  chan *agentv1.StepResult
}

func (h *harness) watch(task string) *watcher {
	h.t.Helper()
	w := &watcher{results: make(chan *agentv1.StepResult, 16)}
	ps, _ := subjects.AgentProgressFor(task)
	rs, _ := subjects.AgentResultFor(task)
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	if _, err := natsbus.SubscribeTyped(ctx, h.client, ps, "", func(_ context.Context, p *agentv1.StepProgress) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.progress = append(w.progress, p)
		return nil
	}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := natsbus.SubscribeTyped(ctx, h.client, rs, "", func(_ context.Context, r *agentv1.StepResult) error {
		w.results <- r
		return nil
	}); err != nil {
		h.t.Fatal(err)
	}
	return w
}

// result waits for the next result.
func (w *watcher) result(t *testing.T, within time.Duration) *agentv1.StepResult {
	t.Helper()
	select {
	case r := <-w.results:
		return r
	case <-time.After(within):
		t.Fatalf("no step result within %s", within)
		return nil
	}
}

// lines returns the progress lines received so far, in sequence order.
func (w *watcher) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, p := range w.progress {
		out = append(out, p.GetLines()...)
	}
	return out
}

// waitLine waits until a progress line contains s.
func (w *watcher) waitLine(t *testing.T, s string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, l := range w.lines() {
			if strings.Contains(l, s) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no progress line with %q within %s; got %q", s, within, w.lines())
}

// countLines counts the lines of a file (a sentinel a plugin appends to).
func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// killAppsUnder kills, at the end of the test, every process whose executable lies under
// dir: the apps that deploys started, whatever state the test left them in.
func killAppsUnder(t *testing.T, dir string) {
	t.Cleanup(func() {
		for _, pid := range processesUnder(dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// processesUnder lists the processes whose executable (or script, for interpreters) lies
// under dir.
func processesUnder(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.HasPrefix(exe, dir) || strings.Contains(string(cmdline), dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive reports whether a process exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z"
}

// waitDead waits until none of the pids is alive.
func waitDead(t *testing.T, pids []int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("process %d: got alive, want dead", pid)
		}
	}
}

// readPIDs reads one pid per line.
func readPIDs(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read pids: %v", err)
	}
	var pids []int
	for _, l := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("pid %q: %v", l, err)
		}
		pids = append(pids, n)
	}
	t.Cleanup(func() {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	return pids
}

// goTool is the go command: the one on PATH, else the one that built this test.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}
