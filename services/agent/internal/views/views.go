// Package views follows the name service's per-service views on NATS for everything on the
// host that needs them — templates, the local DNS resolver, the local HTTP name API — with
// one subscription per service, shared (DESIGN §7: never a coord watch per template).
//
// A service is followed while something holds it (Hold: templates, callbacks) or was asked
// for lately (Touch: resolver and API queries; dropped after Config.Idle without one). Its
// view comes from the subject berth.v1.names.view.<service tokens> (binary protobuf), its
// initial value from the JetStream key-value bucket berth-names; the view with the highest
// revision wins, so replicas' duplicate publishes and a late bucket read are harmless. The
// bucket is read again every Config.Resync and after NATS reconnects, for views published
// while the connection was down. When NATS or the name service is unreachable the last view
// stays: answers keep coming from it.
package views

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/dnsview"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
)

// Defaults of Config.
const (
	DefaultIdle   = 10 * time.Minute
	DefaultResync = 30 * time.Second
)

// Source is where views come from: NATS. The agent owns this interface; FromBus adapts a
// *natsbus.Bus.
type Source interface {
	// Subscribe calls fn with the data of every message on subject until the returned
	// function is called.
	Subscribe(subject string, fn func(data []byte)) (unsubscribe func(), err error)
	// Load reads key from the berth-names bucket; found is false when it has no value.
	Load(ctx context.Context, key string) (data []byte, found bool, err error)
	// Reconnects counts the connection's reconnects so far.
	Reconnects() uint64
}

// Config configures a Follower.
type Config struct {
	// Idle is how long a service only touched (not held) is followed after the last touch;
	// 0 means DefaultIdle.
	Idle time.Duration
	// Resync is how often every followed service is read from the bucket again; 0 means
	// DefaultResync.
	Resync time.Duration
	// Logger receives problems; nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Snapshot is a service's view at one moment.
type Snapshot struct {
	// Service is the service path.
	Service string
	// View is the latest view, nil when none was seen (the bucket has no value and nothing
	// was published yet). Callers must not modify it.
	View *namesv1.ServiceView
	// Table is View compiled for answering (nil when View is nil).
	Table *dnsview.Table
	// Loaded is set once the first bucket read finished (with a value or not) or a view was
	// received.
	Loaded bool
	// Changed is closed when a newer snapshot exists.
	Changed <-chan struct{}
}

// Revision is View's revision, 0 without a view.
func (s Snapshot) Revision() int64 { return s.View.GetRevision() }

// Follower follows services' views. Create it with New and run Run.
type Follower struct {
	src     Source
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu   sync.Mutex
	svcs map[string]*entry
	// loads are services whose bucket value Run's loader should read.
	loads []string
	wake  chan struct{}
}

type entry struct {
	service string
	view    *namesv1.ServiceView
	table   *dnsview.Table
	loaded  bool
	changed chan struct{}
	holds   int
	touched time.Time
	unsub   func()
}

type metrics struct {
	followed prometheus.GaugeFunc
	updates  *prometheus.CounterVec
}

// New returns a follower on src; it starts nothing.
func New(src Source, cfg Config) (*Follower, error) {
	if cfg.Idle <= 0 {
		cfg.Idle = DefaultIdle
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Follower{src: src, cfg: cfg, log: cfg.Logger, svcs: map[string]*entry{}, wake: make(chan struct{}, 1)}
	f.metrics = &metrics{
		followed: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "agent", Name: "views_followed",
			Help: "Services whose view the agent follows."}, func() float64 {
			f.mu.Lock()
			defer f.mu.Unlock()
			return float64(len(f.svcs))
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "view_updates_total",
			Help: "Views received, by source (subject, kv) and outcome (applied, stale, invalid)."}, []string{"source", "outcome"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{f.metrics.followed, f.metrics.updates} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("views metrics: %w", err)
			}
		}
	}
	return f, nil
}

// Hold follows service until release is called (several holders share one subscription).
func (f *Follower) Hold(service string) (release func(), err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, err := f.followLocked(service)
	if err != nil {
		return nil, err
	}
	e.holds++
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			e.holds--
			e.touched = time.Now()
		})
	}, nil
}

// Touch follows service for at least Config.Idle from now.
func (f *Follower) Touch(service string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, err := f.followLocked(service)
	if err != nil {
		return err
	}
	e.touched = time.Now()
	return nil
}

// followLocked returns service's entry, subscribing when it is new. f.mu is held.
func (f *Follower) followLocked(service string) (*entry, error) {
	if e := f.svcs[service]; e != nil {
		return e, nil
	}
	subject, err := subjects.NamesView(service)
	if err != nil {
		return nil, fmt.Errorf("follow %s: %w", service, err)
	}
	e := &entry{service: service, changed: make(chan struct{}), touched: time.Now()}
	unsub, err := f.src.Subscribe(subject, func(data []byte) { f.receive(e, data, "subject") })
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	e.unsub = unsub
	f.svcs[service] = e
	f.loads = append(f.loads, service)
	select {
	case f.wake <- struct{}{}:
	default:
	}
	return e, nil
}

