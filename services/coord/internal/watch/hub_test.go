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
		bs, err := w.Next(ctx, nil)
		if err != nil {
			return out, err
		}
		out = append(out, flatten(t, bs)...)
	}
	return out, nil
}

// flatten returns the events of batches, checking that each batch is one revision.
func flatten(t *testing.T, bs []*Batch) []*coordv1.Event {
	t.Helper()
	var out []*coordv1.Event
	for _, b := range bs {
		for _, e := range b.Events {
			if e.Revision != b.Rev {
				t.Fatalf("batch of revision %d holds an event of revision %d", b.Rev, e.Revision)
			}
		}
		out = append(out, b.Events...)
	}
	return out
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
			bs, err := tt.w.Next(ctx, nil)
			if err != nil {
				break
			}
			for _, e := range flatten(t, bs) {
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
	if _, err := w.Next(t.Context(), nil); !errors.Is(err, ErrCompacted) {
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
	idle := make(chan time.Time, 1)
	idle <- time.Now()
	if _, err := w.Next(t.Context(), idle); !errors.Is(err, ErrIdle) {
		t.Errorf("Next with nothing to deliver and idle fired: got %v, want ErrIdle", err)
	}
	go func() { _, err := w.Next(t.Context(), nil); errc <- err }()
	w.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close: got %v, want ErrClosed", err)
	}
	if s := h.Stats(); s.Watchers != 0 {
		t.Errorf("watchers after close: got %d, want 0", s.Watchers)
	}
}

// bigRevision is one revision with n events under /big (a session expiry deleting n
// ephemerals).
func bigRevision(rev int64, n int) []*coordv1.Event {
	evs := make([]*coordv1.Event, n)
	for i := range evs {
		evs[i] = ev(rev, fmt.Sprintf("/big/e%d", i))
	}
	return evs
}

func TestRevisionLargerThanBufferIsDelivered(t *testing.T) {
	const buffer, big = 10, 500
	h := NewHub(0, Options{WatcherBuffer: buffer})
	live, _, _ := h.Watch("/big", true, 0)
	defer live.Close()
	behind, _, _ := h.Watch("/big", true, 0)
	defer behind.Close()
	h.Publish(1, []*coordv1.Event{ev(1, "/big/first")})
	// live reads revision 1; behind does not, and has a revision pending.
	if evs, err := collect(t, live, 1); err != nil || len(evs) != 1 {
		t.Fatalf("live watcher, revision 1: got %v %v", evs, err)
	}
	h.Publish(2, bigRevision(2, big))
	// A watcher with nothing pending takes the whole revision, then the next one.
	evs, err := collect(t, live, big)
	if err != nil {
		t.Fatalf("live watcher: %v", err)
	}
	h.Publish(3, []*coordv1.Event{ev(3, "/big/last")})
	last, err := collect(t, live, 1)
	if err != nil {
		t.Fatalf("live watcher: %v", err)
	}
	checkRevisions(t, append(evs, last...), map[int64]int{2: big, 3: 1})

	// A watcher with a revision pending overflows at the big one; resuming from there
	// delivers it whole from the window (before the fix, it overflowed again forever).
	first, err := collect(t, behind, 1000)
	var oe *OverflowError
	if !errors.As(err, &oe) || oe.Resume != 2 || len(first) != 1 {
		t.Fatalf("behind watcher: got %d events, %v; want 1 event, then an overflow resuming at 2", len(first), err)
	}
	resumed, _, err := h.Watch("/big", true, oe.Resume)
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	rest, err := collect(t, resumed, big+1)
	if err != nil {
		t.Fatalf("resumed watcher: %v", err)
	}
	checkRevisions(t, rest, map[int64]int{2: big, 3: 1})

	// Resuming on a member that has not applied the big revision yet (the watcher waits
	// for it live, with nothing pending) works too.
	h2 := NewHub(1, Options{WatcherBuffer: buffer})
	early, _, err := h2.Watch("/big", true, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	h2.Publish(2, bigRevision(2, big))
	if evs, err := collect(t, early, big); err != nil || len(evs) != big {
		t.Fatalf("live resume of the big revision: got %d events, %v; want %d", len(evs), err, big)
	}
}

// checkRevisions checks that evs hold exactly want[rev] events of each revision.
func checkRevisions(t *testing.T, evs []*coordv1.Event, want map[int64]int) {
	t.Helper()
	got := map[int64]int{}
	for _, e := range evs {
		got[e.Revision]++
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events per revision: got %v, want %v", got, want)
	}
}

func TestWatchersOfOnePathShareBatches(t *testing.T) {
	h := NewHub(0, Options{})
	var ws []*Watcher
	for _, rec := range []bool{false, false, true, true} {
		w, _, _ := h.Watch("/k", rec, 0)
		defer w.Close()
		ws = append(ws, w)
	}
	h.Publish(1, []*coordv1.Event{ev(1, "/k"), ev(1, "/k/child")})
	var got [][]*Batch
	for _, w := range ws {
		bs, err := w.Next(t.Context(), nil)
		if err != nil || len(bs) != 1 {
			t.Fatalf("got %v %v, want one batch", bs, err)
		}
		got = append(got, bs)
	}
	if got[0][0] != got[1][0] || got[2][0] != got[3][0] {
		t.Error("watchers of the same path got different batches, want one shared batch")
	}
	if len(got[0][0].Events) != 1 || len(got[2][0].Events) != 2 {
		t.Errorf("batch sizes: got exact %d, subtree %d; want 1 and 2", len(got[0][0].Events), len(got[2][0].Events))
	}
	calls := 0
	for range 3 {
		if v := got[0][0].Memo("k", func() any { calls++; return calls }); v != 1 {
			t.Errorf("memo: got %v, want 1", v)
		}
	}
}
