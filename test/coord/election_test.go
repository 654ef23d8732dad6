package coord_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
)

type campaignResult struct {
	name string
	s    *coordclient.Session
	l    *coordclient.Leadership
	err  error
}

// TestElectionFencing runs three candidates: one wins, the others wait; when the winner's
// session is ended behind its back it sees Lost, the next candidate wins with a higher
// fencing token, and the deposed leader's fenced write fails with ErrFenced.
func TestElectionFencing(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()
	results := make(chan campaignResult, 3)
	for _, name := range []string{"a", "b", "c"} {
		s, err := cl.NewSession(ctx, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			l, err := cl.Campaign(ctx, s, "controller", []byte(name))
			results <- campaignResult{name: name, s: s, l: l, err: err}
		}()
	}
	next := func() campaignResult {
		t.Helper()
		select {
		case r := <-results:
			if r.err != nil {
				t.Fatalf("campaign %s: %v", r.name, r.err)
			}
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no candidate won within 10s")
		}
		return campaignResult{}
	}
	first := next()
	select {
	case r := <-results:
		t.Fatalf("two leaders at once: %s and %s", first.name, r.name)
	case <-time.After(300 * time.Millisecond):
	}
	info, err := cl.Leader(ctx, "controller")
	if err != nil {
		t.Fatal(err)
	}
	if string(info.Value) != first.name || info.Token != first.l.Token() || info.Session != first.s.ID() {
		t.Fatalf("Leader: got %q token %d session %d, want %q token %d session %d",
			info.Value, info.Token, info.Session, first.name, first.l.Token(), first.s.ID())
	}
	if _, err := first.l.Put(ctx, "/berth/deployments/d1", []byte("by "+first.name)); err != nil {
		t.Fatalf("fenced put by the leader: %v", err)
	}

	// Depose the leader: its session ends on the store (as on expiry).
	closeSessionBehindItsBack(t, c.endpoints()[1], first.s.ID())
	select {
	case <-first.l.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("Lost not closed after the leader's session ended")
	}
	second := next()
	if second.l.Token() <= first.l.Token() {
		t.Fatalf("got token %d after %d, want fencing tokens to grow", second.l.Token(), first.l.Token())
	}
	if _, err := first.l.Put(ctx, "/berth/deployments/d1", []byte("late write by "+first.name)); !errors.Is(err, coordclient.ErrFenced) {
		t.Fatalf("fenced put by the deposed leader: got %v, want ErrFenced", err)
	}
	if _, err := first.l.Txn().Then(coordclient.OpDelete("/berth/deployments/d1")).Commit(ctx); !errors.Is(err, coordclient.ErrFenced) {
		t.Fatalf("fenced txn by the deposed leader: got %v, want ErrFenced", err)
	}
	put, err := second.l.Put(ctx, "/berth/deployments/d1", []byte("by "+second.name), coordclient.ExpectVersion(1))
	if err != nil || put.Version != 2 {
		t.Fatalf("fenced cas put by the new leader: got %+v, %v; want version 2", put, err)
	}
	if _, err := second.l.Put(ctx, "/berth/deployments/d1", nil, coordclient.ExpectVersion(1)); !errors.Is(err, coordclient.ErrConflict) {
		t.Fatalf("fenced put with a stale version: got %v, want ErrConflict (not ErrFenced)", err)
	}

	// Resigning hands over to the last candidate.
	if err := second.l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if !closed(second.l.Lost()) {
		t.Fatal("Lost not closed after Resign")
	}
	third := next()
	if third.l.Token() <= second.l.Token() {
		t.Fatalf("got token %d after %d, want fencing tokens to grow", third.l.Token(), second.l.Token())
	}
	if _, err := second.l.Delete(ctx, "/berth/deployments/d1"); !errors.Is(err, coordclient.ErrFenced) {
		t.Fatalf("fenced delete after resigning: got %v, want ErrFenced", err)
	}
	for _, r := range []campaignResult{second, third} {
		if err := r.s.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Leader(ctx, "controller"); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("Leader with no candidates: got %v, want ErrNotFound", err)
	}
}

// TestCampaignCancelled shows that a candidate whose context ends while it waits leaves
// the queue: its node is gone.
func TestCampaignCancelled(t *testing.T) {
	c := startCluster(t, 1)
	cl := c.client()
	ctx := t.Context()
	s1, err := cl.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close(ctx)
	s2, err := cl.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close(ctx)
	if _, err := cl.Campaign(ctx, s1, "sched", []byte("1")); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := cl.Campaign(wctx, s2, "sched", []byte("2")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("campaign with a short context: got %v, want DeadlineExceeded", err)
	}
	ls, err := cl.List(ctx, coordclient.LeaderPrefix+"sched")
	if err != nil {
		t.Fatal(err)
	}
	if len(ls.Nodes) != 1 {
		t.Fatalf("got %d election nodes, want 1 (the cancelled candidate's removed)", len(ls.Nodes))
	}
}

// TestLockMutualExclusion runs workers that each take a lock and increment a counter with
// a plain read and write; with mutual exclusion no increment is lost and no two workers
// are ever inside at once.
func TestLockMutualExclusion(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()
	const workers, rounds = 4, 5
	var inside, overlaps atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := cl.NewSession(ctx, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer s.Close(ctx)
			for range rounds {
				unlock, err := cl.Lock(ctx, s, "/berth/locks/counter")
				if err != nil {
					errs <- fmt.Errorf("worker %d: lock: %w", w, err)
					return
				}
				if inside.Add(1) > 1 {
					overlaps.Add(1)
				}
				n := 0
				if node, err := cl.Get(ctx, "/counter"); err == nil {
					n, _ = strconv.Atoi(string(node.Value))
				}
				time.Sleep(5 * time.Millisecond)
				_, err = cl.Put(ctx, "/counter", []byte(strconv.Itoa(n+1)))
				inside.Add(-1)
				if err != nil {
					errs <- err
					return
				}
				if err := unlock(ctx); err != nil {
					errs <- fmt.Errorf("worker %d: unlock: %w", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := overlaps.Load(); n != 0 {
		t.Fatalf("got %d overlaps inside the lock, want 0", n)
	}
	node, err := cl.Get(ctx, "/counter")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(node.Value); got != strconv.Itoa(workers*rounds) {
		t.Fatalf("got counter %s, want %d", got, workers*rounds)
	}
}

// TestLockReleasedWithSession shows that a lock whose holder's session closes passes to
// the next waiter.
func TestLockReleasedWithSession(t *testing.T) {
	c := startCluster(t, 1)
	cl := c.client()
	ctx := t.Context()
	s1, err := cl.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := cl.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close(ctx)
	held, err := cl.LockLeadership(ctx, s1, "/berth/locks/build")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		unlock, err := cl.Lock(ctx, s2, "/berth/locks/build")
		if err == nil {
			err = unlock(ctx)
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second locker got the lock while it was held (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := s1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Lost():
	case <-time.After(2 * time.Second):
		t.Fatal("Lost not closed after the holder's session closed")
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second locker did not get the lock after the holder's session closed")
	}
}
