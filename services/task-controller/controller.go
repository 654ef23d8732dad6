// Package controller is berth-controller, Berth's control center (DESIGN §1, §2, §6): it
// takes deployments and generic tasks on an HTTP API, records them in coord, and — on the
// one replica that wins the "controller" election — runs them: plans batches, sends steps
// to agents over NATS, enforces the strategy (ramp, window, pause/resume/abort, failure
// budget, deadlines, rollback) and publishes every transition as an event.
//
// Every replica serves the API. The leader writes only with transactions fenced by its
// leadership token and sends that token with every step, so a deposed leader can neither
// write nor act. A new leader re-reads every active run from coord and carries it on.
//
// Embedding (berth dev):
//
//	c, err := controller.New(cfg, controller.Deps{Bus: bus, Coord: coordClient, Logger: log, Registerer: reg})
//	...
//	err = c.Run(ctx) // returns when ctx ends
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/admin"
	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
	"github.com/berthdev/berth/services/task-controller/internal/access"
	"github.com/berthdev/berth/services/task-controller/internal/api"
	"github.com/berthdev/berth/services/task-controller/internal/console"
	"github.com/berthdev/berth/services/task-controller/internal/engine"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

// Deps are what an embedding program may hand the controller instead of letting it
// connect itself. Every field is optional.
type Deps struct {
	// Bus is a connected NATS bus; when nil Run connects to Config.NATS. The controller
	// never closes a Bus it was given.
	Bus *natsbus.Bus
	// Coord is a coord client; when nil Run connects to Config.Coord. The controller never
	// closes a client it was given.
	Coord *coordclient.Client
	// Logger receives the logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means a registry of the controller's own.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; nil means Registerer when it is a Gatherer.
	Gatherer prometheus.Gatherer
	// AuditCoord, when set, receives the API's audit records instead of Coord (a
	// separate coord cluster for them). The controller never closes it.
	AuditCoord *coordclient.Client
}

// Controller is one berth-controller replica. Create it with New and start it with Run,
// once.
type Controller struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	reg  prometheus.Registerer
	gat  prometheus.Gatherer
	m    *engine.Metrics

	srv    *admin.Server
	extra  *admin.Server
	addr   net.Addr
	tokens *apitoken.Set
}

// New checks cfg and returns a replica; it starts nothing.
func New(cfg Config, deps Deps) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("controller config: %w", err)
	}
	c := &Controller{cfg: cfg, deps: deps, log: deps.Logger, reg: deps.Registerer, gat: deps.Gatherer}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("service", "controller", "replica", cfg.Replica)
	if c.reg == nil {
		r := prometheus.NewRegistry()
		c.reg, c.gat = r, r
	}
	if c.gat == nil {
		if g, ok := c.reg.(prometheus.Gatherer); ok {
			c.gat = g
		} else {
			c.gat = prometheus.NewRegistry()
		}
	}
	m, err := engine.NewMetrics(c.reg)
	if err != nil {
		return nil, err
	}
	c.m = m
	httpTLS, err := cfg.HTTPTLS.ServerTLS()
	if err != nil {
		return nil, fmt.Errorf("controller config: http_tls: %w", err)
	}
	c.srv = admin.New(cfg.Listen, c.gat)
	c.srv.UseTLS(httpTLS)
	if cfg.ListenMetrics != "" {
		c.extra = admin.New(cfg.ListenMetrics, c.gat)
		c.extra.UseTLS(httpTLS)
	}
	if cfg.TokensFile != "" {
		if c.tokens, err = apitoken.Load(cfg.TokensFile); err != nil {
			return nil, fmt.Errorf("controller config: tokens_file: %w", err)
		}
	}
	return c, nil
}

// Listen binds the API address now (Run does it otherwise) and returns it, so that a
// caller that asked for port 0 learns the port before Run.
func (c *Controller) Listen() (net.Addr, error) {
	addr, err := c.srv.Listen()
	if err != nil {
		return nil, err
	}
	c.addr = addr
	return addr, nil
}

