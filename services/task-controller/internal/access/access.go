// Package access guards berth-controller's HTTP API (DESIGN §10): bearer tokens from a
// token file (pkg/apitoken) with a role — viewer, deployer, admin — scoped to subtrees of
// the service tree, and an audit record of every mutating request, allowed or refused.
//
// Rules, for every route under /v1/ (the console's files, /metrics, /healthz and /readyz
// are not guarded):
//
//   - No token, or one the file does not hold: 401.
//   - GET and HEAD: any token (read access is not scoped).
//   - POST /v1/deployments, POST /v1/tasks: a deployer (or admin) whose scopes cover the
//     body's "service"; a task that names no service needs the whole tree ("/").
//   - POST /v1/{deployments,tasks}/{id}/{action}: a deployer whose scopes cover the run's
//     service, read from coord (any deployer when there is no such run: the API answers
//     404 and changes nothing).
//   - PUT, PATCH, DELETE /v1/tree/{path}: an admin whose scopes cover the path.
//   - Any other write: an admin of the whole tree.
//
// A request whose service cannot be told (a body that is not JSON, a service path that is
// not valid) is treated as naming no service: only a token of the whole tree may go on,
// and the API then answers it (400).
//
// Audit: before an allowed write runs, its record is written to coord at
// /berth/audit/<id> (ids sort by time); when that write fails the request is answered 503
// and never runs. When it has run, the record is completed with the status and what it
// created, and published as a berth.events.v1.AuditEvent on
// berth.v1.events.audit.allowed.<service tokens>. A refused write is recorded the same
// way (result denied, with the status and the reason) and answered 401 or 403 — or 503
// when even that record cannot be written. Reads are not recorded. The record names the
// token, never the token itself.
//
// With no tokens the middleware is not installed: the API is open, as in `berth dev`.
package access

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

// AuditPrefix is where the audit records live in coord.
const AuditPrefix = "/berth/audit"

// maxBody bounds the body the middleware reads to find a request's service; the API
// takes no more either.
const maxBody = 1 << 20

// Results of an audit record.
const (
	ResultAllowed = "allowed"
	ResultDenied  = "denied"
)

// Store is the part of coord the middleware uses.
type Store interface {
	Get(ctx context.Context, path string, opts ...coordclient.GetOption) (*coordclient.Node, error)
	Put(ctx context.Context, path string, value []byte, opts ...coordclient.PutOption) (*coordclient.PutResult, error)
}

// Config configures New.
type Config struct {
	// Tokens are the tokens that may use the API. Required (non-empty).
	Tokens *apitoken.Set
	// Coord reads the runs whose service a request acts on. Required.
	Coord Store
	// Audit receives the audit records; nil means Coord.
	Audit Store
	// Bus publishes the audit events; nil publishes none.
	Bus *natsbus.Bus
	// Source is the events' ce-source; Replica names the replica in the records.
	Source, Replica string
	// Logger receives failures to complete a record or publish its event; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil does not export them.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Access is the middleware. Create it with New and put Wrap in front of the API.
type Access struct {
	cfg Config
	log *slog.Logger

	decisions *prometheus.CounterVec
	failures  prometheus.Counter
}

// New checks cfg and returns the middleware.
func New(cfg Config) (*Access, error) {
	if cfg.Tokens == nil || cfg.Tokens.Len() == 0 {
		return nil, errors.New("access: no tokens")
	}
	if cfg.Coord == nil {
		return nil, errors.New("access: no coord")
	}
	if cfg.Audit == nil {
		cfg.Audit = cfg.Coord
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Access{cfg: cfg, log: cfg.Logger,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "controller", Name: "access_decisions_total",
			Help: "Guarded API requests, by kind (read, write) and result (allowed, denied)."}, []string{"kind", "result"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "controller", Name: "audit_write_failures_total",
			Help: "Audit records that could not be written; each failed its request with 503."}),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.decisions, a.failures} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register access metrics: %w", err)
			}
		}
	}
	return a, nil
}

// guarded reports whether a path is under the API.
func guarded(path string) bool { return path == "/v1" || strings.HasPrefix(path, "/v1/") }

