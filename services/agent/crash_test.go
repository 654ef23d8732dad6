package agent_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
)

var (
	buildOnce sync.Once
	agentBin  string
	buildErr  error
	buildDir  string
)

// berthAgent builds cmd/berth-agent once per test binary.
func berthAgent(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "berth-agent-bin-")
		if buildErr != nil {
			return
		}
		agentBin = filepath.Join(buildDir, "berth-agent")
		cmd := exec.Command(goTool(), "build", "-o", agentBin, "./cmd/berth-agent")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = err
			agentBin = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build berth-agent: %v\n%s", buildErr, agentBin)
	}
	return agentBin
}

// agentProcess runs berth-agent as a process of its own, so that it can be killed.
func (h *harness) agentProcess(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(berthAgent(t), "--host-id", h.host, "--data-dir", h.dataDir, "--nats", h.nats.URL(),
		"--plugin-dir", h.pluginDir, "--listen-metrics", "", "--docker-host", "-", "--kill-grace", "500ms", "--log-format", "text")
	if os.Getenv("BERTH_TEST_LOG") != "" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start berth-agent: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	// Wait until it answers: a step for another host is rejected without side effects.
	probe := h.request("probe", "p", "count", "go", nil)
	probe.Host = "someone-else"
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		subject := "berth.v1.agent." + h.host + ".step"
		var reply agentv1.StepReply
		err := h.client.Request(ctx, subject, probe, &reply)
		cancel()
		if err == nil {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth-agent does not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStepInterruptedByAgentCrash kills the agent (SIGKILL) while a step runs, restarts
// it, and checks that the step is reported interrupted, that a resend is answered with
// that result, and that the plugin did not run a second time.
func TestStepInterruptedByAgentCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the agent binary")
	}
	h := newHarness(t)
	sentinel := filepath.Join(t.TempDir(), "runs")
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The plugin starts a child that outlives it when the agent dies (the plugin itself is
	// tied to the agent's life; its children are not): the restarted agent kills it.
	h.plugin("slow", `echo run >> `+sentinel+`
sleep 300 &
echo $! >> `+pidFile+`
echo $$ >> `+pidFile+`
echo started
wait
`)
	agent1 := h.agentProcess(t)
	w := h.watch("task-crash")
	req := h.request("task-crash", "s1", "slow", "go", nil)
	if r := h.send(req); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
		t.Fatalf("reply: got %v %q, want accepted", r.GetDisposition(), r.GetReason())
	}
	w.waitLine(t, "started", 10*time.Second)
	pids := readPIDs(t, pidFile)

	if err := agent1.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = agent1.Wait()
	// The plugin was tied to the agent's life; its child is left for now.
	waitDead(t, pids[1:], 5*time.Second)
	if !alive(pids[0]) {
		t.Fatalf("the plugin's child died with the agent; the test no longer shows the restart killing it")
	}

	h.agentProcess(t)
	res := w.result(t, 10*time.Second)
	waitDead(t, pids[:1], 5*time.Second)
	if res.GetState() != agentv1.StepState_STEP_STATE_INTERRUPTED || !strings.Contains(res.GetMessage(), "while the step was running") ||
		res.GetAttempt() != 1 || res.GetPlugin() != "slow" {
		t.Fatalf("result after restart: got %v, want interrupted while running", res)
	}
	again := h.send(req)
	if again.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE || !proto.Equal(again.GetResult(), res) {
		t.Fatalf("resend: got %v %v, want already done with the interrupted result", again.GetDisposition(), again.GetResult())
	}
	if n := countLines(t, sentinel); n != 1 {
		t.Errorf("plugin runs: got %d, want 1", n)
	}
}