// Run serves the API and takes part in the election until ctx ends. A leader resigns on
// the way out, so that another replica takes over at once.
func (c *Controller) Run(ctx context.Context) error {
	addr, err := c.Listen()
	if err != nil {
		return err
	}
	bus := c.deps.Bus
	if bus == nil {
		ncfg := natsbus.Config{URLs: splitList(c.cfg.NATS), Name: "berth-controller/" + c.cfg.Replica,
			Source: c.source(), Logger: c.log, Registerer: c.reg}
		if err := c.cfg.NATSAuth.Apply(&ncfg); err != nil {
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
	cc := c.deps.Coord
	if cc == nil {
		eps := splitList(c.cfg.Coord)
		if len(eps) == 0 {
			return errNoCoord
		}
		coordTLS, err := c.cfg.CoordTLS.ClientTLS("")
		if err != nil {
			return fmt.Errorf("coord_tls: %w", err)
		}
		cc, err = coordclient.New(ctx, coordclient.Config{Endpoints: eps, Logger: c.log, TLS: coordTLS})
		if err != nil {
			return fmt.Errorf("connect to coord %v: %w", eps, err)
		}
		defer cc.Close()
	}
	if c.cfg.EnsureStreams {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := bus.EnsureStreams(sctx, natsbus.StreamConfig{})
		cancel()
		if err != nil {
			c.log.Warn("streams not ensured; events may not be stored", "err", err)
		}
	}
	names, err := ParseNamesURL(c.cfg.NamesURL)
	if err != nil {
		return fmt.Errorf("names_url: %w", err)
	}
	apiOpts := api.Options{NamesURL: names, Done: ctx.Done()}
	if names != nil && names.Scheme == "https" && c.cfg.HTTPTLS.Enabled() {
		// The controller shows the name service its own certificate and trusts its CA.
		namesTLS, err := c.cfg.HTTPTLS.ClientTLS("")
		if err != nil {
			return fmt.Errorf("http_tls: %w", err)
		}
		apiOpts.NamesClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: namesTLS}}
	}
	a, err := api.New(cc, bus, c.source(), c.log, c.reg, apiOpts)
	if err != nil {
		return err
	}
	a.Register(c.srv)
	if c.tokens != nil {
		var audit access.Store = cc
		if c.deps.AuditCoord != nil {
			audit = c.deps.AuditCoord
		}
		acc, err := access.New(access.Config{Tokens: c.tokens, Coord: cc, Audit: audit, Bus: bus, Source: c.source(),
			Replica: c.cfg.Replica, Logger: c.log, Registerer: c.reg})
		if err != nil {
			return err
		}
		c.srv.Wrap(acc.Wrap)
		c.log.Info("API access control on: tokens required, writes audited", "tokens", c.tokens.Len(), "file", c.cfg.TokensFile, "audit", access.AuditPrefix)
	} else {
		c.log.Warn("API access control off (no tokens_file): anyone who reaches the API may deploy and edit the service tree, and no audit records are written")
	}
	console.Register(c.srv)
	c.srv.Handle("GET /v1/leader", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l, err := cc.Leader(r.Context(), model.LeaderRole)
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, `{"code":"unavailable","message":%q}`+"\n", err.Error())
			return
		}
		fmt.Fprintf(w, `{"replica":%q,"token":%d}`+"\n", string(l.Value), l.Token)
	}))
	check := func(ctx context.Context) error {
		if _, err := cc.Leader(ctx, model.LeaderRole); err != nil {
			return fmt.Errorf("no controller leader: %w", err)
		}
		return nil
	}
	c.srv.AddCheck("leader", check)
	g := &run.Group{StopTimeout: 15 * time.Second}
	g.Add("api", c.srv.Run)
	if c.extra != nil {
		c.extra.AddCheck("leader", check)
		g.Add("metrics", c.extra.Run)
	}
	g.Add("elector", func(ctx context.Context) error { return c.elect(ctx, bus, cc) })
	c.log.Info("controller started", "api", certs.Scheme(c.srv.TLS())+"://"+addr.String(), "mutual_tls", c.cfg.HTTPTLS.Mutual())
	return g.Run(ctx)
}

func (c *Controller) source() string { return "berth-controller/" + c.cfg.Replica }

// elect campaigns for the leadership and runs the engine while leading, again and again,
// until ctx ends.
func (c *Controller) elect(ctx context.Context, bus *natsbus.Bus, cc *coordclient.Client) error {
	var sess *coordclient.Session
	defer func() {
		if sess != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = sess.Close(cctx)
			cancel()
		}
	}()
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
			return true
		}
	}
	for ctx.Err() == nil {
		if sess == nil || sess.Err() != nil {
			s, err := cc.NewSession(ctx, c.cfg.SessionTTL)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Warn("open coord session", "err", err)
				}
				if !pause() {
					return nil
				}
				continue
			}
			sess = s
		}
		lead, err := cc.Campaign(ctx, sess, model.LeaderRole, []byte(c.cfg.Replica))
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("campaign", "err", err)
			}
			if !pause() {
				return nil
			}
			continue
		}
		won := time.Now()
		c.log.Info("won the controller election", "token", lead.Token())
		eng := engine.New(engine.Config{Source: c.source(), RequestTimeout: c.cfg.StepRequestTimeout,
			RetryBackoff: c.cfg.RetryBackoff, RetryBackoffMax: c.cfg.RetryBackoffMax, PollInterval: c.cfg.PollInterval,
			ResultGrace: c.cfg.ResultGrace}, bus, cc, lead, won, c.log, c.m)
		err = eng.Run(ctx)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = lead.Resign(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, engine.ErrLeadershipLost):
			c.log.Warn("leadership lost; campaigning again")
		case err != nil:
			c.log.Error("leader stopped", "err", err)
			if !pause() {
				return nil
			}
		}
	}
	return nil
}
