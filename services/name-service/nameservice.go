// Package nameservice is berth-name-service, Berth's authoritative name service (DESIGN §7):
// it follows the registered instances, traffic policies, service tree and inventory in
// coord, serves DNS for the zones it owns and an HTTP resolve/watch API with the traffic
// policy applied, and publishes each service's view on NATS (a subject and the berth-names
// key-value bucket) for agents. See README.md.
//
// Several replicas can run side by side: each reads coord with serializable reads, serves
// the same answers, and publishes the same views (subscribers keep the highest revision).
package nameservice

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berthdev/berth/pkg/apiaccess"
	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
	"github.com/berthdev/berth/services/name-service/internal/catalog"
	"github.com/berthdev/berth/services/name-service/internal/dnsserver"
	"github.com/berthdev/berth/services/name-service/internal/httpapi"
	"github.com/berthdev/berth/services/name-service/internal/publish"
)

// Deps are the parts the service uses and does not own: the caller connects them before
// New and closes them after Run returns.
type Deps struct {
	// Bus is the NATS connection. Required.
	Bus *natsbus.Bus
	// Coord is the coord client. Required.
	Coord *coordclient.Client
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the service's metrics (namespace berth, subsystem names); nil
	// means a registry of the service's own, served on /metrics.
	Registerer prometheus.Registerer
	// Gatherer is served on /metrics; nil means the service's own registry when Registerer
	// is nil, else Registerer when it is a Gatherer, else /metrics is not served.
	Gatherer prometheus.Gatherer
	// AuditCoord, when set, receives the API's audit records instead of Coord (tests give
	// a store that fails); used only with a tokens_file.
	AuditCoord apiaccess.Store
}

// Addrs are the addresses the service listens on.
type Addrs struct {
	DNSUDP, DNSTCP, HTTP net.Addr
}

// Service is one replica of the name service. Create it with New, then Run.
type Service struct {
	cfg    Config
	log    *slog.Logger
	coord  *coordclient.Client
	cat    *catalog.Catalog
	dns    *dnsserver.Server
	api    *httpapi.API
	pub    *publish.Publisher
	gather prometheus.Gatherer
	// httpTLS is the HTTP API's TLS, nil for plaintext.
	httpTLS *tls.Config
	// access guards the HTTP API; nil when there is no tokens_file (the API is open).
	access *apiaccess.Guard
	tokens *apitoken.Set

	mu    sync.Mutex
	addrs *Addrs
	httpL net.Listener
}

// New checks cfg and builds the service; it starts nothing and contacts nothing.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("name service config: %w", err)
	}
	if deps.Bus == nil || deps.Coord == nil {
		return nil, errors.New("name service: Deps.Bus and Deps.Coord are required")
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg, gather := deps.Registerer, deps.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg = r
		if gather == nil {
			gather = r
		}
	} else if g, ok := reg.(prometheus.Gatherer); ok && gather == nil {
		gather = g
	}
	subnets, _ := dnsview.ParseSubnets("dc_subnets", cfg.DCSubnets)
	nsAddrs, _ := cfg.nsAddrs()
	s := &Service{cfg: cfg, log: log, coord: deps.Coord, gather: gather}
	httpTLS, err := cfg.HTTPTLS.ServerTLS()
	if err != nil {
		return nil, fmt.Errorf("name service config: http_tls: %w", err)
	}
	s.httpTLS = httpTLS

	pub, err := publish.New(deps.Bus, "berth-name-service/"+cfg.Name, log, reg)
	if err != nil {
		return nil, err
	}
	invalid := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "invalid_values_total",
		Help: "Coord values ignored because they could not be decoded, by prefix."}, []string{"prefix"})
	changes := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "view_changes_total",
		Help: "Service views that changed."})
	s.pub = pub
	s.cat = catalog.New(catalog.Config{
		DefaultTTL: cfg.TTL, Subnets: subnets, Logger: log,
		OnChange: func(chs []catalog.Change) {
			changes.Add(float64(len(chs)))
			pub.Enqueue(chs)
		},
		OnInvalid: func(k catalog.Kind, _ string, _ error) { invalid.WithLabelValues(k.Prefix()).Inc() },
	})
	gauges := []prometheus.Collector{
		invalid, changes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "names", Name: "services",
			Help: "Known services."}, func() float64 { n, _ := s.cat.Count(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "names", Name: "instances",
			Help: "Registered instances."}, func() float64 { _, n := s.cat.Count(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "names", Name: "revision",
			Help: "Highest coord revision applied."}, func() float64 { return float64(s.cat.Revision()) }),
	}
	for _, c := range gauges {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("name service metrics: %w", err)
		}
	}
	s.dns, err = dnsserver.New(dnsserver.Config{
		Zones: cfg.Zones, TTL: cfg.TTL, NSAddrs: nsAddrs, MaxUDPSize: cfg.MaxUDPSize, UDPWorkers: cfg.UDPWorkers,
		RateLimit: cfg.RateLimit, RateBurst: cfg.RateBurst, RateSlip: cfg.RateSlip, Logger: log,
	}, s.cat, reg)
	if err != nil {
		return nil, err
	}
	s.api = httpapi.New(s.cat, deps.Coord, log)
	if cfg.TokensFile != "" {
		if s.tokens, err = apitoken.Load(cfg.TokensFile); err != nil {
			return nil, fmt.Errorf("name service config: tokens_file: %w", err)
		}
		var audit apiaccess.Store = deps.Coord
		if deps.AuditCoord != nil {
			audit = deps.AuditCoord
		}
		s.access, err = apiaccess.New(apiaccess.Config{Tokens: s.tokens, Rules: httpapi.AccessRules{}, Audit: audit, Bus: deps.Bus,
			Source: "berth-name-service/" + cfg.Name, Replica: cfg.Name, Realm: "berth-name-service", Subsystem: "names",
			WriteError: httpapi.WriteAccessError, Logger: log, Registerer: reg})
		if err != nil {
			return nil, fmt.Errorf("name service: %w", err)
		}
		s.api.UserFromToken()
	}
	return s, nil
}

