// Package api is berth-controller's HTTP API (services/task-controller/openapi.yaml): every
// replica serves it and writes requests into coord; the leader runs them. Bad input gets a
// 4xx with a JSON body {"code", "message", "field"} and changes nothing.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/task-controller/internal/model"
	"github.com/berthdev/berth/services/task-controller/internal/strategy"
)

// Limits of requests.
const (
	maxBody    = 1 << 20
	maxTargets = 20000
	maxWait    = 60 * time.Second
)

// Options are the optional parts of the API.
type Options struct {
	// NamesURL is the base URL of the name service's HTTP API that /v1/names/ proxies to;
	// nil answers those routes 503.
	NamesURL *url.URL
	// NamesClient makes the proxied requests; nil means a client with a 10 s timeout.
	NamesClient *http.Client
	// Done, when closed, ends every event stream, so that the HTTP server's shutdown is
	// not held up by them; the controller closes it when Run's context ends.
	Done <-chan struct{}
}

// Server serves the API. Create it with New; Register adds its routes.
type Server struct {
	coord  *coordclient.Client
	bus    *natsbus.Bus
	log    *slog.Logger
	source string
	opts   Options

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New returns the API of a replica. bus may be nil (no requested events).
func New(coord *coordclient.Client, bus *natsbus.Bus, source string, log *slog.Logger, reg prometheus.Registerer, opts Options) (*Server, error) {
	if opts.NamesClient == nil {
		opts.NamesClient = &http.Client{Timeout: namesTimeout}
	}
	s := &Server{coord: coord, bus: bus, log: log, source: source, opts: opts,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "controller", Name: "api_requests_total",
			Help: "HTTP API requests, by route and status code."}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "berth", Subsystem: "controller", Name: "api_request_duration_seconds",
			Help: "HTTP API request duration, by route.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"route"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.requests, s.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register api metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Register adds the API's routes to mux.
func (s *Server) Register(mux interface {
	Handle(pattern string, h http.Handler)
}) {
	route := func(pattern string, fn func(w http.ResponseWriter, r *http.Request) error) {
		mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
			if err := fn(rw, r); err != nil {
				s.writeError(rw, r, err)
			}
			s.requests.WithLabelValues(pattern, strconv.Itoa(rw.code)).Inc()
			s.duration.WithLabelValues(pattern).Observe(time.Since(start).Seconds())
		}))
	}
	route("POST /v1/deployments", s.createDeployment)
	route("GET /v1/deployments", s.listDeployments)
	route("GET /v1/deployments/{id}", s.getDeployment)
	route("POST /v1/deployments/{id}/{action}", s.controlRun(model.KindDeployment))
	route("POST /v1/tasks", s.createTask)
	route("GET /v1/tasks", s.listTasks)
	route("GET /v1/tasks/{id}", s.getTask)
	route("POST /v1/tasks/{id}/{action}", s.controlRun(model.KindTask))
	route("GET /v1/tree", s.listTree)
	route("GET /v1/tree/{path...}", s.getNode)
	route("PUT /v1/tree/{path...}", s.putNode)
	route("PATCH /v1/tree/{path...}", s.putNode)
	route("DELETE /v1/tree/{path...}", s.deleteNode)
	route("GET /v1/hosts", s.listHosts)
	route("GET /v1/instances/{service...}", s.listInstances)
	route("GET /v1/names/resolve/{service...}", s.proxyResolve)
	route("GET /v1/names/dcs", s.proxyDCs)
	// Streams last as long as the client stays; they are counted, not timed.
	stream := func(pattern string, fn func(w http.ResponseWriter, r *http.Request) error) {
		mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
			if err := fn(rw, r); err != nil {
				s.writeError(rw, r, err)
			}
			s.requests.WithLabelValues(pattern, strconv.Itoa(rw.code)).Inc()
		}))
	}
	stream("GET /v1/deployments/{id}/events", s.streamRun(model.KindDeployment))
	stream("GET /v1/tasks/{id}/events", s.streamRun(model.KindTask))
}

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

// Error is an API failure with its HTTP status.
type Error struct {
	Status  int               `json:"-"`
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Field   string            `json:"field,omitempty"`
	Details map[string]string `json:"details,omitempty"`
}

