// Package httpapi is the name service's HTTP API: services, views, resolve (with the
// traffic policy applied, as DNS does), blocking watches and Server-Sent Events, and the
// traffic policy endpoints that write /berth/traffic/<service> in coord.
//
// Every error is JSON {"error": "...", "field": "..."} with a 4xx or 5xx status.
package httpapi

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/dnsview"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/services/name-service/internal/catalog"
)

// Limits of the API.
const (
	// DefaultWait is how long a blocking watch waits without ?wait.
	DefaultWait = 30 * time.Second
	// MaxWait caps ?wait.
	MaxWait = 10 * time.Minute
	// maxPolicyBytes caps a PUT /v1/traffic body.
	maxPolicyBytes = 1 << 20
	// sseHeartbeat is the interval of SSE keep-alive comments.
	sseHeartbeat = 15 * time.Second
)

// HeaderIndex carries a view's revision on view, watch and resolve responses (pass it back
// as ?index= to block until the next change).
const HeaderIndex = "X-Berth-Index"

// Catalog is what the API reads (*catalog.Catalog has it).
type Catalog interface {
	Lookup(service string) *catalog.Snapshot
	Watch(service string) (*catalog.Snapshot, <-chan struct{})
	Services() []*catalog.Snapshot
	Locator() *dnsview.Locator
	KnownDC(dc string) bool
	DCs() []string
}

// Coord is what the traffic endpoints need of a coord client.
type Coord interface {
	Get(ctx context.Context, path string, opts ...coordclient.GetOption) (*coordclient.Node, error)
	Put(ctx context.Context, path string, value []byte, opts ...coordclient.PutOption) (*coordclient.PutResult, error)
	Delete(ctx context.Context, path string, opts ...coordclient.DeleteOption) (*coordclient.DeleteResult, error)
}

// API serves the endpoints. Create it with New and mount Handler.
type API struct {
	cat   Catalog
	coord Coord
	log   *slog.Logger
	rngs  sync.Pool
	// userFromToken: updated_by is always X-Berth-User (see UserFromToken).
	userFromToken bool
}

// New returns the API over the catalog and coord.
func New(cat Catalog, coord Coord, log *slog.Logger) *API {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &API{cat: cat, coord: coord, log: log}
	a.rngs.New = func() any {
		var seed [16]byte
		_, _ = crand.Read(seed[:])
		return rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))
	}
	return a
}

// UserFromToken makes PUT /v1/traffic fill updated_by from X-Berth-User even when the
// body sets it: behind pkg/apiaccess that header is the token's name, which a body must
// not override. Call it before Register.
func (a *API) UserFromToken() { a.userFromToken = true }

// Register adds the API's routes to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/services", a.services)
	mux.HandleFunc("GET /v1/view/{service...}", a.view)
	mux.HandleFunc("GET /v1/resolve/{service...}", a.resolve)
	mux.HandleFunc("GET /v1/watch/{service...}", a.watch)
	mux.HandleFunc("GET /v1/events/{service...}", a.events)
	mux.HandleFunc("GET /v1/traffic/{service...}", a.getTraffic)
	mux.HandleFunc("PUT /v1/traffic/{service...}", a.putTraffic)
	mux.HandleFunc("DELETE /v1/traffic/{service...}", a.deleteTraffic)
	mux.HandleFunc("GET /v1/dcs", a.dcs)
}

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, field, format string, args ...any) {
	writeJSON(w, status, apiError{Error: fmt.Sprintf(format, args...), Field: field})
}

var marshal = protojson.MarshalOptions{UseProtoNames: true}

