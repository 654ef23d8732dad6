// Package scheduler is berth-scheduler (DESIGN §8): it places containers on the hosts of
// the inventory. A placement request (service, count, resources, label constraints,
// spread, a per-host cap, preferred datacenters) arrives over NATS, request/reply on
// berth.v1.rpc.place or through the BERTH_WORK queue on berth.v1.work.place; the
// scheduler filters and scores hosts with the plugins of an explicit registry, takes one
// IP per container from the host's pool, and commits the allocations
// (/berth/alloc/<host>/<id>) in one coord transaction guarded by the revisions of the
// hosts it touches, so that several replicas can place at once (optimistic, Omega-style):
// a replica whose view was stale loses the transaction and decides again. A request that
// cannot be placed is answered with why ("placed 7 of 10: of 1200 hosts, 800 lack
// memory, ..."). Allocations are released by id, deployment or service
// (berth.v1.rpc.release), and the allocations of a host that is down are placed again
// elsewhere and announced (berth.v1.events.alloc.rescheduled.<service>) for the controller
// to deploy.
//
// Embedding (berth dev):
//
//	s, err := scheduler.New(cfg, scheduler.Deps{Bus: bus, Coord: coordClient, Logger: log, Registerer: reg})
//	...
//	err = s.Run(ctx) // returns when ctx ends
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/admin"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
	"github.com/berthdev/berth/services/scheduler/internal/index"
	"github.com/berthdev/berth/services/scheduler/internal/plugins"
)

// Subjects of the scheduler, from proto/subjects.
const (
	// SubjectRPCRelease is the request/reply subject of ReleaseRequest.
	SubjectRPCRelease = subjects.RPCRelease
	// DomainAlloc is the event domain of AllocationEvent.
	DomainAlloc = subjects.DomainAlloc
	// AllocEvents is every allocation event, for subscribers.
	AllocEvents = subjects.AllocEvents
)

// Allocation event types.
const (
	EventPlaced      = "placed"
	EventFailed      = "failed"
	EventReleased    = "released"
	EventRescheduled = "rescheduled"
	EventLost        = "lost"
)

// QueueGroup is the NATS queue group the replicas share.
const QueueGroup = "berth-scheduler"

// AllocEvent is the subject of an allocation event of type typ for a service path.
func AllocEvent(typ, service string) (string, error) { return subjects.AllocEvent(typ, service) }

// Deps are what an embedding program may hand the scheduler instead of letting it
// connect itself. Every field is optional.
type Deps struct {
	// Bus is a connected NATS bus; when nil Run connects to Config.NATS. The scheduler
	// never closes a Bus it was given.
	Bus *natsbus.Bus
	// Coord is a coord client; when nil Run connects to Config.Coord. The scheduler never
	// closes a client it was given.
	Coord *coordclient.Client
	// Logger receives the scheduler's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means a registry of the scheduler's own, served
	// on Config.ListenMetrics.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics when Registerer is given; nil means Registerer when it is a
	// Gatherer.
	Gatherer prometheus.Gatherer
	// Registry replaces the in-tree plugin registry; Profile the default profile.
	Registry framework.Registry
	Profile  *framework.Profile
}

// Scheduler is a configured scheduler replica. Create it with New, start it with Run
// (once); Place and Release may be called directly by an embedding program once Run has
// started.
type Scheduler struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	reg  prometheus.Registerer
	gat  prometheus.Gatherer
	idx  *index.Index
	m    *metrics

	// coord and bus are set by Run before anything uses them.
	coord *coordclient.Client
	bus   *natsbus.Bus
	ready chan struct{}
	// rescheduleMu serializes RescheduleOnce; lost remembers the allocations a lost event
	// was published for.
	rescheduleMu sync.Mutex
	lost         map[string]bool
}

