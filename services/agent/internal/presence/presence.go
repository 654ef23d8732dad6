// Package presence keeps the agent's presence in coord: a session, and in it the ephemeral
// node /berth/alive/<host> whose value is the agent's AgentInfo (protojson), plus any other
// ephemeral nodes the agent owns (its registered instances, /berth/instances/...). When the
// session is lost (expired, the store unreachable for longer than its TTL) a new one is
// opened and every node put again, with backoff; the alive node is refreshed when the facts
// change. Closing the session (the agent stops or dies) deletes every node at once.
package presence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
)

// AlivePrefix is the parent of every agent's alive node.
const AlivePrefix = "/berth/alive/"

// Defaults of Config.
const (
	DefaultSessionTTL = 10 * time.Second
	DefaultRefresh    = time.Minute
	maxBackoff        = 30 * time.Second
)

// Store is what the agent needs from coord: sessions and ephemeral puts. The agent owns
// this interface so that the rest of it can run (and be tested) without coord;
// FromClient adapts a *coordclient.Client.
type Store interface {
	// OpenSession opens a session with the TTL, kept alive until ctx ends or Close.
	OpenSession(ctx context.Context, ttl time.Duration) (Session, error)
	// PutEphemeral creates or replaces the node at path with value, owned by s, and returns
	// the revision of the write.
	PutEphemeral(ctx context.Context, path string, value []byte, s Session) (int64, error)
	// Delete deletes the node at path (no error when it does not exist) and returns the
	// revision of the delete (the current revision when there was nothing to delete).
	Delete(ctx context.Context, path string) (int64, error)
}

// ErrNoSession is returned by Keeper.Put and Keeper.Delete when no session is open: the
// change is kept and applied when the next session opens.
var ErrNoSession = errors.New("presence: no coord session")

// Session is an open coord session.
type Session interface {
	// Done is closed when the session ended.
	Done() <-chan struct{}
	// Err says why it ended.
	Err() error
	// Close ends it, deleting its ephemeral nodes.
	Close(ctx context.Context) error
}

// FromClient adapts a coord client to Store.
func FromClient(c *coordclient.Client) Store { return clientStore{c} }

type clientStore struct{ c *coordclient.Client }

func (s clientStore) OpenSession(ctx context.Context, ttl time.Duration) (Session, error) {
	sess, err := s.c.NewSession(ctx, ttl)
	if err != nil {
		return nil, err
	}
	return clientSession{sess}, nil
}

func (s clientStore) PutEphemeral(ctx context.Context, path string, value []byte, sess Session) (int64, error) {
	cs, ok := sess.(clientSession)
	if !ok {
		return 0, fmt.Errorf("put %s: session of another store", path)
	}
	res, err := s.c.Put(ctx, path, value, coordclient.Ephemeral(cs.s.ID()))
	if err != nil {
		return 0, err
	}
	return res.Revision, nil
}

func (s clientStore) Delete(ctx context.Context, path string) (int64, error) {
	res, err := s.c.Delete(ctx, path)
	if err != nil {
		return 0, err
	}
	return res.Revision, nil
}

type clientSession struct{ s *coordclient.Session }

func (s clientSession) Done() <-chan struct{}           { return s.s.Done() }
func (s clientSession) Err() error                      { return s.s.Err() }
func (s clientSession) Close(ctx context.Context) error { return s.s.Close(ctx) }

// Config configures a Keeper.
type Config struct {
	// Host is the host id; the node is AlivePrefix + Host.
	Host string
	// SessionTTL is the session's time to live; zero means DefaultSessionTTL.
	SessionTTL time.Duration
	// Refresh is how often the facts are gathered again (and the node rewritten when they
	// changed); zero means DefaultRefresh.
	Refresh time.Duration
	// Gather returns the current facts.
	Gather func(ctx context.Context) *agentv1.AgentInfo
	// Logger receives session losses; nil discards.
	Logger *slog.Logger
}

// Keeper keeps the alive node and the other ephemeral nodes it is given.
type Keeper struct {
	cfg   Config
	store Store
	log   *slog.Logger

	// state holds whether the alive node is in place: a one-slot channel used as a lock.
	state chan bool

	// mu serializes every write to the store, so that a node's put and delete, and the
	// re-puts of a new session, happen in the order they were asked for. It is held during
	// the store calls.
	mu sync.Mutex
	// sess is the open session whose nodes are in place, nil between sessions.
	sess Session
	// nodes are the ephemeral nodes besides the alive node, by path: what every new session
	// puts.
	nodes map[string][]byte
}

// New returns a keeper; Run starts it.
func New(cfg Config, store Store) *Keeper {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	k := &Keeper{cfg: cfg, store: store, log: cfg.Logger, state: make(chan bool, 1), nodes: map[string][]byte{}}
	k.state <- false
	return k
}

