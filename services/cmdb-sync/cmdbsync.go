// Package cmdbsync is berth-cmdb-sync (DESIGN §8): it keeps the host inventory in coord
// (/berth/hosts/<host>, protojson of berth.inventory.v1.Host) in step with the CMDB, read
// from a file (YAML, JSON, CSV), an HTTP JSON endpoint (conditional requests) or a
// PostgreSQL query. Each row is checked on its own; a bad row (a missing or malformed
// field, a duplicate id or IP, an address pool that overlaps another) is rejected and
// reported — logged, counted and published as a host event of type rejected — and the
// good rows are applied. A host that leaves the CMDB is drained while it still holds
// allocations (/berth/alloc/<host>/...) and removed once it holds none. A CMDB that cannot
// be read keeps the last inventory and makes /readyz fail.
//
// It also tracks liveness: a host whose agent's alive node (/berth/alive/<host>) has been
// gone longer than the grace period is marked down, and up again when the node returns;
// a host whose agent's fingerprint (CPU count, memory) disagrees with the CMDB is
// reported as a mismatch. Every change of a host is published as a host event
// (berth.v1.events.host.<type>.<host>). Only the elected replica (election "cmdb-sync")
// writes; its writes are fenced by its leadership.
//
// Embedding (berth dev):
//
//	row, _ := cmdbsync.LocalHost(cmdbsync.LocalHostOptions{})
//	_ = cmdbsync.WriteInventoryFile(path, []cmdbsync.InventoryRow{row})
//	cfg := cmdbsync.DefaultConfig()
//	cfg.Source = cmdbsync.SourceConfig{Kind: "file", Path: path, Timeout: time.Second}
//	s, err := cmdbsync.New(cfg, cmdbsync.Deps{Bus: bus, Coord: coordClient, Logger: log, Registerer: reg})
//	...
//	err = s.Run(ctx) // returns when ctx ends
package cmdbsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/admin"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
	"github.com/berthdev/berth/services/cmdb-sync/internal/source"
)

// ElectionRole is the coord election the replicas campaign in.
const ElectionRole = "cmdb-sync"

// Deps are what an embedding program may hand the service instead of letting it connect
// itself. Every field is optional.
type Deps struct {
	// Bus is a connected NATS bus; when nil Run connects to Config.NATS. A Bus given is
	// never closed.
	Bus *natsbus.Bus
	// Coord is a coord client; when nil Run connects to Config.Coord. A client given is
	// never closed.
	Coord *coordclient.Client
	// Logger receives the logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means a registry of the service's own, served
	// on Config.ListenMetrics.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics when Registerer is given; nil means Registerer when it is a
	// Gatherer.
	Gatherer prometheus.Gatherer
}

// Syncer is a configured cmdb-sync replica. Create it with New, start it with Run, once.
type Syncer struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	reg  prometheus.Registerer
	gat  prometheus.Gatherer
	src  source.Source
	m    *metrics

	coord *coordclient.Client
	bus   *natsbus.Bus

	leading atomic.Bool

	mu sync.Mutex
	// srcErr is the last read of the source's error (nil after a good read), since when
	// the source has been failing, and whether it was ever read.
	srcErr      error
	srcErrSince time.Time
	srcRead     bool
	// lastRecs are the records of the last read that changed, recsVersion counts them.
	lastRecs    []source.Record
	recsVersion int
	// reported remembers the rejections already published.
	reported map[string]bool
}