func (e *Error) Error() string { return e.Message }

func apiErr(status int, code, field, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *Error
	var fe *strategy.FieldError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &fe):
		ae = &Error{Status: http.StatusBadRequest, Code: "invalid_argument", Field: fe.Field, Message: fe.Error()}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		ae = &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()}
	case errors.Is(err, coordclient.ErrUnavailable), errors.Is(err, coordclient.ErrNoLeader):
		ae = &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "coord: " + err.Error()}
	default:
		s.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = &Error{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.Status)
	_ = json.NewEncoder(w).Encode(ae)
}

// decode reads a JSON body strictly into dst.
func decode(r *http.Request, dst any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return apiErr(http.StatusBadRequest, "invalid_argument", "", "read body: %v", err)
	}
	if len(body) > maxBody {
		return apiErr(http.StatusRequestEntityTooLarge, "invalid_argument", "", "body over %d bytes", maxBody)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		field := ""
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			field = ute.Field
		}
		if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
			field = strings.Trim(strings.TrimPrefix(msg, "json: unknown field "), "\"")
		}
		return apiErr(http.StatusBadRequest, "invalid_argument", field, "body: %v", err)
	}
	if dec.More() {
		return apiErr(http.StatusBadRequest, "invalid_argument", "", "body: more than one JSON value")
	}
	return nil
}

// writeProto answers with the protojson of m.
func writeProto(w http.ResponseWriter, status int, m proto.Message) error {
	b, err := model.Marshal(m)
	if err != nil {
		return err
	}
	return writeRaw(w, status, b)
}

func writeRaw(w http.ResponseWriter, status int, b []byte) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err := w.Write(append(b, '\n'))
	return err
}

// requester names who made a request: the X-Berth-User header, else the client address.
func requester(r *http.Request) string {
	if u := strings.TrimSpace(r.Header.Get("X-Berth-User")); u != "" && len(u) <= 128 {
		return u
	}
	return "api:" + r.RemoteAddr
}

// layers reads the policy of service's ancestors and the service; it reports whether the
// service's own node exists.
func (s *Server) layers(ctx context.Context, service string) ([]strategy.Layer, *controllerv1.ServiceNode, error) {
	var layers []strategy.Layer
	var self *controllerv1.ServiceNode
	for _, p := range model.ServiceAncestors(service) {
		n, err := s.coord.Get(ctx, model.TreePath(p))
		if errors.Is(err, coordclient.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read tree node %s: %w", p, err)
		}
		node := &controllerv1.ServiceNode{}
		if err := model.Unmarshal(n.Value, node); err != nil {
			return nil, nil, fmt.Errorf("read tree node %s: %w", p, err)
		}
		layers = append(layers, strategy.Layer{Source: p, Policy: node.GetPolicy()})
		if p == service {
			self = node
		}
	}
	return layers, self, nil
}

