// Package apiaccess guards an HTTP API with bearer tokens (pkg/apitoken) that carry a role
// — viewer, deployer, admin — scoped to subtrees of a slash-separated path space, and
// writes an audit record of every write, allowed or refused, failing closed when it
// cannot.
//
// The API supplies its routing rules (Rules): for a request, whether it is guarded at all,
// whether it reads or writes, and, for a write, the path it acts on and the least role it
// needs. The middleware does the rest:
//
//   - An Open request goes on untouched.
//   - No token, or one the set does not hold: 401 with WWW-Authenticate.
//   - A Read: any valid token; reads are neither scoped nor recorded.
//   - A Write: a token whose role is at least Need.Role and whose scopes cover
//     Need.Service ("" — a request that names no service — is covered by the whole tree
//     only; Need.AnyScope lets any scope go on). Else 403, naming the token, its role and
//     scopes.
//
// Audit: before an allowed write runs, its record (a berth.events.v1.AuditEvent) is
// written to the audit store at <AuditPrefix>/<id> (ids sort by time) as a new node; when
// that write fails the request is answered 503 and never runs. When it has run, the
// record is completed with the status and what it created (its Location), with a
// compare-and-set on the first write's version, and published on
// berth.v1.events.audit.allowed.<service tokens>. A refused write is recorded the same
// way (result denied, with the status and the reason) and answered 401, 403 or the rule's
// own refusal — or 503 when even that record cannot be written. The record names the
// token, never the token itself. Completing a record and publishing it are best effort:
// the request has run, and coord holds the record.
//
// The token's name replaces the client's X-Berth-User header, so that an API that names
// who asked from it sees the token's name.
package apiaccess

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
)

// AuditPrefix is where the audit records live in coord unless Config.AuditPrefix says
// otherwise.
const AuditPrefix = "/berth/audit"

// Results of an audit record.
const (
	ResultAllowed = "allowed"
	ResultDenied  = "denied"
)

// UserHeader names who asked; the middleware sets it to the token's name.
const UserHeader = "X-Berth-User"

// auditTimeout bounds each write of a record and each publication of its event.
const auditTimeout = 5 * time.Second

// Kind is what a request is to the middleware.
type Kind int

const (
	// Open requests are not guarded (health checks, metrics, static files).
	Open Kind = iota
	// Read requests need any valid token and are not recorded.
	Read
	// Write requests need a role and scope and are recorded, allowed or refused.
	Write
)

