package agent_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
)

// TestStepRunsOnce sends the same step three times: twice to one agent and once more to a
// restarted agent on the same data directory. The plugin appends a line to a sentinel file
// each time it runs; it must run once, and every repeat must be answered with the same
// result.
func TestStepRunsOnce(t *testing.T) {
	h := newHarness(t)
	sentinel := filepath.Join(t.TempDir(), "runs")
	h.plugin("count", `echo run >> `+sentinel+`
read -r req
echo "line one"
echo "line two" >&2
echo "got $req" | cut -c1-40
exit 0
`)
	stop := h.start(h.config())
	w := h.watch("task-1")
	req := h.request("task-1", "s1", "count", "go", map[string]string{"k": "v"})

	reply := h.send(req)
	if reply.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
		t.Fatalf("first reply: got %v %q, want accepted", reply.GetDisposition(), reply.GetReason())
	}
	res := w.result(t, 10*time.Second)
	if res.GetState() != agentv1.StepState_STEP_STATE_OK || res.GetExitCode() != 0 || res.GetHost() != h.host ||
		res.GetPlugin() != "count" || res.GetAttempt() != 1 || res.GetStartedAt() == nil || res.GetEndedAt() == nil {
		t.Fatalf("result: got %v, want ok from count on %s", res, h.host)
	}
	if got := strings.Join(res.GetOutput(), "|"); !strings.Contains(got, "line one") || !strings.Contains(got, "line two") {
		t.Errorf("result output: got %q, want the plugin's lines", got)
	}
	w.waitLine(t, "got {\"task_id\":\"task-1\"", 5*time.Second)
	w.mu.Lock()
	for i, p := range w.progress {
		if p.GetSequence() != uint64(i+1) || p.GetStepId() != "s1" || p.GetStream() == agentv1.Stream_STREAM_UNSPECIFIED {
			t.Errorf("progress %d: got sequence %d step %q stream %v, want sequence %d of s1", i, p.GetSequence(), p.GetStepId(), p.GetStream(), i+1)
		}
	}
	w.mu.Unlock()

	again := h.send(req)
	if again.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE || !proto.Equal(again.GetResult(), res) {
		t.Fatalf("repeat: got %v with %v, want already done with the first result", again.GetDisposition(), again.GetResult())
	}
	if rep := w.result(t, 5*time.Second); !proto.Equal(rep, res) {
		t.Errorf("republished result: got %v, want the first result", rep)
	}

	stop()
	h.start(h.config())
	after := h.send(req)
	if after.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE || !proto.Equal(after.GetResult(), res) {
		t.Fatalf("after restart: got %v with %v, want already done with the first result", after.GetDisposition(), after.GetResult())
	}
	// A new attempt of a step that succeeded does not run either.
	req2 := proto.Clone(req).(*agentv1.StepRequest)
	req2.Attempt = 2
	if r := h.send(req2); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE {
		t.Errorf("attempt 2 of a succeeded step: got %v, want already done", r.GetDisposition())
	}
	if n := countLines(t, sentinel); n != 1 {
		t.Fatalf("plugin runs: got %d, want 1", n)
	}
}

// TestRetryRunsANewAttempt checks that a step whose attempt failed runs again under a new
// attempt, and that the old attempt is then refused.
func TestRetryRunsANewAttempt(t *testing.T) {
	h := newHarness(t)
	sentinel := filepath.Join(t.TempDir(), "runs")
	h.plugin("flaky", `echo run >> `+sentinel+`
[ "$(wc -l < `+sentinel+`)" -ge 2 ] && exit 0
echo "server away" >&2
exit 75
`)
	h.start(h.config())
	w := h.watch("task-r")
	req := h.request("task-r", "s1", "flaky", "go", nil)
	h.send(req)
	if res := w.result(t, 10*time.Second); res.GetState() != agentv1.StepState_STEP_STATE_RETRYABLE || res.GetExitCode() != 75 ||
		res.GetFailureClass() != agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE || !strings.Contains(res.GetMessage(), "server away") {
		t.Fatalf("attempt 1: got %v, want retryable infrastructure with the plugin's last line", res)
	}
	req.Attempt = 2
	if r := h.send(req); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
		t.Fatalf("attempt 2: got %v %q, want accepted", r.GetDisposition(), r.GetReason())
	}
	if res := w.result(t, 10*time.Second); res.GetState() != agentv1.StepState_STEP_STATE_OK || res.GetAttempt() != 2 {
		t.Fatalf("attempt 2: got %v, want ok", res)
	}
	req.Attempt = 1
	if r := h.send(req); r.GetRejectReason() != agentv1.RejectReason_REJECT_REASON_STALE_ATTEMPT {
		t.Errorf("attempt 1 again: got %v %v, want rejected stale attempt", r.GetDisposition(), r.GetRejectReason())
	}
	if n := countLines(t, sentinel); n != 2 {
		t.Errorf("plugin runs: got %d, want 2", n)
	}
}

