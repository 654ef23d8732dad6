package coordclient

import "fmt"

// GetOption configures Get and OpGet.
type GetOption interface{ applyGet(*getOptions) }

// ListOption configures List.
type ListOption interface{ applyList(*listOptions) }

// PutOption configures Put and OpPut.
type PutOption interface{ applyPut(*putOptions) }

// DeleteOption configures Delete and OpDelete.
type DeleteOption interface{ applyDelete(*deleteOptions) }

// WatchOption configures Watch.
type WatchOption interface{ applyWatch(*watchOptions) }

type getOptions struct {
	serializable, keysOnly bool
}

type listOptions struct {
	recursive, serializable, keysOnly bool
	limit                             int64
	err                               error
}

type putOptions struct {
	expectVersion *int64
	session       int64
	sequential    bool
	requestID     string
	err           error
}

type deleteOptions struct {
	expectVersion *int64
	recursive     bool
	requestID     string
	err           error
}

type watchOptions struct {
	recursive, prevNode, relist bool
}

// ReadOption is an option of reads: Get and List (and OpGet, for KeysOnly).
type ReadOption struct {
	serializable, keysOnly bool
}

// Serializable answers a read from the serving member's own state, possibly stale, without
// a ReadIndex barrier through the leader; such reads go to any member.
func Serializable() ReadOption { return ReadOption{serializable: true} }

// KeysOnly leaves the values out of a read.
func KeysOnly() ReadOption { return ReadOption{keysOnly: true} }

func (o ReadOption) applyGet(g *getOptions) {
	g.serializable = g.serializable || o.serializable
	g.keysOnly = g.keysOnly || o.keysOnly
}

func (o ReadOption) applyList(l *listOptions) {
	l.serializable = l.serializable || o.serializable
	l.keysOnly = l.keysOnly || o.keysOnly
}

// RecursiveOption is the Recursive option.
type RecursiveOption struct{}

// Recursive makes List return the whole subtree (the node itself and every descendant)
// instead of the direct children, Delete remove the subtree, and Watch follow the subtree.
func Recursive() RecursiveOption { return RecursiveOption{} }

func (RecursiveOption) applyList(l *listOptions)     { l.recursive = true }
func (RecursiveOption) applyDelete(d *deleteOptions) { d.recursive = true }
func (RecursiveOption) applyWatch(w *watchOptions)   { w.recursive = true }

// LimitOption is the Limit option.
type LimitOption struct{ n int64 }

// Limit caps the number of nodes a List returns (ListResult.More tells whether some were
// left out); 0 means no limit.
func Limit(n int64) LimitOption { return LimitOption{n: n} }

func (o LimitOption) applyList(l *listOptions) {
	if o.n < 0 {
		l.err = fmt.Errorf("%w: Limit(%d) is negative", ErrInvalidArgument, o.n)
		return
	}
	l.limit = o.n
}

// ConditionOption is the ExpectVersion option.
type ConditionOption struct{ version int64 }

// ExpectVersion makes a Put or Delete a compare-and-swap: 0 means the node must not exist
// (create only, Put only); v > 0 means it must exist with version v. A mismatch fails with
// ErrConflict and changes nothing. Inside a Txn use a Version compare instead.
func ExpectVersion(v int64) ConditionOption { return ConditionOption{version: v} }

func (o ConditionOption) check() error {
	if o.version < 0 {
		return fmt.Errorf("%w: ExpectVersion(%d) is negative", ErrInvalidArgument, o.version)
	}
	return nil
}

func (o ConditionOption) applyPut(p *putOptions) {
	if err := o.check(); err != nil {
		p.err = err
		return
	}
	v := o.version
	p.expectVersion = &v
}

func (o ConditionOption) applyDelete(d *deleteOptions) {
	if err := o.check(); err != nil {
		d.err = err
		return
	}
	v := o.version
	d.expectVersion = &v
}

// RequestIDOption is the RequestID option.
type RequestIDOption struct{ id string }

// RequestID sets the request id of a write instead of a random one. The store applies a
// request id once and answers every later write with the same id from its dedupe table
// (for a while: the table is bounded), so a caller that derives the id from its own
// durable state (a deployment step's id, say) gets exactly-once writes across its own
// restarts. Reusing an id for a different request fails with ErrRequestIDReused.
func RequestID(id string) RequestIDOption { return RequestIDOption{id: id} }

func (o RequestIDOption) check() error {
	if o.id == "" || len(o.id) > 256 {
		return fmt.Errorf("%w: RequestID %q: want 1 to 256 bytes", ErrInvalidArgument, o.id)
	}
	return nil
}

func (o RequestIDOption) applyPut(p *putOptions) {
	if err := o.check(); err != nil {
		p.err = err
		return
	}
	p.requestID = o.id
}

func (o RequestIDOption) applyDelete(d *deleteOptions) {
	if err := o.check(); err != nil {
		d.err = err
		return
	}
	d.requestID = o.id
}

// EphemeralOption is the Ephemeral option.
type EphemeralOption struct{ session int64 }

// Ephemeral makes the node owned by the session with this id (Session.ID): it is deleted
// when the session ends. The session must be open (ErrSessionExpired otherwise).
func Ephemeral(sessionID int64) EphemeralOption { return EphemeralOption{session: sessionID} }

func (o EphemeralOption) applyPut(p *putOptions) {
	if o.session <= 0 {
		p.err = fmt.Errorf("%w: Ephemeral(%d): want a session id > 0", ErrInvalidArgument, o.session)
		return
	}
	p.session = o.session
}

// SequentialOption is the Sequential option.
type SequentialOption struct{}

// Sequential appends a zero-padded 10-digit number from a store-wide counter to the path
// ("/q/job-" becomes "/q/job-0000000042"; a path ending in "/" gets a child named by the
// number). PutResult.Path is the created path.
func Sequential() SequentialOption { return SequentialOption{} }

func (SequentialOption) applyPut(p *putOptions) { p.sequential = true }

// PrevNodeOption is the PrevNode option.
type PrevNodeOption struct{}

// PrevNode asks a watch for each event's previous node (Event.PrevNode).
func PrevNode() PrevNodeOption { return PrevNodeOption{} }

func (PrevNodeOption) applyWatch(w *watchOptions) { w.prevNode = true }

// RelistOption is the RelistOnCompaction option.
type RelistOption struct{}

// RelistOnCompaction makes a watch whose start revision was compacted re-read the watched
// node or subtree, send it as one WatchResponse with Reset set, and go on watching from
// the read's revision, instead of ending with ErrCompacted.
func RelistOnCompaction() RelistOption { return RelistOption{} }

func (RelistOption) applyWatch(w *watchOptions) { w.relist = true }
