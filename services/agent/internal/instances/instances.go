// Package instances registers the service instances that run on this host in the name
// service and keeps their health up to date (DESIGN §3, §5, §7).
//
// Each instance is checked by its own goroutine: the probe (the descriptor's health
// script) runs every health interval with the health timeout, and a health.Tracker turns
// the results into a verdict. An instance is registered — the ephemeral node
// /berth/instances/<service path>/<instance id> in the agent's coord session, holding a
// berth.names.v1.Instance as protojson — the first time it is healthy (rise passes in a
// row). From then on it stays registered and every verdict change rewrites its node:
// health HEALTHY, UNHEALTHY or FLAPPING. The name service answers only healthy, active
// instances, so an unhealthy one stops getting traffic while the name service (and its
// panic threshold) still sees it. Draining puts state DRAINING, then deletes the node.
//
// Every verdict change is reported as an event (berth.v1.events.instance.<verdict>.<service
// tokens>) and counted.
package instances

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent/internal/health"
)

// Prefix is the parent of every service's instances in coord.
const Prefix = "/berth/instances/"

// Event types the agent reports on berth.v1.events.instance.<type>.<service tokens>.
const (
	EventHealthy   = "healthy"
	EventUnhealthy = "unhealthy"
	EventFlapping  = "flapping"
	EventDraining  = "draining"
)

// firstCheckDelay bounds the wait before an instance's first check.
const firstCheckDelay = 250 * time.Millisecond

// ErrUnknown is returned for an instance the manager does not have.
var ErrUnknown = errors.New("instances: unknown instance")

// Registrar keeps ephemeral nodes in the agent's coord session (presence.Keeper). Put and
// Delete return the revision of the write; presence.ErrNoSession-like errors for which
// Pending reports true mean the change will be applied when a session opens.
type Registrar interface {
	Put(ctx context.Context, path string, value []byte) (int64, error)
	Delete(ctx context.Context, path string) (int64, error)
}

// Reporter publishes events without blocking (report.Reporter).
type Reporter interface {
	Publish(e natsbus.Event)
}

// Probe runs one health check; nil means it passed. It must return when ctx ends.
type Probe func(ctx context.Context) error

// Config configures a Manager.
type Config struct {
	// Host is this host's id, DC its datacenter, IP the address instances are reached at.
	Host, DC, IP string
	// FlapChanges and FlapWindow configure flapping detection (health.Policy).
	FlapChanges int
	FlapWindow  time.Duration
	// Registrar writes the nodes; nil keeps the instances' health without registering
	// them (an agent without coord).
	Registrar Registrar
	// Pending reports whether a Registrar error means "applied when a session opens"
	// (presence.ErrNoSession); nil means no error is.
	Pending func(error) bool
	// Reporter publishes events; nil publishes none.
	Reporter Reporter
	// Logger receives state changes; nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Spec is an instance to run checks for.
type Spec struct {
	// Service is the service path (hotel/search).
	Service string
	// Version is the version the instance runs ("" for a static service without one).
	Version string
	// Port is the instance's port, 0 for none.
	Port int
	// Tags and Weight come from the descriptor.
	Tags   []string
	Weight int
	// Interval, Timeout, Rise and Fall come from the descriptor's health section.
	Interval, Timeout time.Duration
	Rise, Fall        int
	// Probe is the health check; nil means the instance is healthy at once (a descriptor
	// without a health script).
	Probe Probe
	// Origin says where the instance comes from, for logs: deploy, restart, static.
	Origin string
	// ID is the instance's id; empty means InstanceID(host, Port). A container has an id
	// of its own (several containers of a service may listen on one port of a host, each
	// on its own address).
	ID string
	// IP is the address the instance is reached at; empty means Config.IP (the host's).
	IP string
}

// Manager runs the instances' checks and registrations. Create it with New and run Run;
// Add may be called before Run starts (the checks then start with Run).
type Manager struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu sync.Mutex
	// runCtx is Run's context while Run runs; nil before and after.
	runCtx context.Context
	// wg counts the check goroutines; Run waits for them.
	wg sync.WaitGroup
	// insts are the instances by key (service + "/" + id).
	insts map[string]*instance
}