func (s *Server) createDeployment(w http.ResponseWriter, r *http.Request) error {
	var req DeploymentRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	requested, err := req.validate()
	if err != nil {
		return err
	}
	ctx := r.Context()
	layers, node, err := s.layers(ctx, req.Service)
	if err != nil {
		return err
	}
	if node == nil {
		return apiErr(http.StatusNotFound, "not_found", "service", "service %q is not in the service tree; create it first (berth tree set %s)", req.Service, req.Service)
	}
	eff, _ := strategy.Effective(layers)
	strat := eff.GetStrategy()
	strategy.Merge(strat, requested)
	if err := strategy.Validate("strategy.", strat); err != nil {
		return apiErr(http.StatusBadRequest, "invalid_argument", "strategy", "the effective strategy (inherited from the service tree, with the request's fields) is invalid: %v", err)
	}
	hosts := req.Hosts
	if len(hosts) == 0 && req.placement == nil {
		hosts = node.GetHosts()
		if len(hosts) == 0 {
			return apiErr(http.StatusBadRequest, "invalid_argument", "hosts", "no hosts given and none are bound to %s in the service tree (berth tree set %s --host H)", req.Service, req.Service)
		}
	}
	now := time.Now()
	id := model.NewID("d", now)
	dep := &controllerv1.Deployment{Id: id, Service: req.Service, Version: req.Version, Mode: "package",
		Artifact: &controllerv1.Artifact{Url: req.Artifact.URL, Sha256: req.Artifact.SHA256}, Hosts: hosts,
		Strategy: strat, Requested: requested, RequestedBy: requester(r), Queue: req.Queue, Stages: []string{"steps"},
		Status: &controllerv1.RunStatus{State: model.StatePending, CreatedAt: timestamppb.New(now)}}
	if req.placement != nil {
		dep.Mode, dep.Placement, dep.Stages = model.ModeContainer, req.placement, []string{"image", "placement", "steps"}
	}
	ctl := &controllerv1.Control{Kind: model.KindDeployment, Service: req.Service, CreatedAt: timestamppb.New(now)}
	lockPath := model.LockPath(req.Service)
	head, err := model.Marshal(dep)
	if err != nil {
		return err
	}
	res, err := s.coord.Txn().If(coordclient.Missing(lockPath)).Then(
		coordclient.OpPut(model.DeploymentPath(id), head),
		coordclient.OpPut(model.ActivePath(id), model.MustMarshal(ctl)),
		coordclient.OpPut(lockPath, model.MustMarshal(&controllerv1.ServiceLock{DeploymentId: id})),
	).Else(coordclient.OpGet(lockPath)).Commit(ctx)
	if err != nil {
		return fmt.Errorf("record deployment: %w", err)
	}
	if !res.Succeeded {
		running := ""
		if g := res.Results[0].Get; g != nil {
			l := &controllerv1.ServiceLock{}
			if model.Unmarshal(g.Value, l) == nil {
				running = l.GetDeploymentId()
			}
		}
		if !req.Queue {
			e := apiErr(http.StatusConflict, "conflict", "service",
				"deployment %s of %s is running; wait for it, abort it (berth deployments abort %s), or queue this one (\"queue\": true)", running, req.Service, running)
			e.Details = map[string]string{"running": running}
			return e
		}
		dep.Status.State = model.StateQueued
		dep.Status.Message = "queued behind " + running
		if head, err = model.Marshal(dep); err != nil {
			return err
		}
		if _, err := s.coord.Txn().Then(coordclient.OpPut(model.DeploymentPath(id), head),
			coordclient.OpPut(model.ActivePath(id), model.MustMarshal(ctl))).Commit(ctx); err != nil {
			return fmt.Errorf("record deployment: %w", err)
		}
	}
	s.requestedEvent(ctx, dep)
	w.Header().Set("Location", "/v1/deployments/"+id)
	return writeProto(w, http.StatusCreated, dep)
}

// requestedEvent publishes deploy.requested, best effort: the leader's later events and
// the record in coord are what matter.
func (s *Server) requestedEvent(ctx context.Context, dep *controllerv1.Deployment) {
	if s.bus == nil {
		return
	}
	subject, err := subjects.DeployEvent("requested", dep.GetService())
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err = s.bus.PublishEvent(ctx, natsbus.Event{Subject: subject, ID: natsbus.EventID(dep.GetId(), "requested"),
		Type: subjects.EventType(subjects.DomainDeploy, "requested"), Source: s.source, ServicePath: dep.GetService(),
		Data: &eventsv1.DeployEvent{DeploymentId: dep.GetId(), Service: dep.GetService(), Version: dep.GetVersion(), Mode: dep.GetMode(),
			State: dep.GetStatus().GetState(), Batch: -1, Message: "requested", RequestedBy: dep.GetRequestedBy(), At: timestamppb.Now()}})
	if err != nil {
		s.log.Warn("requested event not published", "id", dep.GetId(), "err", err)
	}
}