func (k Kind) String() string {
	switch k {
	case Open:
		return "open"
	case Read:
		return "read"
	case Write:
		return "write"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Need is what a write needs.
type Need struct {
	// Service is the path it acts on, "" when it names none (then only a token of the
	// whole tree may go on, unless AnyScope).
	Service string
	// Role is the least role that may make it.
	Role apitoken.Role
	// AnyScope lets a token of any scope go on (the API will refuse the request anyway,
	// as one for something that does not exist).
	AnyScope bool
}

// Denial is a refusal: the HTTP status, a short code and the reason shown to the client
// and recorded. Rules return one (as an error) to refuse a request they cannot look at.
type Denial struct {
	Status int
	Code   string
	Reason string
}

func (d *Denial) Error() string { return d.Reason }

// Rules are an API's routing rules. Kind is asked of every request, before its token is
// checked, so it must only look at the method and path. Need is asked only of a Write
// presented with a valid token; it may read the body (and must put it back for the API)
// or look things up. An error from Need refuses the request: a *Denial as it says, any
// other error as 500.
type Rules interface {
	Kind(r *http.Request) Kind
	Need(r *http.Request) (Need, error)
}

// Store is where the audit records are written (a *coordclient.Client).
type Store interface {
	Put(ctx context.Context, path string, value []byte, opts ...coordclient.PutOption) (*coordclient.PutResult, error)
}

// ErrorWriter answers a request the middleware refuses.
type ErrorWriter func(w http.ResponseWriter, status int, code, message string)

// WriteError is the default ErrorWriter: {"code": code, "message": message}.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"code": code, "message": message})
}

// Config configures New.
type Config struct {
	// Tokens are the tokens that may use the API. Required (non-empty).
	Tokens *apitoken.Set
	// Rules classify the requests. Required.
	Rules Rules
	// Audit receives the audit records. Required.
	Audit Store
	// AuditPrefix is the records' prefix in Audit; "" means AuditPrefix.
	AuditPrefix string
	// Bus publishes the audit events; nil publishes none.
	Bus *natsbus.Bus
	// Source is the events' ce-source (berth-controller/<replica>); Replica names the
	// replica in the records.
	Source, Replica string
	// Realm is the WWW-Authenticate realm of a 401, the API's name. Required.
	Realm string
	// Subsystem is the metrics' subsystem (namespace berth), the service's. Required.
	Subsystem string
	// WriteError answers refusals; nil means WriteError.
	WriteError ErrorWriter
	// Logger receives failures to complete a record or publish its event; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil does not export them.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Guard is the middleware. Create it with New and put Wrap in front of the API.
type Guard struct {
	cfg Config
	log *slog.Logger

	decisions *prometheus.CounterVec
	failures  prometheus.Counter
}

// New checks cfg and returns the middleware; it registers the metrics and starts nothing.
func New(cfg Config) (*Guard, error) {
	switch {
	case cfg.Tokens == nil || cfg.Tokens.Len() == 0:
		return nil, errors.New("apiaccess: no tokens")
	case cfg.Rules == nil:
		return nil, errors.New("apiaccess: no rules")
	case cfg.Audit == nil:
		return nil, errors.New("apiaccess: no audit store")
	case cfg.Realm == "":
		return nil, errors.New("apiaccess: no realm")
	case cfg.Subsystem == "":
		return nil, errors.New("apiaccess: no metrics subsystem")
	}
	if cfg.AuditPrefix == "" {
		cfg.AuditPrefix = AuditPrefix
	}
	cfg.AuditPrefix = "/" + strings.Trim(cfg.AuditPrefix, "/")
	if cfg.WriteError == nil {
		cfg.WriteError = WriteError
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	g := &Guard{cfg: cfg, log: cfg.Logger,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: cfg.Subsystem, Name: "access_decisions_total",
			Help: "Guarded API requests, by kind (read, write) and result (allowed, denied)."}, []string{"kind", "result"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: cfg.Subsystem, Name: "audit_write_failures_total",
			Help: "Audit records that could not be written; each failed its request with 503."}),
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{g.decisions, g.failures} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register access metrics: %w", err)
			}
		}
	}
	return g, nil
}

// AuditPrefix is where the guard writes its records.
func (g *Guard) AuditPrefix() string { return g.cfg.AuditPrefix }

// Wrap returns next behind the middleware.
func (g *Guard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := g.cfg.Rules.Kind(r)
		if kind == Open {
			next.ServeHTTP(w, r)
			return
		}
		write := kind == Write
		entry, ok := g.cfg.Tokens.Lookup(Bearer(r))
		rec := &eventsv1.AuditEvent{Method: r.Method, Path: r.URL.Path, Remote: r.RemoteAddr, Replica: g.cfg.Replica,
			At: timestamppb.New(g.cfg.Now())}
		if !ok {
			d := Denial{http.StatusUnauthorized, "unauthenticated", "no API token: send Authorization: Bearer <token> (berth context set --token)"}
			if Bearer(r) != "" {
				d.Reason = "unknown API token"
			}
			g.decisions.WithLabelValues(kind.String(), ResultDenied).Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+g.cfg.Realm+`"`)
			if write {
				g.refuse(w, r, rec, d)
				return
			}
			g.cfg.WriteError(w, d.Status, d.Code, d.Reason)
			return
		}
		rec.Who, rec.Role = entry.Name, entry.Role.String()
		r.Header.Set(UserHeader, entry.Name)
		if !write {
			g.decisions.WithLabelValues(kind.String(), ResultAllowed).Inc()
			next.ServeHTTP(w, r)
			return
		}
		need, err := g.cfg.Rules.Need(r)
		rec.Service = need.Service
		var d *Denial
		if err != nil && !errors.As(err, &d) {
			d = &Denial{http.StatusInternalServerError, "internal", err.Error()}
		}
		if d == nil && entry.Role < need.Role {
			d = &Denial{http.StatusForbidden, "permission_denied", fmt.Sprintf("token %s is a %s; %s %s needs a %s", entry.Name, entry.Role, r.Method, r.URL.Path, need.Role)}
		}
		if d == nil && !need.AnyScope && !entry.Covers(need.Service) {
			what := "service " + need.Service
			if need.Service == "" {
				what = "a request that names no service (it needs the whole tree, \"/\")"
			}
			d = &Denial{http.StatusForbidden, "permission_denied", fmt.Sprintf("token %s (%s of %s) may not act on %s", entry.Name, entry.Role, strings.Join(entry.Scopes, ", "), what)}
		}
		if d != nil {
			g.decisions.WithLabelValues(kind.String(), ResultDenied).Inc()
			g.refuse(w, r, rec, *d)
			return
		}
		g.decisions.WithLabelValues(kind.String(), ResultAllowed).Inc()
		rec.Result = ResultAllowed
		version, err := g.record(r.Context(), rec)
		if err != nil {
			g.failures.Inc()
			g.cfg.WriteError(w, http.StatusServiceUnavailable, "unavailable", "audit record not written, so the request was not run: "+err.Error())
			return
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		rec.Status = int32(sw.code)
		rec.DoneAt = timestamppb.New(g.cfg.Now())
		rec.Resource = sw.Header().Get("Location")
		if sw.code >= 400 {
			rec.Reason = http.StatusText(sw.code)
		}
		// The request has run: completing its record and telling the bus must not fail
		// it any more, so both are best effort past the first write.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditTimeout)
		defer cancel()
		if _, err := g.put(ctx, rec, coordclient.ExpectVersion(version)); err != nil {
			g.log.Warn("audit record not completed", "id", rec.GetId(), "err", err)
		}
		g.publish(ctx, rec)
	})
}