// instance is one instance and its check goroutine.
type instance struct {
	spec    Spec
	id      string
	ip      string
	path    string
	tracker *health.Tracker

	// cancel stops the goroutine; done is closed when it returned (nil until started).
	cancel context.CancelFunc
	done   chan struct{}

	// mu guards what follows and serializes the instance's coord writes.
	mu         sync.Mutex
	registered bool
	state      namesv1.InstanceState
	verdict    health.Verdict
	since      time.Time
	lastErr    string
	regAt      time.Time
}

type metrics struct {
	instances   *prometheus.GaugeVec
	transitions *prometheus.CounterVec
	checks      *prometheus.CounterVec
	duration    prometheus.Histogram
	writes      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "agent", Name: "instances",
			Help: "Instances on this host by health (unknown: not yet registered)."}, []string{"health"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "instance_transitions_total",
			Help: "Instance health verdict changes, by the new verdict, and drains."}, []string{"to"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "health_checks_total",
			Help: "Health checks run, by outcome (pass, fail, timeout)."}, []string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "berth", Subsystem: "agent", Name: "health_check_duration_seconds",
			Help: "Time a health check took.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 8)}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "registrations_total",
			Help: "Instance node writes to coord, by operation (put, delete) and outcome (ok, pending, error)."}, []string{"op", "outcome"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.instances, m.transitions, m.checks, m.duration, m.writes} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("instance metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New returns a manager; it starts nothing.
func New(cfg Config) (*Manager, error) {
	if cfg.Host == "" {
		return nil, errors.New("instances: host: empty")
	}
	if cfg.IP == "" {
		return nil, errors.New("instances: ip: empty")
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Pending == nil {
		cfg.Pending = func(error) bool { return false }
	}
	return &Manager{cfg: cfg, log: cfg.Logger, metrics: m, insts: map[string]*instance{}}, nil
}

// InstanceID is the id of the instance of a service listening on port on host: the host id
// made a DNS label (lowercase; characters other than letters, digits, '-' and '_' become
// '-'), then "-<port>" when port is not 0. One host runs one instance per (service, port).
func InstanceID(host string, port int) string {
	suffix := ""
	if port != 0 {
		suffix = strconv.Itoa(port)
	}
	return InstanceIDWith(host, suffix)
}

// InstanceIDWith is the host id made a DNS label followed by "-<suffix>" (nothing when
// suffix is empty), the host part shortened so that the whole is at most 63 bytes; a suffix
// that leaves no room for the host is the id alone. The suffix must be a DNS label.
func InstanceIDWith(host, suffix string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(host) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	id := b.String()
	if suffix == "" {
		return id[:min(len(id), 63)]
	}
	if len(suffix) > 61 {
		return suffix
	}
	if len(id)+1+len(suffix) > 63 {
		id = id[:63-1-len(suffix)]
	}
	return id + "-" + suffix
}

// checkLabel checks that id is a DNS label: 1..63 lowercase letters, digits and '-', not
// starting or ending with '-'.
func checkLabel(id string) error {
	if id == "" || len(id) > 63 || id[0] == '-' || id[len(id)-1] == '-' {
		return fmt.Errorf("%q: want a DNS label of 1..63 bytes", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%q: want lowercase letters, digits and '-'", id)
		}
	}
	return nil
}

// Path is the coord path of an instance.
func Path(service, id string) string { return Prefix + service + "/" + id }

// Add starts checking an instance and returns its id. When healthy is true the instance's
// rise passes were already seen (a deploy waited for them) and it is registered at once;
// otherwise it is registered after rise passes. An instance with the same service and id
// is replaced (its checks stop; its node is rewritten by the new one).
func (m *Manager) Add(ctx context.Context, spec Spec, healthy bool) (string, error) {
	if spec.Weight == 0 {
		spec.Weight = 100
	}
	p := health.Policy{Rise: spec.Rise, Fall: spec.Fall, FlapChanges: m.cfg.FlapChanges, FlapWindow: m.cfg.FlapWindow}
	if err := p.Validate(); err != nil {
		return "", fmt.Errorf("instance of %s: %w", spec.Service, err)
	}
	if spec.Interval <= 0 {
		return "", fmt.Errorf("instance of %s: health interval %s: want more than 0", spec.Service, spec.Interval)
	}
	if spec.Port < 0 || spec.Port > 65535 {
		return "", fmt.Errorf("instance of %s: port %d out of range 0..65535", spec.Service, spec.Port)
	}
	id := spec.ID
	if id == "" {
		id = InstanceID(m.cfg.Host, spec.Port)
	} else if err := checkLabel(id); err != nil {
		return "", fmt.Errorf("instance of %s: id %w", spec.Service, err)
	}
	ip := spec.IP
	if ip == "" {
		ip = m.cfg.IP
	}
	in := &instance{spec: spec, id: id, ip: ip, path: Path(spec.Service, id), state: namesv1.InstanceState_INSTANCE_STATE_ACTIVE, since: time.Now()}
	if healthy || spec.Probe == nil {
		in.tracker = health.NewHealthyTracker(p)
	} else {
		in.tracker = health.NewTracker(p)
	}
	in.verdict = in.tracker.Verdict()
	verdict := in.verdict // in is shared with Run's goroutines once it is in m.insts
	m.metrics.instances.WithLabelValues(verdict.String()).Inc()
	key := spec.Service + "/" + id
	m.mu.Lock()
	old := m.insts[key]
	m.insts[key] = in
	m.mu.Unlock()
	if old != nil {
		m.stop(old)
	}
	if verdict == health.Healthy {
		m.log.Info("instance healthy", "service", spec.Service, "instance", id, "version", spec.Version, "origin", spec.Origin)
		if healthy {
			m.report(in, EventHealthy, "unknown", "health passed before registration")
		}
		if err := m.register(ctx, in); err != nil {
			return id, err
		}
	}
	m.mu.Lock()
	if m.runCtx != nil && m.insts[key] == in {
		m.startLocked(in)
	}
	m.mu.Unlock()
	return id, nil
}

// Remove stops checking an instance and deletes its node (no draining: the instance is
// gone already, or never served). It returns the revision of the delete (0 when nothing
// was registered or no session is open).
func (m *Manager) Remove(ctx context.Context, service, id string) (int64, error) {
	in := m.take(service, id)
	if in == nil {
		return 0, fmt.Errorf("remove %s/%s: %w", service, id, ErrUnknown)
	}
	return m.deregister(ctx, in)
}

// Drain takes an instance out of service before it stops: it stops its checks, puts it
// with state DRAINING (so that views show it leaving), then deletes its node, and returns
// the revision of the delete. Name service answers and templates stop using the instance
// once they see that revision.
func (m *Manager) Drain(ctx context.Context, service, id string) (int64, error) {
	in := m.take(service, id)
	if in == nil {
		return 0, fmt.Errorf("drain %s/%s: %w", service, id, ErrUnknown)
	}
	in.mu.Lock()
	wasRegistered := in.registered
	in.state = namesv1.InstanceState_INSTANCE_STATE_DRAINING
	in.mu.Unlock()
	m.metrics.transitions.WithLabelValues("draining").Inc()
	m.report(in, EventDraining, in.verdict.String(), "stopping for a deploy or a stop")
	if wasRegistered {
		if err := m.write(ctx, in); err != nil {
			m.log.Warn("put draining state", "service", service, "instance", id, "err", err)
		}
	}
	return m.deregister(ctx, in)
}

// Has reports whether the manager has the instance.
func (m *Manager) Has(service, id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.insts[service+"/"+id]
	return ok
}

// Status is one instance as the manager sees it.
type Status struct {
	Service, ID, Version, IP string
	Port                     int
	Verdict                  health.Verdict
	Registered               bool
	Draining                 bool
	Since                    time.Time
	LastError                string
}

// List returns every instance, by service and id.
func (m *Manager) List() []Status {
	m.mu.Lock()
	ins := make([]*instance, 0, len(m.insts))
	for _, in := range m.insts {
		ins = append(ins, in)
	}
	m.mu.Unlock()
	out := make([]Status, 0, len(ins))
	for _, in := range ins {
		in.mu.Lock()
		out = append(out, in.statusLocked())
		in.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Service+"/"+a.ID, b.Service+"/"+b.ID) })
	return out
}

