// Package watch is berth-coord's watch hub: it keeps a bounded window of recent events and
// serves watchers that start from a revision. A watcher first replays from the window, then
// follows live events; it sees every matching event exactly once, in revision order, with
// the events of one revision together (a Batch). Publishing never blocks: a watcher whose
// client reads too slowly is cancelled with an error that says where to resume. A whole
// revision is always admitted to a watcher that has nothing pending, however many events it
// has, so that resuming after an overflow always makes progress.
//
// Watchers of the same path (or the same subtree) share the Batch of each live revision,
// so that the server can encode a response once for all of them (Batch.Memo).
package watch

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// ErrCompacted is returned when the start revision is older than the event window.
var ErrCompacted = errors.New("coord: watch start revision compacted")

// ErrOverflow is returned when a watcher fell behind and was cancelled.
var ErrOverflow = errors.New("coord: watcher fell behind")

// ErrClosed is returned by Next after Close.
var ErrClosed = errors.New("coord: watcher closed")

// ErrIdle is returned by Next when its idle channel fires before any event.
var ErrIdle = errors.New("coord: watcher idle")

// Batch is the events of one revision that match a watcher, in the order they were
// applied. Live batches are shared by every watcher of the same path or subtree; a Batch
// and its events are never modified once published.
type Batch struct {
	// Rev is the revision.
	Rev int64
	// Events are the matching events of the revision.
	Events []*coordv1.Event

	// mu guards memo.
	mu   sync.Mutex
	memo []memoEntry
}

type memoEntry struct {
	key, val any
}

// Memo returns the value remembered for key, computing it with compute the first time
// (under the batch's lock: concurrent callers wait for it). Keys are compared with ==. The
// server keeps the encoded response of a batch here.
func (b *Batch) Memo(key any, compute func() any) any {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.memo {
		if m.key == key {
			return m.val
		}
	}
	v := compute()
	b.memo = append(b.memo, memoEntry{key, v})
	return v
}

// CompactedError reports a start revision that is no longer in the window.
type CompactedError struct {
	// Start is the revision asked for.
	Start int64
	// CompactRevision is the highest revision whose events may be missing.
	CompactRevision int64
	// CurrentRevision is the hub's revision.
	CurrentRevision int64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("watch from revision %d: compacted up to revision %d (current %d): re-list and watch from the list revision + 1",
		e.Start, e.CompactRevision, e.CurrentRevision)
}

// Unwrap returns ErrCompacted.
func (e *CompactedError) Unwrap() error { return ErrCompacted }

// OverflowError reports a cancelled slow watcher.
type OverflowError struct {
	// Resume is the revision to watch again from; every earlier event was delivered.
	Resume int64
	// Limit is the buffer that overflowed, in events.
	Limit int
}

func (e *OverflowError) Error() string {
	return fmt.Sprintf("watcher fell behind by more than %d events and was cancelled: resume from revision %d", e.Limit, e.Resume)
}

// Unwrap returns ErrOverflow.
func (e *OverflowError) Unwrap() error { return ErrOverflow }

// Options bound the hub.
type Options struct {
	// HistoryEvents is the most events the window keeps (default 100000).
	HistoryEvents int
	// HistoryBytes is the most bytes (paths and values) the window keeps (default 128 MiB).
	HistoryBytes int
	// WatcherBuffer is the most events a watcher may have pending before it is cancelled
	// (default 4096); a revision is always admitted when nothing is pending.
	WatcherBuffer int
}

type revEvents struct {
	rev    int64
	events []*coordv1.Event
	size   int
}

// Stats counts what the hub did.
type Stats struct {
	Watchers     int
	Revision     int64
	CompactRev   int64
	HistoryRevs  int
	Published    uint64
	Overflows    uint64
	CompactedErr uint64
}

// Hub holds the window and the watchers. It is safe for concurrent use.
type Hub struct {
	opts Options

	// mu guards everything below and the index of synced watchers. Lock order: Hub.mu, then
	// Watcher.mu.
	mu         sync.Mutex
	rev        int64
	compactRev int64
	// hist[histOff:] is the window, oldest first; the dropped front is reused (see
	// dropLocked) so that a full window costs no allocation per revision.
	hist       []revEvents
	histOff    int
	histEvents int
	histBytes  int
	exact      map[string]map[*Watcher]struct{}
	subtree    map[string]map[*Watcher]struct{}
	// exactB and subtreeB are Publish's scratch: the batch of each watched path and root.
	exactB    map[string]*Batch
	subtreeB  map[string]*Batch
	watchers  int
	published uint64
	overflows uint64
	compacted uint64
}

// NewHub returns a hub at revision rev (events up to rev are not available).
func NewHub(rev int64, opts Options) *Hub {
	if opts.HistoryEvents <= 0 {
		opts.HistoryEvents = 100000
	}
	if opts.HistoryBytes <= 0 {
		opts.HistoryBytes = 128 << 20
	}
	if opts.WatcherBuffer <= 0 {
		opts.WatcherBuffer = 4096
	}
	return &Hub{
		opts: opts, rev: rev, compactRev: rev,
		exact: map[string]map[*Watcher]struct{}{}, subtree: map[string]map[*Watcher]struct{}{},
		exactB: map[string]*Batch{}, subtreeB: map[string]*Batch{},
	}
}

