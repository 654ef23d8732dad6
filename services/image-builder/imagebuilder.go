// Package imagebuilder is berth-image-builder (DESIGN §9): it answers "the image of
// version V of service S" with a digest. A request (BuildRequest: service, version,
// package URL and sha256) arrives over NATS, request/reply on berth.v1.rpc.build or through
// the BERTH_WORK queue on berth.v1.work.build. When the registry has
// <registry>/<service path>:<version> (or coord has its ImageRecord) the builder answers at
// once; otherwise it fetches the package (pkg/artifact), unpacks it safely
// (pkg/safeextract), checks its berth.yaml (pkg/descriptor), builds the service's base
// image plus the package with the Docker engine, pushes the image, records its digest in
// coord (/berth/images/<service path>/<version>, written only after the push) and
// publishes image.built (or image.failed, with the build log tail). One build per
// (service, version) runs at a time across all replicas (a coord lock); a request that
// arrives meanwhile waits for it and answers from its record.
//
// Failures are classified: infrastructure (registry, artifact server, Docker engine or
// coord unreachable: CODE_UNAVAILABLE, retried by the work queue) or application (a
// package without a valid berth.yaml, a checksum mismatch, a base image that does not
// exist: CODE_FAILED_PRECONDITION or CODE_INVALID_ARGUMENT, with what to do).
//
// Embedding (berth dev):
//
//	b, err := imagebuilder.New(cfg, imagebuilder.Deps{Bus: bus, Coord: coordClient, Logger: log, Registerer: reg})
//	...
//	if err := b.CheckEngine(ctx); err != nil { /* no Docker engine: run without container mode */ }
//	err = b.Run(ctx) // returns when ctx ends; wraps ErrEngineUnavailable when there is no engine
package imagebuilder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/admin"
	"github.com/berthdev/berth/pkg/artifact"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/image-builder/internal/engine"
	"github.com/berthdev/berth/services/image-builder/internal/registry"
)

// Subjects and coord paths of the builder.
const (
	// SubjectRPC is the request/reply subject of BuildRequest.
	SubjectRPC = subjects.RPCBuild
	// SubjectWork is the work-queue subject of BuildRequest (stream BERTH_WORK).
	SubjectWork = subjects.WorkBuild
	// ImagesPrefix is where ImageRecords live: ImagesPrefix/<service path>/<version>.
	ImagesPrefix = "/berth/images"
	// LocksPrefix is where build locks live: LocksPrefix/<service path>/<version>.
	LocksPrefix = "/berth/builder/locks"
	// TreePrefix is the service tree, read for the base_image label.
	TreePrefix = "/berth/tree"
	// BaseImageLabel is the service-tree label naming a service's base image; the nearest
	// node up the tree that sets it wins.
	BaseImageLabel = "base_image"
)

// Image event types (subjects.ImageEvent).
const (
	EventRequested = "requested"
	EventCached    = "cached"
	EventBuilt     = "built"
	EventFailed    = "failed"
)

// QueueGroup is the NATS queue group the replicas share.
const QueueGroup = "berth-image-builder"

// ErrEngineUnavailable is returned (wrapped, with the engine's address and the cause) by
// CheckEngine and Run when the Docker engine cannot be reached.
var ErrEngineUnavailable = engine.ErrUnavailable

// ErrNotRunning is returned by Build before Run has connected the builder.
var ErrNotRunning = errors.New("image builder: not running")

// Deps are what an embedding program may hand the builder instead of letting it connect
// itself. Every field is optional.
type Deps struct {
	// Bus is a connected NATS bus; when nil Run connects to Config.NATS. The builder never
	// closes a Bus it was given.
	Bus *natsbus.Bus
	// Coord is a coord client; when nil Run connects to Config.Coord. The builder never
	// closes a client it was given.
	Coord *coordclient.Client
	// Logger receives the builder's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means a registry of the builder's own, served on
	// Config.ListenMetrics.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics when Registerer is given; nil means Registerer when it is a
	// Gatherer.
	Gatherer prometheus.Gatherer
}

// Builder is a configured image-builder replica. Create it with New and start it with Run
// (once); Build may be called directly by an embedding program once Run has started.
type Builder struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	reg    prometheus.Registerer
	gat    prometheus.Gatherer
	m      *metrics
	labels map[string]string

	engine   *engine.Engine
	registry *registry.Client
	fetcher  *artifact.Fetcher
	// slots bounds the builds running at once.
	slots chan struct{}

	// ready is closed by Run once bus, coord and runCtx are set; nothing reads them before.
	ready  chan struct{}
	bus    *natsbus.Bus
	coord  *coordclient.Client
	runCtx context.Context
	// serving is closed once the request/reply handler is subscribed.
	serving chan struct{}
	// builds counts the build goroutines; Run waits for them before it returns.
	builds sync.WaitGroup

	// confirmMu guards confirmed, the registry confirmations of records: key
	// service@version, value the digest and when the registry confirmed it.
	confirmMu sync.Mutex
	confirmed map[string]confirmation

	// mu guards stopped, inflight and lockSession.
	mu sync.Mutex
	// stopped is set when Run ends; no build starts after it.
	stopped bool
	// inflight holds the build of each (service, version) this replica runs, so that a
	// second request waits for it instead of building again.
	inflight map[string]*flight
	// lockSession holds the build locks; replaced when it expires.
	lockSession *coordclient.Session
}