// Get returns service's snapshot. It does not follow the service: call Hold or Touch
// first, or the snapshot is empty and never changes.
func (f *Follower) Get(service string) Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.svcs[service]
	if e == nil {
		ch := make(chan struct{})
		return Snapshot{Service: service, Changed: ch}
	}
	return Snapshot{Service: service, View: e.view, Table: e.table, Loaded: e.loaded, Changed: e.changed}
}

// Wait returns service's snapshot once it is Loaded, or when ctx ends (then as it is).
func (f *Follower) Wait(ctx context.Context, service string) Snapshot {
	for {
		s := f.Get(service)
		if s.Loaded {
			return s
		}
		select {
		case <-ctx.Done():
			return s
		case <-s.Changed:
		}
	}
}

// Followed returns the services followed now, sorted.
func (f *Follower) Followed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.svcs))
	for s := range f.svcs {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// receive applies a view's bytes from source (subject or kv).
func (f *Follower) receive(e *entry, data []byte, source string) {
	v := &namesv1.ServiceView{}
	if err := proto.Unmarshal(data, v); err != nil || (v.GetService() != "" && v.GetService() != e.service) {
		f.metrics.updates.WithLabelValues(source, "invalid").Inc()
		f.log.Warn("view ignored: does not decode or names another service", "service", e.service, "source", source, "err", err)
		return
	}
	if v.GetService() == "" {
		v.Service = e.service
	}
	f.apply(e, v, source)
}

// apply installs v when it is newer than e's view.
func (f *Follower) apply(e *entry, v *namesv1.ServiceView, source string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e.view != nil && v.GetRevision() <= e.view.GetRevision() {
		f.metrics.updates.WithLabelValues(source, "stale").Inc()
		if !e.loaded {
			e.loaded = true
			f.notifyLocked(e)
		}
		return
	}
	f.metrics.updates.WithLabelValues(source, "applied").Inc()
	e.view, e.table, e.loaded = v, dnsview.Compile(v), true
	f.notifyLocked(e)
}

func (f *Follower) notifyLocked(e *entry) {
	close(e.changed)
	e.changed = make(chan struct{})
}

// markLoaded records that service's first bucket read found nothing.
func (f *Follower) markLoaded(e *entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !e.loaded {
		e.loaded = true
		f.notifyLocked(e)
	}
}

// Run reads the bucket for new services, every Resync and after reconnects, drops services
// idle for longer than Idle, and returns nil when ctx ends, after unsubscribing from every
// service.
func (f *Follower) Run(ctx context.Context) error {
	defer func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for s, e := range f.svcs {
			e.unsub()
			delete(f.svcs, s)
		}
	}()
	resync := time.NewTicker(f.cfg.Resync)
	defer resync.Stop()
	janitor := time.NewTicker(max(min(f.cfg.Idle/4, time.Minute), 10*time.Millisecond))
	defer janitor.Stop()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	reconnects := f.src.Reconnects()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.wake:
		case <-resync.C:
			f.queueAll()
		case <-poll.C:
			if n := f.src.Reconnects(); n != reconnects {
				reconnects = n
				f.queueAll()
			}
			continue
		case <-janitor.C:
			f.dropIdle()
			continue
		}
		f.mu.Lock()
		loads := f.loads
		f.loads = nil
		f.mu.Unlock()
		for _, s := range loads {
			if ctx.Err() != nil {
				return nil
			}
			f.load(ctx, s)
		}
	}
}

func (f *Follower) queueAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads = f.loads[:0]
	for s := range f.svcs {
		f.loads = append(f.loads, s)
	}
	sort.Strings(f.loads)
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// load reads service's bucket value.
func (f *Follower) load(ctx context.Context, service string) {
	f.mu.Lock()
	e := f.svcs[service]
	f.mu.Unlock()
	if e == nil {
		return
	}
	key, err := subjects.ServiceTokens(service)
	if err != nil {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	data, found, err := f.src.Load(lctx, key)
	cancel()
	switch {
	case err != nil:
		if !errors.Is(err, context.Canceled) {
			f.log.Debug("read view from bucket", "service", service, "err", err)
		}
		// Unreachable: whoever waits for the first view gets none now rather than hanging;
		// the subject or the next resync brings it.
		f.markLoaded(e)
	case !found:
		f.markLoaded(e)
	default:
		f.receive(e, data, "kv")
	}
}

// dropIdle stops following services nobody holds and nobody touched for Idle.
func (f *Follower) dropIdle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	cut := time.Now().Add(-f.cfg.Idle)
	for s, e := range f.svcs {
		if e.holds == 0 && e.touched.Before(cut) {
			e.unsub()
			delete(f.svcs, s)
			f.notifyLocked(e)
		}
	}
}
