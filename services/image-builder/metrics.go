package imagebuilder

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the builder's metrics (namespace berth, subsystem image_builder).
type metrics struct {
	requests   *prometheus.CounterVec
	decision   *prometheus.HistogramVec
	builds     *prometheus.CounterVec
	phase      *prometheus.HistogramVec
	inProgress prometheus.Gauge
	lockWait   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "berth", "image_builder"
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Image requests by source (rpc, work) and outcome (cached, built, infrastructure, application)."}, []string{"source", "outcome"}),
		decision: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "decision_duration_seconds",
			Help:    "Time to decide whether an image exists (coord record and registry), by result (hit, miss, error).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"result"}),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "builds_total",
			Help: "Builds started by this replica, by outcome (ok, infrastructure, application)."}, []string{"outcome"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "build_phase_duration_seconds",
			Help:    "Time of each phase of a build (fetch, unpack, base, build, push, record, total).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 12)}, []string{"phase"}),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "builds_in_progress",
			Help: "Builds running on this replica."}),
		lockWait: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "lock_wait_seconds",
			Help: "Time waited for the cross-replica build lock of a (service, version).", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.decision, m.builds, m.phase, m.inProgress, m.lockWait} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register image builder metrics: %w", err)
		}
	}
	return m, nil
}
