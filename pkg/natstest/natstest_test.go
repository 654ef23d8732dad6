package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunServerJetStreamSurvivesRestart(t *testing.T) {
	s := RunServer(t)
	url := s.URL()
	if !s.NATS().JetStreamEnabled() {
		t.Fatalf("got JetStream disabled, want enabled")
	}
	ctx := t.Context()
	put := func() uint64 {
		t.Helper()
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatalf("connect %s: %v", url, err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatalf("jetstream: %v", err)
		}
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage}); err != nil {
			t.Fatalf("create stream: %v", err)
		}
		ack, err := js.Publish(ctx, "t.x", []byte("x"))
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		return ack.Sequence
	}
	if got := put(); got != 1 {
		t.Fatalf("first publish: got seq %d, want 1", got)
	}
	s.Restart()
	if got := s.URL(); got != url {
		t.Fatalf("after restart: got URL %s, want %s", got, url)
	}
	if got := put(); got != 2 {
		t.Fatalf("publish after restart: got seq %d, want 2 (store kept)", got)
	}
}

func TestShutdownRefusesClients(t *testing.T) {
	s := RunServer(t)
	s.Shutdown()
	s.Shutdown() // A second call is a no-op.
	_, err := nats.Connect(s.URL(), nats.Timeout(time.Second))
	if err == nil {
		t.Fatalf("connect after shutdown: got nil error, want one")
	}
	s.Start()
	nc, err := nats.Connect(s.URL())
	if err != nil {
		t.Fatalf("connect after start: %v", err)
	}
	nc.Close()
}

func TestOptions(t *testing.T) {
	s := RunServer(t, WithoutJetStream(), WithUser("u", "p"))
	if s.NATS().JetStreamEnabled() {
		t.Fatalf("got JetStream enabled, want disabled")
	}
	if nc, err := nats.Connect(s.URL()); err == nil {
		nc.Close()
		t.Fatalf("connect without credentials: got nil error, want authorization violation")
	}
	nc, err := nats.Connect(s.URL(), nats.UserInfo("u", "p"))
	if err != nil {
		t.Fatalf("connect with credentials: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.AccountInfo(t.Context()); err == nil {
		t.Fatalf("account info without JetStream: got nil error, want one")
	}
}