// Lookup returns the instance as the manager sees it, if it has it.
func (m *Manager) Lookup(service, id string) (Status, bool) {
	m.mu.Lock()
	in := m.insts[service+"/"+id]
	m.mu.Unlock()
	if in == nil {
		return Status{}, false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.statusLocked(), true
}

// statusLocked is in's Status. in.mu is held.
func (in *instance) statusLocked() Status {
	return Status{Service: in.spec.Service, ID: in.id, Version: in.spec.Version, IP: in.ip, Port: in.spec.Port,
		Verdict: in.verdict, Registered: in.registered, Draining: in.state == namesv1.InstanceState_INSTANCE_STATE_DRAINING,
		Since: in.since, LastError: in.lastErr}
}

// Run starts the checks of the instances added so far and of those added later, and
// returns nil when ctx ends, after every check goroutine returned. It leaves the nodes in
// place: they go with the agent's session.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.runCtx = ctx
	for _, in := range m.insts {
		m.startLocked(in)
	}
	m.mu.Unlock()
	<-ctx.Done()
	m.mu.Lock()
	m.runCtx = nil
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}

// startLocked starts in's goroutine. m.mu is held.
func (m *Manager) startLocked(in *instance) {
	if in.done != nil {
		return
	}
	ctx, cancel := context.WithCancel(m.runCtx)
	in.cancel, in.done = cancel, make(chan struct{})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(in.done)
		m.check(ctx, in)
	}()
}

