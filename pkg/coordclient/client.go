// Package coordclient is the Go client of berth-coord, Berth's Raft-replicated,
// ZooKeeper-like coordination store (proto/berth/coord/v1/coord.proto).
//
// A Client talks to several members. It prefers the leader for writes and linearizable
// reads (it learns who leads from every response header and from the LeaderDetail of
// UNAVAILABLE statuses), rotates to the next endpoint with backoff when a member cannot be
// reached or has no leader, and retries: reads freely, writes with one random request id per
// logical call, reused on every retry, so that the store answers a retry of a write that was
// already applied from its dedupe table instead of applying it twice.
//
// On top of the typed calls (Get, List, Put, Delete, Txn) the package offers sessions kept
// alive in the background (NewSession), watches that resume after reconnects without gaps
// or duplicates (Watch), leader election with fencing tokens (Campaign, Leader), locks
// (Lock) and fenced writes (Leadership.Txn, Txn.Fence).
//
// Every goroutine the package starts belongs to a Session, a Leadership or a Watch; each
// exits when its context ends, when its owner is closed, or when Client.Close is called,
// and Close waits for all of them.
package coordclient

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// DefaultDialTimeout bounds one connection attempt to a member when Config.DialTimeout is 0.
const DefaultDialTimeout = 5 * time.Second

// DefaultRequestTimeout bounds one call, retries included, when Config.RequestTimeout is 0.
const DefaultRequestTimeout = 10 * time.Second

// The client pings every member connection that has been idle for keepaliveTime (gRPC
// keepalive, also with no stream open; berth-coord permits pings every 5 s) and drops it
// when no answer comes within keepaliveTimeout, so that a watch or keepalive stream on a
// member that froze (a stopped process, a dead host behind a live TCP path) fails over
// instead of stalling silently. 10 s is the shortest interval gRPC allows.
const (
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 5 * time.Second
)

// maxRecvMsgBytes is the largest response the client accepts: a List of a subtree can
// carry many 4 MiB values.
const maxRecvMsgBytes = math.MaxInt32

// Config configures a Client.
type Config struct {
	// Endpoints are the client addresses (host:port) of one or more members. Required.
	Endpoints []string
	// TLS, when set, makes every connection use TLS with this configuration; nil means
	// plaintext.
	TLS *tls.Config
	// DialTimeout bounds one connection attempt to a member; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds one unary call, every retry included, when the caller's context
	// has no deadline; 0 means DefaultRequestTimeout. One attempt gets half of the call's
	// time (at least half of RequestTimeout), so that a member that accepts the call and
	// never answers is left in time for another. Streams (watches, keepalives) are not
	// bounded by it.
	RequestTimeout time.Duration
	// Logger receives debug records about failover and retries and warnings about lost
	// sessions; nil discards them.
	Logger *slog.Logger
}

// Validate checks the configuration and returns an error naming the first bad field.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("coordclient: Endpoints: %w: at least one host:port is required", ErrInvalidArgument)
	}
	seen := map[string]bool{}
	for _, ep := range c.Endpoints {
		if err := validateEndpoint(ep); err != nil {
			return fmt.Errorf("coordclient: Endpoints: %w", err)
		}
		if seen[ep] {
			return fmt.Errorf("coordclient: Endpoints: %w: %q is listed twice", ErrInvalidArgument, ep)
		}
		seen[ep] = true
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("coordclient: DialTimeout: %w: %s is negative", ErrInvalidArgument, c.DialTimeout)
	}
	if c.RequestTimeout < 0 {
		return fmt.Errorf("coordclient: RequestTimeout: %w: %s is negative", ErrInvalidArgument, c.RequestTimeout)
	}
	return nil
}

func validateEndpoint(ep string) error {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return fmt.Errorf("%w: endpoint %q: want host:port (%v)", ErrInvalidArgument, ep, err)
	}
	if host == "" {
		return fmt.Errorf("%w: endpoint %q: empty host", ErrInvalidArgument, ep)
	}
	if net.ParseIP(host) == nil && strings.Trim(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != "" {
		return fmt.Errorf("%w: endpoint %q: host %q is neither an IP address nor a host name", ErrInvalidArgument, ep, host)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%w: endpoint %q: port %q is not a number from 1 to 65535", ErrInvalidArgument, ep, port)
	}
	return nil
}

