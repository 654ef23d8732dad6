// Package publish sends the name service's views to NATS: each changed ServiceView as
// binary protobuf on berth.v1.names.view.<service tokens> (core NATS) and into the
// JetStream key-value bucket berth-names under the key <service tokens>, so that a
// subscriber that starts late reads the current view at once; and instance events
// (registered, deregistered, panic, panic_cleared) on BERTH_EVENTS.
//
// Work is queued by Enqueue (never blocking the catalog) and done by Run's goroutine,
// coalesced per service: only the newest pending view of a service is sent.
package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/name-service/internal/catalog"
)

// Event types the name service publishes on berth.v1.events.instance.<type>.<service>.
const (
	EventRegistered   = "registered"
	EventDeregistered = "deregistered"
	EventPanic        = "panic"
	EventPanicCleared = "panic_cleared"
)

// opTimeout bounds one NATS operation.
const opTimeout = 5 * time.Second

// Publisher queues and sends views and events. Create it with New and run Run.
type Publisher struct {
	bus     *natsbus.Bus
	log     *slog.Logger
	source  string
	metrics *metrics

	mu      sync.Mutex
	pending map[string]*catalog.Snapshot
	order   []string
	events  []natsbus.Event
	wake    chan struct{}
}

type metrics struct {
	views  *prometheus.CounterVec
	events *prometheus.CounterVec
	queue  prometheus.Gauge
}

// New returns a Publisher on bus; source is the ce-source of its messages.
func New(bus *natsbus.Bus, source string, log *slog.Logger, reg prometheus.Registerer) (*Publisher, error) {
	m := &metrics{
		views: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "views_published_total",
			Help: "Service views sent, by target (subject, kv) and outcome (ok, stale, error)."}, []string{"target", "outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "events_published_total",
			Help: "Instance events sent to BERTH_EVENTS, by type and outcome."}, []string{"type", "outcome"}),
		queue: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "names", Name: "publish_queue",
			Help: "Services whose changed view waits to be published."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.views, m.events, m.queue} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("publish metrics: %w", err)
			}
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher{bus: bus, log: log, source: source, metrics: m, pending: map[string]*catalog.Snapshot{}, wake: make(chan struct{}, 1)}, nil
}

// Enqueue queues the changes' views and events; it never blocks. It is the catalog's
// OnChange.
func (p *Publisher) Enqueue(changes []catalog.Change) {
	p.mu.Lock()
	for _, ch := range changes {
		svc := ch.Next.Service
		if _, ok := p.pending[svc]; !ok {
			p.order = append(p.order, svc)
		}
		p.pending[svc] = ch.Next
		p.events = append(p.events, p.eventsOf(ch)...)
	}
	p.metrics.queue.Set(float64(len(p.pending)))
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Publisher) eventsOf(ch catalog.Change) []natsbus.Event {
	var out []natsbus.Event
	svc := ch.Next.Service
	add := func(typ string, in *namesv1.Instance, rev int64, reason, state string) {
		subject, err := subjects.InstanceEvent(typ, svc)
		if err != nil {
			return
		}
		id := ""
		if in != nil {
			id = in.GetId()
		}
		ev := &eventsv1.InstanceEvent{
			Service: svc, InstanceId: id, Host: in.GetHost(), Ip: in.GetIp(), Port: in.GetPort(), Dc: in.GetDc(),
			Version: in.GetVersion(), State: state, Reason: reason, At: timestamppb.Now(),
		}
		out = append(out, natsbus.Event{
			Subject: subject, ID: natsbus.EventID(svc, id, typ, strconv.FormatInt(rev, 10)),
			Type: subjects.EventType(subjects.DomainInstance, typ), Source: p.source, ServicePath: svc, Data: ev,
		})
	}
	for _, r := range ch.Registered {
		add(EventRegistered, r.Instance, r.Revision, "", "registered")
	}
	for _, d := range ch.Deregistered {
		add(EventDeregistered, d.Instance, d.Revision, "", "deregistered")
	}
	if ch.PanicChanged {
		if ch.Panic.Panic {
			add(EventPanic, nil, ch.Next.View.GetRevision(), ch.Panic.Reason()+"; answering the last known good set", "panic")
		} else if ch.Prev != nil {
			add(EventPanicCleared, nil, ch.Next.View.GetRevision(), ch.Panic.Reason(), "ok")
		}
	}
	return out
}