// refuse records a refused write and answers it; when the record cannot be written the
// answer is 503 (the request is refused either way).
func (g *Guard) refuse(w http.ResponseWriter, r *http.Request, rec *eventsv1.AuditEvent, d Denial) {
	rec.Result, rec.Status, rec.Reason = ResultDenied, int32(d.Status), d.Reason
	rec.DoneAt = rec.At
	if _, err := g.record(r.Context(), rec); err != nil {
		g.failures.Inc()
		g.cfg.WriteError(w, http.StatusServiceUnavailable, "unavailable", d.Reason+"; and the audit record of the refusal was not written: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditTimeout)
	defer cancel()
	g.publish(ctx, rec)
	g.cfg.WriteError(w, d.Status, d.Code, d.Reason)
}

// record writes a new record and returns its version.
func (g *Guard) record(ctx context.Context, rec *eventsv1.AuditEvent) (int64, error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	rec.Id = rec.GetAt().AsTime().UTC().Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(ctx, auditTimeout)
	defer cancel()
	// Version 0: the record must be new.
	return g.put(ctx, rec, coordclient.ExpectVersion(0))
}

var marshal = protojson.MarshalOptions{UseProtoNames: true}

func (g *Guard) put(ctx context.Context, rec *eventsv1.AuditEvent, opts ...coordclient.PutOption) (int64, error) {
	v, err := marshal.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("encode audit record %s: %w", rec.GetId(), err)
	}
	res, err := g.cfg.Audit.Put(ctx, g.cfg.AuditPrefix+"/"+rec.GetId(), v, opts...)
	if err != nil {
		return 0, fmt.Errorf("write audit record %s: %w", rec.GetId(), err)
	}
	return res.Version, nil
}

// publish sends the record as an event, best effort: coord holds the record.
func (g *Guard) publish(ctx context.Context, rec *eventsv1.AuditEvent) {
	if g.cfg.Bus == nil {
		return
	}
	svc := rec.GetService()
	if svc == "" {
		svc = subjects.NoService
	}
	subject, err := subjects.AuditEvent(rec.GetResult(), svc)
	if err != nil {
		g.log.Warn("audit event not published", "id", rec.GetId(), "err", err)
		return
	}
	err = g.cfg.Bus.PublishEvent(ctx, natsbus.Event{Subject: subject, ID: natsbus.EventID(rec.GetId(), "audit"),
		Type: subjects.EventType(subjects.DomainAudit, rec.GetResult()), Source: g.cfg.Source, ServicePath: rec.GetService(), Data: rec})
	if err != nil {
		g.log.Warn("audit event not published", "id", rec.GetId(), "err", err)
	}
}

// Bearer returns the request's bearer token, "" when it has none.
func Bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// statusWriter remembers the status the API answered.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's Flush.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