// Path is the node the keeper maintains.
func (k *Keeper) Path() string { return AlivePrefix + k.cfg.Host }

// Ready reports whether the node is in place.
func (k *Keeper) Ready(context.Context) error {
	up := <-k.state
	k.state <- up
	if !up {
		return fmt.Errorf("no coord session holding %s", k.Path())
	}
	return nil
}

func (k *Keeper) set(up bool) {
	<-k.state
	k.state <- up
}

// Put makes path an ephemeral node holding value in the agent's session, now when a session
// is open (returning the revision of the write) and again in every later session. With no
// session open it returns ErrNoSession: the node is put when one opens. A write error
// leaves the node wanted; the next session puts it.
func (k *Keeper) Put(ctx context.Context, path string, value []byte) (int64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.nodes[path] = append([]byte(nil), value...)
	if k.sess == nil {
		return 0, ErrNoSession
	}
	rev, err := k.store.PutEphemeral(ctx, path, value, k.sess)
	if err != nil {
		return 0, fmt.Errorf("put %s: %w", path, err)
	}
	return rev, nil
}

// Delete stops keeping path and deletes it now when a session is open, returning the
// revision of the delete. With no session open the node is already gone (it was ephemeral
// in the last session) and Delete returns ErrNoSession.
func (k *Keeper) Delete(ctx context.Context, path string) (int64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.nodes, path)
	if k.sess == nil {
		return 0, ErrNoSession
	}
	rev, err := k.store.Delete(ctx, path)
	if err != nil {
		return 0, fmt.Errorf("delete %s: %w", path, err)
	}
	return rev, nil
}

// Nodes returns the paths of the nodes kept besides the alive node, sorted.
func (k *Keeper) Nodes() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]string, 0, len(k.nodes))
	for p := range k.nodes {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Run keeps the node until ctx ends, then closes the session (which deletes the node) and
// returns nil.
func (k *Keeper) Run(ctx context.Context) error {
	backoff := 500 * time.Millisecond
	for {
		err := k.hold(ctx)
		k.set(false)
		if ctx.Err() != nil {
			return nil
		}
		k.log.Warn("coord presence lost; retrying", "node", k.Path(), "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// hold opens a session, puts the node, and keeps it fresh until the session ends (the
// error says why) or ctx ends (nil).
func (k *Keeper) hold(ctx context.Context) error {
	sess, err := k.store.OpenSession(ctx, k.cfg.SessionTTL)
	if err != nil {
		return fmt.Errorf("open coord session: %w", err)
	}
	defer func() {
		k.mu.Lock()
		k.sess = nil
		k.mu.Unlock()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := sess.Close(cctx); err != nil {
			k.log.Debug("close coord session", "err", err)
		}
	}()
	var last *agentv1.AgentInfo
	put := func() error {
		info := k.cfg.Gather(ctx)
		if last != nil && proto.Equal(significant(info), significant(last)) {
			return nil
		}
		value, err := protojson.Marshal(info)
		if err != nil {
			return fmt.Errorf("encode agent info: %w", err)
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if _, err := k.store.PutEphemeral(ctx, k.Path(), value, sess); err != nil {
			return fmt.Errorf("put %s: %w", k.Path(), err)
		}
		last = info
		return nil
	}
	if err := put(); err != nil {
		return err
	}
	// The other nodes go into the new session, in path order, before it is handed to Put
	// and Delete.
	if err := k.adopt(ctx, sess); err != nil {
		return err
	}
	k.set(true)
	k.log.Info("presence in coord", "node", k.Path(), "ttl", k.cfg.SessionTTL)
	tick := time.NewTicker(k.cfg.Refresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return fmt.Errorf("coord session ended: %w", sess.Err())
		case <-tick.C:
			if err := put(); err != nil {
				return err
			}
		}
	}
}

// adopt puts every kept node in sess and makes sess the session of later Puts.
func (k *Keeper) adopt(ctx context.Context, sess Session) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	paths := make([]string, 0, len(k.nodes))
	for p := range k.nodes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		if _, err := k.store.PutEphemeral(ctx, p, k.nodes[p], sess); err != nil {
			return fmt.Errorf("put %s: %w", p, err)
		}
	}
	k.sess = sess
	if len(paths) > 0 {
		k.log.Info("ephemeral nodes put again in the new session", "nodes", len(paths))
	}
	return nil
}

// significant is info without the noise of free disk space below a GiB, so that a refresh
// rewrites the node only when something an operator would care about changed.
func significant(info *agentv1.AgentInfo) *agentv1.AgentInfo {
	c := proto.Clone(info).(*agentv1.AgentInfo)
	c.DiskFreeBytes >>= 30
	return c
}
