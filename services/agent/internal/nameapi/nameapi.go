// Package nameapi is the agent's local HTTP name API (DESIGN §7, Elong's to-do): apps on
// the host resolve services, watch them with blocking queries, and register callbacks that
// the agent calls with each new view — all answered from the views the agent follows on
// NATS (package views), with the name service's selection code (pkg/dnsview) for the
// host's datacenter, so they keep working from the last views when the control plane is
// unreachable.
//
//	GET    /v1/resolve/<service>[?dc=&family=ipv4|ipv6]   the selected instances
//	GET    /v1/watch/<service>?index=N[&wait=30s]          the view once its revision > N
//	POST   /v1/callbacks {"service","url"}                 call url with each new view
//	GET    /v1/callbacks                                   the registered callbacks
//	DELETE /v1/callbacks/<id>                              remove one
//
// Callback URLs must be http:// on a loopback address (127.0.0.0/8, ::1, localhost), and
// the agent only ever connects to loopback addresses for them and follows no redirects:
// the API cannot be used to make the agent call other hosts. Callbacks live in memory:
// they are gone when the agent restarts (apps register again, as with any watch).
package nameapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/dnsview"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent/internal/views"
)

// Defaults and limits.
const (
	DefaultWait     = 30 * time.Second
	MaxWait         = 10 * time.Minute
	MaxCallbacks    = 256
	callbackTimeout = 5 * time.Second
	firstWait       = time.Second
	maxBody         = 64 << 10
)

// Views is what the API needs from the view follower.
type Views interface {
	Touch(service string) error
	Hold(service string) (release func(), err error)
	Get(service string) views.Snapshot
	Wait(ctx context.Context, service string) views.Snapshot
}

// Config configures the API.
type Config struct {
	// Listen is host:port.
	Listen string
	// DC is the host's datacenter, the default client datacenter of resolve.
	DC string
	// Logger receives problems; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// TLS, when set, serves the API over HTTPS with it (plain HTTP is refused).
	TLS *tls.Config
}

// API serves the local name API. Create it with New, bind with Listen, serve with Run.
type API struct {
	cfg    Config
	views  Views
	log    *slog.Logger
	client *http.Client
	l      net.Listener

	requests  *prometheus.CounterVec
	callbacks *prometheus.CounterVec

	randMu sync.Mutex
	rand   *mrand.Rand

	mu sync.Mutex
	// runCtx is Run's context while it runs.
	runCtx context.Context
	wg     sync.WaitGroup
	cbs    map[string]*callback
}

type callback struct {
	ID      string `json:"id"`
	Service string `json:"service"`
	URL     string `json:"url"`
	// Calls and Failures count the POSTs made.
	Calls    int `json:"calls"`
	Failures int `json:"failures"`

	cancel context.CancelFunc
	done   chan struct{}
}

// New returns the API; it binds nothing.
func New(cfg Config, v Views) (*API, error) {
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("name api: listen address %q: want host:port", cfg.Listen)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &API{cfg: cfg, views: v, log: cfg.Logger, cbs: map[string]*callback{}, rand: mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64())),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "name_api_requests_total",
			Help: "Local name API requests, by endpoint and status code."}, []string{"endpoint", "code"}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "name_callbacks_total",
			Help: "Views POSTed to registered callbacks, by outcome (ok, failed)."}, []string{"outcome"}),
	}
	// Callbacks only ever reach loopback addresses, whatever a name resolves to, and never
	// follow redirects.
	dialer := &net.Dialer{Timeout: callbackTimeout}
	a.client = &http.Client{
		Timeout: callbackTimeout,
		Transport: &http.Transport{Proxy: nil, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if host == "localhost" {
				host = "127.0.0.1"
			}
			ip := net.ParseIP(host)
			if ip == nil || !ip.IsLoopback() {
				return nil, fmt.Errorf("callback address %s is not a loopback address", addr)
			}
			return dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.requests, a.callbacks} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("name api metrics: %w", err)
			}
		}
	}
	return a, nil
}

