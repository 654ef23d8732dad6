package journal

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent/internal/proc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, dir string, opts Options) (*Journal, []*Entry) {
	t.Helper()
	j, interrupted, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	return j, interrupted
}

func okResult(task, step string, attempt uint32) *agentv1.StepResult {
	return &agentv1.StepResult{TaskId: task, StepId: step, Attempt: attempt, State: agentv1.StepState_STEP_STATE_OK, Message: "done"}
}

func TestReplayKeepsResultsAndTokens(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, dir, Options{})
	k := Key{"t1", "s1"}
	if err := j.Accept(Entry{Key: k, Attempt: 1, Token: 7, Hash: "h", Plugin: "p", Action: "a", Started: true}); err != nil {
		t.Fatal(err)
	}
	if err := j.End(k, 1, okResult("t1", "s1", 1)); err != nil {
		t.Fatal(err)
	}
	if err := j.RaiseToken("t1", 9); err != nil {
		t.Fatal(err)
	}
	if err := j.RaiseToken("t1", 8); err != nil {
		t.Fatal(err)
	}
	j.Close()

	j2, interrupted := open(t, dir, Options{})
	if len(interrupted) != 0 {
		t.Errorf("interrupted: got %d, want 0", len(interrupted))
	}
	if got := j2.Token("t1"); got != 9 {
		t.Errorf("token: got %d, want 9", got)
	}
	e, ok := j2.Get(k)
	if !ok || !e.Done() {
		t.Fatalf("entry: got %+v (found %v), want a done entry", e, ok)
	}
	if !proto.Equal(e.Result, okResult("t1", "s1", 1)) || e.Hash != "h" || e.Plugin != "p" || e.Token != 7 {
		t.Errorf("entry: got %+v, want the recorded one", e)
	}
}

func TestOpenMarksUnfinishedStepsInterrupted(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, dir, Options{})
	running := Key{"t", "running"}
	queued := Key{"t", "queued"}
	if err := j.Accept(Entry{Key: running, Attempt: 2, Token: 1, Plugin: "p", Action: "a", Started: true}); err != nil {
		t.Fatal(err)
	}
	if err := j.Accept(Entry{Key: queued, Attempt: 1, Token: 1, Plugin: "p", Action: "a"}); err != nil {
		t.Fatal(err)
	}
	g := proc.Group{PGID: 4242, Start: 99, Boot: "b"}
	if err := j.SetGroup(running, 2, g); err != nil {
		t.Fatal(err)
	}
	j.Close()

	for round := range 2 {
		j2, interrupted := open(t, dir, Options{})
		if round == 1 {
			// The interrupted results were recorded: a second restart reports nothing new.
			if len(interrupted) != 0 {
				t.Fatalf("second open: got %d interrupted, want 0", len(interrupted))
			}
		} else if len(interrupted) != 2 {
			t.Fatalf("interrupted: got %d, want 2", len(interrupted))
		} else if interrupted[0].Key != running || interrupted[0].Group != g {
			t.Errorf("interrupted[0]: got %s group %+v, want %s with group %+v", interrupted[0].Key, interrupted[0].Group, running, g)
		}
		for _, c := range []struct {
			k    Key
			want string
		}{{running, "while the step was running"}, {queued, "before the step started"}} {
			e, _ := j2.Get(c.k)
			if e.Result.GetState() != agentv1.StepState_STEP_STATE_INTERRUPTED || !strings.Contains(e.Result.GetMessage(), c.want) {
				t.Errorf("round %d, %s: got %v %q, want interrupted %q", round, c.k, e.Result.GetState(), e.Result.GetMessage(), c.want)
			}
		}
		j2.Close()
	}
}

func TestTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, dir, Options{})
	if err := j.RaiseToken("t", 3); err != nil {
		t.Fatal(err)
	}
	j.Close()
	path := filepath.Join(dir, FileName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Half a record: the agent died mid-write.
	f.WriteString(`deadbeef {"op":"token","task":"t","tok`)
	f.Close()

	j2, _ := open(t, dir, Options{})
	if got := j2.Token("t"); got != 3 {
		t.Errorf("token after torn tail: got %d, want 3", got)
	}
	if err := j2.RaiseToken("t", 4); err != nil {
		t.Fatal(err)
	}
	j2.Close()
	j3, _ := open(t, dir, Options{})
	if got := j3.Token("t"); got != 4 {
		t.Errorf("token after reopen: got %d, want 4", got)
	}
}

func TestCorruptionInTheMiddleIsRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	good1, _ := encode(record{Op: "token", Task: "a", Token: 1})
	good2, _ := encode(record{Op: "token", Task: "b", Token: 1})
	bad := []byte("00000000 {\"op\":\"token\"}\n")
	if err := os.WriteFile(path, append(append(good1, bad...), good2...), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "corrupt at line 2") {
		t.Fatalf("Open: got %v, want an error naming line 2", err)
	}
}

func TestRetentionDropsOldSteps(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	j, _ := open(t, dir, Options{Retention: time.Hour, Now: clock})
	old, fresh := Key{"old", "s"}, Key{"new", "s"}
	if err := j.Accept(Entry{Key: old, Attempt: 1, Token: 5, Started: true}); err != nil {
		t.Fatal(err)
	}
	if err := j.End(old, 1, okResult("old", "s", 1)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	if err := j.Accept(Entry{Key: fresh, Attempt: 1, Token: 1, Started: true}); err != nil {
		t.Fatal(err)
	}
	if err := j.End(fresh, 1, okResult("new", "s", 1)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j2, _ := open(t, dir, Options{Retention: time.Hour, Now: clock})
	if _, ok := j2.Get(old); ok {
		t.Errorf("old step: got kept, want dropped after the retention")
	}
	if got := j2.Token("old"); got != 0 {
		t.Errorf("old task token: got %d, want dropped", got)
	}
	if _, ok := j2.Get(fresh); !ok {
		t.Errorf("fresh step: got dropped, want kept")
	}
}

func TestNewAttemptReplacesTheOld(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, dir, Options{})
	k := Key{"t", "s"}
	if err := j.Accept(Entry{Key: k, Attempt: 1, Started: true}); err != nil {
		t.Fatal(err)
	}
	failed := &agentv1.StepResult{TaskId: "t", StepId: "s", Attempt: 1, State: agentv1.StepState_STEP_STATE_RETRYABLE}
	if err := j.End(k, 1, failed); err != nil {
		t.Fatal(err)
	}
	if err := j.Accept(Entry{Key: k, Attempt: 2}); err != nil {
		t.Fatal(err)
	}
	if err := j.Start(k, 2); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j2, interrupted := open(t, dir, Options{})
	if len(interrupted) != 1 || interrupted[0].Attempt != 2 || !interrupted[0].Started {
		t.Fatalf("interrupted: got %+v, want attempt 2, started", interrupted)
	}
	e, _ := j2.Get(k)
	if e.Attempt != 2 {
		t.Errorf("attempt: got %d, want 2", e.Attempt)
	}
}
