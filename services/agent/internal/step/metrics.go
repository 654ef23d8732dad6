package step

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the step server's. Label values are bounded: plugin is a plugin that was
// found (built-in or installed), outcome a StepState word, reason a RejectReason word.
type metrics struct {
	steps    *prometheus.CounterVec   // plugin, outcome
	duration *prometheus.HistogramVec // plugin
	running  prometheus.Gauge
	queued   prometheus.Gauge
	rejected *prometheus.CounterVec // reason
	replies  *prometheus.CounterVec // disposition
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "agent", Name: "steps_total",
			Help: "Step attempts that ended, by plugin and outcome (ok, retryable, failed, interrupted).",
		}, []string{"plugin", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: "agent", Name: "step_duration_seconds",
			Help:    "Time a step attempt ran, from the start of its plugin to its end, by plugin.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"plugin"}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "berth", Subsystem: "agent", Name: "steps_running",
			Help: "Steps whose plugin is running now.",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "berth", Subsystem: "agent", Name: "steps_queued",
			Help: "Accepted steps waiting for a free slot (the per-host concurrency limit).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "agent", Name: "steps_rejected_total",
			Help: "Step requests rejected without running anything, by reason.",
		}, []string{"reason"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "agent", Name: "step_requests_total",
			Help: "Step requests answered, by disposition (accepted, already_running, already_done, rejected).",
		}, []string{"disposition"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.steps, m.duration, m.running, m.queued, m.rejected, m.replies} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("register agent metrics: %w (one agent per registry)", err)
			}
			return nil, fmt.Errorf("register agent metrics: %w", err)
		}
	}
	return m, nil
}