func (s *Server) createTask(w http.ResponseWriter, r *http.Request) error {
	var req TaskRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	requested, err := req.validate()
	if err != nil {
		return err
	}
	ctx := r.Context()
	var layers []strategy.Layer
	if req.Service != "" {
		var node *controllerv1.ServiceNode
		if layers, node, err = s.layers(ctx, req.Service); err != nil {
			return err
		}
		if node == nil {
			return apiErr(http.StatusNotFound, "not_found", "service", "service %q is not in the service tree", req.Service)
		}
	}
	eff, _ := strategy.Effective(layers)
	strat := eff.GetStrategy()
	strategy.Merge(strat, requested)
	if err := strategy.Validate("strategy.", strat); err != nil {
		return apiErr(http.StatusBadRequest, "invalid_argument", "strategy", "the effective strategy is invalid: %v", err)
	}
	now := time.Now()
	id := model.NewID("t", now)
	task := &controllerv1.Task{Id: id, Plugin: req.Plugin, Action: req.Action, Arguments: req.Arguments, Args: req.Args,
		Hosts: req.Hosts, Strategy: strat, RequestedBy: requester(r), Service: req.Service,
		Status: &controllerv1.RunStatus{State: model.StatePending, CreatedAt: timestamppb.New(now)}}
	head, err := model.Marshal(task)
	if err != nil {
		return err
	}
	ctl := &controllerv1.Control{Kind: model.KindTask, CreatedAt: timestamppb.New(now)}
	if _, err := s.coord.Txn().Then(coordclient.OpPut(model.TaskPath(id), head),
		coordclient.OpPut(model.ActivePath(id), model.MustMarshal(ctl))).Commit(ctx); err != nil {
		return fmt.Errorf("record task: %w", err)
	}
	w.Header().Set("Location", "/v1/tasks/"+id)
	return writeProto(w, http.StatusCreated, task)
}

// listRuns reads the headers under prefix, newest first.
func (s *Server) listRuns(ctx context.Context, prefix string, keep func([]byte) (proto.Message, bool), limit int) ([]proto.Message, error) {
	res, err := s.coord.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	var out []proto.Message
	for j := len(res.Nodes) - 1; j >= 0 && len(out) < limit; j-- {
		n := res.Nodes[j]
		if n.Version == 0 {
			continue
		}
		if m, ok := keep(n.Value); ok {
			out = append(out, m)
		}
	}
	return out, nil
}

func limitParam(r *http.Request) (int, error) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return 0, apiErr(http.StatusBadRequest, "invalid_argument", "limit", "limit %q: want 1 to 10000", v)
		}
		limit = n
	}
	return limit, nil
}

func (s *Server) listDeployments(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	service, state := q.Get("service"), q.Get("state")
	if service != "" {
		if err := model.CheckService(service); err != nil {
			return apiErr(http.StatusBadRequest, "invalid_argument", "service", "%v", err)
		}
	}
	if state != "" && !slices.Contains(model.RunStates, state) {
		return apiErr(http.StatusBadRequest, "invalid_argument", "state", "state %q: want one of %s", state, strings.Join(model.RunStates, ", "))
	}
	limit, err := limitParam(r)
	if err != nil {
		return err
	}
	items, err := s.listRuns(r.Context(), model.DeploymentsPrefix, func(b []byte) (proto.Message, bool) {
		d := &controllerv1.Deployment{}
		if model.Unmarshal(b, d) != nil {
			return nil, false
		}
		return d, (service == "" || d.GetService() == service) && (state == "" || d.GetStatus().GetState() == state)
	}, limit)
	if err != nil {
		return err
	}
	return writeList(w, "deployments", items)
}

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) error {
	state := r.URL.Query().Get("state")
	if state != "" && !slices.Contains(model.RunStates, state) {
		return apiErr(http.StatusBadRequest, "invalid_argument", "state", "state %.40q: want one of %s", state, strings.Join(model.RunStates, ", "))
	}
	limit, err := limitParam(r)
	if err != nil {
		return err
	}
	items, err := s.listRuns(r.Context(), model.TasksPrefix, func(b []byte) (proto.Message, bool) {
		t := &controllerv1.Task{}
		if model.Unmarshal(b, t) != nil {
			return nil, false
		}
		return t, state == "" || t.GetStatus().GetState() == state
	}, limit)
	if err != nil {
		return err
	}
	return writeList(w, "tasks", items)
}

func writeList(w http.ResponseWriter, key string, items []proto.Message) error {
	var b bytes.Buffer
	b.WriteString(`{"` + key + `":[`)
	for j, m := range items {
		if j > 0 {
			b.WriteByte(',')
		}
		mb, err := model.Marshal(m)
		if err != nil {
			return err
		}
		b.Write(mb)
	}
	b.WriteString("]}")
	return writeRaw(w, http.StatusOK, b.Bytes())
}

