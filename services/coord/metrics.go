package coord

import (
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// metrics are berth-coord's own metrics (namespace berth, subsystem coord); raftstore adds
// its own under subsystem coord_raft.
type metrics struct {
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	expired         prometheus.Counter
	checkpoints     prometheus.Counter
	keepalives      prometheus.Counter
	watchEventsSent prometheus.Counter
	quorumLost      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	const ns, sub = "berth", "coord"
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "requests_total", Help: "Client API calls by method and gRPC code."}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "request_duration_seconds", Help: "Client API call latency (whole stream for streams).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, []string{"method"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "sessions_expired_total", Help: "Sessions this member expired as leader."}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "session_checkpoints_total", Help: "Session deadlines this member recorded as leader (one per answered keepalive)."}),
		keepalives: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "session_keepalives_total", Help: "Session keepalives served by this member as leader."}),
		watchEventsSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "watch_events_sent_total", Help: "Events sent to watch streams."}),
		quorumLost: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "quorum_lost_total", Help: "Times this member, leading, went an election timeout without hearing from a majority."}),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, f)
	}
	for _, c := range []prometheus.Collector{
		m.requests, m.duration, m.expired, m.checkpoints, m.keepalives, m.watchEventsSent, m.quorumLost,
		gauge("revision", "The store's revision.", func() float64 { return float64(s.machine.Stats().Revision) }),
		gauge("nodes", "Nodes in the tree.", func() float64 { return float64(s.machine.Stats().Nodes) }),
		gauge("sessions", "Open sessions.", func() float64 { return float64(s.machine.Stats().Sessions) }),
		gauge("watchers", "Watch streams served by this member.", func() float64 { return float64(s.hub.Stats().Watchers) }),
		gauge("watch_compact_revision", "Highest revision whose events left the watch history.", func() float64 { return float64(s.hub.Stats().CompactRev) }),
		gauge("is_leader", "1 when this member is the leader.", func() float64 {
			if s.leader.Load() == s.id {
				return 1
			}
			return 0
		}),
		counter("dedupe_hits_total", "Retried writes answered from the request-id table.", func() float64 { return float64(s.machine.Stats().DedupeHits) }),
		counter("watch_overflows_total", "Watchers cancelled for falling behind.", func() float64 { return float64(s.hub.Stats().Overflows) }),
		counter("watch_events_total", "Events published to the watch hub.", func() float64 { return float64(s.hub.Stats().Published) }),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(method string, err error, d time.Duration) {
	name := path.Base(method)
	m.requests.WithLabelValues(name, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(name).Observe(d.Seconds())
}
