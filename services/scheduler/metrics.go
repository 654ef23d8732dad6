package scheduler

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/natsbus"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/index"
)

// metrics are the scheduler's metrics (namespace berth, subsystem scheduler).
type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	decision    prometheus.Histogram
	placed      prometheus.Counter
	conflicts   prometheus.Counter
	rejections  *prometheus.CounterVec
	released    prometheus.Counter
	reschedules *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, idx *index.Index) (*metrics, error) {
	const ns, sub = "berth", "scheduler"
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Placement requests by source (rpc, work) and outcome (placed, partial, unplaceable, invalid, error)."}, []string{"source", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds",
			Help:    "Time to answer a placement request, commit included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12)}, []string{"source"}),
		decision: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "decision_duration_seconds",
			Help: "Time of one in-memory decision.", Buckets: prometheus.ExponentialBuckets(0.00001, 2.5, 12)}),
		placed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "allocations_placed_total",
			Help: "Allocations committed."}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "conflicts_total",
			Help: "Placement transactions lost to a concurrent change of a chosen host."}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rejections_total",
			Help: "Hosts rejected by reason, counted when a request could not be placed."}, []string{"reason"}),
		released: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "allocations_released_total",
			Help: "Allocations released."}),
		reschedules: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reschedules_total",
			Help: "Allocations of down hosts placed again (rescheduled) or not yet (lost)."}, []string{"outcome"}),
	}
	gauge := func(name, help string, f func(index.Stats) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help},
			func() float64 { return float64(f(idx.Stats())) })
	}
	for _, c := range []prometheus.Collector{
		m.requests, m.duration, m.decision, m.placed, m.conflicts, m.rejections, m.released, m.reschedules,
		gauge("hosts", "Hosts in the inventory.", func(s index.Stats) int { return s.Hosts }),
		gauge("hosts_available", "Hosts that could take an allocation (ready, alive, under their cap, a free IP).", func(s index.Stats) int { return s.Available }),
		gauge("allocations", "Allocations known.", func(s index.Stats) int { return s.Allocations }),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register scheduler metrics: %w", err)
		}
	}
	return m, nil
}

// observe counts one request and its duration.
func (m *metrics) observe(source string, reply *inventoryv1.PlacementReply, err error, d time.Duration) {
	outcome := "placed"
	var se *natsbus.StatusError
	switch {
	case err == nil && reply.GetPlaced() < reply.GetRequested():
		outcome = "partial"
	case err == nil:
	case errors.As(err, &se) && se.Code == commonv1.Code_CODE_INVALID_ARGUMENT:
		outcome = "invalid"
	case errors.As(err, &se) && se.Code == commonv1.Code_CODE_RESOURCE_EXHAUSTED:
		outcome = "unplaceable"
	default:
		outcome = "error"
	}
	m.requests.WithLabelValues(source, outcome).Inc()
	m.duration.WithLabelValues(source).Observe(d.Seconds())
}