// take removes an instance from the manager and stops its checks.
func (m *Manager) take(service, id string) *instance {
	key := service + "/" + id
	m.mu.Lock()
	in := m.insts[key]
	delete(m.insts, key)
	m.mu.Unlock()
	if in != nil {
		m.stop(in)
	}
	return in
}

// stop stops in's goroutine and waits for it, and takes it out of the gauge.
func (m *Manager) stop(in *instance) {
	m.mu.Lock()
	cancel, done := in.cancel, in.done
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	in.mu.Lock()
	m.metrics.instances.WithLabelValues(in.verdict.String()).Dec()
	in.mu.Unlock()
}

// check runs in's checks until ctx ends.
func (m *Manager) check(ctx context.Context, in *instance) {
	if in.spec.Probe == nil {
		<-ctx.Done()
		return
	}
	wait := min(in.spec.Interval, firstCheckDelay)
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		err := m.probe(ctx, in)
		if ctx.Err() != nil {
			return
		}
		m.metrics.duration.Observe(time.Since(start).Seconds())
		switch {
		case err == nil:
			m.metrics.checks.WithLabelValues("pass").Inc()
		case errors.Is(err, health.ErrTimeout):
			m.metrics.checks.WithLabelValues("timeout").Inc()
		default:
			m.metrics.checks.WithLabelValues("fail").Inc()
		}
		in.mu.Lock()
		if err != nil {
			in.lastErr = err.Error()
		}
		prev := in.verdict
		v, changed := in.tracker.Observe(err == nil, time.Now())
		if changed {
			in.verdict, in.since = v, time.Now()
		}
		in.mu.Unlock()
		if changed {
			m.changed(ctx, in, prev, v, err)
		}
		// The next check starts an interval after this one started, or at once when the
		// check took longer.
		t.Reset(max(in.spec.Interval-time.Since(start), 0))
	}
}

// probe runs the probe bounded by the timeout; a probe that overruns is a timeout.
func (m *Manager) probe(ctx context.Context, in *instance) error {
	pctx, cancel := context.WithTimeout(ctx, in.spec.Timeout)
	defer cancel()
	err := in.spec.Probe(pctx)
	if err != nil && pctx.Err() == context.DeadlineExceeded && !errors.Is(err, health.ErrTimeout) {
		err = fmt.Errorf("%w after %s: %v", health.ErrTimeout, in.spec.Timeout, err)
	}
	return err
}

// changed applies a verdict change: node, event, metrics.
func (m *Manager) changed(ctx context.Context, in *instance, prev, v health.Verdict, cause error) {
	m.metrics.instances.WithLabelValues(prev.String()).Dec()
	m.metrics.instances.WithLabelValues(v.String()).Inc()
	m.metrics.transitions.WithLabelValues(v.String()).Inc()
	reason := ""
	if cause != nil {
		reason = cause.Error()
	}
	log := m.log.With("service", in.spec.Service, "instance", in.id, "from", prev.String(), "to", v.String())
	switch v {
	case health.Healthy:
		log.Info("instance healthy")
		m.report(in, EventHealthy, prev.String(), "health passed")
	case health.Unhealthy:
		log.Warn("instance unhealthy", "err", reason)
		m.report(in, EventUnhealthy, prev.String(), reason)
	case health.Flapping:
		log.Warn("instance flapping; held out until stable", "err", reason)
		m.report(in, EventFlapping, prev.String(), "health changed too often; held out until stable")
	}
	if err := m.register(ctx, in); err != nil {
		log.Warn("update instance node", "err", err)
	}
}

