package coord_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
	coordsrv "github.com/berthdev/berth/services/coord"
)

// collect reads events from ch until n have arrived, checking that revisions only grow.
func collect(t *testing.T, ch <-chan coordclient.WatchResponse, n int, timeout time.Duration, onEach func(got int)) []coordclient.Event {
	t.Helper()
	var evs []coordclient.Event
	deadline := time.After(timeout)
	last := int64(0)
	for len(evs) < n {
		select {
		case r, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d of %d events", len(evs), n)
			}
			if r.Err != nil {
				t.Fatalf("watch failed after %d of %d events: %v", len(evs), n, r.Err)
			}
			for _, ev := range r.Events {
				if ev.Revision <= last {
					t.Fatalf("event %d at revision %d after revision %d: a duplicate or out of order", len(evs), ev.Revision, last)
				}
				last = ev.Revision
				evs = append(evs, ev)
				if onEach != nil {
					onEach(len(evs))
				}
			}
		case <-deadline:
			t.Fatalf("got %d of %d events within %s", len(evs), n, timeout)
		}
	}
	return evs
}

// TestWatchResumesAcrossMemberKill watches a subtree through the member it is connected
// to while that member is stopped in the middle of a stream of writes: the watch resumes on
// another member, and every write arrives once, in order.
func TestWatchResumesAcrossMemberKill(t *testing.T) {
	c := startCluster(t, 3)
	writer := c.client()
	watcher := c.client()
	ctx := t.Context()
	const total = 150
	mark, err := writer.Put(ctx, "/w-mark", nil)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := watcher.Watch(wctx, "/w", mark.Revision+1, coordclient.Recursive())
	writeErr := make(chan error, 1)
	go func() {
		for i := range total {
			if _, err := writer.Put(ctx, fmt.Sprintf("/w/%03d", i), []byte(strconv.Itoa(i))); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	// The watcher starts on the first endpoint; stop that member a third of the way in.
	victim := c.byAddr(c.endpoints()[0])
	stopped := false
	evs := collect(t, ch, total, 30*time.Second, func(got int) {
		if got == total/3 && !stopped {
			stopped = true
			c.stop(victim)
		}
	})
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	for i, ev := range evs {
		if want := fmt.Sprintf("/w/%03d", i); ev.Node.Path != want || string(ev.Node.Value) != strconv.Itoa(i) || ev.Type != coordclient.EventPut {
			t.Fatalf("event %d: got %s %s=%q, want PUT %s=%d", i, ev.Type, ev.Node.Path, ev.Node.Value, want, i)
		}
	}
	// Nothing more arrives: no duplicates trail behind.
	select {
	case r := <-ch:
		t.Fatalf("got an extra response after all writes: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestWatchFromHistory replays the past: a watch from an old revision gets every change
// since, deletes included, then live ones.
func TestWatchFromHistory(t *testing.T) {
	c := startCluster(t, 1)
	cl := c.client()
	ctx := t.Context()
	first, err := cl.Put(ctx, "/h/a", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, "/h/a", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Delete(ctx, "/h/a"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := cl.Watch(wctx, "/h/a", first.Revision, coordclient.PrevNode())
	evs := collect(t, ch, 3, 5*time.Second, nil)
	if evs[0].Type != coordclient.EventPut || evs[1].PrevNode == nil || string(evs[1].PrevNode.Value) != "1" || evs[2].Type != coordclient.EventDelete {
		t.Fatalf("got %+v, want put, put (prev 1), delete", evs)
	}
	if _, err := cl.Put(ctx, "/h/a", []byte("3")); err != nil {
		t.Fatal(err)
	}
	if evs := collect(t, ch, 1, 5*time.Second, nil); string(evs[0].Node.Value) != "3" {
		t.Fatalf("live event: got %+v, want value 3", evs[0])
	}
	cancel()
	for r := range ch {
		if r.Err != nil {
			t.Fatalf("watch ended with %v after its context, want no error", r.Err)
		}
	}
}

// TestWatchCompaction starts watches before the members' short event history: without
// RelistOnCompaction the watch ends with a *CompactedError; with it, the client re-lists,
// sends the current state as a reset, and follows from there without a gap.
func TestWatchCompaction(t *testing.T) {
	c := startCluster(t, 1, func(cfg *coordsrv.Config) { cfg.HistoryWindow = 16 })
	cl := c.client()
	ctx := t.Context()
	var last int64
	for i := range 40 {
		res, err := cl.Put(ctx, fmt.Sprintf("/c/%02d", i), []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		last = res.Revision
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := <-cl.Watch(wctx, "/c", 1, coordclient.Recursive())
	var ce *coordclient.CompactedError
	if !errors.Is(r.Err, coordclient.ErrCompacted) || !errors.As(r.Err, &ce) || ce.CompactRevision < 1 || ce.CompactRevision >= last {
		t.Fatalf("watch from revision 1: got %+v, want a CompactedError with a compact revision in [1, %d)", r, last)
	}

	ch := cl.Watch(wctx, "/c", 1, coordclient.Recursive(), coordclient.RelistOnCompaction())
	select {
	case r := <-ch:
		if r.Err != nil || !r.Reset || len(r.Nodes) != 40 || r.Revision != last {
			t.Fatalf("got reset=%v with %d nodes at revision %d (err %v), want a reset of 40 nodes at %d", r.Reset, len(r.Nodes), r.Revision, r.Err, last)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reset within 5s")
	}
	res, err := cl.Put(ctx, "/c/new", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	evs := collect(t, ch, 1, 5*time.Second, nil)
	if evs[0].Revision != res.Revision || evs[0].Revision != last+1 {
		t.Fatalf("first event after the reset: got revision %d, want %d", evs[0].Revision, last+1)
	}

	// A single node re-lists as itself, or as nothing when absent.
	one := cl.Watch(wctx, "/c/07", 1, coordclient.RelistOnCompaction())
	if r := <-one; !r.Reset || len(r.Nodes) != 1 || string(r.Nodes[0].Value) != "7" {
		t.Fatalf("single-node reset: got %+v, want /c/07=7", r)
	}
	none := cl.Watch(wctx, "/c/absent", 1, coordclient.RelistOnCompaction())
	if r := <-none; !r.Reset || len(r.Nodes) != 0 || r.Revision < last+1 {
		t.Fatalf("absent-node reset: got %+v, want an empty reset at revision >= %d", r, last+1)
	}
}