// New checks cfg and returns a replica; it starts nothing and contacts nothing.
func New(cfg Config, deps Deps) (*Syncer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cmdb-sync config: %w", err)
	}
	src, err := cfg.Source.build()
	if err != nil {
		return nil, fmt.Errorf("cmdb-sync config: %w", err)
	}
	s := &Syncer{cfg: cfg, deps: deps, log: deps.Logger, reg: deps.Registerer, gat: deps.Gatherer, src: src,
		reported: map[string]bool{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("service", "cmdb-sync")
	if s.reg == nil {
		r := prometheus.NewRegistry()
		s.reg, s.gat = r, r
	}
	if s.gat == nil {
		if g, ok := s.reg.(prometheus.Gatherer); ok {
			s.gat = g
		}
	}
	if s.m, err = newMetrics(s.reg, s); err != nil {
		return nil, err
	}
	return s, nil
}

// Run connects what Deps did not provide and campaigns for leadership; while it leads it
// keeps the inventory in step. It returns when ctx ends.
func (s *Syncer) Run(ctx context.Context) error {
	var err error
	s.bus = s.deps.Bus
	if s.bus == nil {
		ncfg := natsbus.Config{URLs: splitList(s.cfg.NATS), Name: "berth-cmdb-sync/" + s.cfg.Name,
			Source: s.source(), Logger: s.log, Registerer: s.reg}
		if err := s.cfg.NATSAuth.Apply(&ncfg); err != nil {
			return err
		}
		s.bus, err = natsbus.Connect(ctx, ncfg)
		if err != nil {
			return err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = s.bus.Close(cctx)
		}()
	}
	s.coord = s.deps.Coord
	if s.coord == nil {
		coordTLS, err := s.cfg.CoordTLS.ClientTLS("")
		if err != nil {
			return fmt.Errorf("coord_tls: %w", err)
		}
		s.coord, err = coordclient.New(ctx, coordclient.Config{Endpoints: splitList(s.cfg.Coord), Logger: s.log, TLS: coordTLS})
		if err != nil {
			return fmt.Errorf("connect to coord %s: %w", s.cfg.Coord, err)
		}
		defer s.coord.Close()
	}
	if p, ok := s.src.(*source.Postgres); ok {
		defer func() { _ = p.Close(context.WithoutCancel(ctx)) }()
	}
	g := &run.Group{}
	if s.cfg.ListenMetrics != "" {
		if s.gat == nil {
			return errors.New("cmdb-sync: listen_metrics is set but the Registerer given is not a Gatherer; pass Deps.Gatherer")
		}
		srv := admin.New(s.cfg.ListenMetrics, s.gat)
		httpTLS, err := s.cfg.HTTPTLS.ServerTLS()
		if err != nil {
			return fmt.Errorf("http_tls: %w", err)
		}
		srv.UseTLS(httpTLS)
		srv.AddCheck("source", s.SourceHealthy)
		addr, err := srv.Listen()
		if err != nil {
			return err
		}
		s.log.Info("admin endpoints", "addr", addr.String())
		g.Add("admin", srv.Run)
	}
	g.Add("election", s.campaign)
	s.log.Info("cmdb-sync started", "name", s.cfg.Name, "source", s.src.Name())
	return g.Run(ctx)
}

func (s *Syncer) source() string { return "berth-cmdb-sync/" + s.cfg.Name }

// Leading reports whether this replica is the elected writer.
func (s *Syncer) Leading() bool { return s.leading.Load() }

// SourceHealthy is the readiness check: nil unless this replica leads and its last read
// of the CMDB failed (the last good inventory is kept meanwhile).
func (s *Syncer) SourceHealthy(context.Context) error {
	if !s.leading.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srcErr != nil {
		return fmt.Errorf("CMDB %s unreadable since %s (keeping the last inventory): %w",
			s.src.Name(), s.srcErrSince.Format(time.RFC3339), s.srcErr)
	}
	return nil
}

// campaign runs for leadership again and again until ctx ends, leading while elected.
func (s *Syncer) campaign(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.termOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			s.log.Warn("cmdb-sync leadership ended", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
	return nil
}

// termOnce opens a session, waits to be elected, leads until the leadership is lost or
// ctx ends, and gives the leadership up.
func (s *Syncer) termOnce(ctx context.Context) error {
	sess, err := s.coord.NewSession(ctx, s.cfg.SessionTTL)
	if err != nil {
		return fmt.Errorf("open election session: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = sess.Close(cctx)
	}()
	lead, err := s.coord.Campaign(ctx, sess, ElectionRole, []byte(s.cfg.Name))
	if err != nil {
		return fmt.Errorf("campaign %s: %w", ElectionRole, err)
	}
	s.log.Info("elected cmdb-sync leader", "token", lead.Token())
	lctx, cancel := context.WithCancel(ctx)
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		select {
		case <-lead.Lost():
		case <-lctx.Done():
		}
		cancel()
	}()
	s.leading.Store(true)
	s.m.leader.Set(1)
	err = newTerm(s, lead).run(lctx)
	s.leading.Store(false)
	s.m.leader.Set(0)
	cancel()
	<-watcherDone
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer rcancel()
	_ = lead.Resign(rctx)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return errors.New("leadership lost")
}
