package natsbus

import (
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Bus's counters. Label values are bounded: outcome is one of a few words
// and class is subjectClass of the subject, never an id.
type metrics struct {
	events   *prometheus.CounterVec   // outcome: ok, duplicate, error
	requests *prometheus.CounterVec   // class, outcome: ok, error, no_responders, timeout, failed
	duration *prometheus.HistogramVec // class
	handled  *prometheus.CounterVec   // class, outcome: ok, error, bad_request
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "natsbus", Name: "events_published_total",
			Help: "Events published to BERTH_EVENTS, by outcome (ok, duplicate, error).",
		}, []string{"outcome"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "natsbus", Name: "requests_total",
			Help: "Requests sent, by subject class and outcome (ok, error, no_responders, timeout, failed).",
		}, []string{"class", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: "natsbus", Name: "request_duration_seconds",
			Help:    "Time from sending a request to its reply, by subject class.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"class"}),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "natsbus", Name: "handled_total",
			Help: "Requests and messages handled, by subject class and outcome (ok, error, bad_request).",
		}, []string{"class", "outcome"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.events, err = register(reg, m.events)
	if err != nil {
		return nil, err
	}
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, m.duration); err != nil {
		return nil, err
	}
	if m.handled, err = register(reg, m.handled); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under its name so
// that several Buses can share a registry.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("register natsbus metrics: %w", err)
	}
	return c, nil
}

// subjectClass maps a subject to a label value of bounded cardinality: the domain and the
// verb or entity (rpc.build, events.deploy, work.place), with the host of agent subjects
// left out (agent.step, agent.progress). Subjects outside berth.v1 are "other".
func subjectClass(subject string) string {
	t := strings.Split(subject, ".")
	if len(t) < 4 || t[0] != "berth" || t[1] != "v1" {
		return "other"
	}
	if t[2] == "agent" {
		if len(t) < 5 {
			return "agent"
		}
		switch t[3] {
		case "progress", "result":
			return "agent." + t[3]
		}
		return "agent." + t[len(t)-1]
	}
	return t[2] + "." + t[3]
}
