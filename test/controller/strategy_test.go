package controller_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// stampPlugin installs a plugin that appends "start <ns> <host> <task>" and, after
// sleeping, "end <ns> <host> <task>" to a file, and returns the file. The agent runs
// plugins with BERTH_HOST_ID set.
func (e *env) stampPlugin(name string, sleep string) string {
	e.t.Helper()
	log := filepath.Join(e.dir, name+".log")
	e.plugin(name, `req=$(cat)
task=$(echo "$req" | sed 's/.*"task_id":"\([^"]*\)".*/\1/')
echo "start $(date +%s%N) $BERTH_HOST_ID $task" >> `+log+`
sleep `+sleep+`
echo "end $(date +%s%N) $BERTH_HOST_ID $task" >> `+log+`
`)
	return log
}

// stamp is one line of a stamp plugin's file.
type stamp struct {
	end  bool
	at   int64
	host string
	task string
}

func readStamps(t testing.TB, path string) []stamp {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []stamp
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.Fields(sc.Text())
		if len(p) != 4 {
			t.Fatalf("bad stamp line %q", sc.Text())
		}
		at, _ := strconv.ParseInt(p[1], 10, 64)
		out = append(out, stamp{end: p[0] == "end", at: at, host: p[2], task: p[3]})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].at != out[j].at {
			return out[i].at < out[j].at
		}
		return out[i].end && !out[j].end // an end at the same instant frees the slot first
	})
	return out
}

func (a *api) task(id string) *controllerv1.Task {
	a.t.Helper()
	tk := &controllerv1.Task{}
	a.must(200, "GET", "/v1/tasks/"+id, nil, tk)
	return tk
}

