package scheduler

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
)

// pruneLoop deletes the records of committed requests older than RecordTTL, every
// RecordTTL/4 (at most hourly). Any replica may do it; deleting a record twice is harmless.
func (s *Scheduler) pruneLoop(ctx context.Context) error {
	every := min(s.cfg.RecordTTL/4, time.Hour)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n, err := s.PruneRecords(ctx, time.Now().Add(-s.cfg.RecordTTL)); err != nil {
			s.log.Warn("placement records not pruned", "err", err)
		} else if n > 0 {
			s.log.Info("placement records pruned", "count", n)
		}
	}
}

// PruneRecords deletes the placement records created before cutoff and returns how many
// it deleted.
func (s *Scheduler) PruneRecords(ctx context.Context, cutoff time.Time) (int, error) {
	list, err := s.coord.List(ctx, placementsPrefix)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, node := range list.Nodes {
		if node.Version == 0 {
			continue
		}
		rec := &inventoryv1.PlacementRecord{}
		if err := protojson.Unmarshal(node.Value, rec); err == nil && rec.GetCreatedAt().AsTime().After(cutoff) {
			continue
		}
		if _, err := s.coord.Delete(ctx, node.Path, coordclient.ExpectVersion(node.Version)); err != nil &&
			!errors.Is(err, coordclient.ErrNotFound) && !errors.Is(err, coordclient.ErrConflict) {
			return n, err
		}
		n++
	}
	return n, nil
}
