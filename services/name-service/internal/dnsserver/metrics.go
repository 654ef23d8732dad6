package dnsserver

import (
	"fmt"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// qtypeLabels are the query types counted by name; every other type is "other".
var qtypeLabels = []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeSOA, dns.TypeNS, dns.TypeANY, dns.TypeTXT, dns.TypeCNAME}

// rcodeLabels are the response codes the server sends.
var rcodeLabels = []int{dns.RcodeSuccess, dns.RcodeFormatError, dns.RcodeServerFailure, dns.RcodeNameError, dns.RcodeNotImplemented, dns.RcodeRefused, dns.RcodeBadVers}

const numProtos = 2

// metrics are the server's Prometheus metrics (namespace berth, subsystem names). The
// request counters are resolved once at start so that counting a query costs no map
// lookup.
type metrics struct {
	requests   [numProtos][]([]prometheus.Counter) // [proto][qtype index][rcode index]
	duration   [numProtos]prometheus.Observer
	truncated  prometheus.Counter
	dropped    prometheus.Counter
	panics     prometheus.Counter
	tcpRefused prometheus.Counter
	limited    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	req := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "berth", Subsystem: "names", Name: "dns_requests_total",
		Help: "DNS requests answered, by transport, query type and response code.",
	}, []string{"proto", "qtype", "rcode"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "berth", Subsystem: "names", Name: "dns_request_duration_seconds",
		Help:    "Time from reading a DNS request to writing its response.",
		Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3},
	}, []string{"proto"})
	m := &metrics{
		truncated: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "dns_truncated_total",
			Help: "UDP responses sent with the TC bit because the answer did not fit the client's buffer."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "dns_dropped_total",
			Help: "Packets not answered: shorter than a header, or responses."}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "dns_panics_total",
			Help: "Queries whose handling panicked (a bug); each was answered SERVFAIL."}),
		tcpRefused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "dns_tcp_refused_total",
			Help: "TCP connections closed at once because too many were open."}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "names", Name: "dns_rate_limited_total",
			Help: "UDP responses withheld by response rate limiting, by action (drop, slip)."}, []string{"action"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{req, dur, m.truncated, m.dropped, m.panics, m.tcpRefused, m.limited} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("dns metrics: %w", err)
			}
		}
	}
	for p, proto := range []string{"udp", "tcp"} {
		m.duration[p] = dur.WithLabelValues(proto)
		m.requests[p] = make([][]prometheus.Counter, len(qtypeLabels)+1)
		for qi := range len(qtypeLabels) + 1 {
			name := "other"
			if qi < len(qtypeLabels) {
				name = dns.TypeToString[qtypeLabels[qi]]
			}
			for _, rc := range rcodeLabels {
				m.requests[p][qi] = append(m.requests[p][qi], req.WithLabelValues(proto, name, dns.RcodeToString[rc]))
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(proto string, res Result, d time.Duration) {
	p := 0
	if proto == "tcp" {
		p = 1
	}
	qi := len(qtypeLabels)
	for i, t := range qtypeLabels {
		if t == res.qtype {
			qi = i
			break
		}
	}
	ri := 2 // SERVFAIL for anything unexpected
	for i, rc := range rcodeLabels {
		if rc == res.rcode {
			ri = i
			break
		}
	}
	m.requests[p][qi][ri].Inc()
	m.duration[p].Observe(d.Seconds())
	if res.tc {
		m.truncated.Inc()
	}
}

func (m *metrics) rateLimited(action string) { m.limited.WithLabelValues(action).Inc() }
