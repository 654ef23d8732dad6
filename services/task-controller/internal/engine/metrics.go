package engine

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the leader's metrics (namespace berth, subsystem controller). They are
// registered once per process and shared by every Engine the process runs in turn.
type Metrics struct {
	IsLeader        prometheus.Gauge
	LeaderChanges   prometheus.Counter
	TakeoverSeconds prometheus.Histogram
	FirstDispatch   prometheus.Histogram
	ActiveRuns      prometheus.Gauge
	Runs            *prometheus.CounterVec
	StepsSent       *prometheus.CounterVec
	StepResults     *prometheus.CounterVec
	Targets         *prometheus.CounterVec
	CoordWrites     *prometheus.CounterVec
	CoordWriteTime  prometheus.Histogram
	Events          *prometheus.CounterVec
	// StageRequests and Replacements are container mode's (container.go, reschedule.go).
	StageRequests *prometheus.CounterVec
	Replacements  prometheus.Counter
}

// NewMetrics registers the metrics on reg (nil: not exported).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	const ns, sub = "berth", "controller"
	m := &Metrics{
		IsLeader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "is_leader",
			Help: "1 while this replica leads and runs deployments."}),
		LeaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "leaderships_total",
			Help: "Leaderships this replica won."}),
		TakeoverSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "takeover_seconds",
			Help: "Time from winning the election to every active run loaded.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		FirstDispatch: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "takeover_first_dispatch_seconds",
			Help: "Time from winning the election to the first step sent.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		ActiveRuns: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "active_runs",
			Help: "Deployments and tasks the leader runs now."}),
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "runs_ended_total",
			Help: "Deployments and tasks that reached a terminal state, by kind and state."}, []string{"kind", "state"}),
		StepsSent: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "step_requests_total",
			Help: "Step requests sent to agents, by step kind and outcome of the request."}, []string{"kind", "outcome"}),
		StepResults: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "step_results_total",
			Help: "Step results received, by step kind and state."}, []string{"kind", "state"}),
		Targets: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "targets_ended_total",
			Help: "Targets that reached a terminal state, by state."}, []string{"state"}),
		CoordWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "coord_writes_total",
			Help: "Fenced coord transactions, by outcome."}, []string{"outcome"}),
		CoordWriteTime: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "coord_write_duration_seconds",
			Help: "Duration of fenced coord transactions.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "events_published_total",
			Help: "Deploy and task events published, by outcome."}, []string{"outcome"}),
		StageRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "stage_requests_total",
			Help: "Requests of container deployments' stages (image, placement, release), by stage and outcome (ok, infrastructure, application)."},
			[]string{"stage", "outcome"}),
		Replacements: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "replacement_runs_total",
			Help: "Replacement runs made for rescheduled allocations."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.IsLeader, m.LeaderChanges, m.TakeoverSeconds, m.FirstDispatch, m.ActiveRuns,
		m.Runs, m.StepsSent, m.StepResults, m.Targets, m.CoordWrites, m.CoordWriteTime, m.Events, m.StageRequests, m.Replacements} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register controller metrics: %w", err)
		}
	}
	return m, nil
}
