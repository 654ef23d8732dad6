package coord_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
)

// TestPlannedLeaderStopKeepsShortSessions stops the leader the way a planned restart does
// (its context ends): it hands leadership over and stops renewing sessions at once, so a
// session with the shortest TTL survives, and writes go on almost without a pause.
func TestPlannedLeaderStopKeepsShortSessions(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()
	s, err := cl.NewSession(ctx, coordclient.MinSessionTTL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, "/berth/alive/h1", []byte("up"), coordclient.Ephemeral(s.ID())); err != nil {
		t.Fatal(err)
	}
	// A writer measures the longest pause between two acknowledged writes.
	wctx, stopWriter := context.WithCancel(ctx)
	var mu sync.Mutex
	var last time.Time
	var gap time.Duration
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wctx.Err() == nil {
			if _, err := cl.Put(wctx, "/berth/config/w", []byte("x")); err == nil {
				mu.Lock()
				if now := time.Now(); !last.IsZero() && now.Sub(last) > gap {
					gap = now.Sub(last)
				}
				last = time.Now()
				mu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	c.stop(c.leader())
	time.Sleep(3 * coordclient.MinSessionTTL)
	stopWriter()
	wg.Wait()
	if closed(s.Done()) {
		t.Fatalf("a %v session ended across a planned leader stop: %v", coordclient.MinSessionTTL, s.Err())
	}
	if _, err := cl.Get(ctx, "/berth/alive/h1"); err != nil {
		t.Fatalf("ephemeral node after the planned stop: %v", err)
	}
	t.Logf("longest pause between writes across the planned leader stop: %v", gap.Round(time.Millisecond))
	if gap > time.Second {
		t.Errorf("writes paused %v across a planned leader stop, want under 1s (election timeout 500ms)", gap)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
