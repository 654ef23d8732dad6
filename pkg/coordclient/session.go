package coordclient

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// Session TTL bounds of the store.
const (
	MinSessionTTL = time.Second
	MaxSessionTTL = 24 * time.Hour
)

// Session is an open session kept alive by a goroutine of its own. Ephemeral nodes put
// with Ephemeral(s.ID()) live while the session does.
//
// The keepalive goroutine sends a keepalive every TTL/3 over a SessionKeepAlive stream to
// the leader, reopening the stream (on the leader a member names, or on the next endpoint)
// when it breaks. It exits when the session expires, on Close, when the context given to
// NewSession ends, or when the client is closed; Done is closed then.
type Session struct {
	c   *Client
	id  int64
	ttl time.Duration

	// ctx is the keepalive goroutine's context: it ends on Close, when NewSession's context
	// ends, and when the goroutine exits. Leaderships of the session run under it.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	exited chan struct{}

	mu sync.Mutex
	// err is why the session ended, nil while it is alive.
	err error
	// closing is set by Close before it stops the goroutine.
	closing bool
}

// NewSession opens a session with the given time to live (MinSessionTTL to MaxSessionTTL,
// whole milliseconds) and starts keeping it alive until ctx ends or Close.
func (c *Client) NewSession(ctx context.Context, ttl time.Duration) (*Session, error) {
	if ttl < MinSessionTTL || ttl > MaxSessionTTL {
		return nil, fmt.Errorf("open session: %w: ttl %s is not within %s to %s", ErrInvalidArgument, ttl, MinSessionTTL, MaxSessionTTL)
	}
	req := &coordv1.SessionOpenRequest{TtlMs: ttl.Milliseconds(), RequestId: newRequestID()}
	var resp *coordv1.SessionOpenResponse
	opened := time.Now()
	err := c.do(ctx, callOpts{preferLeader: true}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		var err error
		resp, err = api.SessionOpen(ctx, req, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if err != nil {
		return nil, fmt.Errorf("open session: %w", err)
	}
	s := &Session{
		c:      c,
		id:     resp.GetSessionId(),
		ttl:    time.Duration(resp.GetTtlMs()) * time.Millisecond,
		done:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	if s.ttl <= 0 {
		s.ttl = ttl
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	started := c.goroutine(s.ctx, func(ctx context.Context) {
		defer close(s.exited)
		s.keepAlive(ctx, opened.Add(s.ttl))
	})
	if !started {
		s.cancel()
		return nil, fmt.Errorf("open session: %w", ErrClosed)
	}
	return s, nil
}

// ID returns the session's id, for Ephemeral.
func (s *Session) ID() int64 { return s.id }

// TTL returns the session's time to live.
func (s *Session) TTL() time.Duration { return s.ttl }

// Done is closed when the session ends: it expired (the store said so, or no keepalive
// was acknowledged for a whole TTL, after which the store may have expired it), it was
// closed, or its keepalives stopped because NewSession's context ended or the client was
// closed. Err tells which.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session is alive, then why it ended: an error wrapping
// ErrSessionExpired, ErrSessionClosed, or the context's error.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops the keepalives and ends the session on the store, deleting its ephemeral
// nodes in one revision. Closing a session that already expired returns nil.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.cancel()
	<-s.exited
	if errors.Is(s.Err(), ErrSessionExpired) {
		return nil
	}
	req := &coordv1.SessionCloseRequest{SessionId: s.id, RequestId: newRequestID()}
	err := s.c.do(ctx, callOpts{preferLeader: true, precondition: ErrSessionExpired}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		resp, err := api.SessionClose(ctx, req, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if err != nil && !errors.Is(err, ErrSessionExpired) {
		return fmt.Errorf("close session %d: %w", s.id, err)
	}
	return nil
}

// end records why the session ended and closes Done; the first reason wins.
func (s *Session) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if s.closing {
		err = ErrSessionClosed
	}
	s.err = err
	close(s.done)
}

// keepAlive is the session's goroutine. deadline is when the session may expire on the
// store if no further keepalive is acknowledged.
func (s *Session) keepAlive(ctx context.Context, deadline time.Time) {
	defer s.cancel()
	log := s.c.log.With("session", s.id)
	failures := 0
	for {
		if err := ctx.Err(); err != nil {
			s.end(fmt.Errorf("session %d: keepalives stopped: %w", s.id, err))
			return
		}
		if time.Now().After(deadline) {
			log.Warn("coordclient: session lost: no keepalive acknowledged within its ttl", "ttl", s.ttl)
			s.end(fmt.Errorf("session %d: %w: no keepalive acknowledged within its ttl of %s", s.id, ErrSessionExpired, s.ttl))
			return
		}
		addr := s.c.pick(true)
		acked, err := s.stream(ctx, addr, &deadline)
		if errors.Is(err, ErrSessionExpired) {
			log.Warn("coordclient: session expired")
			s.end(fmt.Errorf("session %d: %w", s.id, err))
			return
		}
		if ctx.Err() != nil {
			continue
		}
		if acked {
			failures = 0
		}
		hint := s.c.failed(addr, err)
		log.Debug("coordclient: keepalive stream ended, reconnecting", "endpoint", addr, "err", err)
		if hint {
			continue
		}
		// Back off, but never past the point where a keepalive could still save the session.
		d := min(retryDelay(failures, len(s.c.endpoints)), max(time.Until(deadline), 0))
		failures++
		sleep(ctx, d)
	}
}

// stream runs one keepalive stream on addr: a keepalive, its answer, a pause of TTL/3,
// and again. A round that takes longer than TTL/3 abandons the stream. It returns the
// stream's error (ErrSessionExpired when the store no longer has the session) and whether
// any keepalive was acknowledged.
func (s *Session) stream(ctx context.Context, addr string, deadline *time.Time) (acked bool, err error) {
	api, err := s.c.api(addr)
	if err != nil {
		return false, err
	}
	interval := s.ttl / 3
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := api.SessionKeepAlive(ctx)
	if err != nil {
		return false, mapError(err, nil, ErrSessionExpired)
	}
	for {
		sent := time.Now()
		// A round that outlasts the interval (a member that accepted the stream and stopped
		// answering) cancels the stream, which unblocks Recv.
		round := time.AfterFunc(min(interval, max(time.Until(*deadline), 0))+100*time.Millisecond, cancel)
		err := st.Send(&coordv1.SessionKeepAliveRequest{SessionId: s.id})
		var resp *coordv1.SessionKeepAliveResponse
		if err == nil {
			resp, err = st.Recv()
		}
		round.Stop()
		if err != nil {
			return acked, mapError(err, st.Trailer(), ErrSessionExpired)
		}
		if resp.GetExpired() {
			return acked, fmt.Errorf("%w: the store no longer has it", ErrSessionExpired)
		}
		acked = true
		left := time.Duration(resp.GetTtlMs()) * time.Millisecond
		if left <= 0 {
			left = s.ttl
		}
		*deadline = sent.Add(left)
		s.c.observe(addr, resp.GetHeader())
		if !sleep(ctx, interval) {
			return acked, ctx.Err()
		}
	}
}
