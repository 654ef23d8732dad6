// Package agent is berth-agent, the client on every host (DESIGN §1, §5, §7): it answers
// step requests from controllers over NATS, runs task plugins (executables from its local
// plugin directories and the built-in package-deploy and container-deploy plugins) exactly
// once per step across its own restarts, streams their output and publishes their results,
// and keeps its presence and fingerprint in coord (/berth/alive/<host>, ephemeral in its
// session). It registers the instances of the apps on its host in the same session once
// their health checks pass, keeps checking them, renders their configuration templates
// from the name service's views, drains them before they stop, and serves a local caching
// DNS resolver and a local HTTP name API from the same views.
//
// Embedding (berth dev):
//
//	a, err := agent.New(cfg, agent.Deps{Bus: bus, Coord: coordClient, Logger: log, Registerer: reg})
//	...
//	err = a.Run(ctx) // returns when ctx ends, after draining running steps
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/admin"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent/internal/apps"
	"github.com/berthdev/berth/services/agent/internal/configkeys"
	"github.com/berthdev/berth/services/agent/internal/ctrdeploy"
	"github.com/berthdev/berth/services/agent/internal/docker"
	"github.com/berthdev/berth/services/agent/internal/hostinfo"
	"github.com/berthdev/berth/services/agent/internal/instances"
	"github.com/berthdev/berth/services/agent/internal/journal"
	"github.com/berthdev/berth/services/agent/internal/nameapi"
	"github.com/berthdev/berth/services/agent/internal/pkgdeploy"
	"github.com/berthdev/berth/services/agent/internal/plugin"
	"github.com/berthdev/berth/services/agent/internal/presence"
	"github.com/berthdev/berth/services/agent/internal/report"
	"github.com/berthdev/berth/services/agent/internal/resolver"
	"github.com/berthdev/berth/services/agent/internal/step"
	"github.com/berthdev/berth/services/agent/internal/tmpl"
	"github.com/berthdev/berth/services/agent/internal/views"
)

// Version is the agent's version, set at build time with
// -ldflags "-X github.com/berthdev/berth/services/agent.Version=1.2.3"; when empty the
// module version from the build info is used.
var Version = ""

// version returns Version or the build info's.
func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// Deps are what an embedding program may hand the agent instead of letting it connect
// itself. Every field is optional.
type Deps struct {
	// Bus is a connected NATS bus; when nil Run connects to Config.NATS and closes the
	// connection when it returns. The agent never closes a Bus it was given.
	Bus *natsbus.Bus
	// Coord is a coord client; when nil and Config.Coord is set Run connects. The agent
	// never closes a client it was given.
	Coord *coordclient.Client
	// Presence replaces the coord store behind the alive node (tests, other stores); it
	// wins over Coord.
	Presence presence.Store
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the agent's metrics; nil means a registry of the agent's own,
	// served on Config.ListenMetrics.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics when Registerer is given; nil means Registerer when it is a
	// Gatherer (a *prometheus.Registry).
	Gatherer prometheus.Gatherer
}

// Agent is a configured agent. Create it with New and start it with Run, once.
type Agent struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	reg  prometheus.Registerer
	gat  prometheus.Gatherer

	// steps is the step server once Run created it.
	steps atomic.Pointer[step.Server]
	// runner is the plugin runner once Run created it (the fingerprint lists its plugins).
	runner atomic.Pointer[plugin.Runner]
	// addrs are the listeners' addresses once Run bound them.
	addrs atomic.Pointer[Addrs]
	// inst is the instance manager once Run created it.
	inst atomic.Pointer[instances.Manager]
	// apps is the host's apps once Run created them.
	apps atomic.Pointer[apps.Apps]
}

// StaticErrors returns the services.d files the agent refused and why (each error names
// the file and, where it can, the line), once Run loaded them.
func (a *Agent) StaticErrors() map[string]error {
	ap := a.apps.Load()
	if ap == nil {
		return nil
	}
	return ap.Refused()
}

// Addrs are the addresses the agent's local listeners are bound to (nil when off).
type Addrs struct {
	DNS, NameAPI net.Addr
}

// Addrs returns the listeners' addresses once Run bound them, else nil.
func (a *Agent) Addrs() *Addrs { return a.addrs.Load() }

// Instance is an instance of this host as the agent sees it.
type Instance = instances.Status

// Instances returns the instances the agent checks (nil before Run).
func (a *Agent) Instances() []Instance {
	m := a.inst.Load()
	if m == nil {
		return nil
	}
	return m.List()
}

// Ready reports whether the agent is taking steps: Run has started, subscribed to the
// host's step subject, and is not stopping.
func (a *Agent) Ready(ctx context.Context) error {
	s := a.steps.Load()
	if s == nil {
		return errors.New("agent not started")
	}
	return s.Ready(ctx)
}

