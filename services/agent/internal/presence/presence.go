// Package presence keeps the agent's presence in coord: a session, and in it the ephemeral
// node /berth/alive/<host> whose value is the agent's AgentInfo (protojson). When the
// session is lost (expired, the store unreachable for longer than its TTL) a new one is
// opened and the node put again, with backoff; the node is refreshed when the facts change.
package presence

import (
	"context"
	"fmt"
	"log/slog"
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
	// PutEphemeral creates or replaces the node at path with value, owned by s.
	PutEphemeral(ctx context.Context, path string, value []byte, s Session) error
}

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

func (s clientStore) PutEphemeral(ctx context.Context, path string, value []byte, sess Session) error {
	cs, ok := sess.(clientSession)
	if !ok {
		return fmt.Errorf("put %s: session of another store", path)
	}
	_, err := s.c.Put(ctx, path, value, coordclient.Ephemeral(cs.s.ID()))
	return err
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

// Keeper keeps the alive node.
type Keeper struct {
	cfg   Config
	store Store
	log   *slog.Logger

	// state holds whether the node is in place: a one-slot channel used as a lock.
	state chan bool
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
	k := &Keeper{cfg: cfg, store: store, log: cfg.Logger, state: make(chan bool, 1)}
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
		if err := k.store.PutEphemeral(ctx, k.Path(), value, sess); err != nil {
			return fmt.Errorf("put %s: %w", k.Path(), err)
		}
		last = info
		return nil
	}
	if err := put(); err != nil {
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

// significant is info without the noise of free disk space below a GiB, so that a refresh
// rewrites the node only when something an operator would care about changed.
func significant(info *agentv1.AgentInfo) *agentv1.AgentInfo {
	c := proto.Clone(info).(*agentv1.AgentInfo)
	c.DiskFreeBytes >>= 30
	return c
}
