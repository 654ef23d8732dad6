package coordclient

import (
	"context"
	"errors"
	"fmt"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// EventType is the kind of change an Event reports.
type EventType int

const (
	// EventPut is a create or an update; a create when Node.CreateRev equals Node.ModRev.
	EventPut EventType = 1
	// EventDelete is a delete (explicit, recursive, or by the end of the owning session).
	EventDelete EventType = 2
)

// String returns "PUT" or "DELETE".
func (t EventType) String() string {
	switch t {
	case EventPut:
		return "PUT"
	case EventDelete:
		return "DELETE"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change to one node.
type Event struct {
	// Type is the kind of change.
	Type EventType
	// Node is the node after the change; for a delete, its path with ModRev the revision of
	// the delete.
	Node Node
	// PrevNode is the node before the change, when the watch asked for it (PrevNode) and
	// there was one.
	PrevNode *Node
	// Revision is the revision of the change.
	Revision int64
}

// WatchResponse is one batch a watch delivers: the events of one or more whole revisions,
// or a reset, or the error that ended the watch.
type WatchResponse struct {
	// Events are the changes, oldest first; the events of one revision are always in the
	// same response.
	Events []Event
	// Reset is true for the batch a RelistOnCompaction watch sends after its start revision
	// was compacted: Nodes is then the whole current state of the watched node or subtree
	// (replace what you had), as of Revision. Events continue from Revision+1.
	Reset bool
	// Nodes is the current state on a reset.
	Nodes []Node
	// Revision is the revision of the last event, or of the reset's read.
	Revision int64
	// Err is the error that ended the watch; it is the last response before the channel
	// closes. It is nil when the watch ended because its context ended.
	Err error
}

// Watch follows the changes to the node at path (or with Recursive its whole subtree; "/"
// with Recursive is everything) from revision fromRev (0: from the next write), and
// delivers them on the returned channel in revision order. The watch reconnects by itself
// after a member fails or is left, resuming after the last revision delivered (or reported
// done by a progress notification), so the stream has no gaps and no duplicates.
//
// The channel is closed when ctx ends or the client is closed (after no further
// response), or after a response with Err: ErrCompacted (a *CompactedError) when fromRev
// (or the resume point) was compacted and RelistOnCompaction was not given, or an error
// that retrying cannot fix (an invalid path). The caller must drain the channel until it
// closes or cancel ctx; the watch's goroutine is owned by the client and exits then.
func (c *Client) Watch(ctx context.Context, path string, fromRev int64, opts ...WatchOption) <-chan WatchResponse {
	ch := make(chan WatchResponse, 1)
	var o watchOptions
	for _, opt := range opts {
		opt.applyWatch(&o)
	}
	fail := func(err error) <-chan WatchResponse {
		ch <- WatchResponse{Err: fmt.Errorf("watch %s: %w", path, err)}
		close(ch)
		return ch
	}
	if err := ValidatePath(path, o.recursive); err != nil {
		return fail(err)
	}
	if fromRev < 0 {
		return fail(fmt.Errorf("%w: start revision %d is negative", ErrInvalidArgument, fromRev))
	}
	w := &watcher{c: c, path: path, opts: o, next: fromRev, out: ch}
	if !c.goroutine(ctx, w.run) {
		return fail(ErrClosed)
	}
	return ch
}

// watcher is the state of one Watch, owned by its goroutine.
type watcher struct {
	c    *Client
	path string
	opts watchOptions
	// next is the first revision not yet delivered; 0 until the first stream is created
	// when the watch started from "now".
	next int64
	out  chan WatchResponse
}

func (w *watcher) run(ctx context.Context) {
	defer close(w.out)
	failures := 0
	for ctx.Err() == nil {
		addr := w.c.pick(false)
		progressed, err := w.stream(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			failures = 0
		}
		var resume *resumeError
		var compacted *CompactedError
		switch {
		case errors.As(err, &resume):
			// The member cancelled a watcher that fell behind; resuming loses nothing.
			if resume.rev > w.next {
				w.next = resume.rev
			}
			continue
		case errors.As(err, &compacted):
			if !w.opts.relist {
				w.send(ctx, WatchResponse{Err: fmt.Errorf("watch %s from revision %d: %w", w.path, w.next, err)})
				return
			}
			if err := w.relist(ctx); err != nil {
				if ctx.Err() == nil {
					w.send(ctx, WatchResponse{Err: fmt.Errorf("watch %s: re-list after compaction: %w", w.path, err)})
				}
				return
			}
			continue
		case err == nil || retryable(ctx, err):
			// A stream that ended cleanly (the member went away) or a retryable failure:
			// reconnect, to another member if this one failed.
		default:
			w.send(ctx, WatchResponse{Err: fmt.Errorf("watch %s: %w", w.path, err)})
			return
		}
		hint := w.c.failed(addr, err)
		w.c.log.Debug("coordclient: watch stream ended, resuming", "path", w.path, "endpoint", addr, "next", w.next, "err", err)
		if !hint {
			if !sleep(ctx, retryDelay(failures, len(w.c.endpoints))) {
				return
			}
			failures++
		}
	}
}

// stream runs one Watch stream on addr until it fails, delivering its events. It reports
// whether the stream was created (so the member is healthy) and returns the mapped error.
func (w *watcher) stream(ctx context.Context, addr string) (created bool, err error) {
	api, err := w.c.api(addr)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Fragment: a revision too large for one response (a session expiry deleting
	// thousands of ephemerals) comes in several, joined here before it is delivered.
	st, err := api.Watch(ctx, &coordv1.WatchRequest{
		Path: w.path, Recursive: w.opts.recursive, StartRevision: w.next, PrevNode: w.opts.prevNode, Fragment: true,
	})
	if err != nil {
		return false, mapError(err, nil, nil)
	}
	// pending holds the fragments of a revision received so far; a broken stream drops
	// them, and the next one starts again from that revision (w.next).
	var pending []*coordv1.Event
	for {
		resp, err := st.Recv()
		if err != nil {
			return created, mapError(err, st.Trailer(), nil)
		}
		rev := resp.GetHeader().GetRevision()
		if resp.GetCreated() {
			created = true
			if w.next == 0 {
				// From "now": everything after the revision at creation will be sent.
				w.next = rev + 1
			}
			continue
		}
		if len(resp.GetEvents()) == 0 {
			// A progress notification: every change up to rev has been sent.
			if created && rev >= w.next {
				w.next = rev + 1
			}
			continue
		}
		if resp.GetFragment() {
			pending = append(pending, resp.GetEvents()...)
			continue
		}
		events := resp.GetEvents()
		if len(pending) > 0 {
			events = append(pending, events...)
			pending = nil
		}
		var batch WatchResponse
		for _, ev := range events {
			if ev.GetRevision() < w.next {
				// Already delivered before a reconnect.
				continue
			}
			e := Event{Type: EventType(ev.GetType()), Node: nodeFromProto(ev.GetNode()), Revision: ev.GetRevision()}
			if ev.GetPrevNode() != nil {
				p := nodeFromProto(ev.GetPrevNode())
				e.PrevNode = &p
			}
			batch.Events = append(batch.Events, e)
		}
		if len(batch.Events) == 0 {
			continue
		}
		batch.Revision = batch.Events[len(batch.Events)-1].Revision
		if !w.send(ctx, batch) {
			return created, ctx.Err()
		}
		w.next = batch.Revision + 1
	}
}

// relist reads the watched node or subtree, sends it as a reset, and moves the watch to
// after the read's revision.
func (w *watcher) relist(ctx context.Context) error {
	var reset WatchResponse
	reset.Reset = true
	if w.opts.recursive {
		res, err := w.c.List(ctx, w.path, Recursive())
		if err != nil {
			return err
		}
		for _, n := range res.Nodes {
			if n.Version > 0 {
				reset.Nodes = append(reset.Nodes, n)
			}
		}
		reset.Revision = res.Revision
	} else {
		// A subtree listing with limit 1 starts with the node itself when it exists, and
		// unlike a Get of an absent node it reports the revision it saw.
		res, err := w.c.List(ctx, w.path, Recursive(), Limit(1))
		if err != nil {
			return err
		}
		if len(res.Nodes) > 0 && res.Nodes[0].Path == w.path && res.Nodes[0].Version > 0 {
			reset.Nodes = res.Nodes[:1]
		}
		reset.Revision = res.Revision
	}
	if !w.send(ctx, reset) {
		return ctx.Err()
	}
	w.next = reset.Revision + 1
	return nil
}

// send delivers r unless ctx ends first; it reports whether r was delivered.
func (w *watcher) send(ctx context.Context, r WatchResponse) bool {
	select {
	case w.out <- r:
		return true
	case <-ctx.Done():
		return false
	}
}