// readRun reads a run's header and per-host records; it waits for a change first when
// the request asks (?wait=30s&after_revision=N) and nothing changed after N yet.
func (s *Server) readRun(r *http.Request, id string) (proto.Message, error) {
	if err := model.CheckID(id); err != nil {
		return nil, apiErr(http.StatusBadRequest, "invalid_argument", "id", "%v", err)
	}
	kind := model.KindOf(id)
	head := model.DeploymentPath(id)
	if kind == model.KindTask {
		head = model.TaskPath(id)
	}
	q := r.URL.Query()
	var wait time.Duration
	var after int64
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxWait {
			return nil, apiErr(http.StatusBadRequest, "invalid_argument", "wait", "wait %q: want a duration up to %s", v, maxWait)
		}
		wait = d
	}
	if v := q.Get("after_revision"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return nil, apiErr(http.StatusBadRequest, "invalid_argument", "after_revision", "after_revision %q: want a revision", v)
		}
		after = n
	}
	withTargets := q.Get("targets") != "false"
	ctx := r.Context()
	m, rev, err := s.loadRun(ctx, kind, head, id, withTargets)
	if err != nil || wait == 0 || rev > after {
		return m, err
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var opts []coordclient.WatchOption
	if withTargets {
		opts = append(opts, coordclient.Recursive())
	}
	events := s.coord.Watch(wctx, head, after+1, append(opts, coordclient.RelistOnCompaction())...)
	select {
	case <-wctx.Done():
	case <-events:
	}
	cancel()
	for range events {
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	m, _, err = s.loadRun(ctx, kind, head, id, withTargets)
	return m, err
}

// loadRun reads a run; without targets only its header (the revision is then the
// header's).
func (s *Server) loadRun(ctx context.Context, kind, head, id string, withTargets bool) (proto.Message, int64, error) {
	var res *coordclient.ListResult
	var err error
	if withTargets {
		res, err = s.coord.List(ctx, head, coordclient.Recursive())
	} else {
		var n *coordclient.Node
		n, err = s.coord.Get(ctx, head)
		if errors.Is(err, coordclient.ErrNotFound) {
			return nil, 0, apiErr(http.StatusNotFound, "not_found", "id", "%s %s not found", kind, id)
		}
		if err == nil {
			res = &coordclient.ListResult{Nodes: []coordclient.Node{*n}}
		}
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", id, err)
	}
	return buildRun(kind, head, id, res.Nodes, withTargets)
}

// buildRun makes a run from the nodes of its subtree (the header first, as List returns
// it): the header, and with targets every host's record (pending when it has none). The
// revision is the highest mod_rev among the nodes.
func buildRun(kind, head, id string, nodes []coordclient.Node, withTargets bool) (proto.Message, int64, error) {
	if len(nodes) == 0 || nodes[0].Path != head || nodes[0].Version == 0 {
		return nil, 0, apiErr(http.StatusNotFound, "not_found", "id", "%s %s not found", kind, id)
	}
	var rev int64
	per := map[string]coordclient.Node{}
	for _, n := range nodes {
		rev = max(rev, n.ModRev)
		if n.Path != head && n.Version > 0 {
			per[n.Path[strings.LastIndexByte(n.Path, '/')+1:]] = n
		}
	}
	if kind == model.KindTask {
		t := &controllerv1.Task{}
		if err := model.Unmarshal(nodes[0].Value, t); err != nil {
			return nil, 0, err
		}
		for _, h := range t.GetHosts() {
			if !withTargets {
				break
			}
			st := &controllerv1.Step{Host: h, State: model.TargetPending}
			if n, ok := per[h]; ok {
				_ = model.Unmarshal(n.Value, st)
			}
			t.Steps = append(t.Steps, st)
		}
		t.Revision = rev
		return t, rev, nil
	}
	d := &controllerv1.Deployment{}
	if err := model.Unmarshal(nodes[0].Value, d); err != nil {
		return nil, 0, err
	}
	for _, key := range model.TargetKeys(d) {
		if !withTargets {
			break
		}
		t := model.PendingTarget(d, key)
		if n, ok := per[key]; ok {
			_ = model.Unmarshal(n.Value, t)
		}
		d.Targets = append(d.Targets, t)
	}
	d.Revision = rev
	return d, rev, nil
}

func (s *Server) getDeployment(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if model.KindOf(id) != model.KindDeployment {
		return apiErr(http.StatusNotFound, "not_found", "id", "deployment %s not found", id)
	}
	m, err := s.readRun(r, id)
	if err != nil {
		return err
	}
	return writeProto(w, http.StatusOK, m)
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if model.KindOf(id) != model.KindTask {
		return apiErr(http.StatusNotFound, "not_found", "id", "task %s not found", id)
	}
	m, err := s.readRun(r, id)
	if err != nil {
		return err
	}
	return writeProto(w, http.StatusOK, m)
}

// controlRun answers POST /v1/{deployments,tasks}/{id}/{pause,resume,abort,rollback}: it
// records the request in the run's control node, which the leader acts on.
func (s *Server) controlRun(kind string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, action := r.PathValue("id"), r.PathValue("action")
		if err := model.CheckID(id); err != nil || model.KindOf(id) != kind {
			return apiErr(http.StatusNotFound, "not_found", "id", "%s %s not found", kind, id)
		}
		allowed := []string{"pause", "resume", "abort"}
		if kind == model.KindDeployment {
			allowed = append(allowed, "rollback")
		}
		if !slices.Contains(allowed, action) {
			return apiErr(http.StatusNotFound, "not_found", "action", "unknown action %q: want %s", action, strings.Join(allowed, ", "))
		}
		ctx := r.Context()
		head := model.DeploymentPath(id)
		if kind == model.KindTask {
			head = model.TaskPath(id)
		}
		for try := 0; ; try++ {
			hn, err := s.coord.Get(ctx, head)
			if errors.Is(err, coordclient.ErrNotFound) {
				return apiErr(http.StatusNotFound, "not_found", "id", "%s %s not found", kind, id)
			}
			if err != nil {
				return err
			}
			st, err := statusOf(kind, hn.Value)
			if err != nil {
				return err
			}
			cn, err := s.coord.Get(ctx, model.ActivePath(id))
			if errors.Is(err, coordclient.ErrNotFound) || (err == nil && model.TerminalRun(st.GetState())) {
				return apiErr(http.StatusConflict, "failed_precondition", "id", "%s %s has ended (%s); there is nothing to %s", kind, id, st.GetState(), action)
			}
			if err != nil {
				return err
			}
			ctl := &controllerv1.Control{}
			if err := model.Unmarshal(cn.Value, ctl); err != nil {
				return err
			}
			state := st.GetState()
			switch action {
			case "pause":
				if state == model.StateRollingBack {
					return apiErr(http.StatusConflict, "failed_precondition", "id", "%s %s is rolling back; it cannot be paused (abort stops it)", kind, id)
				}
				if state != model.StatePaused || st.GetPauseReason() != model.PauseManual {
					ctl.Pauses++
				}
			case "resume":
				pausePending := ctl.GetPauses() > st.GetPausesSeen()
				if state != model.StatePaused && !pausePending {
					return apiErr(http.StatusConflict, "failed_precondition", "id", "%s %s is %s, not paused; there is nothing to resume", kind, id, state)
				}
				if pausePending {
					return apiErr(http.StatusConflict, "failed_precondition", "id", "%s %s has a pause the leader has not applied yet; resume once it is paused", kind, id)
				}
				if ctl.GetResumes() <= st.GetResumesSeen() {
					ctl.Resumes = st.GetResumesSeen() + 1
				}
			case "abort":
				ctl.Abort = true
			case "rollback":
				ctl.Rollback = true
			}
			_, err = s.coord.Put(ctx, model.ActivePath(id), model.MustMarshal(ctl), coordclient.ExpectVersion(cn.Version))
			if errors.Is(err, coordclient.ErrConflict) && try < 5 {
				continue
			}
			if err != nil {
				return fmt.Errorf("record %s of %s: %w", action, id, err)
			}
			m, _, err := s.loadRun(ctx, kind, head, id, true)
			if err != nil {
				return err
			}
			return writeProto(w, http.StatusAccepted, m)
		}
	}
}