// Listen binds the address and returns it (port 0 picks one).
func (a *API) Listen() (net.Addr, error) {
	l, err := certs.Listen(a.cfg.Listen, a.cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("name api: listen %s: %w", a.cfg.Listen, err)
	}
	a.l = l
	return l.Addr(), nil
}

// Handler is the API's routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/resolve/{service...}", a.resolve)
	mux.HandleFunc("GET /v1/watch/{service...}", a.watch)
	mux.HandleFunc("POST /v1/callbacks", a.addCallback)
	mux.HandleFunc("GET /v1/callbacks", a.listCallbacks)
	mux.HandleFunc("DELETE /v1/callbacks/{id}", a.deleteCallback)
	return mux
}

// Run serves until ctx ends (binding first when Listen was not called), then stops the
// server and every callback and returns nil.
func (a *API) Run(ctx context.Context) error {
	if a.l == nil {
		if _, err := a.Listen(); err != nil {
			return err
		}
	}
	a.mu.Lock()
	a.runCtx = ctx
	for _, cb := range a.cbs {
		a.startLocked(cb)
	}
	a.mu.Unlock()
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(a.l) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if err == nil {
		<-errc
	}
	a.mu.Lock()
	a.runCtx = nil
	a.mu.Unlock()
	a.wg.Wait()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("name api: %w", err)
	}
	return nil
}