func eventSize(e *coordv1.Event) int {
	n := 96 + len(e.GetNode().GetPath()) + len(e.GetNode().GetValue())
	if e.PrevNode != nil {
		n += len(e.PrevNode.Value)
	}
	return n
}

// Publish appends the events of revision rev (which must follow the last one) to the
// window and hands them to the matching watchers. It never blocks on a watcher.
func (h *Hub) Publish(rev int64, events []*coordv1.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev <= h.rev {
		return
	}
	if rev != h.rev+1 {
		// A gap (the machine skipped revisions, which it never does): nothing before rev is
		// known any more.
		h.resetLocked(rev - 1)
	}
	size := 0
	for _, e := range events {
		size += eventSize(e)
	}
	h.hist = append(h.hist, revEvents{rev: rev, events: events, size: size})
	h.histEvents += len(events)
	h.histBytes += size
	h.rev = rev
	h.published += uint64(len(events))
	h.trimLocked()

	clear(h.exactB)
	clear(h.subtreeB)
	add := func(m map[string]*Batch, key string, e *coordv1.Event) {
		b := m[key]
		if b == nil {
			b = &Batch{Rev: rev}
			m[key] = b
		}
		b.Events = append(b.Events, e)
	}
	for _, e := range events {
		p := e.Node.Path
		if len(h.exact[p]) > 0 {
			add(h.exactB, p, e)
		}
		if len(h.subtree) == 0 {
			continue
		}
		for a := p; ; a = parent(a) {
			if len(h.subtree[a]) > 0 {
				add(h.subtreeB, a, e)
			}
			if a == "/" {
				break
			}
		}
	}
	for p, b := range h.exactB {
		for w := range h.exact[p] {
			h.deliverLocked(w, b)
		}
	}
	for a, b := range h.subtreeB {
		for w := range h.subtree[a] {
			h.deliverLocked(w, b)
		}
	}
}

// deliverLocked queues a live batch for w, or cancels w when it would fall more than the
// buffer behind. A batch always fits when nothing is pending.
func (h *Hub) deliverLocked(w *Watcher, b *Batch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case b.Rev < w.start:
	case w.queued > 0 && w.queued+len(b.Events) > h.opts.WatcherBuffer:
		w.err = &OverflowError{Resume: b.Rev, Limit: h.opts.WatcherBuffer}
		h.overflows++
		h.unindexLocked(w)
		w.signal()
	default:
		w.queue = append(w.queue, b)
		w.queued += len(b.Events)
		w.signal()
	}
}

func (h *Hub) trimLocked() {
	i := 0
	win := h.hist[h.histOff:]
	for i < len(win)-1 && (h.histEvents > h.opts.HistoryEvents || h.histBytes > h.opts.HistoryBytes) {
		h.histEvents -= len(win[i].events)
		h.histBytes -= win[i].size
		h.compactRev = win[i].rev
		i++
	}
	h.dropLocked(i)
}

// dropLocked drops the n oldest revisions of the window. Once the dropped front is as
// long as the window, the window moves back to the start of the slice, so appends reuse
// its capacity instead of reallocating it.
func (h *Hub) dropLocked(n int) {
	clear(h.hist[h.histOff : h.histOff+n])
	h.histOff += n
	if h.histOff > 64 && h.histOff >= len(h.hist)-h.histOff {
		k := copy(h.hist, h.hist[h.histOff:])
		clear(h.hist[k:])
		h.hist, h.histOff = h.hist[:k], 0
	}
}

// Compact drops every event up to and including rev from the window.
func (h *Hub) Compact(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := 0
	win := h.hist[h.histOff:]
	for i < len(win) && win[i].rev <= rev {
		h.histEvents -= len(win[i].events)
		h.histBytes -= win[i].size
		i++
	}
	h.dropLocked(i)
	if rev > h.compactRev {
		h.compactRev = min(rev, h.rev)
	}
}

// Reset says the state jumped to revision rev (a snapshot was installed): the window is
// emptied and every watcher ends with a CompactedError.
func (h *Hub) Reset(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resetLocked(rev)
}

func (h *Hub) resetLocked(rev int64) {
	for _, set := range []map[string]map[*Watcher]struct{}{h.exact, h.subtree} {
		for _, ws := range set {
			for w := range ws {
				w.mu.Lock()
				w.err = &CompactedError{Start: w.next, CompactRevision: rev, CurrentRevision: rev}
				w.synced = false
				w.signal()
				w.mu.Unlock()
			}
		}
	}
	clear(h.exact)
	clear(h.subtree)
	h.hist, h.histOff = nil, 0
	h.histEvents, h.histBytes = 0, 0
	h.rev, h.compactRev = rev, rev
}

// Revision returns the last published revision.
func (h *Hub) Revision() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rev
}