func mutating(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// denial is a refused request: its status, code and reason.
type denial struct {
	status int
	code   string
	reason string
}

// Wrap returns next behind the middleware.
func (a *Access) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !guarded(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		write := mutating(r.Method)
		kind := "read"
		if write {
			kind = "write"
		}
		entry, ok := a.cfg.Tokens.Lookup(bearer(r))
		rec := &eventsv1.AuditEvent{Method: r.Method, Path: r.URL.Path, Remote: r.RemoteAddr, Replica: a.cfg.Replica,
			At: timestamppb.New(a.cfg.Now())}
		if !ok {
			d := denial{http.StatusUnauthorized, "unauthenticated", "no API token: send Authorization: Bearer <token> (berth context set --token)"}
			if bearer(r) != "" {
				d.reason = "unknown API token"
			}
			a.decisions.WithLabelValues(kind, ResultDenied).Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="berth-controller"`)
			if write {
				a.refuse(w, r, rec, d)
				return
			}
			writeJSON(w, d.status, d.code, d.reason)
			return
		}
		rec.Who, rec.Role = entry.Name, entry.Role.String()
		// The API names who asked from this header; with tokens it is the token's name.
		r.Header.Set("X-Berth-User", entry.Name)
		if !write {
			a.decisions.WithLabelValues(kind, ResultAllowed).Inc()
			next.ServeHTTP(w, r)
			return
		}
		service, need, unscoped, d := a.classify(r)
		rec.Service = service
		if d == nil && entry.Role < need {
			d = &denial{http.StatusForbidden, "permission_denied", fmt.Sprintf("token %s is a %s; %s %s needs a %s", entry.Name, entry.Role, r.Method, r.URL.Path, need)}
		}
		if d == nil && !unscoped && !entry.Covers(service) {
			what := "service " + service
			if service == "" {
				what = "a request that names no service (it needs the whole tree, \"/\")"
			}
			d = &denial{http.StatusForbidden, "permission_denied", fmt.Sprintf("token %s (%s of %s) may not act on %s", entry.Name, entry.Role, strings.Join(entry.Scopes, ", "), what)}
		}
		if d != nil {
			a.decisions.WithLabelValues(kind, ResultDenied).Inc()
			a.refuse(w, r, rec, *d)
			return
		}
		a.decisions.WithLabelValues(kind, ResultAllowed).Inc()
		rec.Result = ResultAllowed
		version, err := a.record(r.Context(), rec)
		if err != nil {
			a.failures.Inc()
			writeJSON(w, http.StatusServiceUnavailable, "unavailable", "audit record not written, so the request was not run: "+err.Error())
			return
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		rec.Status = int32(sw.code)
		rec.DoneAt = timestamppb.New(a.cfg.Now())
		rec.Resource = sw.Header().Get("Location")
		if sw.code >= 400 {
			rec.Reason = http.StatusText(sw.code)
		}
		// The request has run: completing its record and telling the bus must not fail
		// it any more, so both are best effort past the first write.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		defer cancel()
		if _, err := a.put(ctx, rec, coordclient.ExpectVersion(version)); err != nil {
			a.log.Warn("audit record not completed", "id", rec.GetId(), "err", err)
		}
		a.publish(ctx, rec)
	})
}

// refuse records a refused write and answers it; when the record cannot be written the
// answer is 503 (the request is refused either way).
func (a *Access) refuse(w http.ResponseWriter, r *http.Request, rec *eventsv1.AuditEvent, d denial) {
	rec.Result, rec.Status, rec.Reason = ResultDenied, int32(d.status), d.reason
	rec.DoneAt = rec.At
	if _, err := a.record(r.Context(), rec); err != nil {
		a.failures.Inc()
		writeJSON(w, http.StatusServiceUnavailable, "unavailable", d.reason+"; and the audit record of the refusal was not written: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	a.publish(ctx, rec)
	writeJSON(w, d.status, d.code, d.reason)
}

// record writes a new record and returns its version.
func (a *Access) record(ctx context.Context, rec *eventsv1.AuditEvent) (int64, error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	rec.Id = rec.GetAt().AsTime().UTC().Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Version 0: the record must be new.
	return a.put(ctx, rec, coordclient.ExpectVersion(0))
}

func (a *Access) put(ctx context.Context, rec *eventsv1.AuditEvent, opts ...coordclient.PutOption) (int64, error) {
	v, err := model.Marshal(rec)
	if err != nil {
		return 0, err
	}
	res, err := a.cfg.Audit.Put(ctx, AuditPrefix+"/"+rec.GetId(), v, opts...)
	if err != nil {
		return 0, fmt.Errorf("write audit record %s: %w", rec.GetId(), err)
	}
	return res.Version, nil
}

// publish sends the record as an event, best effort: coord holds the record.
func (a *Access) publish(ctx context.Context, rec *eventsv1.AuditEvent) {
	if a.cfg.Bus == nil {
		return
	}
	svc := rec.GetService()
	if svc == "" {
		svc = subjects.NoService
	}
	subject, err := subjects.AuditEvent(rec.GetResult(), svc)
	if err != nil {
		a.log.Warn("audit event not published", "id", rec.GetId(), "err", err)
		return
	}
	err = a.cfg.Bus.PublishEvent(ctx, natsbus.Event{Subject: subject, ID: natsbus.EventID(rec.GetId(), "audit"),
		Type: subjects.EventType(subjects.DomainAudit, rec.GetResult()), Source: a.cfg.Source, ServicePath: rec.GetService(), Data: rec})
	if err != nil {
		a.log.Warn("audit event not published", "id", rec.GetId(), "err", err)
	}
}

// classify finds the service a write acts on and the role it needs; unscoped when any
// scope may go on (a run that does not exist: the API answers 404 and changes nothing); a
// denial when the request cannot be looked at.
func (a *Access) classify(r *http.Request) (service string, need apitoken.Role, unscoped bool, d *denial) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")
	switch {
	case r.Method == http.MethodPost && len(parts) == 1 && (parts[0] == "deployments" || parts[0] == "tasks"):
		svc, d := bodyService(r)
		return svc, apitoken.Deployer, false, d
	case r.Method == http.MethodPost && len(parts) == 3 && (parts[0] == "deployments" || parts[0] == "tasks"):
		svc, found, d := a.runService(r.Context(), parts[0], parts[1])
		return svc, apitoken.Deployer, !found && d == nil, d
	case (r.Method == http.MethodPut || r.Method == http.MethodPatch || r.Method == http.MethodDelete) && len(parts) >= 2 && parts[0] == "tree":
		return validService(strings.Join(parts[1:], "/")), apitoken.Admin, false, nil
	}
	return "", apitoken.Admin, false, nil
}

// validService returns s, trimmed of slashes, when it is a valid service path, else "".
func validService(s string) string {
	s = strings.Trim(s, "/")
	if model.CheckService(s) != nil {
		return ""
	}
	return s
}

// bodyService reads the request's JSON body (bounded; it is put back for the API) and
// returns its "service".
func bodyService(r *http.Request) (string, *denial) {
	if r.ContentLength > maxBody {
		return "", &denial{http.StatusRequestEntityTooLarge, "invalid_argument", fmt.Sprintf("body over %d bytes", maxBody)}
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return "", &denial{http.StatusBadRequest, "invalid_argument", "read body: " + err.Error()}
	}
	if len(b) > maxBody {
		return "", &denial{http.StatusRequestEntityTooLarge, "invalid_argument", fmt.Sprintf("body over %d bytes", maxBody)}
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	var body struct {
		Service json.RawMessage `json:"service"`
	}
	if json.Unmarshal(b, &body) != nil {
		return "", nil
	}
	var s string
	if json.Unmarshal(body.Service, &s) != nil {
		return "", nil
	}
	return validService(s), nil
}

// runService reads the service of a deployment or task from coord; found is false when
// the run does not exist (or its id is not one).
func (a *Access) runService(ctx context.Context, kind, id string) (service string, found bool, d *denial) {
	if model.CheckID(id) != nil {
		return "", false, nil
	}
	path := model.DeploymentPath(id)
	if kind == "tasks" {
		path = model.TaskPath(id)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := a.cfg.Coord.Get(ctx, path)
	if errors.Is(err, coordclient.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, &denial{http.StatusServiceUnavailable, "unavailable", fmt.Sprintf("read %s to check its service: %v", id, err)}
	}
	var svc string
	if kind == "tasks" {
		t := &controllerv1.Task{}
		err = model.Unmarshal(n.Value, t)
		svc = t.GetService()
	} else {
		d := &controllerv1.Deployment{}
		err = model.Unmarshal(n.Value, d)
		svc = d.GetService()
	}
	if err != nil {
		return "", true, &denial{http.StatusInternalServerError, "internal", fmt.Sprintf("read %s to check its service: %v", id, err)}
	}
	return validService(svc), true, nil
}

// bearer returns the request's bearer token, "" when it has none.
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func writeJSON(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"code": code, "message": message})
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