func writeProto(w http.ResponseWriter, status int, index int64, m proto.Message) {
	b, err := marshal.Marshal(m)
	if err != nil {
		fail(w, http.StatusInternalServerError, "", "encode: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if index > 0 {
		w.Header().Set(HeaderIndex, strconv.FormatInt(index, 10))
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
	_, _ = w.Write([]byte("\n"))
}

// servicePath reads and checks the {service...} path value.
func servicePath(w http.ResponseWriter, r *http.Request) (string, bool) {
	svc := strings.Trim(r.PathValue("service"), "/")
	if err := dnsview.CheckServicePath(svc); err != nil {
		fail(w, http.StatusBadRequest, "service", "%v", err)
		return "", false
	}
	return svc, true
}

// ServiceSummary is one entry of GET /v1/services.
type ServiceSummary struct {
	Service    string `json:"service"`
	Instances  int    `json:"instances"`
	Selectable int    `json:"selectable"`
	Revision   int64  `json:"revision"`
	Panic      bool   `json:"panic,omitempty"`
	Policy     bool   `json:"policy,omitempty"`
}

func (a *API) services(w http.ResponseWriter, _ *http.Request) {
	out := struct {
		Services []ServiceSummary `json:"services"`
	}{Services: []ServiceSummary{}}
	for _, s := range a.cat.Services() {
		sum := ServiceSummary{Service: s.Service, Instances: len(s.View.GetInstances()), Revision: s.View.GetRevision(),
			Panic: s.View.GetPanic(), Policy: s.View.GetPolicy() != nil}
		for _, in := range s.View.GetInstances() {
			if dnsview.Selectable(in) {
				sum.Selectable++
			}
		}
		out.Services = append(out.Services, sum)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) dcs(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]string{"dcs": a.cat.DCs()})
}

func (a *API) view(w http.ResponseWriter, r *http.Request) {
	svc, ok := servicePath(w, r)
	if !ok {
		return
	}
	snap := a.cat.Lookup(svc)
	if snap == nil {
		fail(w, http.StatusNotFound, "service", "service %s has no instance, policy or tree node", svc)
		return
	}
	writeProto(w, http.StatusOK, snap.View.GetRevision(), snap.View)
}

// ResolvedInstance is one instance of a resolve answer.
type ResolvedInstance struct {
	ID      string `json:"id"`
	IP      string `json:"ip"`
	Port    uint32 `json:"port"`
	Addr    string `json:"addr"`
	DC      string `json:"dc,omitempty"`
	Host    string `json:"host,omitempty"`
	Version string `json:"version,omitempty"`
	Weight  uint32 `json:"weight"`
	Health  string `json:"health"`
	State   string `json:"state"`
}

// Resolution is the body of GET /v1/resolve.
type Resolution struct {
	Service    string             `json:"service"`
	Revision   int64              `json:"revision"`
	TTLSeconds uint32             `json:"ttl_seconds"`
	ClientDC   string             `json:"client_dc,omitempty"`
	DCSource   string             `json:"dc_source,omitempty"`
	TargetDC   string             `json:"target_dc,omitempty"`
	Rules      []string           `json:"rules"`
	Panic      bool               `json:"panic,omitempty"`
	Explain    []string           `json:"explain,omitempty"`
	Instances  []ResolvedInstance `json:"instances"`
}

func (a *API) resolve(w http.ResponseWriter, r *http.Request) {
	svc, ok := servicePath(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	explain := false
	if e := q.Get("explain"); e != "" {
		b, err := strconv.ParseBool(e)
		if err != nil {
			fail(w, http.StatusBadRequest, "explain", "%q is not a boolean", e)
			return
		}
		explain = b
	}
	var fam dnsview.Family
	switch f := q.Get("family"); f {
	case "", "any":
	case "ipv4", "4":
		fam = dnsview.IPv4
	case "ipv6", "6":
		fam = dnsview.IPv6
	default:
		fail(w, http.StatusBadRequest, "family", "%q: want ipv4, ipv6 or any", f)
		return
	}
	dc, source := q.Get("dc"), "query"
	if dc != "" && !a.cat.KnownDC(dc) {
		fail(w, http.StatusBadRequest, "dc", "unknown datacenter %q (known: %s)", dc, strings.Join(a.cat.DCs(), ", "))
		return
	}
	if dc == "" {
		source = ""
		if addr, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			if d, ok := a.cat.Locator().DC(addr.Addr()); ok {
				dc, source = d, "client address "+addr.Addr().String()
			}
		}
	}
	snap := a.cat.Lookup(svc)
	if snap == nil {
		fail(w, http.StatusNotFound, "service", "service %s has no instance, policy or tree node", svc)
		return
	}
	rng := a.rngs.Get().(*rand.Rand)
	ans := snap.Table.Select(nil, dnsview.Query{ClientDC: dc, Family: fam, Explain: explain}, rng)
	a.rngs.Put(rng)
	res := Resolution{
		Service: snap.Service, Revision: snap.View.GetRevision(), TTLSeconds: snap.View.GetTtlSeconds(),
		ClientDC: dc, DCSource: source, TargetDC: ans.TargetDC, Panic: ans.Panic, Explain: ans.Explain,
		Rules: make([]string, 0, len(ans.Rules)), Instances: []ResolvedInstance{},
	}
	for _, rule := range ans.Rules {
		res.Rules = append(res.Rules, string(rule))
	}
	for _, ep := range ans.Endpoints {
		in := ep.Instance
		weight := in.GetWeight()
		if weight == 0 {
			weight = dnsview.DefaultWeight
		}
		res.Instances = append(res.Instances, ResolvedInstance{
			ID: in.GetId(), IP: ep.Addr.String(), Port: in.GetPort(), Addr: net.JoinHostPort(ep.Addr.String(), strconv.Itoa(int(in.GetPort()))),
			DC: in.GetDc(), Host: in.GetHost(), Version: in.GetVersion(), Weight: weight,
			Health: in.GetHealth().String(), State: in.GetState().String(),
		})
	}
	w.Header().Set(HeaderIndex, strconv.FormatInt(res.Revision, 10))
	writeJSON(w, http.StatusOK, res)
}

// waitParams reads ?index and ?wait.
func waitParams(w http.ResponseWriter, r *http.Request) (index int64, wait time.Duration, ok bool) {
	q := r.URL.Query()
	if s := q.Get("index"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			fail(w, http.StatusBadRequest, "index", "%q is not a revision (a whole number, 0 or more)", s)
			return 0, 0, false
		}
		index = n
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" && index == 0 {
		if n, err := strconv.ParseInt(id, 10, 64); err == nil && n >= 0 {
			index = n
		}
	}
	wait = DefaultWait
	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > MaxWait {
			fail(w, http.StatusBadRequest, "wait", "%q is not a duration from 1ns to %s (like 30s)", s, MaxWait)
			return 0, 0, false
		}
		wait = d
	}
	return index, wait, true
}

