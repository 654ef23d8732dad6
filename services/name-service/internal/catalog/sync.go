package catalog

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
)

// Coord is what Sync needs of a coord client (*coordclient.Client has it).
type Coord interface {
	List(ctx context.Context, path string, opts ...coordclient.ListOption) (*coordclient.ListResult, error)
	Watch(ctx context.Context, path string, fromRev int64, opts ...coordclient.WatchOption) <-chan coordclient.WatchResponse
}

// Sync follows the four prefixes in coord until ctx ends: for each, a serializable List
// (any member may answer, so several name service replicas spread their reads), then a
// Watch from the listing's revision + 1 that re-lists by itself when its start was
// compacted. A watch that fails otherwise is started again from a fresh listing after a
// pause. Sync returns nil when ctx ends; it owns one goroutine per prefix and waits for
// them.
func (c *Catalog) Sync(ctx context.Context, coord Coord) error {
	var wg sync.WaitGroup
	for k := range numKinds {
		wg.Go(func() { c.follow(ctx, coord, k) })
	}
	wg.Wait()
	return nil
}

func (c *Catalog) follow(ctx context.Context, coord Coord, k Kind) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		res, err := coord.List(ctx, k.Prefix(), coordclient.Recursive(), coordclient.Serializable())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("names: list failed; retrying", "prefix", k.Prefix(), "err", err, "in", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		c.Reset(k, res.Nodes, res.Revision)
		watch := coord.Watch(ctx, k.Prefix(), res.Revision+1, coordclient.Recursive(), coordclient.RelistOnCompaction())
		for resp := range watch {
			switch {
			case resp.Err != nil:
				err = resp.Err
			case resp.Reset:
				c.Reset(k, resp.Nodes, resp.Revision)
			default:
				c.ApplyEvents(k, resp.Events)
			}
			backoff = 100 * time.Millisecond
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("watch ended")
		}
		c.log.Warn("names: watch ended; listing again", "prefix", k.Prefix(), "err", err, "in", backoff)
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

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