// confirmation is a registry answer that an image record's digest is the tag's.
type confirmation struct {
	digest string
	at     time.Time
}

// maxConfirmations bounds the confirmation cache; it is emptied when full.
const maxConfirmations = 10000

// flight is one build in progress; done is closed once failure is set.
type flight struct {
	done    chan struct{}
	reply   *imagev1.BuildReply
	failure *failure
}

// New checks cfg and returns a builder; it contacts nothing and starts nothing.
func New(cfg Config, deps Deps) (*Builder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("image builder config: %w", err)
	}
	labels, _ := cfg.labels()
	b := &Builder{cfg: cfg, deps: deps, log: deps.Logger, reg: deps.Registerer, gat: deps.Gatherer, labels: labels,
		slots: make(chan struct{}, cfg.Builds), ready: make(chan struct{}), serving: make(chan struct{}), inflight: map[string]*flight{},
		confirmed: map[string]confirmation{}}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	b.log = b.log.With("service", "image-builder")
	if b.reg == nil {
		r := prometheus.NewRegistry()
		b.reg, b.gat = r, r
	}
	if b.gat == nil {
		if g, ok := b.reg.(prometheus.Gatherer); ok {
			b.gat = g
		}
	}
	var err error
	if b.m, err = newMetrics(b.reg); err != nil {
		return nil, err
	}
	if b.engine, err = engine.New(cfg.DockerHost); err != nil {
		return nil, fmt.Errorf("image builder: %w", err)
	}
	b.registry, err = registry.New(registry.Config{Host: cfg.Registry, Endpoint: cfg.RegistryEndpoint, Insecure: cfg.RegistryInsecure(),
		Username: cfg.RegistryUsername, Password: cfg.RegistryPassword})
	if err != nil {
		return nil, fmt.Errorf("image builder: %w", err)
	}
	b.fetcher, err = artifact.New(artifact.Config{CacheDir: cfg.WorkDir + "/artifacts", MaxBytes: cfg.MaxPackageBytes, Registerer: b.reg})
	if err != nil {
		return nil, fmt.Errorf("image builder: %w", err)
	}
	return b, nil
}

// CheckEngine reports whether the Docker engine answers; the error wraps
// ErrEngineUnavailable when it does not, naming the address tried.
func (b *Builder) CheckEngine(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.engine.Ping(ctx); err != nil {
		return fmt.Errorf("image builder needs a Docker engine (set docker_host or $DOCKER_HOST): %w", err)
	}
	return nil
}

