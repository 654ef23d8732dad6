package dev

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/berthdev/berth/pkg/run"
	cmdbsync "github.com/berthdev/berth/services/cmdb-sync"
	"github.com/berthdev/berth/services/scheduler"
)

// startCMDBSync runs berth-cmdb-sync with a file source listing this machine, so that the
// local agent's host is in the inventory with its liveness.
func startCMDBSync(ctx context.Context, e *env, g *run.Group) error {
	opts := cmdbsync.LocalHostOptions{ID: e.hostID}
	if e.containers != nil {
		opts.IPPool = []string{e.containers.pool}
	}
	row, err := cmdbsync.LocalHost(opts)
	if err != nil {
		return fmt.Errorf("local host row: %w", err)
	}
	path := filepath.Join(e.cfg.DataDir, "cmdb.yaml")
	if err := cmdbsync.WriteInventoryFile(path, []cmdbsync.InventoryRow{row}); err != nil {
		return err
	}
	cfg := cmdbsync.DefaultConfig()
	cfg.Name = "dev"
	cfg.Source = cmdbsync.SourceConfig{Kind: "file", Path: path, Timeout: time.Second}
	cfg.GracePeriod = 5 * time.Second
	cfg.ListenMetrics = "" // berth dev serves every service's metrics on one address
	s, err := cmdbsync.New(cfg, cmdbsync.Deps{Bus: e.bus, Coord: e.coord, Logger: e.log, Registerer: e.reg})
	if err != nil {
		return fmt.Errorf("cmdb-sync: %w", err)
	}
	g.Add("cmdb-sync", s.Run)
	e.announce("inventory", path+" (edit to add hosts)")
	return nil
}

// startScheduler runs berth-scheduler on the shared bus and coord.
func startScheduler(ctx context.Context, e *env, g *run.Group) error {
	cfg := scheduler.DefaultConfig()
	cfg.Name = "dev"
	cfg.ListenMetrics = ""
	s, err := scheduler.New(cfg, scheduler.Deps{Bus: e.bus, Coord: e.coord, Logger: e.log, Registerer: e.reg})
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	g.Add("scheduler", s.Run)
	return nil
}