// Listen binds the DNS sockets and the HTTP listener now (so that a caller using port 0
// learns the ports before Run) and returns their addresses. Run calls it when the caller
// did not.
func (s *Service) Listen() (Addrs, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addrs != nil {
		return *s.addrs, nil
	}
	u, t, err := s.dns.Listen(s.cfg.DNSAddr)
	if err != nil {
		return Addrs{}, err
	}
	l, err := certs.Listen(s.cfg.HTTPAddr, s.httpTLS)
	if err != nil {
		return Addrs{}, fmt.Errorf("http listen %s: %w", s.cfg.HTTPAddr, err)
	}
	s.httpL = l
	s.addrs = &Addrs{DNSUDP: u, DNSTCP: t, HTTP: l.Addr()}
	return *s.addrs, nil
}

// Ready returns nil once the first listing of every coord prefix has been applied.
func (s *Service) Ready(context.Context) error {
	if !s.cat.Loaded() {
		return errors.New("name service: catalog not loaded from coord yet")
	}
	return nil
}

// Run serves until ctx ends, then stops everything it started and returns. Answers before
// the first coord listing are NXDOMAIN or empty; /readyz says when it is done.
func (s *Service) Run(ctx context.Context) error {
	addrs, err := s.Listen()
	if err != nil {
		return err
	}
	s.log.Info("name service listening", "dns", addrs.DNSUDP.String(), "http", certs.Scheme(s.httpTLS)+"://"+addrs.HTTP.String(),
		"mutual_tls", s.cfg.HTTPTLS.Mutual(), "zones", s.cfg.Zones)
	if s.access != nil {
		s.log.Info("API access control on: tokens required, writes audited", "tokens", s.tokens.Len(), "file", s.cfg.TokensFile, "audit", s.access.AuditPrefix())
	} else {
		s.log.Warn("API access control off (no tokens_file): anyone who reaches the API may change traffic policies, and no audit records are written")
	}
	var g run.Group
	g.Add("publisher", s.pub.Run)
	g.Add("catalog", func(ctx context.Context) error { return s.cat.Sync(ctx, s.coord) })
	g.Add("dns", func(ctx context.Context) error { return s.dns.Run(ctx, s.cfg.DNSAddr) })
	g.Add("http", s.serveHTTP)
	err = g.Run(ctx)
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return err
}

func (s *Service) serveHTTP(ctx context.Context) error {
	mux := http.NewServeMux()
	s.api.Register(mux)
	if s.gather != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	var h http.Handler = mux
	if s.access != nil {
		h = s.access.Wrap(mux)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// Requests end with the service: blocking watches and event streams return at once.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.httpL) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