func wantsSSE(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/event-stream")
}

// watch is a blocking query: it answers at once when the view's revision is above ?index,
// else when it changes or at ?wait, with the view and its revision in X-Berth-Index.
func (a *API) watch(w http.ResponseWriter, r *http.Request) {
	if wantsSSE(r) {
		a.events(w, r)
		return
	}
	svc, ok := servicePath(w, r)
	if !ok {
		return
	}
	index, wait, ok := waitParams(w, r)
	if !ok {
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		snap, changed := a.cat.Watch(svc)
		if snap != nil && snap.View.GetRevision() > index {
			writeProto(w, http.StatusOK, snap.View.GetRevision(), snap.View)
			return
		}
		select {
		case <-changed:
			continue
		case <-timer.C:
			if snap == nil {
				w.Header().Set(HeaderIndex, strconv.FormatInt(index, 10))
				fail(w, http.StatusNotFound, "service", "service %s has no instance, policy or tree node", svc)
				return
			}
			writeProto(w, http.StatusOK, snap.View.GetRevision(), snap.View)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// events streams the service's views as Server-Sent Events: "event: view", "id:" the
// revision, "data:" the view's protojson on one line; the current view first (unless
// Last-Event-ID or ?index is already at it), then every change; a comment every 15 s keeps
// the connection open. A removed service sends "event: removed".
func (a *API) events(w http.ResponseWriter, r *http.Request) {
	svc, ok := servicePath(w, r)
	if !ok {
		return
	}
	index, _, ok := waitParams(w, r)
	if !ok {
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if _, err := io.WriteString(w, "retry: 2000\n\n"); err != nil {
		return
	}
	_ = rc.Flush()
	heartbeat := time.NewTicker(sseHeartbeat)
	defer heartbeat.Stop()
	var sent *catalog.Snapshot
	for {
		snap, changed := a.cat.Watch(svc)
		if snap != nil && snap != sent && snap.View.GetRevision() > index {
			b, err := marshal.Marshal(snap.View)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: view\ndata: %s\n\n", snap.View.GetRevision(), b); err != nil {
				return
			}
			_ = rc.Flush()
			sent, index = snap, snap.View.GetRevision()
		} else if snap == nil && sent != nil {
			if _, err := fmt.Fprintf(w, "event: removed\ndata: {\"service\":%q}\n\n", svc); err != nil {
				return
			}
			_ = rc.Flush()
			sent = nil
		}
		select {
		case <-changed:
		case <-heartbeat.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil {
				return
			}
			_ = rc.Flush()
		case <-r.Context().Done():
			return
		}
	}
}

func trafficPath(svc string) string { return catalog.PrefixTraffic + "/" + svc }

// TrafficResponse is the body of the traffic endpoints.
type TrafficResponse struct {
	Service  string          `json:"service"`
	Revision int64           `json:"revision,omitempty"`
	Policy   json.RawMessage `json:"policy"`
}

func (a *API) getTraffic(w http.ResponseWriter, r *http.Request) {
	svc, ok := servicePath(w, r)
	if !ok {
		return
	}
	n, err := a.coord.Get(r.Context(), trafficPath(svc))
	if errors.Is(err, coordclient.ErrNotFound) {
		fail(w, http.StatusNotFound, "service", "service %s has no traffic policy", svc)
		return
	}
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "", "read traffic policy of %s: %v", svc, err)
		return
	}
	p := &namesv1.TrafficPolicy{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(n.Value, p); err != nil {
		fail(w, http.StatusInternalServerError, "", "stored traffic policy of %s is unreadable: %v", svc, err)
		return
	}
	a.writePolicy(w, http.StatusOK, svc, n.ModRev, p)
}

func (a *API) writePolicy(w http.ResponseWriter, status int, svc string, rev int64, p *namesv1.TrafficPolicy) {
	b, err := marshal.Marshal(p)
	if err != nil {
		fail(w, http.StatusInternalServerError, "", "encode: %v", err)
		return
	}
	writeJSON(w, status, TrafficResponse{Service: svc, Revision: rev, Policy: b})
}

// putTraffic validates the body (a TrafficPolicy in protojson; unknown fields are errors)
// and stores it. A refused policy changes nothing and names the bad field.
func (a *API) putTraffic(w http.ResponseWriter, r *http.Request) {
	svc, ok := servicePath(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxPolicyBytes+1))
	if err != nil {
		fail(w, http.StatusBadRequest, "", "read body: %v", err)
		return
	}
	if len(body) > maxPolicyBytes {
		fail(w, http.StatusRequestEntityTooLarge, "", "policy is larger than %d bytes", maxPolicyBytes)
		return
	}
	p := &namesv1.TrafficPolicy{}
	if err := protojson.Unmarshal(body, p); err != nil {
		fail(w, http.StatusBadRequest, "policy", "not a TrafficPolicy in JSON: %v", err)
		return
	}
	if err := dnsview.ValidatePolicy(p, a.cat.KnownDC); err != nil {
		var fe *dnsview.FieldError
		if errors.As(err, &fe) {
			fail(w, http.StatusBadRequest, fe.Field, "%v", err)
			return
		}
		fail(w, http.StatusBadRequest, "", "%v", err)
		return
	}
	if a.userFromToken || p.GetUpdatedBy() == "" {
		p.UpdatedBy = r.Header.Get("X-Berth-User")
	}
	p.UpdatedAt = timestamppb.Now()
	value, err := protojson.Marshal(p)
	if err != nil {
		fail(w, http.StatusInternalServerError, "", "encode: %v", err)
		return
	}
	res, err := a.coord.Put(r.Context(), trafficPath(svc), value)
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "", "store traffic policy of %s: %v", svc, err)
		return
	}
	a.log.Info("names: traffic policy set", "service", svc, "by", p.GetUpdatedBy(), "revision", res.Revision)
	a.writePolicy(w, http.StatusOK, svc, res.Revision, p)
}

func (a *API) deleteTraffic(w http.ResponseWriter, r *http.Request) {
	svc, ok := servicePath(w, r)
	if !ok {
		return
	}
	res, err := a.coord.Delete(r.Context(), trafficPath(svc))
	if errors.Is(err, coordclient.ErrNotFound) {
		fail(w, http.StatusNotFound, "service", "service %s has no traffic policy", svc)
		return
	}
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "", "delete traffic policy of %s: %v", svc, err)
		return
	}
	a.log.Info("names: traffic policy cleared", "service", svc, "revision", res.Revision)
	writeJSON(w, http.StatusOK, map[string]any{"service": svc, "revision": res.Revision, "deleted": true})
}