// New checks cfg and returns an agent; it starts nothing and touches nothing on disk.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	a := &Agent{cfg: cfg, deps: deps, log: deps.Logger, reg: deps.Registerer, gat: deps.Gatherer}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.log = a.log.With("service", "agent", "host", cfg.HostID)
	if a.reg == nil {
		r := prometheus.NewRegistry()
		a.reg, a.gat = r, r
	}
	if a.gat == nil {
		if g, ok := a.reg.(prometheus.Gatherer); ok {
			a.gat = g
		}
	}
	return a, nil
}

// Run starts the agent and blocks until ctx ends; it then stops taking steps, waits up to
// DrainTimeout for running ones, leaves the coord session (deleting the alive node) and
// returns. It fails at once when the data directory is locked by another agent, the
// journal is corrupt, or NATS cannot be reached.
func (a *Agent) Run(ctx context.Context) error {
	started := time.Now()
	if err := os.MkdirAll(a.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("agent data directory: %w", err)
	}
	unlock, err := lockDir(a.cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()

	j, interrupted, err := journal.Open(filepath.Join(a.cfg.DataDir, "journal"), journal.Options{Retention: a.cfg.JournalRetention})
	if err != nil {
		return err
	}
	defer j.Close()

	bus := a.deps.Bus
	if bus == nil {
		ncfg := natsbus.Config{URLs: a.cfg.NATSURLs(), Name: "berth-agent/" + a.cfg.HostID,
			Logger: a.log, Registerer: a.reg}
		if err := a.cfg.NATSAuth.Apply(&ncfg); err != nil {
			return err
		}
		bus, err = natsbus.Connect(ctx, ncfg)
		if err != nil {
			return err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = bus.Close(cctx)
		}()
	}

	store := a.deps.Presence
	coord := a.deps.Coord
	if coord == nil && len(a.cfg.CoordEndpoints()) > 0 {
		coordTLS, err := a.cfg.CoordTLS.ClientTLS("")
		if err != nil {
			return fmt.Errorf("coord_tls: %w", err)
		}
		cc, err := coordclient.New(ctx, coordclient.Config{Endpoints: a.cfg.CoordEndpoints(), Logger: a.log, TLS: coordTLS})
		if err != nil {
			return fmt.Errorf("connect to coord %v: %w", a.cfg.CoordEndpoints(), err)
		}
		defer cc.Close()
		coord = cc
	}
	if store == nil && coord != nil {
		store = presence.FromClient(coord)
	}
	var keeper *presence.Keeper
	if store != nil {
		keeper = presence.New(presence.Config{
			Host:       a.cfg.HostID,
			SessionTTL: a.cfg.SessionTTL,
			Logger:     a.log,
			Gather: func(ctx context.Context) *agentv1.AgentInfo {
				return hostinfo.Gather(ctx, hostinfo.Options{HostID: a.cfg.HostID, DC: a.cfg.DC, Version: version(),
					DataDir: a.cfg.DataDir, DockerHost: a.cfg.DockerHost, Plugins: a.plugins(), StartedAt: started})
			},
		}, store)
	}

	// Names: events, views, config keys, instances, templates, and the apps that use them.
	rep, err := report.New(bus, "berth-agent/"+a.cfg.HostID, a.log, a.reg)
	if err != nil {
		return err
	}
	follower, err := views.New(views.FromBus(bus), views.Config{Idle: a.cfg.Views.Idle, Resync: a.cfg.Views.Resync, Logger: a.log, Registerer: a.reg})
	if err != nil {
		return err
	}
	var keys *configkeys.Cache
	var tree apps.Tree
	if coord != nil {
		keys = configkeys.New(coord, a.log)
		tree = coord
	}
	ip := a.cfg.advertiseIP()
	icfg := instances.Config{Host: a.cfg.HostID, DC: a.cfg.DC, IP: ip,
		FlapChanges: a.cfg.Health.FlapChanges, FlapWindow: a.cfg.Health.FlapWindow,
		Pending:  func(err error) bool { return errors.Is(err, presence.ErrNoSession) },
		Reporter: rep, Logger: a.log, Registerer: a.reg}
	if keeper != nil {
		icfg.Registrar = keeper
	}
	inst, err := instances.New(icfg)
	if err != nil {
		return err
	}
	tcfg := tmpl.Config{Host: a.cfg.HostID, DC: a.cfg.DC, Views: follower, CheckTimeout: a.cfg.Deploy.ScriptTimeout,
		KillGrace: a.cfg.KillGrace, Path: a.cfg.PluginPath, Reporter: rep, Logger: a.log, Registerer: a.reg}
	if keys != nil {
		tcfg.Keys = keys
	}
	templates, err := tmpl.New(tcfg)
	if err != nil {
		return err
	}
	hostApps, err := apps.New(apps.Config{Host: a.cfg.HostID, DC: a.cfg.DC, Instances: inst, Templates: templates, Tree: tree,
		DefaultTTL: a.cfg.Drain.DefaultTTL, DrainMax: a.cfg.Drain.MaxWait, StaticDir: a.cfg.staticDir(),
		Path: a.cfg.PluginPath, Facts: map[string]string{"BERTH_HOST_ID": a.cfg.HostID, "BERTH_DC": a.cfg.DC, "BERTH_IP": ip},
		ScriptTimeout: a.cfg.Deploy.ScriptTimeout, KillGrace: a.cfg.KillGrace, Logger: a.log, Registerer: a.reg})
	if err != nil {
		return err
	}
	defer hostApps.Close()
	a.apps.Store(hostApps)
	defer a.apps.Store(nil)

	facts := map[string]string{"BERTH_HOST_ID": a.cfg.HostID, "BERTH_DATA_DIR": a.cfg.DataDir, "BERTH_IP": ip}
	if a.cfg.DC != "" {
		facts["BERTH_DC"] = a.cfg.DC
	}
	deploy, err := pkgdeploy.New(pkgdeploy.Config{
		AppsDir:         filepath.Join(a.cfg.DataDir, "apps"),
		CacheDir:        filepath.Join(a.cfg.DataDir, "cache"),
		Path:            a.cfg.PluginPath,
		Facts:           facts,
		KeepReleases:    a.cfg.Deploy.KeepReleases,
		ScriptTimeout:   a.cfg.Deploy.ScriptTimeout,
		HealthDeadline:  a.cfg.Deploy.HealthDeadline,
		FetchTimeout:    a.cfg.Deploy.FetchTimeout,
		MaxPackageBytes: a.cfg.Deploy.MaxPackageBytes,
		KillGrace:       a.cfg.KillGrace,
		Registerer:      a.reg,
		Lifecycle:       hostApps,
	})
	if err != nil {
		return err
	}
	// Apps left running by the agent's last life, and static ones: checked, registered once
	// healthy, their templates rendered.
	running, rerrs := deploy.Running()
	for _, err := range rerrs {
		a.log.Error("a deployed release cannot be checked", "err", err)
	}
	hostApps.Resume(ctx, running)
	hostApps.LoadStatic(ctx)
	builtinList := []plugin.Builtin{deploy}
	containers, engine, err := a.containers(ctx, inst, hostApps)
	if err != nil {
		return err
	}
	if engine != nil {
		// Closed after every part stopped (the instance checks use it).
		defer engine.Close()
	}
	if containers != nil {
		builtinList = append(builtinList, containers)
	}
	builtins, err := plugin.NewRegistry(builtinList...)
	if err != nil {
		return err
	}
	runner, err := plugin.NewRunner(plugin.Config{
		Dirs:           a.cfg.PluginDirs,
		Builtins:       builtins,
		Path:           a.cfg.PluginPath,
		Facts:          facts,
		MaxOutputBytes: a.cfg.MaxOutputBytes,
		KillGrace:      a.cfg.KillGrace,
		WorkDir:        filepath.Join(a.cfg.DataDir, "work"),
	})
	if err != nil {
		return err
	}
	steps, err := step.New(step.Config{
		Host:           a.cfg.HostID,
		DC:             a.cfg.DC,
		MaxConcurrent:  a.cfg.MaxConcurrentSteps,
		MaxQueued:      a.cfg.MaxQueuedSteps,
		DefaultTimeout: a.cfg.DefaultStepTimeout,
		MaxTimeout:     a.cfg.MaxStepTimeout,
		DrainTimeout:   a.cfg.DrainTimeout,
		MaxOutputBytes: a.cfg.MaxOutputBytes,
		Logger:         a.log,
		Registerer:     a.reg,
	}, j, interrupted, runner, bus)
	if err != nil {
		return err
	}
	a.runner.Store(runner)

	addrs := &Addrs{}
	var res *resolver.Resolver
	if a.cfg.DNSListen != "" {
		res, err = resolver.New(resolver.Config{Listen: a.cfg.DNSListen, Zones: a.cfg.DNS.Zones, DC: a.cfg.DC, Upstreams: a.cfg.DNS.Upstreams,
			CacheSize: a.cfg.DNS.CacheSize, MaxTTL: a.cfg.DNS.MaxTTL, Logger: a.log, Registerer: a.reg}, follower)
		if err != nil {
			return err
		}
		if addrs.DNS, err = res.Listen(); err != nil {
			return err
		}
		a.log.Info("local resolver", "addr", addrs.DNS.String(), "upstreams", res.Upstreams())
	}
	var api *nameapi.API
	if a.cfg.NameAPIListen != "" {
		apiTLS, err := a.cfg.nameAPITLS()
		if err != nil {
			return err
		}
		api, err = nameapi.New(nameapi.Config{Listen: a.cfg.NameAPIListen, DC: a.cfg.DC, Logger: a.log, Registerer: a.reg, TLS: apiTLS}, follower)
		if err != nil {
			return err
		}
		if addrs.NameAPI, err = api.Listen(); err != nil {
			return err
		}
		a.log.Info("local name API", "addr", addrs.NameAPI.String())
	}
	a.addrs.Store(addrs)
	a.inst.Store(inst)
	defer a.inst.Store(nil)

	a.steps.Store(steps)
	defer a.steps.Store(nil)

	g := &run.Group{StopTimeout: a.cfg.DrainTimeout + a.cfg.KillGrace + 5*time.Second}
	var srv *admin.Server
	if a.cfg.ListenMetrics != "" {
		if a.gat == nil {
			return errors.New("agent: listen_metrics is set but the Registerer given is not a Gatherer; pass Deps.Gatherer")
		}
		srv = admin.New(a.cfg.ListenMetrics, a.gat)
		httpTLS, err := a.cfg.HTTPTLS.ServerTLS()
		if err != nil {
			return fmt.Errorf("http_tls: %w", err)
		}
		srv.UseTLS(httpTLS)
		srv.AddCheck("steps", steps.Ready)
		addr, err := srv.Listen()
		if err != nil {
			return err
		}
		a.log.Info("admin endpoints", "addr", addr.String())
	}
	// Parts stop in the reverse order: steps first (running deploys finish their drains),
	// the session last but the views, so that instances stay registered while anything
	// still uses them.
	g.Add("events", rep.Run)
	g.Add("views", follower.Run)
	if keys != nil {
		g.Add("config-keys", keys.Run)
	}
	if keeper != nil {
		if srv != nil {
			srv.AddCheck("coord", keeper.Ready)
		}
		g.Add("presence", keeper.Run)
	} else {
		a.log.Warn("no coord configured: this agent keeps no alive node and registers no instance, so the fleet does not see it")
	}
	g.Add("instances", inst.Run)
	g.Add("templates", templates.Run)
	if res != nil {
		g.Add("resolver", res.Run)
	}
	if api != nil {
		g.Add("name-api", api.Run)
	}
	g.Add("steps", steps.Run)
	if srv != nil {
		g.Add("admin", srv.Run)
	}
	a.log.Info("agent started", "version", version(), "data_dir", a.cfg.DataDir, "plugins", runner.Available(), "nats", bus.URL())
	return g.Run(ctx)
}

// containers makes the container-deploy plugin when it is enabled — with containers.enabled
// auto, when the engine answers a ping now — and adopts the containers it made before:
// running ones are registered again once healthy. It returns nil and nil when the plugin is
// off; the engine client, when returned, is the caller's to close.
func (a *Agent) containers(ctx context.Context, inst *instances.Manager, hostApps *apps.Apps) (*ctrdeploy.Plugin, *docker.Client, error) {
	c := a.cfg.Containers
	if c.Enabled == ContainersOff {
		return nil, nil, nil
	}
	host, skip := a.cfg.containersHost()
	if skip {
		return nil, nil, nil // Validate refused containers.enabled true with no engine
	}
	engine, err := docker.New(host)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: containers: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	perr := engine.Ping(pctx)
	cancel()
	if perr != nil && c.Enabled == ContainersAuto {
		engine.Close()
		a.log.Info("container-deploy off: the Docker engine does not answer", "docker_host", host, "err", perr)
		return nil, nil, nil
	}
	p, err := ctrdeploy.New(ctrdeploy.Config{Host: a.cfg.HostID, DC: a.cfg.DC, Engine: engine, Network: c.Network, CapAdd: c.CapAllow,
		HealthDeadline: a.cfg.Deploy.HealthDeadline, StopTimeout: c.StopTimeout, Instances: inst, Drainer: hostApps, Logger: a.log})
	if err != nil {
		engine.Close()
		return nil, nil, err
	}
	if perr != nil {
		a.log.Warn("container-deploy on, but the Docker engine does not answer: its steps are retried until it does, and containers left running are not adopted",
			"docker_host", host, "err", perr)
		return p, engine, nil
	}
	if err := p.Adopt(ctx); err != nil {
		a.log.Error("containers left running cannot be adopted", "err", err)
	}
	a.log.Info("container-deploy on", "docker_host", host, "network", c.Network)
	return p, engine, nil
}

// plugins lists the plugins available, for the fingerprint.
func (a *Agent) plugins() []string {
	if r := a.runner.Load(); r != nil {
		return r.Available()
	}
	return nil
}

// lockDir takes an exclusive lock on dir/agent.lock so that two agents never share a data
// directory (and a journal).
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, "agent.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data directory %s is in use by another agent (%s is locked)", dir, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