// Client is a connection to a berth-coord cluster. It is safe for concurrent use.
type Client struct {
	cfg       Config
	log       *slog.Logger
	endpoints []string
	dialOpts  []grpc.DialOption

	// life is cancelled by Close; every goroutine of the package watches it.
	life     context.Context
	stopLife context.CancelFunc
	wg       sync.WaitGroup

	mu sync.Mutex
	// closed is set by Close; no goroutine starts after it.
	closed bool
	// conns are the connections by address, made on first use.
	conns map[string]*grpc.ClientConn
	// cur is the index in endpoints of the member tried first when the leader is unknown.
	cur int
	// leaderID and leaderAddr are the leader as last learned; leaderAddr is "" when its
	// client address is unknown.
	leaderID   uint64
	leaderAddr string
	// memberAddrs are the members' client addresses by id, from the last Members call.
	memberAddrs map[uint64]string
	// lookedUp is the leader id for which the member list was last fetched.
	lookedUp uint64
}

// New returns a Client for the members in cfg.Endpoints. It validates cfg and contacts
// no member: connections are made by the first calls. ctx only carries values to the
// client's background work; cancelling it does not close the client.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	bc := backoff.DefaultConfig
	bc.BaseDelay = 100 * time.Millisecond
	bc.MaxDelay = 2 * time.Second
	life, stop := context.WithCancel(context.WithoutCancel(ctx))
	return &Client{
		cfg:       cfg,
		log:       log,
		endpoints: append([]string(nil), cfg.Endpoints...),
		dialOpts: []grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: bc, MinConnectTimeout: cfg.DialTimeout}),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgBytes)),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true}),
		},
		life:        life,
		stopLife:    stop,
		conns:       map[string]*grpc.ClientConn{},
		memberAddrs: map[uint64]string{},
	}, nil
}

// Endpoints returns the configured endpoints.
func (c *Client) Endpoints() []string { return append([]string(nil), c.endpoints...) }

// Close ends every watch, session keepalive and leadership watcher of the client, waits
// for their goroutines, and closes the connections. Sessions are not closed on the
// server: close them first (Session.Close) to delete their ephemeral nodes at once, or
// they expire after their TTL. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.stopLife()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for addr, cc := range c.conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close connection to %s: %w", addr, err))
		}
	}
	clear(c.conns)
	return errors.Join(errs...)
}

// goroutine runs fn in a goroutine owned by the client: its context ends when ctx ends or
// the client is closed, and Close waits for it. It returns false, running nothing, after
// Close.
func (c *Client) goroutine(ctx context.Context, fn func(ctx context.Context)) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.life, cancel)
	go func() {
		defer c.wg.Done()
		defer cancel()
		defer stop()
		fn(ctx)
	}()
	return true
}

// api returns the stub for the member at addr, making its connection on first use.
func (c *Client) api(addr string) (coordv1.CoordServiceClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	cc, ok := c.conns[addr]
	if !ok {
		var err error
		cc, err = grpc.NewClient("passthrough:///"+addr, c.dialOpts...)
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", addr, err)
		}
		c.conns[addr] = cc
	}
	return coordv1.NewCoordServiceClient(cc), nil
}

// pick returns the address to try next: the leader when preferLeader is set and its
// address is known, else the current endpoint.
func (c *Client) pick(preferLeader bool) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if preferLeader && c.leaderAddr != "" {
		return c.leaderAddr
	}
	return c.endpoints[c.cur]
}

// leader returns the leader's id and address as last learned.
func (c *Client) leader() (uint64, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaderID, c.leaderAddr
}

// observe learns the leader from a successful response's header served by the member at
// addr. It reports whether the leader's address is unknown and the member list should be
// fetched to learn it.
func (c *Client) observe(addr string, h *coordv1.ResponseHeader) (lookup bool) {
	if h == nil || h.GetLeaderId() == 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	id := h.GetLeaderId()
	switch {
	case h.GetMemberId() == id:
		c.leaderID, c.leaderAddr = id, addr
		c.memberAddrs[id] = addr
	case id != c.leaderID || c.leaderAddr == "":
		c.leaderID, c.leaderAddr = id, c.memberAddrs[id]
		if c.leaderAddr == "" && c.lookedUp != id {
			c.lookedUp = id
			return true
		}
	}
	return false
}

// lookupMembers fetches the member list from addr to learn the members' client addresses.
// It is best effort: a failure leaves what is known.
func (c *Client) lookupMembers(ctx context.Context, addr string) {
	api, err := c.api(addr)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := api.Members(ctx, &coordv1.MembersRequest{})
	if err != nil {
		c.log.Debug("coordclient: member lookup failed", "endpoint", addr, "err", err)
		return
	}
	c.learnMembers(resp.GetMembers())
}

// learnMembers records the members' client addresses and the leader's.
func (c *Client) learnMembers(ms []*coordv1.Member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range ms {
		if usableAddr(m.GetClientAddr()) {
			c.memberAddrs[m.GetId()] = m.GetClientAddr()
		}
		if m.GetIsLeader() {
			c.leaderID = m.GetId()
			c.leaderAddr = c.memberAddrs[m.GetId()]
		}
	}
}