// TestRejections checks each request the agent must refuse without running anything.
func TestRejections(t *testing.T) {
	h := newHarness(t)
	sentinel := filepath.Join(t.TempDir(), "runs")
	h.plugin("count", "echo run >> "+sentinel+"\n")
	stop := h.start(h.config())

	// Task t-fenced is led by token 5.
	w := h.watch("t-fenced")
	lead := h.request("t-fenced", "s1", "count", "go", nil)
	lead.FencingToken = 5
	if r := h.send(lead); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
		t.Fatalf("leader's step: got %v %q", r.GetDisposition(), r.GetReason())
	}
	w.result(t, 10*time.Second)

	mod := func(f func(r *agentv1.StepRequest)) *agentv1.StepRequest {
		r := h.request("t-other", "s1", "count", "go", nil)
		f(r)
		return r
	}
	tests := []struct {
		name   string
		req    *agentv1.StepRequest
		reason agentv1.RejectReason
		want   string
	}{
		{"stale token", mod(func(r *agentv1.StepRequest) { r.TaskId, r.StepId, r.FencingToken = "t-fenced", "s2", 4 }),
			agentv1.RejectReason_REJECT_REASON_STALE_TOKEN, "lower than 5"},
		{"other host", mod(func(r *agentv1.StepRequest) { r.Host = "h-other" }),
			agentv1.RejectReason_REJECT_REASON_WRONG_HOST, `is for host "h-other"`},
		{"missing plugin", mod(func(r *agentv1.StepRequest) { r.Plugin = "nope" }),
			agentv1.RejectReason_REJECT_REASON_UNKNOWN_PLUGIN, `no plugin "nope"`},
		{"path as plugin", mod(func(r *agentv1.StepRequest) { r.Plugin = "../../bin/sh" }),
			agentv1.RejectReason_REJECT_REASON_INVALID_REQUEST, "not a path"},
		{"no attempt", mod(func(r *agentv1.StepRequest) { r.Attempt = 0 }),
			agentv1.RejectReason_REJECT_REASON_INVALID_REQUEST, "attempt"},
		{"bad task id", mod(func(r *agentv1.StepRequest) { r.TaskId = "a.b" }),
			agentv1.RejectReason_REJECT_REASON_INVALID_REQUEST, "task_id"},
		{"bad payload", mod(func(r *agentv1.StepRequest) { r.Payload = []byte("{not json") }),
			agentv1.RejectReason_REJECT_REASON_INVALID_REQUEST, "payload"},
		{"timeout too long", mod(func(r *agentv1.StepRequest) { r.Timeout = durationpb.New(48 * time.Hour) }),
			agentv1.RejectReason_REJECT_REASON_INVALID_REQUEST, "longer than this agent's limit"},
		{"conflicting resend", mod(func(r *agentv1.StepRequest) {
			r.TaskId, r.FencingToken, r.Arguments = "t-fenced", 5, map[string]string{"different": "yes"}
		}), agentv1.RejectReason_REJECT_REASON_CONFLICT, "different plugin, action, arguments or payload"},
	}
	for _, tc := range tests {
		r := h.send(tc.req)
		if r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_REJECTED || r.GetRejectReason() != tc.reason ||
			!strings.Contains(r.GetReason(), tc.want) {
			t.Errorf("%s: got %v %v %q, want rejected %v with %q", tc.name, r.GetDisposition(), r.GetRejectReason(), r.GetReason(), tc.reason, tc.want)
		}
	}

	// The highest token is in the journal: a restarted agent still refuses the old leader.
	stop()
	h.start(h.config())
	if r := h.send(tests[0].req); r.GetRejectReason() != agentv1.RejectReason_REJECT_REASON_STALE_TOKEN {
		t.Errorf("stale token after restart: got %v %v, want rejected stale token", r.GetDisposition(), r.GetRejectReason())
	}
	// A newer leader is taken, and from then on its predecessor's token is stale.
	newer := h.request("t-fenced", "s3", "count", "go", nil)
	newer.FencingToken = 9
	if r := h.send(newer); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
		t.Errorf("newer leader: got %v %q, want accepted", r.GetDisposition(), r.GetReason())
	}
	w.result(t, 10*time.Second)
	old := h.request("t-fenced", "s4", "count", "go", nil)
	old.FencingToken = 5
	if r := h.send(old); r.GetRejectReason() != agentv1.RejectReason_REJECT_REASON_STALE_TOKEN {
		t.Errorf("deposed leader: got %v %v, want rejected stale token", r.GetDisposition(), r.GetRejectReason())
	}
	if n := countLines(t, sentinel); n != 2 {
		t.Errorf("plugin runs: got %d, want 2 (the two leaders' steps)", n)
	}
}

