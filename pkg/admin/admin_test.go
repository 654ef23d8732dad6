package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "test", Name: "things_total", Help: "Things."})
	reg.MustRegister(c)
	c.Add(3)

	s := New("127.0.0.1:0", reg)
	var ready atomic.Bool
	s.AddCheck("coord", func(context.Context) error {
		if !ready.Load() {
			return errors.New("no leader")
		}
		return nil
	})
	addr, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	base := "http://" + addr.String()

	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "berth_test_things_total 3") {
		t.Fatalf("/metrics: got %d %q, want 200 with berth_test_things_total 3", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz: got %d, want 200", code)
	}
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "coord: no leader") {
		t.Fatalf("/readyz not ready: got %d %q, want 503 naming the failing check", code, body)
	}
	ready.Store(true)
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, "[+] coord ok") {
		t.Fatalf("/readyz ready: got %d %q, want 200", code, body)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