func statusOf(kind string, b []byte) (*controllerv1.RunStatus, error) {
	if kind == model.KindTask {
		t := &controllerv1.Task{}
		if err := model.Unmarshal(b, t); err != nil {
			return nil, err
		}
		return t.GetStatus(), nil
	}
	d := &controllerv1.Deployment{}
	if err := model.Unmarshal(b, d); err != nil {
		return nil, err
	}
	return d.GetStatus(), nil
}

// servicePath reads and checks the {path...} of a tree route.
func servicePath(r *http.Request) (string, error) {
	p := strings.Trim(r.PathValue("path"), "/")
	if err := model.CheckService(p); err != nil {
		return "", apiErr(http.StatusBadRequest, "invalid_argument", "path", "%v", err)
	}
	return p, nil
}

func (s *Server) listTree(w http.ResponseWriter, r *http.Request) error {
	prefix := strings.Trim(r.URL.Query().Get("prefix"), "/")
	root := model.TreePrefix
	if prefix != "" {
		if err := model.CheckService(prefix); err != nil {
			return apiErr(http.StatusBadRequest, "invalid_argument", "prefix", "%v", err)
		}
		root = model.TreePath(prefix)
	}
	res, err := s.coord.List(r.Context(), root, coordclient.Recursive())
	if err != nil {
		return fmt.Errorf("list tree: %w", err)
	}
	var items []proto.Message
	for _, n := range res.Nodes {
		if n.Version == 0 || n.Path == model.TreePrefix {
			continue
		}
		node := &controllerv1.ServiceNode{}
		if model.Unmarshal(n.Value, node) != nil {
			continue
		}
		node.Path = strings.TrimPrefix(n.Path, model.TreePrefix+"/")
		items = append(items, node)
	}
	return writeList(w, "nodes", items)
}