// Run checks the Docker engine, connects what Deps did not provide, and serves build
// requests until ctx ends; it then waits for the builds it started. It fails at once,
// wrapping ErrEngineUnavailable, when the engine cannot be reached.
func (b *Builder) Run(ctx context.Context) error {
	defer b.engine.Close()
	defer b.registry.Close()
	defer b.fetcher.Close()
	if err := b.CheckEngine(ctx); err != nil {
		return err
	}
	var err error
	// coord first, so that it is closed after the bus, whose close waits for the handlers
	// that still use coord.
	b.coord = b.deps.Coord
	if b.coord == nil {
		coordTLS, err := b.cfg.CoordTLS.ClientTLS("")
		if err != nil {
			return fmt.Errorf("coord_tls: %w", err)
		}
		b.coord, err = coordclient.New(ctx, coordclient.Config{Endpoints: b.cfg.CoordEndpoints(), Logger: b.log, TLS: coordTLS})
		if err != nil {
			return fmt.Errorf("connect to coord %v: %w", b.cfg.CoordEndpoints(), err)
		}
		defer b.coord.Close()
	}
	b.bus = b.deps.Bus
	if b.bus == nil {
		ncfg := natsbus.Config{URLs: b.cfg.NATSURLs(), Name: "berth-image-builder/" + b.cfg.Name,
			Source: "berth-image-builder/" + b.cfg.Name, Logger: b.log, Registerer: b.reg}
		if err := b.cfg.NATSAuth.Apply(&ncfg); err != nil {
			return err
		}
		b.bus, err = natsbus.Connect(ctx, ncfg)
		if err != nil {
			return err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = b.bus.Close(cctx)
		}()
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	b.runCtx = runCtx
	close(b.ready)
	// Builds run on runCtx: stop them, refuse new ones and wait for them, then close the
	// lock session, before the deferred closes of coord and the bus above run.
	defer b.closeSession(ctx)
	defer func() {
		cancel()
		b.mu.Lock()
		b.stopped = true
		b.mu.Unlock()
		b.builds.Wait()
	}()

	g := &run.Group{}
	if b.cfg.ListenMetrics != "" {
		if b.gat == nil {
			return errors.New("image builder: listen_metrics is set but the Registerer given is not a Gatherer; pass Deps.Gatherer")
		}
		srv := admin.New(b.cfg.ListenMetrics, b.gat)
		httpTLS, err := b.cfg.HTTPTLS.ServerTLS()
		if err != nil {
			return fmt.Errorf("http_tls: %w", err)
		}
		srv.UseTLS(httpTLS)
		srv.AddCheck("docker-engine", func(ctx context.Context) error { return b.engine.Ping(ctx) })
		srv.AddCheck("registry", func(ctx context.Context) error { return b.registry.Ping(ctx) })
		addr, err := srv.Listen()
		if err != nil {
			return err
		}
		b.log.Info("admin endpoints", "addr", addr.String())
		g.Add("admin", srv.Run)
	}
	g.Add("rpc", b.serveRPC)
	g.Add("work", b.consumeWork)
	b.log.Info("image builder started", "name", b.cfg.Name, "engine", b.engine.Host(), "registry", b.cfg.Registry,
		"default_base", b.cfg.BaseImage())
	return g.Run(runCtx)
}

// serveRPC answers berth.v1.rpc.build until ctx ends.
func (b *Builder) serveRPC(ctx context.Context) error {
	if _, err := natsbus.HandleTyped(ctx, b.bus, SubjectRPC, QueueGroup,
		func(ctx context.Context, req *imagev1.BuildRequest) (*imagev1.BuildReply, error) {
			if req.GetRequestId() == "" {
				if meta, ok := natsbus.MetaFromContext(ctx); ok {
					req.RequestId = meta.ID
				}
			}
			reply, f := b.resolve(ctx, req)
			b.countRequest("rpc", reply, f)
			if f != nil {
				return nil, f.status()
			}
			return reply, nil
		}, natsbus.WithConcurrency(b.cfg.Concurrency)); err != nil {
		return err
	}
	close(b.serving)
	<-ctx.Done()
	return nil
}

// Ready reports whether the builder answers on berth.v1.rpc.build.
func (b *Builder) Ready() bool {
	select {
	case <-b.serving:
		return true
	default:
		return false
	}
}

// Build answers req as berth.v1.rpc.build does: the image's reply, or a
// *natsbus.StatusError whose details carry failure_class and build_log. It may be called
// once Run has started (ErrNotRunning before).
func (b *Builder) Build(ctx context.Context, req *imagev1.BuildRequest) (*imagev1.BuildReply, error) {
	select {
	case <-b.ready:
	default:
		return nil, fmt.Errorf("build %s %s: %w", req.GetService(), req.GetVersion(), ErrNotRunning)
	}
	reply, f := b.resolve(ctx, req)
	b.countRequest("direct", reply, f)
	if f != nil {
		return nil, f.status()
	}
	return reply, nil
}

func (b *Builder) countRequest(source string, reply *imagev1.BuildReply, f *failure) {
	outcome := "built"
	switch {
	case f != nil && f.class == imagev1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE:
		outcome = "infrastructure"
	case f != nil:
		outcome = "application"
	case reply.GetCached():
		outcome = "cached"
	}
	b.m.requests.WithLabelValues(source, outcome).Inc()
}

// session returns the coord session that holds build locks, opening a new one when there
// is none or the last one ended. The session lives on the builder's own context, not on
// one build's: it is shared by every build of the replica and closed when Run ends.
func (b *Builder) session() (*coordclient.Session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lockSession != nil && b.lockSession.Err() == nil {
		return b.lockSession, nil
	}
	s, err := b.coord.NewSession(b.runCtx, b.cfg.LockTTL)
	if err != nil {
		return nil, fmt.Errorf("open coord session for build locks: %w", err)
	}
	b.lockSession = s
	return s, nil
}

// closeSession closes the lock session, releasing any lock still held.
func (b *Builder) closeSession(ctx context.Context) {
	b.mu.Lock()
	s := b.lockSession
	b.lockSession = nil
	b.mu.Unlock()
	if s == nil {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.Close(cctx); err != nil {
		b.log.Warn("close build-lock session", "err", err)
	}
}
