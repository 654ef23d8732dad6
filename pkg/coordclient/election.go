package coordclient

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// LeaderPrefix is the directory of election nodes: role r campaigns under LeaderPrefix+r.
const LeaderPrefix = "/berth/leader/"

// Leadership is a won election (or a held lock): the caller's ephemeral sequential node is
// the oldest under the role's directory. Its create revision is the fencing token: it
// grows with every new leader, so a store or service that remembers the highest token it
// has seen can refuse a deposed leader's late writes, and writes to coord itself are fenced
// with Txn (ErrFenced when the node is gone).
//
// A goroutine watches the node from the moment of winning; Lost is closed when the node
// is deleted (the session expired or was closed, or someone deleted it), when the session
// ends, or after Resign. The goroutine exits then, or when the client is closed.
type Leadership struct {
	c     *Client
	s     *Session
	path  string
	token int64

	lost     chan struct{}
	lostOnce sync.Once
	stop     context.CancelFunc
	exited   chan struct{}
}

// Token returns the fencing token: the create revision of the leadership node.
func (l *Leadership) Token() uint64 { return uint64(l.token) }

// Path returns the leadership node's path.
func (l *Leadership) Path() string { return l.path }

// Lost is closed when the leadership ends; see Leadership.
func (l *Leadership) Lost() <-chan struct{} { return l.lost }

// Resign gives the leadership up: it stops watching and deletes the node, so the next
// candidate wins. Resigning a leadership already lost returns nil.
func (l *Leadership) Resign(ctx context.Context) error {
	l.stop()
	<-l.exited
	l.markLost()
	_, err := l.c.Delete(ctx, l.path)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("resign %s: %w", l.path, err)
	}
	return nil
}

func (l *Leadership) markLost() { l.lostOnce.Do(func() { close(l.lost) }) }

// Txn starts a transaction fenced by the leadership: it commits only while the leadership
// node exists with the leader's create revision, and Commit returns ErrFenced otherwise.
func (l *Leadership) Txn() *Txn { return l.c.Txn().Fence(l.path, l.token) }

// Put is Client.Put fenced by the leadership: ErrFenced when the leader was deposed,
// ErrConflict when ExpectVersion did not match. Ephemeral and Sequential apply;
// RequestID applies to the whole fenced write.
func (l *Leadership) Put(ctx context.Context, path string, value []byte, opts ...PutOption) (*PutResult, error) {
	var o putOptions
	for _, opt := range opts {
		opt.applyPut(&o)
	}
	if o.err != nil {
		return nil, fmt.Errorf("fenced put %s: %w", path, o.err)
	}
	t := l.Txn()
	if o.expectVersion != nil {
		t.If(Version(path).Equal(*o.expectVersion))
	}
	if o.requestID != "" {
		t.RequestID(o.requestID)
	}
	var putOpts []PutOption
	if o.session != 0 {
		putOpts = append(putOpts, Ephemeral(o.session))
	}
	if o.sequential {
		putOpts = append(putOpts, Sequential())
	}
	res, err := t.Then(OpPut(path, value, putOpts...)).Commit(ctx)
	if err != nil {
		return nil, fmt.Errorf("fenced put %s: %w", path, err)
	}
	if !res.Succeeded {
		return nil, fmt.Errorf("fenced put %s: %w: expected version %d", path, ErrConflict, *o.expectVersion)
	}
	n := res.Results[0].Put
	return &PutResult{Path: n.Path, Revision: res.Revision, Version: n.Version, CreateRev: n.CreateRev}, nil
}