func (s *Server) getNode(w http.ResponseWriter, r *http.Request) error {
	path, err := servicePath(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	n, err := s.coord.Get(ctx, model.TreePath(path))
	if errors.Is(err, coordclient.ErrNotFound) {
		return apiErr(http.StatusNotFound, "not_found", "path", "service %q is not in the service tree", path)
	}
	if err != nil {
		return err
	}
	node := &controllerv1.ServiceNode{}
	if err := model.Unmarshal(n.Value, node); err != nil {
		return err
	}
	node.Path = path
	if v := r.URL.Query().Get("effective"); v != "true" && v != "1" {
		return writeProto(w, http.StatusOK, node)
	}
	layers, _, err := s.layers(ctx, path)
	if err != nil {
		return err
	}
	_, values := strategy.Effective(layers)
	nb, err := model.Marshal(node)
	if err != nil {
		return err
	}
	eb, err := model.Marshal(&controllerv1.EffectivePolicy{Path: path, Values: values})
	if err != nil {
		return err
	}
	return writeRaw(w, http.StatusOK, []byte(`{"node":`+string(nb)+`,"effective":`+string(eb)+`}`))
}

func (s *Server) putNode(w http.ResponseWriter, r *http.Request) error {
	path, err := servicePath(r)
	if err != nil {
		return err
	}
	var req NodeRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	policy, err := req.Policy.proto()
	if err != nil {
		return err
	}
	if req.Hosts != nil {
		if err := checkHosts("hosts", *req.Hosts, maxTargets); err != nil {
			return err
		}
	}
	if req.Labels != nil {
		for k, v := range *req.Labels {
			if err := model.CheckLabelKey(k); err != nil {
				return apiErr(http.StatusBadRequest, "invalid_argument", "labels", "%v", err)
			}
			if len(v) > 256 {
				return apiErr(http.StatusBadRequest, "invalid_argument", "labels", "label %s: value over 256 bytes", k)
			}
		}
	}
	if req.Owners != nil {
		for i, o := range *req.Owners {
			if o == "" || len(o) > 128 || strings.ContainsFunc(o, func(r rune) bool { return r < ' ' || r == 0x7f }) {
				return apiErr(http.StatusBadRequest, "invalid_argument", fmt.Sprintf("owners[%d]", i), "owner %q: want 1 to 128 printable characters", o)
			}
		}
	}
	if req.Description != nil && len(*req.Description) > 1024 {
		return apiErr(http.StatusBadRequest, "invalid_argument", "description", "over 1024 bytes")
	}
	for _, u := range req.Unset {
		if err := unsetField(&controllerv1.Policy{}, u); err != nil {
			return apiErr(http.StatusBadRequest, "invalid_argument", "unset", "%v", err)
		}
	}
	ctx := r.Context()
	tp := model.TreePath(path)
	for try := 0; ; try++ {
		node := &controllerv1.ServiceNode{}
		var version int64
		created := true
		cur, err := s.coord.Get(ctx, tp)
		switch {
		case errors.Is(err, coordclient.ErrNotFound):
		case err != nil:
			return err
		default:
			if err := model.Unmarshal(cur.Value, node); err != nil {
				return err
			}
			version, created = cur.Version, false
		}
		now := timestamppb.Now()
		if r.Method == http.MethodPut {
			createdAt := node.GetCreatedAt()
			node = &controllerv1.ServiceNode{CreatedAt: createdAt}
		}
		if node.CreatedAt == nil {
			node.CreatedAt = now
		}
		node.UpdatedAt = now
		if req.Owners != nil {
			node.Owners = *req.Owners
		}
		if req.Labels != nil {
			node.Labels = *req.Labels
		}
		if req.Hosts != nil {
			node.Hosts = *req.Hosts
		}
		if req.Description != nil {
			node.Description = *req.Description
		}
		if node.Policy == nil {
			node.Policy = &controllerv1.Policy{}
		}
		strategy.Merge(node.Policy, policy)
		for _, u := range req.Unset {
			_ = unsetField(node.Policy, u)
		}
		node.Path = ""
		b, err := model.Marshal(node)
		if err != nil {
			return err
		}
		_, err = s.coord.Put(ctx, tp, b, coordclient.ExpectVersion(version))
		if errors.Is(err, coordclient.ErrConflict) && try < 5 {
			continue
		}
		if err != nil {
			return fmt.Errorf("write tree node %s: %w", path, err)
		}
		node.Path = path
		status := http.StatusOK
		if created {
			status = http.StatusCreated
		}
		return writeProto(w, status, node)
	}
}

// unsetField clears the policy field named by a dotted path (policy.strategy.max_parallel
// or strategy.max_parallel).
func unsetField(p *controllerv1.Policy, name string) error {
	parts := strings.Split(strings.TrimPrefix(name, "policy."), ".")
	m := p.ProtoReflect()
	for j, part := range parts {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(part))
		if fd == nil {
			return fmt.Errorf("unset %q: no policy field %q", name, part)
		}
		if j == len(parts)-1 {
			m.Clear(fd)
			return nil
		}
		if fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.Message().FullName() == "google.protobuf.Duration" {
			return fmt.Errorf("unset %q: %q has no fields", name, part)
		}
		m = m.Mutable(fd).Message()
	}
	return nil
}

