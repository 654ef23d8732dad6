// Package report publishes the agent's events (instance health changes, template renders
// and reloads) on BERTH_EVENTS without ever making the code that reports them wait: events
// are queued, and Run's goroutine publishes them in order. When the queue is full the
// newest event is dropped and counted; events are notifications, coord holds the truth.
package report

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/natsbus"
)

// DefaultQueue is the number of events that may wait to be published.
const DefaultQueue = 1024

// publishTimeout bounds one publish (the stream's ack included).
const publishTimeout = 5 * time.Second

// Bus is what Reporter needs from NATS; *natsbus.Bus implements it.
type Bus interface {
	PublishEvent(ctx context.Context, e natsbus.Event) error
}

// Reporter queues and publishes events. Create it with New; Run publishes.
type Reporter struct {
	bus    Bus
	source string
	log    *slog.Logger
	queue  chan natsbus.Event
	events *prometheus.CounterVec
}

// New returns a Reporter publishing on bus with ce-source source; bus may be nil, and then
// every event is counted as dropped. Its metric, berth_agent_events_total{type,outcome}, goes
// to reg when it is not nil.
func New(bus Bus, source string, log *slog.Logger, reg prometheus.Registerer) (*Reporter, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reporter{bus: bus, source: source, log: log, queue: make(chan natsbus.Event, DefaultQueue),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "events_total",
			Help: "Events the agent reported, by ce-type and outcome (published, failed, dropped)."}, []string{"type", "outcome"})}
	if reg != nil {
		if err := reg.Register(r.events); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Publish queues e; it never blocks. e.Source is filled when empty.
func (r *Reporter) Publish(e natsbus.Event) {
	if r == nil {
		return
	}
	if e.Source == "" {
		e.Source = r.source
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if r.bus == nil {
		r.events.WithLabelValues(e.Type, "dropped").Inc()
		return
	}
	select {
	case r.queue <- e:
	default:
		r.events.WithLabelValues(e.Type, "dropped").Inc()
		r.log.Warn("event queue full; event dropped", "subject", e.Subject)
	}
}

// Run publishes queued events until ctx ends, then returns nil; events still queued then
// are dropped.
func (r *Reporter) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-r.queue:
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			err := r.bus.PublishEvent(pctx, e)
			cancel()
			if err != nil {
				r.events.WithLabelValues(e.Type, "failed").Inc()
				r.log.Debug("publish event", "subject", e.Subject, "err", err)
				continue
			}
			r.events.WithLabelValues(e.Type, "published").Inc()
		}
	}
}