// Run sends what is queued until ctx ends. It opens the berth-names bucket (creating it
// when missing) before the first send and again after a failure, so that views still go
// out on their subjects while JetStream is unavailable. It returns nil when ctx ends.
func (p *Publisher) Run(ctx context.Context) error {
	var kv jetstream.KeyValue
	var retryKV time.Time
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-retry.C:
		}
		for {
			p.mu.Lock()
			if len(p.order) == 0 && len(p.events) == 0 {
				p.mu.Unlock()
				break
			}
			order, pending, events := p.order, p.pending, p.events
			p.order, p.pending, p.events = nil, map[string]*catalog.Snapshot{}, nil
			p.metrics.queue.Set(0)
			p.mu.Unlock()
			if kv == nil && time.Now().After(retryKV) {
				var err error
				if kv, err = p.bucket(ctx); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					p.log.Warn("names: open kv bucket; views go to their subjects only until it opens", "bucket", subjects.NamesBucket, "err", err)
					retryKV = time.Now().Add(5 * time.Second)
				}
			}
			var failed []*catalog.Snapshot
			for _, svc := range order {
				if ctx.Err() != nil {
					return nil
				}
				if !p.sendView(ctx, kv, pending[svc]) {
					failed = append(failed, pending[svc])
				}
			}
			if p.requeue(failed) {
				retry.Reset(time.Second) // the bucket missed views: try again, unless newer ones come first
			}
			for _, ev := range events {
				if ctx.Err() != nil {
					return nil
				}
				p.sendEvent(ctx, ev)
			}
		}
	}
}

// bucket opens berth-names, creating it (one value per key, file storage) when missing.
func (p *Publisher) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	js := p.bus.JetStream()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	kv, err := js.KeyValue(ctx, subjects.NamesBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: subjects.NamesBucket, Description: "Berth name service: the current view of each service",
			History: 1, Storage: jetstream.FileStorage,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, subjects.NamesBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", subjects.NamesBucket, err)
	}
	return kv, nil
}

// requeue puts back the views the bucket missed, unless a newer view of the service is
// already queued; it reports whether anything was put back.
func (p *Publisher) requeue(snaps []*catalog.Snapshot) bool {
	if len(snaps) == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range snaps {
		if _, ok := p.pending[s.Service]; !ok {
			p.pending[s.Service] = s
			p.order = append(p.order, s.Service)
		}
	}
	return true
}

// sendView publishes the view on its subject and stores it in the bucket; it reports
// whether the bucket holds it (or a newer one) now. A retried view is published on its
// subject again; subscribers ignore it by its revision.
func (p *Publisher) sendView(ctx context.Context, kv jetstream.KeyValue, snap *catalog.Snapshot) bool {
	subject, err := subjects.NamesView(snap.Service)
	if err != nil {
		p.log.Warn("names: service path is no subject", "service", snap.Service, "err", err)
		return true
	}
	key, _ := subjects.ServiceTokens(snap.Service)
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := p.bus.Publish(ctx, subject, snap.View, natsbus.WithServicePath(snap.Service)); err != nil {
		p.metrics.views.WithLabelValues("subject", "error").Inc()
		p.log.Warn("names: publish view", "service", snap.Service, "err", err)
	} else {
		p.metrics.views.WithLabelValues("subject", "ok").Inc()
	}
	if kv == nil {
		p.metrics.views.WithLabelValues("kv", "error").Inc()
		return false
	}
	outcome, err := p.store(ctx, kv, key, snap)
	p.metrics.views.WithLabelValues("kv", outcome).Inc()
	if err != nil {
		p.log.Warn("names: store view", "service", snap.Service, "err", err)
		return false
	}
	return true
}

// store writes the view into the bucket unless the bucket already holds a view of the
// service at the same or a newer revision (another replica got there first). A removed
// service's key is deleted.
func (p *Publisher) store(ctx context.Context, kv jetstream.KeyValue, key string, snap *catalog.Snapshot) (string, error) {
	data, err := proto.Marshal(snap.View)
	if err != nil {
		return "error", fmt.Errorf("encode view %s: %w", key, err)
	}
	for attempt := 0; attempt < 5; attempt++ {
		cur, err := kv.Get(ctx, key)
		var last uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
			if !snap.Known {
				return "ok", nil
			}
		case err != nil:
			return "error", fmt.Errorf("read %s: %w", key, err)
		default:
			var old namesv1.ServiceView
			if proto.Unmarshal(cur.Value(), &old) == nil && old.GetRevision() >= snap.View.GetRevision() && cur.Operation() == jetstream.KeyValuePut {
				return "stale", nil
			}
			last = cur.Revision()
		}
		if !snap.Known {
			err = kv.Delete(ctx, key, jetstream.LastRevision(last))
		} else if last == 0 {
			_, err = kv.Create(ctx, key, data)
		} else {
			_, err = kv.Update(ctx, key, data, last)
		}
		if err == nil {
			return "ok", nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return "error", fmt.Errorf("write %s: %w", key, err)
		}
	}
	return "error", fmt.Errorf("write %s: lost the race five times", key)
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

func (p *Publisher) sendEvent(ctx context.Context, ev natsbus.Event) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	typ := ev.Type
	if err := p.bus.PublishEvent(ctx, ev); err != nil {
		p.metrics.events.WithLabelValues(typ, "error").Inc()
		p.log.Debug("names: publish event", "subject", ev.Subject, "err", err)
		return
	}
	p.metrics.events.WithLabelValues(typ, "ok").Inc()
}