func (a *api) waitTask(id string, timeout time.Duration, ok func(*controllerv1.Task) bool) *controllerv1.Task {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		tk := a.task(id)
		if ok(tk) {
			return tk
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(tk.GetStatus())
			a.t.Fatalf("task %s: condition not met within %s: %s", id, timeout, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func taskDone(tk *controllerv1.Task) bool {
	switch tk.GetStatus().GetState() {
	case "succeeded", "failed", "aborted":
		return !tk.GetStatus().GetDraining()
	}
	return false
}

// TestRampOrderAndWindow runs a task over 7 hosts with the ramp [1, 50%, 100%] and
// max_parallel 2, and checks from the agents' own start and end stamps that the batches
// ran in order with the planned sizes and that no more than 2 steps ever overlapped.
func TestRampOrderAndWindow(t *testing.T) {
	e := newEnv(t)
	hosts := hostNames("h", 7)
	for _, h := range hosts {
		e.startAgent(h)
	}
	log := e.stampPlugin("stamp", "0.2")
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	tk := &controllerv1.Task{}
	a.must(201, "POST", "/v1/tasks", map[string]any{"hosts": hosts, "plugin": "stamp",
		"strategy": map[string]any{"batches": []any{1, "50%", "100%"}, "max_parallel": 2}}, tk)
	tk = a.waitTask(tk.GetId(), 30*time.Second, taskDone)
	if got := tk.GetStatus().GetState(); got != "succeeded" {
		t.Fatalf("task: got state %s (%s), want succeeded", got, tk.GetStatus().GetMessage())
	}
	// 50% of 7 rounds up to 4: batches of 1, 3 and 3.
	var sizes []int
	for _, b := range tk.GetStatus().GetBatches() {
		sizes = append(sizes, int(b.GetEnd()-b.GetStart()))
	}
	if want := []int{1, 3, 3}; !equalInts(sizes, want) {
		t.Fatalf("batch sizes: got %v, want %v", sizes, want)
	}
	batchOf := map[string]int{}
	for i, h := range hosts {
		switch {
		case i < 1:
			batchOf[h] = 0
		case i < 4:
			batchOf[h] = 1
		default:
			batchOf[h] = 2
		}
	}
	stamps := readStamps(t, log)
	if len(stamps) != 2*len(hosts) {
		t.Fatalf("got %d stamps, want %d (one start and one end per host)", len(stamps), 2*len(hosts))
	}
	running, maxRunning := 0, 0
	lastEnd := map[int]int64{}
	firstStart := map[int]int64{}
	for _, s := range stamps {
		b := batchOf[s.host]
		if s.end {
			running--
			lastEnd[b] = max(lastEnd[b], s.at)
			continue
		}
		running++
		maxRunning = max(maxRunning, running)
		if _, ok := firstStart[b]; !ok {
			firstStart[b] = s.at
		}
	}
	if maxRunning > 2 {
		t.Errorf("max_parallel 2: got %d steps running at once, want at most 2", maxRunning)
	}
	if maxRunning < 2 {
		t.Errorf("got at most %d steps at once, want the window of 2 used", maxRunning)
	}
	for b := 1; b < 3; b++ {
		if firstStart[b] < lastEnd[b-1] {
			t.Errorf("batch %d started at %d, before batch %d ended at %d", b, firstStart[b], b-1, lastEnd[b-1])
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestManualPauseHoldsUntilResume pauses after the first batch and checks that nothing of
// the second batch runs until resume.
func TestManualPauseHoldsUntilResume(t *testing.T) {
	e := newEnv(t)
	hosts := hostNames("h", 3)
	for _, h := range hosts {
		e.startAgent(h)
	}
	log := e.stampPlugin("stamp", "0")
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	tk := &controllerv1.Task{}
	a.must(201, "POST", "/v1/tasks", map[string]any{"hosts": hosts, "plugin": "stamp",
		"strategy": map[string]any{"batches": []any{1, "100%"}, "pause": "manual"}}, tk)
	id := tk.GetId()
	tk = a.waitTask(id, 20*time.Second, func(tk *controllerv1.Task) bool { return tk.GetStatus().GetState() == "paused" })
	if got := tk.GetStatus().GetPauseReason(); got != "batch" {
		t.Errorf("pause reason: got %q, want batch", got)
	}
	time.Sleep(1500 * time.Millisecond)
	if n := len(readStamps(t, log)); n != 2 {
		t.Fatalf("while paused: got %d stamps, want 2 (only the first batch ran)", n)
	}
	for _, s := range a.task(id).GetSteps()[1:] {
		if s.GetState() != "pending" {
			t.Errorf("while paused: step %s is %s, want pending", s.GetHost(), s.GetState())
		}
	}
	// A resume of a task that is not paused is refused; this one is paused.
	a.must(202, "POST", "/v1/tasks/"+id+"/resume", nil, nil)
	tk = a.waitTask(id, 20*time.Second, taskDone)
	if got := tk.GetStatus().GetState(); got != "succeeded" {
		t.Fatalf("after resume: got state %s (%s), want succeeded", got, tk.GetStatus().GetMessage())
	}
	if n := len(readStamps(t, log)); n != 6 {
		t.Fatalf("after resume: got %d stamps, want 6", n)
	}
	code, body := a.do("POST", "/v1/tasks/"+id+"/resume", nil)
	if code != 409 {
		t.Errorf("resume of a finished task: got %d %s, want 409", code, body)
	}
}

// TestAbortStopsAtOnce aborts a task mid-batch: it must reach aborted at once, dispatch
// nothing more, and skip what had not started.
func TestAbortStopsAtOnce(t *testing.T) {
	e := newEnv(t)
	hosts := hostNames("h", 4)
	for _, h := range hosts {
		e.startAgent(h)
	}
	log := e.stampPlugin("slow", "1")
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	tk := &controllerv1.Task{}
	a.must(201, "POST", "/v1/tasks", map[string]any{"hosts": hosts, "plugin": "slow",
		"strategy": map[string]any{"max_parallel": 1}}, tk)
	id := tk.GetId()
	a.waitTask(id, 20*time.Second, func(tk *controllerv1.Task) bool { return tk.GetSteps()[0].GetState() == "running" })
	asked := time.Now()
	a.must(202, "POST", "/v1/tasks/"+id+"/abort", nil, nil)
	a.waitTask(id, 5*time.Second, func(tk *controllerv1.Task) bool { return tk.GetStatus().GetState() == "aborted" })
	if d := time.Since(asked); d > 2*time.Second {
		t.Errorf("abort took %s to show, want under 2s", d)
	}
	tk = a.waitTask(id, 10*time.Second, taskDone)
	if got := tk.GetSteps()[0].GetState(); got != "succeeded" {
		t.Errorf("the step that was running when aborted: got %s, want succeeded (it finishes and is recorded)", got)
	}
	for _, s := range tk.GetSteps()[1:] {
		if s.GetState() != "skipped" {
			t.Errorf("step %s: got %s, want skipped", s.GetHost(), s.GetState())
		}
	}
	time.Sleep(500 * time.Millisecond)
	starts := 0
	for _, s := range readStamps(t, log) {
		if !s.end {
			starts++
		}
	}
	if starts != 1 {
		t.Errorf("got %d plugin runs, want 1: nothing may be dispatched after the abort", starts)
	}
	code, _ := a.do("POST", "/v1/tasks/"+id+"/abort", nil)
	if code != 409 {
		t.Errorf("abort of an ended task: got %d, want 409", code)
	}
}

// TestMaxFailuresRollsBack deploys v1 to four hosts, then a v2 whose health fails on two
// of them: the rollout must stop on max_failures and roll every touched host back to v1.
func TestMaxFailuresRollsBack(t *testing.T) {
	e := newEnv(t)
	hosts := hostNames("h", 4)
	for _, h := range hosts {
		e.startAgent(h)
	}
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	a.must(201, "PATCH", "/v1/tree/acc/web", map[string]any{"hosts": hosts}, nil)
	v1 := e.makePkg("acc/web", "1.0.0", pkgOpts{})
	d := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", map[string]any{"service": "acc/web", "version": "1.0.0",
		"artifact": map[string]string{"url": v1.url, "sha256": v1.sha}}, d)
	if d = a.waitDeployment(d.GetId(), 30*time.Second, terminal); d.GetStatus().GetState() != "succeeded" {
		t.Fatalf("v1: got %s (%s), want succeeded", d.GetStatus().GetState(), d.GetStatus().GetMessage())
	}
	// v2 is healthy on h1 and h2 and never on h3 and h4.
	v2 := e.makePkg("acc/web", "2.0.0", pkgOpts{health: `case "$BERTH_HOST_ID" in h3|h4) exit 1;; esac
[ "$(cat ../../running)" = 2.0.0 ]`})
	a.must(201, "POST", "/v1/deployments", map[string]any{"service": "acc/web", "version": "2.0.0",
		"artifact": map[string]string{"url": v2.url, "sha256": v2.sha},
		"strategy": map[string]any{"batches": []any{"50%", "100%"}, "max_failures": 1, "auto_rollback": true,
			"health_gate": map[string]any{"deadline": "1s"}}}, d)
	d = a.waitDeployment(d.GetId(), 60*time.Second, terminal)
	if got := d.GetStatus().GetState(); got != "rolled_back" {
		t.Fatalf("v2: got state %s (%s), want rolled_back", got, d.GetStatus().GetMessage())
	}
	want := map[string]string{"h1": "succeeded", "h2": "succeeded", "h3": "failed", "h4": "failed"}
	for _, tg := range d.GetTargets() {
		if tg.GetState() != want[tg.GetHost()] {
			t.Errorf("target %s: got %s, want %s", tg.GetHost(), tg.GetState(), want[tg.GetHost()])
		}
		if tg.GetState() == "failed" && tg.GetFailureClass() != "application" {
			t.Errorf("target %s: got failure class %q, want application", tg.GetHost(), tg.GetFailureClass())
		}
		if tg.GetRollback() != "succeeded" {
			t.Errorf("target %s: got rollback %q (%s), want succeeded", tg.GetHost(), tg.GetRollback(), tg.GetRollbackMessage())
		}
	}
	for _, h := range hosts {
		if got := e.runningVersion(h, "acc/web"); got != "1.0.0" {
			t.Errorf("host %s runs %q after the rollback, want 1.0.0", h, got)
		}
	}
	// The release records follow: a v3 deployment would roll back to 1.0.0 again.
	v3 := e.makePkg("acc/web", "3.0.0", pkgOpts{})
	a.must(201, "POST", "/v1/deployments", map[string]any{"service": "acc/web", "version": "3.0.0",
		"artifact": map[string]string{"url": v3.url, "sha256": v3.sha}}, d)
	d = a.waitDeployment(d.GetId(), 30*time.Second, terminal)
	for _, tg := range d.GetTargets() {
		if tg.GetPreviousVersion() != "1.0.0" {
			t.Errorf("v3 target %s: got previous version %q, want 1.0.0", tg.GetHost(), tg.GetPreviousVersion())
		}
	}
}

// TestUnreachableHostIsRetriedThenReported deploys to two live hosts and one without an
// agent: the dead one is retried with backoff, then reported unreachable (infrastructure),
// and the live ones succeed.
func TestUnreachableHostIsRetriedThenReported(t *testing.T) {
	e := newEnv(t)
	e.startAgent("h1")
	e.startAgent("h2")
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	a.must(201, "PATCH", "/v1/tree/acc/web", nil, nil)
	p := e.makePkg("acc/web", "1.0.0", pkgOpts{})
	d := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", deploymentBody("acc/web", "1.0.0", p, []string{"ghost", "h1", "h2"},
		map[string]any{"max_failures": 1, "infra_retries": 3, "auto_rollback": true}), d)
	d = a.waitDeployment(d.GetId(), 30*time.Second, terminal)
	if got := d.GetStatus().GetState(); got != "succeeded" {
		t.Fatalf("got state %s (%s), want succeeded (one unreachable host is within max_failures 1)", got, d.GetStatus().GetMessage())
	}
	for _, tg := range d.GetTargets() {
		switch tg.GetHost() {
		case "ghost":
			if tg.GetState() != "unreachable" || tg.GetFailureClass() != "infrastructure" {
				t.Errorf("ghost: got %s/%s, want unreachable/infrastructure", tg.GetState(), tg.GetFailureClass())
			}
			if got := tg.GetStep().GetRetries(); got != 4 {
				t.Errorf("ghost: got %d failed sends, want 4 (the first and 3 retries)", got)
			}
			if !strings.Contains(tg.GetMessage(), "no responders") {
				t.Errorf("ghost: message %q does not say why", tg.GetMessage())
			}
			if tg.GetRollback() != "" {
				t.Errorf("ghost: got rollback %q, want none", tg.GetRollback())
			}
		default:
			if tg.GetState() != "succeeded" {
				t.Errorf("%s: got %s, want succeeded", tg.GetHost(), tg.GetState())
			}
			if got := e.runningVersion(tg.GetHost(), "acc/web"); got != "1.0.0" {
				t.Errorf("%s runs %q, want 1.0.0", tg.GetHost(), got)
			}
		}
	}
	// With no failure allowed the same dead host fails the deployment, but the healthy
	// hosts are not rolled back for an infrastructure failure.
	p2 := e.makePkg("acc/web", "2.0.0", pkgOpts{})
	a.must(201, "POST", "/v1/deployments", deploymentBody("acc/web", "2.0.0", p2, []string{"h1", "h2", "ghost"},
		map[string]any{"max_failures": 0, "infra_retries": 1, "auto_rollback": true}), d)
	d = a.waitDeployment(d.GetId(), 30*time.Second, terminal)
	if got := d.GetStatus().GetState(); got != "failed" {
		t.Fatalf("max_failures 0: got state %s (%s), want failed", got, d.GetStatus().GetMessage())
	}
	if got := d.GetStatus().GetFailureClass(); got != "infrastructure" {
		t.Errorf("got failure class %q, want infrastructure", got)
	}
	for _, h := range []string{"h1", "h2"} {
		if got := e.runningVersion(h, "acc/web"); got != "2.0.0" {
			t.Errorf("%s runs %q, want 2.0.0 (no rollback for an unreachable host)", h, got)
		}
	}
}
