package cli

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

func progressFixture(state string) runView {
	return runView{id: "d-1", what: "acc/web 1.0.0", state: state,
		batches: []*controllerv1.Batch{{Index: 0, Start: 0, End: 1, StartedAt: timestamppb.Now()}, {Index: 1, Start: 1, End: 3}},
		targets: []*controllerv1.Target{{Host: "h1", State: "succeeded"}, {Host: "h2", State: "running"}, {Host: "h3", State: "pending"}}}
}

// TestProgressPlain prints one line per change, and nothing when nothing changed.
func TestProgressPlain(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, false)
	v := progressFixture("running")
	p.update(v)
	first := b.String()
	for _, want := range []string{"d-1: running", "batch 1/2 started", "h1: succeeded", "h2: running"} {
		if !strings.Contains(first, want) {
			t.Errorf("progress lacks %q:\n%s", want, first)
		}
	}
	if strings.Contains(first, "h3") {
		t.Errorf("progress shows a pending target:\n%s", first)
	}
	p.update(v)
	if b.String() != first {
		t.Errorf("an unchanged view printed again:\n%s", b.String()[len(first):])
	}
	v.targets[1] = &controllerv1.Target{Host: "h2", State: "failed", Message: "health check failed"}
	p.update(v)
	if got := b.String()[len(first):]; got != "  h2: failed (health check failed)\n" {
		t.Errorf("after one change: got %q, want one line", got)
	}
}

// TestProgressTerminal draws a bar per batch and redraws in place.
func TestProgressTerminal(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, true)
	p.update(progressFixture("running"))
	p.update(progressFixture("running"))
	out := b.String()
	if n := strings.Count(out, "batch 1/2 ["); n != 2 {
		t.Errorf("got %d bars of batch 1, want 2 (drawn, then redrawn)", n)
	}
	if !strings.Contains(out, "\x1b[3A") {
		t.Errorf("second draw does not move the cursor up over the 3 lines: %q", out)
	}
	if !strings.Contains(out, "1/1") || !strings.Contains(out, "0/2  1 running") {
		t.Errorf("bars lack the counts: %q", out)
	}
}

func TestSummary(t *testing.T) {
	var b bytes.Buffer
	v := progressFixture("failed")
	v.message = "1 of 3 targets failed"
	v.targets[1] = &controllerv1.Target{Host: "h2", State: "failed", Message: "health", Output: []string{"a", "b"}, Rollback: "succeeded"}
	printSummary(&b, v)
	out := b.String()
	for _, want := range []string{"d-1 failed: 1 of 3 targets succeeded, 1 failed", "1 of 3 targets failed", "h2: failed, rollback succeeded: health", "| b"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}