// TestStepTimeoutKillsProcessGroup runs a plugin that starts children which ignore
// SIGTERM; the step's timeout must end all of them.
func TestStepTimeoutKillsProcessGroup(t *testing.T) {
	h := newHarness(t)
	pidFile := filepath.Join(t.TempDir(), "pids")
	h.plugin("stubborn", `trap '' TERM
sleep 300 & echo $! >> `+pidFile+`
sh -c 'trap "" TERM; sleep 300' & echo $! >> `+pidFile+`
echo $$ >> `+pidFile+`
echo children started
wait
`)
	h.start(h.config())
	w := h.watch("task-t")
	req := h.request("task-t", "s1", "stubborn", "go", nil)
	req.Timeout = durationpb.New(700 * time.Millisecond)
	h.send(req)
	res := w.result(t, 15*time.Second)
	if res.GetState() != agentv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "timed out after 700ms; process group killed") {
		t.Fatalf("result: got %v %q, want failed, timed out, group killed", res.GetState(), res.GetMessage())
	}
	pids := readPIDs(t, pidFile)
	if len(pids) != 3 {
		t.Fatalf("pids: got %v, want 3", pids)
	}
	waitDead(t, pids, 3*time.Second)
}

// TestConcurrencyLimit checks that with one slot a second step waits for the first.
func TestConcurrencyLimit(t *testing.T) {
	h := newHarness(t)
	h.plugin("nap", "sleep 0.3\n")
	cfg := h.config()
	cfg.MaxConcurrentSteps = 1
	cfg.MaxQueuedSteps = 1
	h.start(cfg)
	w := h.watch("task-c")
	for _, s := range []string{"a", "b"} {
		if r := h.send(h.request("task-c", s, "nap", "go", nil)); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
			t.Fatalf("step %s: got %v %q, want accepted", s, r.GetDisposition(), r.GetReason())
		}
	}
	if r := h.send(h.request("task-c", "c", "nap", "go", nil)); r.GetRejectReason() != agentv1.RejectReason_REJECT_REASON_BUSY {
		t.Errorf("third step: got %v %v, want rejected busy", r.GetDisposition(), r.GetRejectReason())
	}
	r1, r2 := w.result(t, 10*time.Second), w.result(t, 10*time.Second)
	if r1.GetState() != agentv1.StepState_STEP_STATE_OK || r2.GetState() != agentv1.StepState_STEP_STATE_OK {
		t.Fatalf("results: got %v and %v, want ok", r1, r2)
	}
	if r2.GetStartedAt().AsTime().Before(r1.GetEndedAt().AsTime()) {
		t.Errorf("second step started at %s, before the first ended at %s; want it to wait for the slot",
			r2.GetStartedAt().AsTime(), r1.GetEndedAt().AsTime())
	}
}

// TestRunningStepAnsweredAlreadyRunning checks a resend while the step runs.
func TestRunningStepAnsweredAlreadyRunning(t *testing.T) {
	h := newHarness(t)
	h.plugin("nap", "echo napping; sleep 1\n")
	h.start(h.config())
	w := h.watch("task-n")
	req := h.request("task-n", "s1", "nap", "go", nil)
	h.send(req)
	w.waitLine(t, "napping", 5*time.Second)
	if r := h.send(req); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_RUNNING || r.GetRunningAttempt() != 1 {
		t.Errorf("resend: got %v (attempt %d), want already running attempt 1", r.GetDisposition(), r.GetRunningAttempt())
	}
	req.Attempt = 2
	if r := h.send(req); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_RUNNING || r.GetRunningAttempt() != 1 {
		t.Errorf("attempt 2 while 1 runs: got %v (attempt %d), want already running attempt 1", r.GetDisposition(), r.GetRunningAttempt())
	}
	w.result(t, 10*time.Second)
}
