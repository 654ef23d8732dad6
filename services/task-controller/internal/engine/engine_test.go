package engine

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseStatus(t *testing.T) {
	cases := []struct {
		out     []string
		healthy bool
		why     string
	}{
		{[]string{"checking", `{"service":"acc/web","current":"2.0.0","releases":["2.0.0"],"healthy":true}`}, true, "current release 2.0.0"},
		{[]string{`{"service":"acc/web","current":"2.0.0","healthy":false,"health":"health script: exit status 1"}`, "trailing"}, false, "health script: exit status 1"},
		{[]string{"no json here"}, false, "the status action printed no status"},
		{nil, false, "the status action printed no status"},
	}
	for _, tc := range cases {
		healthy, why := parseStatus(tc.out)
		if healthy != tc.healthy || why != tc.why {
			t.Errorf("parseStatus(%q): got %t %q, want %t %q", tc.out, healthy, why, tc.healthy, tc.why)
		}
	}
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	e := &Engine{cfg: Config{RetryBackoff: 100 * time.Millisecond, RetryBackoffMax: time.Second}.WithDefaults()}
	r := &runner{e: e}
	for retry, want := range map[uint32]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 10: time.Second} {
		for range 20 {
			got := r.backoff(retry)
			if got < want*3/4 || got > want {
				t.Fatalf("backoff(%d): got %s, want within [%s, %s]", retry, got, want*3/4, want)
			}
		}
	}
}

func TestStepConversionKeepsFields(t *testing.T) {
	tg := &controllerv1.Target{Host: "h1", State: "failed", Batch: 2, Attempts: 3, Step: &controllerv1.StepRecord{Id: "run-h1", Attempt: 2},
		FailureClass: "application", Message: "m", Output: []string{"a"}}
	back := targetFromStep(stepFromTarget(tg))
	if back.GetHost() != "h1" || back.GetState() != "failed" || back.GetBatch() != 2 || back.GetAttempts() != 3 ||
		back.GetStep().GetAttempt() != 2 || back.GetFailureClass() != "application" || back.GetMessage() != "m" || len(back.GetOutput()) != 1 {
		t.Errorf("round trip lost fields: got %v", back)
	}
}
