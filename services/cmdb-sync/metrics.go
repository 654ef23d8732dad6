package cmdbsync

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
)

// metrics are the service's metrics (namespace berth, subsystem cmdb_sync).
type metrics struct {
	leader       prometheus.Gauge
	sourceUp     prometheus.Gauge
	lastRead     prometheus.Gauge
	fetches      *prometheus.CounterVec
	rows         prometheus.Gauge
	rowsRejected prometheus.Gauge
	rejected     *prometheus.CounterVec
	writes       *prometheus.CounterVec
	events       *prometheus.CounterVec
	hosts        *prometheus.GaugeVec
	mismatched   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, _ *Syncer) (*metrics, error) {
	const ns, sub = "berth", "cmdb_sync"
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &metrics{
		leader:       g("is_leader", "1 while this replica is the elected writer."),
		sourceUp:     g("source_up", "1 when the last read of the CMDB succeeded."),
		lastRead:     g("source_last_success_timestamp_seconds", "When the CMDB was last read successfully."),
		rows:         g("rows", "Rows of the CMDB applied."),
		rowsRejected: g("rows_rejected", "Rows of the CMDB rejected in its last version."),
		mismatched:   g("hosts_mismatched", "Hosts whose agent's fingerprint disagrees with the CMDB."),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "source_reads_total",
			Help: "Reads of the CMDB by outcome (ok, not_modified, error)."}, []string{"outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rows_rejected_total",
			Help: "Rows rejected by reason (invalid, bad_pool, duplicate_id, duplicate_ip, overlapping_pool)."}, []string{"reason"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "host_writes_total",
			Help: "Host node writes by op (put, delete) and outcome (ok, conflict, error)."}, []string{"op", "outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "events_published_total",
			Help: "Host events by type and outcome."}, []string{"type", "outcome"}),
		hosts: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "hosts",
			Help: "Hosts of the inventory by state."}, []string{"state"}),
	}
	for _, c := range []prometheus.Collector{m.leader, m.sourceUp, m.lastRead, m.rows, m.rowsRejected, m.mismatched,
		m.fetches, m.rejected, m.writes, m.events, m.hosts} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register cmdb-sync metrics: %w", err)
		}
	}
	return m, nil
}

// hostsObserve sets the per-state gauges.
func (m *metrics) hostsObserve(hosts map[string]*inventoryv1.Host) {
	counts := map[string]int{"ready": 0, "draining": 0, "down": 0}
	mis := 0
	for _, h := range hosts {
		counts[stateWord(h.GetState())]++
		if h.GetMismatch() != "" {
			mis++
		}
	}
	for st, n := range counts {
		if st != "" {
			m.hosts.WithLabelValues(st).Set(float64(n))
		}
	}
	m.mismatched.Set(float64(mis))
}
