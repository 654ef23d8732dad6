package watch

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ev(rev int64, path string) *coordv1.Event {
	return &coordv1.Event{Type: coordv1.EventType_EVENT_TYPE_PUT, Node: &coordv1.Node{Path: path, ModRev: rev}, Revision: rev}
}

// publish publishes revisions from..to, each with one event on path p/<rev%3> and one on /other.
func publish(h *Hub, from, to int64, p string) {
	for r := from; r <= to; r++ {
		h.Publish(r, []*coordv1.Event{ev(r, fmt.Sprintf("%s/%d", p, r%3)), ev(r, "/other")})
	}
}

// collect reads events until it has n or the deadline passes.
func collect(t *testing.T, w *Watcher, n int) ([]*coordv1.Event, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	var out []*coordv1.Event
	for len(out) < n {
		evs, err := w.Next(ctx)
		if err != nil {
			return out, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

func checkSequence(t *testing.T, evs []*coordv1.Event, from, to int64) {
	t.Helper()
	if int64(len(evs)) != to-from+1 {
		t.Fatalf("got %d events, want %d (revisions %d..%d)", len(evs), to-from+1, from, to)
	}
	for i, e := range evs {
		if want := from + int64(i); e.Revision != want {
			t.Fatalf("event %d: got revision %d, want %d (gap, duplicate or disorder)", i, e.Revision, want)
		}
	}
}

func TestReplayThenLiveNoGapsNoDuplicates(t *testing.T) {
	h := NewHub(0, Options{WatcherBuffer: 100000})
	publish(h, 1, 50, "/svc")
	w, _, err := h.Watch("/svc", true, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	done := make(chan struct{})
	go func() { defer close(done); publish(h, 51, 500, "/svc") }()
	evs, err := collect(t, w, 491)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	checkSequence(t, evs, 10, 500)
	for _, e := range evs {
		if e.Node.Path == "/other" {
			t.Fatalf("got event on /other, want only /svc subtree")
		}
	}
}

func TestExactAndSubtreeMatching(t *testing.T) {
	h := NewHub(0, Options{})
	exact, _, _ := h.Watch("/a", false, 0)
	defer exact.Close()
	sub, _, _ := h.Watch("/a", true, 0)
	defer sub.Close()
	root, _, _ := h.Watch("/", true, 0)
	defer root.Close()
	for i, p := range []string{"/a", "/a/b", "/ab", "/a/b/c", "/b"} {
		h.Publish(int64(i+1), []*coordv1.Event{ev(int64(i+1), p)})
	}
	for _, tt := range []struct {
		w    *Watcher
		want string
	}{{exact, "[/a]"}, {sub, "[/a /a/b /a/b/c]"}, {root, "[/a /a/b /ab /a/b/c /b]"}} {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		var got []string
		for {
			evs, err := tt.w.Next(ctx)
			if err != nil {
				break
			}
			for _, e := range evs {
				got = append(got, e.Node.Path)
			}
			if fmt.Sprint(got) == tt.want {
				break
			}
		}
		cancel()
		if fmt.Sprint(got) != tt.want {
			t.Errorf("watch %s recursive=%v: got %v, want %s", tt.w.path, tt.w.recursive, got, tt.want)
		}
	}
}

func TestCompactedStartRevision(t *testing.T) {
	h := NewHub(0, Options{HistoryEvents: 20})
	publish(h, 1, 30, "/x") // 60 events: the window keeps the last 10 revisions
	_, _, err := h.Watch("/x", true, 5)
	var ce *CompactedError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCompacted) {
		t.Fatalf("got %v, want a CompactedError", err)
	}
	if ce.CompactRevision != 20 || ce.CurrentRevision != 30 {
		t.Errorf("got compact %d current %d, want 20 30", ce.CompactRevision, ce.CurrentRevision)
	}
	w, _, err := h.Watch("/x", true, ce.CompactRevision+1)
	if err != nil {
		t.Fatalf("watch from compact+1: %v", err)
	}
	defer w.Close()
	evs, err := collect(t, w, 10)
	if err != nil {
		t.Fatal(err)
	}
	checkSequence(t, evs, 21, 30)
	// Compact moves the window: a later start before it fails too.
	h.Compact(25)
	if _, _, err := h.Watch("/x", true, 24); !errors.Is(err, ErrCompacted) {
		t.Errorf("watch from 24 after Compact(25): got %v, want ErrCompacted", err)
	}
	if w2, _, err := h.Watch("/x", true, 26); err != nil {
		t.Errorf("watch from 26 after Compact(25): %v", err)
	} else {
		w2.Close()
	}
}

func TestSlowWatcherCancelledWithoutBlocking(t *testing.T) {
	h := NewHub(0, Options{WatcherBuffer: 8})
	slow, _, _ := h.Watch("/s", true, 0)
	defer slow.Close()
	fast, _, _ := h.Watch("/s", true, 0)
	defer fast.Close()
	got := make(chan []*coordv1.Event)
	go func() {
		evs, err := collect(t, fast, 100)
		if err != nil {
			t.Errorf("fast watcher: %v", err)
		}
		got <- evs
	}()
	start := time.Now()
	for r := int64(1); r <= 100; r++ {
		h.Publish(r, []*coordv1.Event{ev(r, "/s/k")})
		if r%4 == 0 {
			time.Sleep(time.Millisecond) // let the fast reader keep up
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("publishing 100 revisions took %v with a stalled watcher, want no blocking", d)
	}
	checkSequence(t, <-got, 1, 100)
	// The slow watcher gets what was queued before the overflow, then a resumable error.
	evs, err := collect(t, slow, 1000)
	var oe *OverflowError
	if !errors.As(err, &oe) {
		t.Fatalf("slow watcher: got %v, want an OverflowError", err)
	}
	checkSequence(t, evs, 1, oe.Resume-1)
	// Resuming from the error's revision continues without gap or duplicate.
	w, _, err := h.Watch("/s", true, oe.Resume)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rest, err := collect(t, w, int(100-oe.Resume+1))
	if err != nil {
		t.Fatal(err)
	}
	checkSequence(t, append(evs, rest...), 1, 100)
	if s := h.Stats(); s.Overflows != 1 {
		t.Errorf("overflows: got %d, want 1", s.Overflows)
	}
}

func TestResetEndsWatchers(t *testing.T) {
	h := NewHub(0, Options{})
	w, _, _ := h.Watch("/a", true, 0)
	defer w.Close()
	h.Reset(100)
	if _, err := w.Next(t.Context()); !errors.Is(err, ErrCompacted) {
		t.Errorf("got %v, want ErrCompacted after Reset", err)
	}
}

func TestProgressAndClose(t *testing.T) {
	h := NewHub(0, Options{})
	w, _, _ := h.Watch("/quiet", false, 0)
	publish(h, 1, 5, "/busy")
	if rev, ok := w.Progress(); !ok || rev != 5 {
		t.Errorf("progress: got %d %v, want 5 true", rev, ok)
	}
	errc := make(chan error)
	go func() { _, err := w.Next(t.Context()); errc <- err }()
	w.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close: got %v, want ErrClosed", err)
	}
	if s := h.Stats(); s.Watchers != 0 {
		t.Errorf("watchers after close: got %d, want 0", s.Watchers)
	}
}