// Delete is Client.Delete fenced by the leadership: ErrFenced when the leader was deposed,
// ErrConflict when ExpectVersion did not match, ErrNotFound when nothing was deleted.
func (l *Leadership) Delete(ctx context.Context, path string, opts ...DeleteOption) (*DeleteResult, error) {
	var o deleteOptions
	for _, opt := range opts {
		opt.applyDelete(&o)
	}
	if o.err != nil {
		return nil, fmt.Errorf("fenced delete %s: %w", path, o.err)
	}
	t := l.Txn()
	if o.expectVersion != nil {
		t.If(Version(path).Equal(*o.expectVersion))
	}
	if o.requestID != "" {
		t.RequestID(o.requestID)
	}
	var delOpts []DeleteOption
	if o.recursive {
		delOpts = append(delOpts, Recursive())
	}
	res, err := t.Then(OpDelete(path, delOpts...)).Commit(ctx)
	if err != nil {
		return nil, fmt.Errorf("fenced delete %s: %w", path, err)
	}
	if !res.Succeeded {
		return nil, fmt.Errorf("fenced delete %s: %w: expected version %d", path, ErrConflict, *o.expectVersion)
	}
	if res.Results[0].Deleted == 0 {
		return nil, fmt.Errorf("fenced delete %s: %w", path, ErrNotFound)
	}
	return &DeleteResult{Revision: res.Revision, Deleted: res.Results[0].Deleted}, nil
}

// LeaderInfo is the current leader of a role.
type LeaderInfo struct {
	// Path is the leadership node's path.
	Path string
	// Value is what the leader campaigned with.
	Value []byte
	// Token is the leader's fencing token.
	Token uint64
	// Session is the leader's session id.
	Session int64
}

// rolePath returns the election directory of a role; the role may have several segments
// ("scheduler/dc1").
func rolePath(role string) (string, error) {
	if role == "" || strings.HasPrefix(role, "/") {
		return "", fmt.Errorf("%w: role %q: want a non-empty relative name", ErrInvalidArgument, role)
	}
	dir := LeaderPrefix + role
	if err := ValidatePath(dir, false); err != nil {
		return "", fmt.Errorf("role %q: %w", role, err)
	}
	return dir, nil
}

// Campaign runs for leader of role with the session, publishing value, and returns once
// the caller leads. It creates an ephemeral sequential node under /berth/leader/<role>/ and
// waits while an older node exists, watching only its immediate predecessor (no herd
// effect). If ctx ends or the session ends first, the node is deleted and the error is
// returned.
func (c *Client) Campaign(ctx context.Context, s *Session, role string, value []byte) (*Leadership, error) {
	dir, err := rolePath(role)
	if err != nil {
		return nil, fmt.Errorf("campaign: %w", err)
	}
	l, err := c.acquire(ctx, s, dir, value)
	if err != nil {
		return nil, fmt.Errorf("campaign %s: %w", role, err)
	}
	return l, nil
}

// Leader returns the current leader of role: the oldest node under its directory.
// ErrNotFound when nobody campaigns.
func (c *Client) Leader(ctx context.Context, role string) (*LeaderInfo, error) {
	dir, err := rolePath(role)
	if err != nil {
		return nil, fmt.Errorf("leader: %w", err)
	}
	res, err := c.List(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("leader %s: %w", role, err)
	}
	nodes := contenders(res.Nodes)
	if len(nodes) == 0 {
		return nil, fmt.Errorf("leader %s: %w: nobody campaigns under %s", role, ErrNotFound, dir)
	}
	n := nodes[0]
	return &LeaderInfo{Path: n.Path, Value: n.Value, Token: uint64(n.CreateRev), Session: n.Session}, nil
}

// Lock takes the lock at path (a directory of ephemeral sequential nodes, like an
// election) with the session, waiting while others hold it or queue before the caller. It
// returns the function that releases it. The lock is also released when the session ends;
// a holder that must not act after losing it fences its writes with LockLeadership.
func (c *Client) Lock(ctx context.Context, s *Session, path string) (unlock func(context.Context) error, err error) {
	l, err := c.LockLeadership(ctx, s, path)
	if err != nil {
		return nil, err
	}
	return l.Resign, nil
}

// LockLeadership is Lock returning the held lock as a Leadership, for its fencing token,
// Lost and fenced writes; Resign releases it.
func (c *Client) LockLeadership(ctx context.Context, s *Session, path string) (*Leadership, error) {
	if err := ValidatePath(path, false); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	l, err := c.acquire(ctx, s, path, nil)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return l, nil
}