type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func (a *API) reply(w http.ResponseWriter, endpoint string, code int, body any) {
	a.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

func (a *API) fail(w http.ResponseWriter, endpoint string, code int, field, format string, args ...any) {
	a.reply(w, endpoint, code, errorBody{Error: fmt.Sprintf(format, args...), Field: field})
}

// service reads and checks the {service} path value.
func service(r *http.Request) (string, error) {
	s := strings.Trim(r.PathValue("service"), "/")
	if err := dnsview.CheckServicePath(s); err != nil {
		return "", err
	}
	return s, nil
}

// resolveInstance is one instance in a resolve answer.
type resolveInstance struct {
	ID      string   `json:"id"`
	IP      string   `json:"ip"`
	Port    uint32   `json:"port"`
	Addr    string   `json:"addr"`
	DC      string   `json:"dc,omitempty"`
	Host    string   `json:"host,omitempty"`
	Version string   `json:"version,omitempty"`
	Weight  uint32   `json:"weight"`
	Tags    []string `json:"tags,omitempty"`
	Health  string   `json:"health"`
	State   string   `json:"state"`
}

type resolveAnswer struct {
	Service    string            `json:"service"`
	Revision   int64             `json:"revision"`
	TTLSeconds uint32            `json:"ttl_seconds"`
	ClientDC   string            `json:"client_dc,omitempty"`
	TargetDC   string            `json:"target_dc,omitempty"`
	Rules      []string          `json:"rules"`
	Panic      bool              `json:"panic"`
	Instances  []resolveInstance `json:"instances"`
}

func (a *API) resolve(w http.ResponseWriter, r *http.Request) {
	const ep = "resolve"
	svc, err := service(r)
	if err != nil {
		a.fail(w, ep, http.StatusBadRequest, "service", "%v", err)
		return
	}
	q := dnsview.Query{ClientDC: a.cfg.DC}
	if dc := r.URL.Query().Get("dc"); dc != "" {
		if err := subjects.DC(dc); err != nil {
			a.fail(w, ep, http.StatusBadRequest, "dc", "dc %.40q: want a datacenter name (letters, digits, '-' and '_')", dc)
			return
		}
		q.ClientDC = dc
	}
	switch f := r.URL.Query().Get("family"); f {
	case "", "any":
	case "ipv4":
		q.Family = dnsview.IPv4
	case "ipv6":
		q.Family = dnsview.IPv6
	default:
		a.fail(w, ep, http.StatusBadRequest, "family", "family %q: want ipv4, ipv6 or nothing", f)
		return
	}
	if err := a.views.Touch(svc); err != nil {
		a.fail(w, ep, http.StatusServiceUnavailable, "", "follow %s: %v", svc, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), firstWait)
	snap := a.views.Wait(ctx, svc)
	cancel()
	if snap.Table == nil {
		a.fail(w, ep, http.StatusNotFound, "service", "service %s is not known to the name service (or its view has not arrived)", svc)
		return
	}
	a.randMu.Lock()
	ans := snap.Table.Select(nil, q, a.rand)
	a.randMu.Unlock()
	out := resolveAnswer{Service: svc, Revision: snap.Revision(), TTLSeconds: snap.Table.TTL(), ClientDC: q.ClientDC, TargetDC: ans.TargetDC,
		Panic: ans.Panic, Rules: []string{}, Instances: []resolveInstance{}}
	for _, rule := range ans.Rules {
		out.Rules = append(out.Rules, string(rule))
	}
	for _, e := range ans.Endpoints {
		in := e.Instance
		addr := e.Addr.String()
		if in.GetPort() != 0 {
			addr = net.JoinHostPort(addr, strconv.Itoa(int(in.GetPort())))
		}
		out.Instances = append(out.Instances, resolveInstance{ID: in.GetId(), IP: in.GetIp(), Port: in.GetPort(), Addr: addr, DC: in.GetDc(),
			Host: in.GetHost(), Version: in.GetVersion(), Weight: in.GetWeight(), Tags: in.GetTags(),
			Health: strings.ToLower(strings.TrimPrefix(in.GetHealth().String(), "HEALTH_")),
			State:  strings.ToLower(strings.TrimPrefix(in.GetState().String(), "INSTANCE_STATE_"))})
	}
	w.Header().Set("X-Berth-Index", strconv.FormatInt(snap.Revision(), 10))
	a.reply(w, ep, http.StatusOK, out)
}

func (a *API) watch(w http.ResponseWriter, r *http.Request) {
	const ep = "watch"
	svc, err := service(r)
	if err != nil {
		a.fail(w, ep, http.StatusBadRequest, "service", "%v", err)
		return
	}
	var index int64
	if s := r.URL.Query().Get("index"); s != "" {
		if index, err = strconv.ParseInt(s, 10, 64); err != nil || index < 0 {
			a.fail(w, ep, http.StatusBadRequest, "index", "index %q: want a revision, 0 or more", s)
			return
		}
	}
	wait := DefaultWait
	if s := r.URL.Query().Get("wait"); s != "" {
		if wait, err = time.ParseDuration(s); err != nil || wait <= 0 || wait > MaxWait {
			a.fail(w, ep, http.StatusBadRequest, "wait", "wait %q: want a duration from 1ms to %s", s, MaxWait)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	var snap views.Snapshot
	for {
		if err := a.views.Touch(svc); err != nil {
			a.fail(w, ep, http.StatusServiceUnavailable, "", "follow %s: %v", svc, err)
			return
		}
		snap = a.views.Get(svc)
		if snap.View != nil && snap.Revision() > index {
			break
		}
		select {
		case <-snap.Changed:
			continue
		case <-ctx.Done():
		}
		break
	}
	if r.Context().Err() != nil {
		return
	}
	if snap.View == nil {
		a.fail(w, ep, http.StatusNotFound, "service", "service %s is not known to the name service", svc)
		return
	}
	a.writeView(w, ep, snap.View)
}

func (a *API) writeView(w http.ResponseWriter, ep string, v *namesv1.ServiceView) {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(v)
	if err != nil {
		a.fail(w, ep, http.StatusInternalServerError, "", "encode view: %v", err)
		return
	}
	a.requests.WithLabelValues(ep, "200").Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Berth-Index", strconv.FormatInt(v.GetRevision(), 10))
	_, _ = w.Write(b)
}

type callbackRequest struct {
	Service string `json:"service"`
	URL     string `json:"url"`
}

// checkCallbackURL accepts http URLs on loopback hosts only.
func checkCallbackURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("url %q: %v", s, err)
	}
	if u.Scheme != "http" {
		return fmt.Errorf("url %q: want http:// (a local app)", s)
	}
	if u.User != nil {
		return fmt.Errorf("url %q: no credentials allowed", s)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("url %q: host %q is not a loopback address (127.0.0.1, ::1 or localhost); callbacks only reach local apps", s, host)
	}
	return nil
}

func (a *API) addCallback(w http.ResponseWriter, r *http.Request) {
	const ep = "callbacks"
	var req callbackRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		a.fail(w, ep, http.StatusBadRequest, "", "body: want {\"service\": \"hotel/search\", \"url\": \"http://127.0.0.1:8080/berth\"}: %v", err)
		return
	}
	req.Service = strings.Trim(req.Service, "/")
	if err := dnsview.CheckServicePath(req.Service); err != nil {
		a.fail(w, ep, http.StatusBadRequest, "service", "%v", err)
		return
	}
	if err := checkCallbackURL(req.URL); err != nil {
		a.fail(w, ep, http.StatusBadRequest, "url", "%v", err)
		return
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	cb := &callback{ID: hex.EncodeToString(b[:]), Service: req.Service, URL: req.URL}
	a.mu.Lock()
	if len(a.cbs) >= MaxCallbacks {
		a.mu.Unlock()
		a.fail(w, ep, http.StatusTooManyRequests, "", "%d callbacks are registered already; delete some first", MaxCallbacks)
		return
	}
	a.cbs[cb.ID] = cb
	if a.runCtx != nil {
		a.startLocked(cb)
	}
	// The delivery goroutine counts calls under mu: reply with a copy taken under it.
	view := callback{ID: cb.ID, Service: cb.Service, URL: cb.URL, Calls: cb.Calls, Failures: cb.Failures}
	a.mu.Unlock()
	a.reply(w, ep, http.StatusCreated, &view)
}

func (a *API) listCallbacks(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	out := make([]callback, 0, len(a.cbs))
	for _, cb := range a.cbs {
		out = append(out, callback{ID: cb.ID, Service: cb.Service, URL: cb.URL, Calls: cb.Calls, Failures: cb.Failures})
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	a.reply(w, "callbacks", http.StatusOK, map[string]any{"callbacks": out})
}

func (a *API) deleteCallback(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	a.mu.Lock()
	cb := a.cbs[id]
	delete(a.cbs, id)
	a.mu.Unlock()
	if cb == nil {
		a.fail(w, "callbacks", http.StatusNotFound, "id", "no callback %q", id)
		return
	}
	if cb.cancel != nil {
		cb.cancel()
		<-cb.done
	}
	a.reply(w, "callbacks", http.StatusOK, map[string]string{"deleted": id})
}

// startLocked starts cb's goroutine. a.mu is held.
func (a *API) startLocked(cb *callback) {
	if cb.done != nil {
		return
	}
	ctx, cancel := context.WithCancel(a.runCtx)
	cb.cancel, cb.done = cancel, make(chan struct{})
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer close(cb.done)
		a.deliver(ctx, cb)
	}()
}

// deliver follows cb's service and POSTs each new view (the current one first) until ctx
// ends.
func (a *API) deliver(ctx context.Context, cb *callback) {
	release, err := a.views.Hold(cb.Service)
	if err != nil {
		a.log.Warn("callback: follow service", "service", cb.Service, "err", err)
		return
	}
	defer release()
	var sent int64 = -1
	for {
		snap := a.views.Get(cb.Service)
		if snap.View != nil && snap.Revision() > sent {
			sent = snap.Revision()
			a.post(ctx, cb, snap.View)
		}
		select {
		case <-ctx.Done():
			return
		case <-snap.Changed:
		}
	}
}

func (a *API) post(ctx context.Context, cb *callback, v *namesv1.ServiceView) {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(v)
	if err != nil {
		return
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cb.URL, bytes.NewReader(b))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Berth-Index", strconv.FormatInt(v.GetRevision(), 10))
	req.Header.Set("X-Berth-Service", cb.Service)
	resp, err := a.client.Do(req)
	ok := err == nil && resp.StatusCode < 300
	if resp != nil {
		resp.Body.Close()
	}
	a.mu.Lock()
	cb.Calls++
	if !ok {
		cb.Failures++
	}
	a.mu.Unlock()
	if ok {
		a.callbacks.WithLabelValues("ok").Inc()
		return
	}
	a.callbacks.WithLabelValues("failed").Inc()
	if ctx.Err() == nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		a.log.Warn("callback failed", "service", cb.Service, "url", cb.URL, "status", status, "err", err)
	}
}