func (s *Server) deleteNode(w http.ResponseWriter, r *http.Request) error {
	path, err := servicePath(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	recursive := r.URL.Query().Get("recursive") == "true"
	tp := model.TreePath(path)
	if _, err := s.coord.Get(ctx, model.LockPath(path)); err == nil {
		return apiErr(http.StatusConflict, "failed_precondition", "path", "a deployment of %s is running; wait for it or abort it first", path)
	}
	kids, err := s.coord.List(ctx, tp, coordclient.KeysOnly())
	if err != nil {
		return err
	}
	if len(kids.Nodes) > 0 && !recursive {
		return apiErr(http.StatusConflict, "failed_precondition", "path", "%s has %d child nodes; delete them first or pass recursive=true", path, len(kids.Nodes))
	}
	var opts []coordclient.DeleteOption
	if recursive {
		opts = append(opts, coordclient.Recursive())
	}
	res, err := s.coord.Delete(ctx, tp, opts...)
	if errors.Is(err, coordclient.ErrNotFound) {
		return apiErr(http.StatusNotFound, "not_found", "path", "service %q is not in the service tree", path)
	}
	if err != nil {
		return err
	}
	return writeRaw(w, http.StatusOK, fmt.Appendf(nil, `{"deleted":%d}`, res.Deleted))
}
