package raftstore

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the node's Prometheus collectors, namespace "berth", subsystem
// Config.MetricsSubsystem.
type metrics struct {
	proposals         prometheus.Counter
	proposalsFailed   prometheus.Counter
	commitDuration    prometheus.Histogram
	applyDuration     prometheus.Histogram
	fsyncDuration     prometheus.Histogram
	leaderChanges     prometheus.Counter
	isLeader          prometheus.Gauge
	snapshotSize      prometheus.Gauge
	snapshotDuration  prometheus.Histogram
	snapshotsSent     prometheus.Counter
	snapshotsReceived prometheus.Counter
	walBytes          prometheus.Counter
	appliedIndex      prometheus.Gauge
	term              prometheus.Gauge
}

// newMetrics makes the collectors and registers them on reg (none when reg is nil).
func newMetrics(reg prometheus.Registerer, subsystem string) (*metrics, error) {
	m := makeMetrics(subsystem)
	if err := m.register(reg); err != nil {
		return nil, err
	}
	return m, nil
}

// makeMetrics makes the collectors without registering them.
func makeMetrics(subsystem string) *metrics {
	latency := prometheus.ExponentialBuckets(0.0001, 2, 16) // 100µs .. ~3.3s
	m := &metrics{
		proposals: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "proposals_total",
			Help: "Proposals submitted on this member.",
		}),
		proposalsFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "proposals_failed_total",
			Help: "Proposals on this member that returned an error (no leader, timeout, stopped).",
		}),
		commitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "commit_duration_seconds",
			Help:    "Time from a proposal entering the raft loop to its entry being committed, seen on this member.",
			Buckets: latency,
		}),
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "apply_duration_seconds",
			Help:    "Time to apply one batch of committed entries to the state machine.",
			Buckets: latency,
		}),
		fsyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "wal_fsync_duration_seconds",
			Help:    "Time of one WAL fsync (one per batch of entries and state).",
			Buckets: latency,
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "leader_changes_seen_total",
			Help: "Changes of leader seen by this member.",
		}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "is_leader",
			Help: "1 while this member is the leader, else 0.",
		}),
		snapshotSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "snapshot_size_bytes",
			Help: "Size of the latest snapshot file, taken or received.",
		}),
		snapshotDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "snapshot_save_duration_seconds",
			Help:    "Time to write one snapshot of the state machine to disk.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		snapshotsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "snapshots_sent_total",
			Help: "Snapshots streamed to followers.",
		}),
		snapshotsReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "snapshots_received_total",
			Help: "Snapshots received from a leader and restored.",
		}),
		walBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "wal_written_bytes_total",
			Help: "Bytes written to the write-ahead log.",
		}),
		appliedIndex: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "applied_index",
			Help: "Index of the last entry applied to the state machine.",
		}),
		term: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "berth", Subsystem: subsystem, Name: "term",
			Help: "Current Raft term.",
		}),
	}
	return m
}

// register registers the collectors on reg; nil registers nothing. On error none stays
// registered.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	var done []prometheus.Collector
	for _, c := range []prometheus.Collector{
		m.proposals, m.proposalsFailed, m.commitDuration, m.applyDuration, m.fsyncDuration,
		m.leaderChanges, m.isLeader, m.snapshotSize, m.snapshotDuration, m.snapshotsSent,
		m.snapshotsReceived, m.walBytes, m.appliedIndex, m.term,
	} {
		if err := reg.Register(c); err != nil {
			for _, d := range done {
				reg.Unregister(d)
			}
			return fmt.Errorf("raftstore: register metrics: %w", err)
		}
		done = append(done, c)
	}
	return nil
}
