// Command agent-step-bench measures what the agent adds to running a plugin: the time
// from sending a StepRequest over NATS to receiving the StepResult, for a plugin that exits
// at once, against running the same executable directly (fork, exec, JSON on stdin, wait).
// Both sides run N times on the same machine, one after the other; it prints p50 and p99 of
// each and the difference (DESIGN §12 style: both sides in one run).
//
// Everything runs in this process: an embedded NATS server on loopback, an agent on a
// temporary data directory (its journal fsyncs twice per step, as in production), and the
// client standing for the controller.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent"
	"github.com/berthdev/berth/services/agent/internal/plugin"
)

func main() {
	n := flag.Int("n", 1000, "steps to measure on each side")
	warmup := flag.Int("warmup", 50, "unmeasured runs before each side")
	exe := flag.String("plugin", "/bin/true", "executable used as the plugin")
	dir := flag.String("dir", "", "working directory (default a new temporary one, removed at the end)")
	goal := flag.Duration("goal", 2*time.Millisecond, "goal for the added p50")
	flag.Parse()
	if err := run(*n, *warmup, *exe, *dir, *goal); err != nil {
		fmt.Fprintln(os.Stderr, "agent-step-bench:", err)
		os.Exit(1)
	}
}

func run(n, warmup int, exe, dir string, goal time.Duration) error {
	if n < 1 {
		return errors.New("-n: want at least 1")
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "agent-step-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	pluginDir := filepath.Join(dir, "plugins")
	if err := os.MkdirAll(pluginDir, 0o755); err != nil {
		return err
	}
	noop := filepath.Join(pluginDir, "noop")
	if err := copyFile(exe, noop); err != nil {
		return fmt.Errorf("install plugin: %w", err)
	}

	req := plugin.Request{TaskID: "bench", StepID: "s", Attempt: 1, Host: "bench", Plugin: "noop", Action: "run",
		Arguments: map[string]string{}, Deadline: time.Now().Add(time.Minute)}
	stdin, _ := json.Marshal(req)
	direct := make([]time.Duration, 0, n)
	for i := range warmup + n {
		start := time.Now()
		cmd := exec.Command(noop, "noop", "run")
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Dir = pluginDir
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("run %s directly: %w", noop, err)
		}
		if i >= warmup {
			direct = append(direct, time.Since(start))
		}
	}

	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		return err
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("nats server not ready")
	}
	url := ns.ClientURL()

	cfg := agent.DefaultConfig()
	cfg.HostID = "bench"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.NATS = url
	cfg.PluginDirs = []string{pluginDir}
	cfg.ListenMetrics = ""
	cfg.DockerHost = "-"
	a, err := agent.New(cfg, agent.Deps{Logger: logging.Discard()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-errc
	}()
	for a.Ready(ctx) != nil {
		select {
		case err := <-errc:
			return fmt.Errorf("agent: %w", err)
		case <-time.After(10 * time.Millisecond):
		}
	}

	bus, err := natsbus.Connect(ctx, natsbus.Config{URLs: []string{url}, Name: "bench-controller"})
	if err != nil {
		return err
	}
	defer bus.Close(context.Background())
	var mu sync.Mutex
	waiting := map[string]chan *agentv1.StepResult{}
	if _, err := natsbus.SubscribeTyped(ctx, bus, subjects.AgentResults, "", func(_ context.Context, r *agentv1.StepResult) error {
		mu.Lock()
		ch := waiting[r.GetTaskId()]
		mu.Unlock()
		if ch != nil {
			ch <- r
		}
		return nil
	}); err != nil {
		return err
	}
	subject, _ := subjects.AgentStep("bench")
	viaAgent := make([]time.Duration, 0, n)
	for i := range warmup + n {
		task := "t" + strconv.Itoa(i)
		ch := make(chan *agentv1.StepResult, 1)
		mu.Lock()
		waiting[task] = ch
		mu.Unlock()
		start := time.Now()
		var reply agentv1.StepReply
		sreq := &agentv1.StepRequest{TaskId: task, StepId: "s", Attempt: 1, FencingToken: 1, Host: "bench", Plugin: "noop", Action: "run",
			Timeout: durationpb.New(time.Minute)}
		if err := bus.Request(ctx, subject, sreq, &reply); err != nil {
			return err
		}
		if reply.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
			return fmt.Errorf("step %d: %v %s", i, reply.GetDisposition(), reply.GetReason())
		}
		var res *agentv1.StepResult
		select {
		case res = <-ch:
		case <-time.After(30 * time.Second):
			return fmt.Errorf("step %d: no result in 30s", i)
		}
		if i >= warmup {
			viaAgent = append(viaAgent, time.Since(start))
		}
		if res.GetState() != agentv1.StepState_STEP_STATE_OK {
			return fmt.Errorf("step %d: %v %s", i, res.GetState(), res.GetMessage())
		}
		mu.Lock()
		delete(waiting, task)
		mu.Unlock()
	}

	d50, d99 := pct(direct, 50), pct(direct, 99)
	a50, a99 := pct(viaAgent, 50), pct(viaAgent, 99)
	fmt.Printf("plugin %s, %d runs each (after %d warm-up runs)\n", exe, n, warmup)
	fmt.Printf("%-26s p50 %8s  p99 %8s\n", "direct exec", d50, d99)
	fmt.Printf("%-26s p50 %8s  p99 %8s\n", "agent step over NATS", a50, a99)
	fmt.Printf("%-26s p50 %8s  p99 %8s  (ratio p50 %.2fx)\n", "added by the agent", a50-d50, a99-d99, float64(a50)/float64(d50))
	verdict := "met"
	if a50-d50 > goal {
		verdict = "NOT met"
	}
	fmt.Printf("goal: added p50 <= %s: %s\n", goal, verdict)
	return nil
}

// pct returns the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = max(1, min(i, len(s)))
	return s[i-1].Round(time.Microsecond)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