// failed records that a call to addr failed with err: it follows the leader the error
// names, forgets a leader that failed, and moves on to the next endpoint. It reports
// whether the error named another member as leader (worth trying at once).
func (c *Client) failed(addr string, err error) (hint bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var e *Error
	if errors.As(err, &e) && e.LeaderID != 0 {
		la := e.LeaderAddr
		if !usableAddr(la) {
			la = c.memberAddrs[e.LeaderID]
		}
		if la != "" && la != addr {
			c.leaderID, c.leaderAddr = e.LeaderID, la
			c.memberAddrs[e.LeaderID] = la
			return true
		}
	}
	if addr == c.leaderAddr {
		c.leaderID, c.leaderAddr = 0, ""
	}
	if c.endpoints[c.cur] == addr {
		c.cur = (c.cur + 1) % len(c.endpoints)
	}
	return false
}

// usableAddr reports whether a member-announced address can be dialled: host:port with a
// host that is not the unspecified address.
func usableAddr(a string) bool {
	host, _, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return false
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return false
	}
	return true
}

// callOpts describe how one logical call is made.
type callOpts struct {
	// preferLeader sends the call to the leader when its address is known.
	preferLeader bool
	// precondition is what FAILED_PRECONDITION means for the call (see mapError).
	precondition error
	// noRetry makes one attempt only.
	noRetry bool
	// pin sends every attempt to this address instead of picking a member.
	pin string
}

// attemptFunc makes one attempt on api; it returns the response header (nil on error).
// trailer receives the call's trailer metadata.
type attemptFunc func(ctx context.Context, api coordv1.CoordServiceClient, trailer *metadata.MD) (*coordv1.ResponseHeader, error)

// do runs one logical unary call: attempts on the preferred member, failing over and
// backing off on retryable errors until the call's context ends. It returns the mapped
// error of the last attempt.
func (c *Client) do(ctx context.Context, o callOpts, fn attemptFunc) error {
	if _, hasDeadline := ctx.Deadline(); !hasDeadline {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	// One attempt gets half of the call's time (at least half of RequestTimeout): enough
	// for a slow write of a large value, short enough to leave a member that took the call
	// and went silent in time for another.
	deadline, _ := ctx.Deadline()
	attemptTimeout := max(c.cfg.RequestTimeout/2, time.Until(deadline)/2, 100*time.Millisecond)
	var lastErr error
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return giveUp(ctx, lastErr, attempt)
		}
		addr := o.pin
		if addr == "" {
			addr = c.pick(o.preferLeader)
		}
		api, err := c.api(addr)
		if err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		var trailer metadata.MD
		h, err := fn(actx, api, &trailer)
		cancel()
		if err == nil {
			if c.observe(addr, h) {
				c.lookupMembers(ctx, addr)
			}
			return nil
		}
		err = mapError(err, trailer, o.precondition)
		if o.noRetry || !retryable(ctx, err) {
			if ctx.Err() != nil && lastErr != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
				return giveUp(ctx, lastErr, attempt+1)
			}
			return err
		}
		lastErr = err
		if o.pin != "" {
			if !sleep(ctx, retryDelay(attempt, 1)) {
				return giveUp(ctx, lastErr, attempt+1)
			}
			continue
		}
		hint := c.failed(addr, err)
		c.log.Debug("coordclient: attempt failed, retrying", "endpoint", addr, "attempt", attempt+1, "err", err)
		if hint {
			continue
		}
		if !sleep(ctx, retryDelay(attempt, len(c.endpoints))) {
			return giveUp(ctx, lastErr, attempt+1)
		}
	}
}

// giveUp is the error of a call whose context ended while it was retrying: the last
// attempt's error, which is what the caller can act on, joined with the context's.
func giveUp(ctx context.Context, last error, attempts int) error {
	if last == nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w (gave up after %d attempts: %w)", last, attempts, ctx.Err())
}

// retryDelay is the pause before retry attempt+1: short while the endpoints have not all
// been tried once, then exponential from 50 ms to 1 s, with jitter.
func retryDelay(attempt, endpoints int) time.Duration {
	if attempt < endpoints-1 {
		return 10 * time.Millisecond
	}
	d := 50 * time.Millisecond << min(attempt-endpoints+1, 5)
	d = min(d, time.Second)
	return d/2 + mrand.N(d/2+1)
}

// sleep waits d or until ctx ends; it reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// newRequestID returns a random request id (26 base32 characters, 130 bits).
func newRequestID() string { return rand.Text() }