// New checks cfg and returns a scheduler; it starts nothing.
func New(cfg Config, deps Deps) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("scheduler config: %w", err)
	}
	reg := deps.Registry
	if reg == nil {
		reg = plugins.NewInTreeRegistry()
	}
	prof := plugins.DefaultProfile()
	if deps.Profile != nil {
		prof = *deps.Profile
	}
	fw, err := framework.New(reg, prof)
	if err != nil {
		return nil, fmt.Errorf("scheduler plugins: %w", err)
	}
	for _, p := range []string{plugins.PolicyBinPack, plugins.PolicyLeastAllocated} {
		if len(fw.Scores[p]) == 0 {
			return nil, fmt.Errorf("scheduler plugins: the profile has no scores for policy %s", p)
		}
	}
	s := &Scheduler{cfg: cfg, deps: deps, log: deps.Logger, reg: deps.Registerer, gat: deps.Gatherer,
		ready: make(chan struct{}), lost: map[string]bool{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("service", "scheduler")
	if s.reg == nil {
		r := prometheus.NewRegistry()
		s.reg, s.gat = r, r
	}
	if s.gat == nil {
		if g, ok := s.reg.(prometheus.Gatherer); ok {
			s.gat = g
		}
	}
	s.idx = index.New(fw, index.Options{SampleMin: cfg.SampleMin, SampleFactor: cfg.SampleFactor})
	s.m, err = newMetrics(s.reg, s.idx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Run connects what Deps did not provide, follows the inventory, and serves placement
// and release requests until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	var err error
	s.bus = s.deps.Bus
	if s.bus == nil {
		ncfg := natsbus.Config{URLs: s.cfg.NATSURLs(), Name: "berth-scheduler/" + s.cfg.Name,
			Source: "berth-scheduler/" + s.cfg.Name, Logger: s.log, Registerer: s.reg}
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
		s.coord, err = coordclient.New(ctx, coordclient.Config{Endpoints: s.cfg.CoordEndpoints(), Logger: s.log, TLS: coordTLS})
		if err != nil {
			return fmt.Errorf("connect to coord %v: %w", s.cfg.CoordEndpoints(), err)
		}
		defer s.coord.Close()
	}
	close(s.ready)

	g := &run.Group{}
	var srv *admin.Server
	if s.cfg.ListenMetrics != "" {
		if s.gat == nil {
			return errors.New("scheduler: listen_metrics is set but the Registerer given is not a Gatherer; pass Deps.Gatherer")
		}
		srv = admin.New(s.cfg.ListenMetrics, s.gat)
		httpTLS, err := s.cfg.HTTPTLS.ServerTLS()
		if err != nil {
			return fmt.Errorf("http_tls: %w", err)
		}
		srv.UseTLS(httpTLS)
		srv.AddCheck("inventory", func(context.Context) error {
			if !s.idx.Synced() {
				return errors.New("the inventory has not been read from coord yet")
			}
			return nil
		})
		addr, err := srv.Listen()
		if err != nil {
			return err
		}
		s.log.Info("admin endpoints", "addr", addr.String())
	}
	g.Add("index", func(ctx context.Context) error { return s.idx.Sync(ctx, s.coord, s.log) })
	g.Add("rpc", s.serveRPC)
	g.Add("work", s.consumeWork)
	g.Add("reschedule", s.rescheduleLoop)
	g.Add("records", s.pruneLoop)
	if srv != nil {
		g.Add("admin", srv.Run)
	}
	s.log.Info("scheduler started", "name", s.cfg.Name, "max_count", s.cfg.MaxCount)
	return g.Run(ctx)
}

// Ready reports whether the scheduler has read the inventory and can place.
func (s *Scheduler) Ready() bool { return s.idx.Synced() }

// serveRPC answers berth.v1.rpc.place and berth.v1.rpc.release until ctx ends.
func (s *Scheduler) serveRPC(ctx context.Context) error {
	if _, err := natsbus.HandleTyped(ctx, s.bus, subjects.RPCPlace, QueueGroup,
		func(ctx context.Context, req *inventoryv1.PlacementRequest) (*inventoryv1.PlacementReply, error) {
			start := time.Now()
			reply, err := s.Place(ctx, req)
			s.m.observe("rpc", reply, err, time.Since(start))
			return reply, err
		}, natsbus.WithConcurrency(s.cfg.Concurrency)); err != nil {
		return err
	}
	if _, err := natsbus.HandleTyped(ctx, s.bus, SubjectRPCRelease, QueueGroup, s.Release,
		natsbus.WithConcurrency(s.cfg.Concurrency)); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
