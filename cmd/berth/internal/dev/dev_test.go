package dev

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/proto/subjects"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for the writer goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var natsURL = regexp.MustCompile(`nats://127\.0\.0\.1:\d+`)

func startDev(t *testing.T, dir string, coordPort int) (url string, out *syncBuffer, stop func() error) {
	t.Helper()
	out = &syncBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		errc <- Run(ctx, Config{DataDir: dir, NATSPort: 0, CoordPort: coordPort, Out: out, Log: out, LogLevel: "warn"})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for url == "" {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("berth dev printed no NATS URL in 20 s: %s", out)
		}
		select {
		case err := <-errc:
			cancel()
			t.Fatalf("berth dev ended early: %v; output %s", err, out)
		case <-time.After(20 * time.Millisecond):
		}
		url = natsURL.FindString(out.String())
	}
	return url, out, func() error {
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(15 * time.Second):
			t.Fatal("berth dev did not stop within 15 s of cancel")
			return nil
		}
	}
}

func TestStartsCreatesStreamsAndStops(t *testing.T) {
	dir := t.TempDir()
	coordPort := freePortPair(t)
	url, out, stop := startDev(t, dir, coordPort)

	bus, err := natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{subjects.StreamEvents, subjects.StreamWork} {
		if _, err := bus.JetStream().Stream(t.Context(), s); err != nil {
			t.Fatalf("stream %s after berth dev started: %v", s, err)
		}
	}
	bus.Close(t.Context())

	cc, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{"127.0.0.1:" + strconv.Itoa(coordPort)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.Put(t.Context(), "/dev-test/kept", []byte("yes")); err != nil {
		t.Fatalf("put to dev coord: %v", err)
	}
	cc.Close()

	// A second berth dev on the same data directory is refused while the first runs.
	err = Run(t.Context(), Config{DataDir: dir, NATSPort: 0, CoordPort: coordPort, Out: &syncBuffer{}, Log: &syncBuffer{}})
	if err == nil || !strings.Contains(err.Error(), "in use by another berth dev") {
		t.Fatalf("second berth dev on the same data: got %v, want an in-use error", err)
	}

	if err := stop(); err != nil {
		t.Fatalf("berth dev stopped with %v", err)
	}
	if !strings.Contains(out.String(), "berth dev stopped") {
		t.Fatalf("no stop line in output: %s", out)
	}

	// It starts again on the same data and its streams are still there.
	url, _, stop = startDev(t, dir, coordPort)
	bus, err = natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.JetStream().Stream(t.Context(), subjects.StreamEvents); err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
	cc, err = coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{"127.0.0.1:" + strconv.Itoa(coordPort)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	n, err := cc.Get(t.Context(), "/dev-test/kept")
	if err != nil || string(n.Value) != "yes" {
		t.Fatalf("coord data after restart: got %v, %v; want the value written before", n, err)
	}
	bus.Close(t.Context())
	if err := stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}

func TestBadConfig(t *testing.T) {
	for _, c := range []Config{{DataDir: ""}, {DataDir: t.TempDir(), NATSPort: 70000, CoordPort: 7379}, {DataDir: t.TempDir(), CoordPort: 0}} {
		if err := Run(t.Context(), c); err == nil {
			t.Fatalf("Run(%+v): got nil, want an error", c)
		}
	}
}

// freePortPair returns a port p such that p and p+1 were both free a moment ago.
func freePortPair(t *testing.T) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no free port pair")
	return 0
}