// contenders returns the real nodes of a directory listing, oldest first.
func contenders(nodes []Node) []Node {
	var out []Node
	for _, n := range nodes {
		if n.Version > 0 {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b Node) int {
		switch {
		case a.CreateRev < b.CreateRev:
			return -1
		case a.CreateRev > b.CreateRev:
			return 1
		}
		return strings.Compare(a.Path, b.Path)
	})
	return out
}

// acquire creates the caller's node under dir and waits until it is the oldest.
func (c *Client) acquire(ctx context.Context, s *Session, dir string, value []byte) (*Leadership, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: nil session", ErrInvalidArgument)
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	put, err := c.Put(ctx, dir+"/", value, Ephemeral(s.ID()), Sequential())
	if err != nil {
		return nil, err
	}
	l := &Leadership{c: c, s: s, path: put.Path, token: put.CreateRev, lost: make(chan struct{}), exited: make(chan struct{})}
	if err := c.waitTurn(ctx, s, dir, l); err != nil {
		// Leave the queue; with the caller's context possibly gone, on a short one of its own.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.RequestTimeout)
		defer cancel()
		if _, derr := c.Delete(dctx, l.path); derr != nil && !errors.Is(derr, ErrNotFound) {
			c.log.Warn("coordclient: leave queue", "path", l.path, "err", derr)
		}
		return nil, err
	}
	wctx, stop := context.WithCancel(s.ctx)
	l.stop = stop
	if !c.goroutine(wctx, l.watch) {
		stop()
		return nil, ErrClosed
	}
	return l, nil
}

// waitTurn waits until l's node is the oldest under dir, watching its predecessor.
func (c *Client) waitTurn(ctx context.Context, s *Session, dir string, l *Leadership) error {
	for {
		res, err := c.List(ctx, dir)
		if err != nil {
			return err
		}
		nodes := contenders(res.Nodes)
		i := slices.IndexFunc(nodes, func(n Node) bool { return n.Path == l.path })
		if i < 0 {
			if err := s.Err(); err != nil {
				return err
			}
			return fmt.Errorf("%w: %s was deleted while waiting", ErrSessionExpired, l.path)
		}
		if i == 0 {
			return nil
		}
		if err := c.waitDeleted(ctx, s, nodes[i-1].Path, res.Revision+1); err != nil {
			return err
		}
	}
}

// waitDeleted waits until the node at path is deleted after fromRev-1 (or gone when a
// compaction forces a re-read), the session ends, or ctx ends.
func (c *Client) waitDeleted(ctx context.Context, s *Session, path string, fromRev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := c.Watch(wctx, path, fromRev, RelistOnCompaction())
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.Done():
			return s.Err()
		case r, ok := <-events:
			if !ok {
				return ctx.Err()
			}
			switch {
			case r.Err != nil:
				return r.Err
			case r.Reset && len(r.Nodes) == 0:
				return nil
			}
			for _, ev := range r.Events {
				if ev.Type == EventDelete {
					return nil
				}
			}
		}
	}
}

// watch is the leadership's goroutine: it closes lost when the node is deleted or
// replaced, or the session ends.
func (l *Leadership) watch(ctx context.Context) {
	defer close(l.exited)
	defer l.markLost()
	events := l.c.Watch(ctx, l.path, l.token+1, RelistOnCompaction())
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.s.Done():
			return
		case r, ok := <-events:
			if !ok {
				return
			}
			if r.Err != nil {
				l.c.log.Warn("coordclient: leadership watch failed, giving the leadership up", "path", l.path, "err", r.Err)
				return
			}
			if r.Reset && (len(r.Nodes) == 0 || r.Nodes[0].CreateRev != l.token) {
				return
			}
			for _, ev := range r.Events {
				if ev.Type == EventDelete || ev.Node.CreateRev != l.token {
					return
				}
			}
		}
	}
}
