package run

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder notes the order in which parts return.
type recorder struct {
	mu    sync.Mutex
	order []string
}

func (r *recorder) part(name string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		r.mu.Lock()
		r.order = append(r.order, name)
		r.mu.Unlock()
		return ctx.Err()
	}
}

func TestStopsInReverseOrderOnCancel(t *testing.T) {
	var rec recorder
	var g Group
	for _, n := range []string{"a", "b", "c"} {
		g.Add(n, rec.part(n))
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- g.Run(ctx) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run after cancel: got %v, want nil", err)
	}
	if got, want := strings.Join(rec.order, ","), "c,b,a"; got != want {
		t.Fatalf("stop order: got %s, want %s", got, want)
	}
}

func TestPartErrorStopsTheRest(t *testing.T) {
	var rec recorder
	var g Group
	g.Add("a", rec.part("a"))
	boom := errors.New("boom")
	g.Add("b", func(ctx context.Context) error { return boom })
	g.Add("c", rec.part("c"))
	err := g.Run(t.Context())
	if !errors.Is(err, boom) {
		t.Fatalf("Run: got %v, want an error wrapping boom", err)
	}
	if !strings.Contains(err.Error(), "b: boom") {
		t.Fatalf("Run: got %q, want it to name the part b", err)
	}
	if got, want := strings.Join(rec.order, ","), "c,a"; got != want {
		t.Fatalf("stop order: got %s, want %s", got, want)
	}
}

func TestPartThatDoesNotStopIsReported(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	g := Group{StopTimeout: 50 * time.Millisecond}
	var rec recorder
	g.Add("first", rec.part("first"))
	g.Add("stuck", func(ctx context.Context) error { <-release; return nil })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	err := g.Run(ctx)
	if !errors.Is(err, ErrStopTimeout) {
		t.Fatalf("Run: got %v, want ErrStopTimeout", err)
	}
	if !strings.Contains(err.Error(), "stuck") {
		t.Fatalf("Run: got %q, want it to name the stuck part", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Run took %s, want about the stop timeout", took)
	}
	if got := strings.Join(rec.order, ","); got != "first" {
		t.Fatalf("the part before the stuck one: got stopped %q, want first stopped anyway", got)
	}
}

func TestPartEndingEarlyIsAnError(t *testing.T) {
	var g Group
	var rec recorder
	g.Add("a", rec.part("a"))
	g.Add("quitter", func(ctx context.Context) error { return nil })
	err := g.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "quitter") {
		t.Fatalf("Run: got %v, want an error naming quitter", err)
	}
}

func TestEmptyGroupWaitsForCancel(t *testing.T) {
	var g Group
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := g.Run(ctx); err != nil {
		t.Fatalf("Run: got %v, want nil", err)
	}
}

func TestStagedStartStopsEverythingInReverse(t *testing.T) {
	var rec recorder
	var g Group
	g.Add("store", rec.part("store"))
	g.Start()
	g.Add("api", rec.part("api"))
	g.Add("agent", rec.part("agent"))
	g.Start()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := g.Wait(ctx); err != nil {
		t.Fatalf("Wait: got %v, want nil", err)
	}
	if got, want := strings.Join(rec.order, ","), "agent,api,store"; got != want {
		t.Fatalf("stop order: got %s, want %s", got, want)
	}
}
