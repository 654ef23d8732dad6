// Package configkeys gives templates the configuration blobs under /berth/config/ in coord
// (DESIGN §3, §7). A key is read with one Get the first time a template wants it; after
// that one watch on the whole /berth/config/ subtree, shared by every template of the host,
// keeps the wanted keys current (changes to other keys are skipped). A template never opens
// a watch of its own.
package configkeys

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
)

// Prefix is the parent of every configuration key in coord.
const Prefix = "/berth/config/"

// ErrNoCoord is returned by Want when the agent runs without coord.
var ErrNoCoord = errors.New("configkeys: no coord configured, so /berth/config keys cannot be read")

// Coord is what the cache needs from coord; *coordclient.Client implements it.
type Coord interface {
	Get(ctx context.Context, path string, opts ...coordclient.GetOption) (*coordclient.Node, error)
	List(ctx context.Context, path string, opts ...coordclient.ListOption) (*coordclient.ListResult, error)
	Watch(ctx context.Context, path string, fromRev int64, opts ...coordclient.WatchOption) <-chan coordclient.WatchResponse
}

// Value is a key's value at one moment.
type Value struct {
	// Data is the value; nil when the key does not exist.
	Data []byte
	// Found is false when the key does not exist.
	Found bool
	// ModRev is the revision of the value (or of the delete).
	ModRev int64
	// Changed is closed when the value changes.
	Changed <-chan struct{}
}

// Cache holds the wanted keys. Create it with New and run Run.
type Cache struct {
	coord Coord
	log   *slog.Logger

	mu   sync.Mutex
	keys map[string]*entry
	// wanted is closed when the first key is wanted, so that Run starts watching.
	wanted     chan struct{}
	wantedOnce sync.Once
}

type entry struct {
	data    []byte
	found   bool
	modRev  int64
	changed chan struct{}
}

// New returns a cache over coord (nil: every Want fails with ErrNoCoord).
func New(coord Coord, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cache{coord: coord, log: log, keys: map[string]*entry{}, wanted: make(chan struct{})}
}

// Want makes sure key (relative to /berth/config/, e.g. hotel/search/flags.json) is cached
// and current, reading it now when it is new.
func (c *Cache) Want(ctx context.Context, key string) error {
	if c.coord == nil {
		return ErrNoCoord
	}
	c.mu.Lock()
	_, ok := c.keys[key]
	c.mu.Unlock()
	if ok {
		return nil
	}
	n, err := c.coord.Get(ctx, Prefix+key)
	e := &entry{changed: make(chan struct{})}
	switch {
	case errors.Is(err, coordclient.ErrNotFound):
	case err != nil:
		return fmt.Errorf("read config key %s: %w", key, err)
	default:
		e.data, e.found, e.modRev = n.Value, true, n.ModRev
	}
	c.mu.Lock()
	if _, ok := c.keys[key]; !ok {
		c.keys[key] = e
	}
	c.mu.Unlock()
	c.wantedOnce.Do(func() { close(c.wanted) })
	return nil
}

// Get returns key's cached value; Found is false for a key not wanted yet.
func (c *Cache) Get(key string) Value {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.keys[key]
	if e == nil {
		return Value{Changed: make(chan struct{})}
	}
	return Value{Data: e.data, Found: e.found, ModRev: e.modRev, Changed: e.changed}
}

// Run keeps the wanted keys current with one watch on /berth/config/ from the first Want
// until ctx ends; it returns nil then. A broken watch is opened again and the keys read
// again.
func (c *Cache) Run(ctx context.Context) error {
	if c.coord == nil {
		<-ctx.Done()
		return nil
	}
	select {
	case <-ctx.Done():
		return nil
	case <-c.wanted:
	}
	backoff := 200 * time.Millisecond
	for {
		err := c.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("config key watch ended; watching again", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// watch reads the current revision, reads the wanted keys again, and follows the subtree
// from there until the watch fails.
func (c *Cache) watch(ctx context.Context) error {
	res, err := c.coord.List(ctx, strings.TrimSuffix(Prefix, "/"), coordclient.Limit(1), coordclient.KeysOnly())
	if err != nil {
		return fmt.Errorf("list %s: %w", Prefix, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := c.coord.Watch(wctx, Prefix, res.Revision+1, coordclient.Recursive(), coordclient.RelistOnCompaction())
	// Keys changed before the watch's start revision are read again now.
	c.mu.Lock()
	keys := make([]string, 0, len(c.keys))
	for k := range c.keys {
		keys = append(keys, k)
	}
	c.mu.Unlock()
	for _, k := range keys {
		n, err := c.coord.Get(ctx, Prefix+k)
		switch {
		case errors.Is(err, coordclient.ErrNotFound):
			c.set(k, nil, false, res.Revision)
		case err != nil:
			return fmt.Errorf("read config key %s: %w", k, err)
		default:
			c.set(k, n.Value, true, n.ModRev)
		}
	}
	for r := range ch {
		if r.Err != nil {
			return r.Err
		}
		if r.Reset {
			present := map[string]coordclient.Node{}
			for _, n := range r.Nodes {
				present[strings.TrimPrefix(n.Path, Prefix)] = n
			}
			c.mu.Lock()
			keys = keys[:0]
			for k := range c.keys {
				keys = append(keys, k)
			}
			c.mu.Unlock()
			for _, k := range keys {
				if n, ok := present[k]; ok {
					c.set(k, n.Value, true, n.ModRev)
				} else {
					c.set(k, nil, false, r.Revision)
				}
			}
			continue
		}
		for _, ev := range r.Events {
			k := strings.TrimPrefix(ev.Node.Path, Prefix)
			if ev.Type == coordclient.EventDelete {
				c.set(k, nil, false, ev.Revision)
			} else {
				c.set(k, ev.Node.Value, true, ev.Node.ModRev)
			}
		}
	}
	return errors.New("watch closed")
}

// set updates a wanted key when rev is newer than what the cache has.
func (c *Cache) set(key string, data []byte, found bool, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.keys[key]
	if e == nil || rev < e.modRev || (rev == e.modRev && found == e.found) {
		return
	}
	e.data, e.found, e.modRev = data, found, rev
	close(e.changed)
	e.changed = make(chan struct{})
}