// register writes in's node when it is (or was once) healthy: the first healthy verdict
// registers, later verdicts update.
func (m *Manager) register(ctx context.Context, in *instance) error {
	in.mu.Lock()
	if !in.registered && in.verdict != health.Healthy {
		in.mu.Unlock()
		return nil
	}
	if !in.registered {
		in.registered = true
		in.regAt = time.Now()
	}
	in.mu.Unlock()
	return m.write(ctx, in)
}

// write puts in's node as it is now.
func (m *Manager) write(ctx context.Context, in *instance) error {
	if m.cfg.Registrar == nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	value, err := protojson.Marshal(m.message(in))
	if err != nil {
		return fmt.Errorf("encode instance %s: %w", in.path, err)
	}
	if _, err := m.cfg.Registrar.Put(ctx, in.path, value); err != nil {
		if m.cfg.Pending(err) {
			m.metrics.writes.WithLabelValues("put", "pending").Inc()
			return nil
		}
		m.metrics.writes.WithLabelValues("put", "error").Inc()
		return err
	}
	m.metrics.writes.WithLabelValues("put", "ok").Inc()
	return nil
}

// deregister deletes in's node.
func (m *Manager) deregister(ctx context.Context, in *instance) (int64, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if m.cfg.Registrar == nil || !in.registered {
		return 0, nil
	}
	in.registered = false
	rev, err := m.cfg.Registrar.Delete(ctx, in.path)
	if err != nil {
		if m.cfg.Pending(err) {
			m.metrics.writes.WithLabelValues("delete", "pending").Inc()
			return 0, nil
		}
		m.metrics.writes.WithLabelValues("delete", "error").Inc()
		return 0, err
	}
	m.metrics.writes.WithLabelValues("delete", "ok").Inc()
	return rev, nil
}

// message is in's node value. in.mu is held.
func (m *Manager) message(in *instance) *namesv1.Instance {
	h := namesv1.Health_HEALTH_HEALTHY
	switch in.verdict {
	case health.Unhealthy, health.Unknown:
		h = namesv1.Health_HEALTH_UNHEALTHY
	case health.Flapping:
		h = namesv1.Health_HEALTH_FLAPPING
	}
	msg := &namesv1.Instance{
		Id: in.id, Service: in.spec.Service, Host: m.cfg.Host, Ip: in.ip, Port: uint32(in.spec.Port), Dc: m.cfg.DC,
		Version: in.spec.Version, Tags: slices.Clone(in.spec.Tags), Weight: uint32(in.spec.Weight), State: in.state, Health: h,
	}
	if !in.regAt.IsZero() {
		msg.RegisteredAt = timestamppb.New(in.regAt)
	}
	return msg
}

// Message returns the node value the instance has now (for tests and the status API).
func (m *Manager) Message(service, id string) (*namesv1.Instance, bool) {
	m.mu.Lock()
	in := m.insts[service+"/"+id]
	m.mu.Unlock()
	if in == nil {
		return nil, false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return proto.Clone(m.message(in)).(*namesv1.Instance), true
}

// report publishes an instance event.
func (m *Manager) report(in *instance, typ, prev, reason string) {
	if m.cfg.Reporter == nil {
		return
	}
	subject, err := subjects.InstanceEvent(typ, in.spec.Service)
	if err != nil {
		return
	}
	now := time.Now()
	m.cfg.Reporter.Publish(natsbus.Event{
		Subject: subject,
		ID:      natsbus.EventID(in.spec.Service, in.id, typ, m.cfg.Host, strconv.FormatInt(now.UnixNano(), 10)),
		Type:    subjects.EventType(subjects.DomainInstance, typ), ServicePath: in.spec.Service, Time: now,
		Data: &eventsv1.InstanceEvent{
			Service: in.spec.Service, InstanceId: in.id, Host: m.cfg.Host, Ip: in.ip, Port: uint32(in.spec.Port), Dc: m.cfg.DC,
			Version: in.spec.Version, State: typ, PreviousState: prev, Reason: reason, At: timestamppb.New(now),
		},
	})
}