// Stats reports the hub's counters.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Stats{
		Watchers: h.watchers, Revision: h.rev, CompactRev: h.compactRev, HistoryRevs: len(h.hist) - h.histOff,
		Published: h.published, Overflows: h.overflows, CompactedErr: h.compacted,
	}
}

func parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// Watcher is one watch. Next delivers its events; Close ends it.
type Watcher struct {
	hub       *Hub
	path      string
	recursive bool
	start     int64
	notify    chan struct{}

	// mu guards the fields below.
	mu     sync.Mutex
	next   int64 // while unsynced: the next revision to replay from the window
	synced bool  // in the hub's index, receiving live events
	queue  []*Batch
	queued int // events in queue
	err    error
	closed bool
}

// Watch starts a watcher of path (and its subtree when recursive) from revision start;
// start 0 means the next revision. It fails with a *CompactedError when start is at or
// before the window's compact revision. The caller must Close the watcher.
func (h *Hub) Watch(path string, recursive bool, start int64) (*Watcher, int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if start <= 0 {
		start = h.rev + 1
	}
	if start <= h.compactRev {
		h.compacted++
		return nil, h.rev, &CompactedError{Start: start, CompactRevision: h.compactRev, CurrentRevision: h.rev}
	}
	w := &Watcher{hub: h, path: path, recursive: recursive, start: start, next: start, notify: make(chan struct{}, 1)}
	h.watchers++
	if start > h.rev {
		h.indexLocked(w)
	}
	return w, h.rev, nil
}

func (h *Hub) indexLocked(w *Watcher) {
	idx := h.exact
	if w.recursive {
		idx = h.subtree
	}
	set := idx[w.path]
	if set == nil {
		set = map[*Watcher]struct{}{}
		idx[w.path] = set
	}
	set[w] = struct{}{}
	w.synced = true
}

func (h *Hub) unindexLocked(w *Watcher) {
	if !w.synced {
		return
	}
	idx := h.exact
	if w.recursive {
		idx = h.subtree
	}
	if set := idx[w.path]; set != nil {
		delete(set, w)
		if len(set) == 0 {
			delete(idx, w.path)
		}
	}
	w.synced = false
}

func (w *Watcher) signal() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *Watcher) matches(p string) bool {
	if !w.recursive {
		return p == w.path
	}
	return w.path == "/" || p == w.path || strings.HasPrefix(p, w.path+"/")
}

// catchUp replays from the window while the watcher is not synced; it returns the batches
// found (whole revisions, about the buffer's worth at most, and at least one revision
// however large) and registers the watcher for live events once it has reached the head.
func (w *Watcher) catchUp() ([]*Batch, error) {
	h := w.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || w.synced || w.closed {
		return nil, nil
	}
	if w.next <= h.compactRev {
		w.err = &CompactedError{Start: w.next, CompactRevision: h.compactRev, CurrentRevision: h.rev}
		return nil, nil
	}
	win := h.hist[h.histOff:]
	i := sort.Search(len(win), func(i int) bool { return win[i].rev >= w.next })
	var out []*Batch
	n := 0
	for ; i < len(win); i++ {
		re := win[i]
		var b *Batch
		for _, e := range re.events {
			if w.matches(e.Node.Path) {
				if b == nil {
					b = &Batch{Rev: re.rev}
				}
				b.Events = append(b.Events, e)
			}
		}
		w.next = re.rev + 1
		if b != nil {
			out = append(out, b)
			n += len(b.Events)
			if n >= h.opts.WatcherBuffer {
				break
			}
		}
	}
	if w.next > h.rev {
		h.indexLocked(w)
	}
	return out, nil
}

// Next blocks until events are available and returns them: the batches of one or more
// whole revisions, oldest first. It returns the watcher's terminal error (a
// *CompactedError, an *OverflowError after the events before it, or ErrClosed), ctx's
// error, or ErrIdle when idle (which may be nil) fires first.
func (w *Watcher) Next(ctx context.Context, idle <-chan time.Time) ([]*Batch, error) {
	for {
		w.mu.Lock()
		if len(w.queue) > 0 {
			bs := w.queue
			w.queue, w.queued = nil, 0
			w.mu.Unlock()
			return bs, nil
		}
		if w.closed {
			w.mu.Unlock()
			return nil, ErrClosed
		}
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			return nil, err
		}
		synced := w.synced
		w.mu.Unlock()
		if !synced {
			bs, err := w.catchUp()
			if err != nil {
				return nil, err
			}
			if len(bs) > 0 {
				return bs, nil
			}
			continue
		}
		select {
		case <-w.notify:
		case <-idle:
			return nil, ErrIdle
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Progress returns the revision up to which every matching event has been returned by
// Next, when that is known (the watcher is live and has nothing pending).
func (w *Watcher) Progress() (int64, bool) {
	h := w.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.synced || len(w.queue) > 0 || w.err != nil {
		return 0, false
	}
	return max(h.rev, w.start-1), true
}

// Close ends the watcher; a blocked Next returns ErrClosed. Close is idempotent.
func (w *Watcher) Close() {
	h := w.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	h.unindexLocked(w)
	h.watchers--
	w.queue, w.queued = nil, 0
	w.signal()
}
