package natsbus_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// connect starts nothing: it connects a Bus to s and closes it at the end of the test.
func connect(t *testing.T, s *natstest.Server, mods ...func(*natsbus.Config)) *natsbus.Bus {
	t.Helper()
	cfg := natsbus.Config{URLs: []string{s.URL()}, Name: "test", ReconnectWait: 50 * time.Millisecond}
	for _, m := range mods {
		m(&cfg)
	}
	b, err := natsbus.Connect(t.Context(), cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return b
}

// withStreams connects and runs EnsureStreams with defaults.
func withStreams(t *testing.T, s *natstest.Server, mods ...func(*natsbus.Config)) *natsbus.Bus {
	t.Helper()
	b := connect(t, s, mods...)
	if err := b.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return b
}

func streamMsgs(t *testing.T, b *natsbus.Bus, name string) uint64 {
	t.Helper()
	st, err := b.JetStream().Stream(t.Context(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatalf("stream %s info: %v", name, err)
	}
	return info.State.Msgs
}

func TestConnectUnreachable(t *testing.T) {
	// A port that was just free: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + l.Addr().String()
	l.Close()

	start := time.Now()
	_, err = natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{url}, ConnectTimeout: time.Second})
	if err == nil {
		t.Fatalf("connect %s: got nil error, want one", url)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("connect %s: failed after %s, want within 3s", url, el)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "connect "+url+": ") || strings.Contains(msg, "\n") {
		t.Errorf("connect %s: got error %q, want one line starting with %q", url, msg, "connect "+url+": ")
	}
}

func TestConnectCredentials(t *testing.T) {
	s := natstest.RunServer(t, natstest.WithUser("berth", "s3cret"))
	connect(t, s, func(c *natsbus.Config) { c.User, c.Password = "berth", "s3cret" })

	_, err := natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{s.URL()}, User: "berth", Password: "wrong"})
	if err == nil {
		t.Fatalf("connect with a wrong password: got nil error, want one")
	}
	if !strings.Contains(err.Error(), s.URL()) {
		t.Errorf("got error %q, want it to name %s", err, s.URL())
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  natsbus.Config
		want string // substring of the error; empty means valid
	}{
		{"zero", natsbus.Config{}, ""},
		{"tls url", natsbus.Config{URLs: []string{"tls://a:4222", "nats://b:4222"}}, ""},
		{"bad scheme", natsbus.Config{URLs: []string{"http://a:4222"}}, `scheme "http"`},
		{"no host", natsbus.Config{URLs: []string{"nats://"}}, "no host"},
		{"password alone", natsbus.Config{Password: "x"}, "password without user"},
		{"two auth", natsbus.Config{User: "u", Token: "t"}, "more than one"},
		{"negative timeout", natsbus.Config{RequestTimeout: -1}, "negative"},
		{"bad reconnects", natsbus.Config{MaxReconnects: -2}, "max reconnects -2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestEnsureStreamsIdempotent(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	ctx := t.Context()
	if err := b.EnsureStreams(ctx, natsbus.StreamConfig{}); err != nil {
		t.Fatalf("first ensure: %v", err)
	}
	publishDeploy(t, b, "e1", "completed", "hotel/search")
	if err := b.EnsureStreams(ctx, natsbus.StreamConfig{}); err != nil {
		t.Fatalf("second ensure: %v", err)
	}
	if got := streamMsgs(t, b, subjects.StreamEvents); got != 1 {
		t.Fatalf("after second ensure: got %d events, want 1 (kept)", got)
	}
	// A changed configuration is applied in place.
	if err := b.EnsureStreams(ctx, natsbus.StreamConfig{EventsMaxAge: 48 * time.Hour, DuplicateWindow: time.Minute}); err != nil {
		t.Fatalf("ensure with new sizes: %v", err)
	}
	if got := streamMsgs(t, b, subjects.StreamEvents); got != 1 {
		t.Fatalf("after update: got %d events, want 1 (kept)", got)
	}
	st, err := b.JetStream().Stream(ctx, subjects.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if cfg.MaxAge != 48*time.Hour || cfg.Duplicates != time.Minute || cfg.Storage != jetstream.FileStorage ||
		len(cfg.Subjects) != 1 || cfg.Subjects[0] != subjects.AllEvents {
		t.Errorf("events stream: got max age %s, duplicates %s, storage %s, subjects %v; want 48h, 1m, file, [%s]",
			cfg.MaxAge, cfg.Duplicates, cfg.Storage, cfg.Subjects, subjects.AllEvents)
	}
	work, err := b.JetStream().Stream(ctx, subjects.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	if wc := work.CachedInfo().Config; wc.Retention != jetstream.WorkQueuePolicy || wc.Storage != jetstream.FileStorage {
		t.Errorf("work stream: got retention %s, storage %s; want work queue, file", wc.Retention, wc.Storage)
	}
	if err := b.EnsureStreams(ctx, natsbus.StreamConfig{Replicas: 9}); err == nil {
		t.Errorf("ensure with 9 replicas: got nil error, want one")
	}
}

func TestEnsureStreamsWithoutJetStream(t *testing.T) {
	s := natstest.RunServer(t, natstest.WithoutJetStream())
	b := connect(t, s)
	err := b.EnsureStreams(t.Context(), natsbus.StreamConfig{})
	if !errors.Is(err, natsbus.ErrJetStreamNotEnabled) || !strings.Contains(err.Error(), "ensure stream BERTH_EVENTS") {
		t.Fatalf("got %v, want ErrJetStreamNotEnabled naming BERTH_EVENTS", err)
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	s := natstest.RunServer(t)
	b := withStreams(t, s)
	publishDeploy(t, b, "before", "started", "hotel/search")
	s.Restart()
	// A publish racing the reconnect can be lost without an ack; the caller retries with
	// the same event, and the duplicate window keeps one copy whatever happened.
	ev := deployEvent(t, "after", "completed", "hotel/search")
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		err := b.PublishEvent(ctx, ev)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish after restart, attempt %d: %v", attempt, err)
		}
	}
	if got := streamMsgs(t, b, subjects.StreamEvents); got != 2 {
		t.Fatalf("after restart: got %d events, want 2", got)
	}
}

func TestMetricsShareRegistry(t *testing.T) {
	s := natstest.RunServer(t)
	reg := prometheus.NewRegistry()
	b1 := withStreams(t, s, func(c *natsbus.Config) { c.Registerer = reg })
	b2 := connect(t, s, func(c *natsbus.Config) { c.Registerer = reg })
	publishDeploy(t, b1, "m1", "completed", "hotel/search")
	publishDeploy(t, b2, "m1", "completed", "hotel/search")
	publishDeploy(t, b2, "m2", "completed", "hotel/search")
	_ = b2.Request(t.Context(), "berth.v1.rpc.nothing", &eventsv1.HostEvent{}, &eventsv1.HostEvent{})
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"berth_natsbus_events_published_total", map[string]string{"outcome": "ok"}, 2},
		{"berth_natsbus_events_published_total", map[string]string{"outcome": "duplicate"}, 1},
		{"berth_natsbus_requests_total", map[string]string{"class": "rpc.nothing", "outcome": "no_responders"}, 1},
	}
	for _, tt := range tests {
		if got := counterValue(t, reg, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v: got %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
}

// counterValue is the value of the counter name with exactly labels in reg, or 0.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
