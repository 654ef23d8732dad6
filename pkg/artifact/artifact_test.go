package artifact

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

var (
	payload    = bytes.Repeat([]byte("berth package bytes "), 5000) // 100 kB
	payloadSum = digest(payload)
	otherSum   = digest([]byte("something else"))
)

// newFetcher returns a Fetcher on a fresh cache with fast retries and a metrics registry.
func newFetcher(t *testing.T, cfg Config) (*Fetcher, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.CacheDir == "" {
		cfg.CacheDir = filepath.Join(t.TempDir(), "cache")
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 5 * time.Millisecond
	}
	cfg.Registerer = reg
	f, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f, reg
}

// metric returns the value of a counter with these labels, or 0.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// cacheFiles lists the cache directory, temporary files included.
func cacheFiles(t *testing.T, f *Fetcher) []string {
	t.Helper()
	des, err := os.ReadDir(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range des {
		names = append(names, d.Name())
	}
	return names
}

func checkCached(t *testing.T, f *Fetcher, path string, want []byte) {
	t.Helper()
	if path != filepath.Join(f.dir, digest(want)) {
		t.Errorf("path: got %s, want %s", path, filepath.Join(f.dir, digest(want)))
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("cached content: got %d bytes (%v), want %d bytes", len(got), err, len(want))
	}
	if names := cacheFiles(t, f); len(names) != 1 {
		t.Errorf("cache dir: got %v, want only %s", names, digest(want))
	}
}

func checkEmptyCache(t *testing.T, f *Fetcher) {
	t.Helper()
	if names := cacheFiles(t, f); len(names) != 0 {
		t.Errorf("cache dir: got %v, want nothing left", names)
	}
}

func TestFetchFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "pkg 1.tgz")
	if err := os.WriteFile(src, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	fileURL := (&url.URL{Scheme: "file", Path: src}).String()

	t.Run("ok and cached", func(t *testing.T) {
		f, reg := newFetcher(t, Config{})
		p, err := f.Fetch(t.Context(), fileURL, strings.ToUpper(payloadSum))
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		checkCached(t, f, p, payload)
		if fi, _ := os.Stat(p); fi == nil || fi.Mode().Perm() != 0o444 {
			t.Errorf("cached file mode: got %v, want 0444", fi)
		}
		// A hit does not read the source again.
		if err := os.Remove(src); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile(src, payload, 0o644) })
		p2, err := f.Fetch(t.Context(), fileURL, payloadSum)
		if err != nil || p2 != p {
			t.Fatalf("Fetch again: got %q, %v; want the cached %q", p2, err, p)
		}
		if got := metric(t, reg, "berth_artifact_fetches_total", map[string]string{"scheme": "file", "result": "hit"}); got != 1 {
			t.Errorf("hits: got %v, want 1", got)
		}
	})
	t.Run("checksum mismatch", func(t *testing.T) {
		f, _ := newFetcher(t, Config{})
		_, err := f.Fetch(t.Context(), fileURL, otherSum)
		if !errors.Is(err, ErrChecksum) {
			t.Fatalf("Fetch: got %v, want %v", err, ErrChecksum)
		}
		if !strings.Contains(err.Error(), payloadSum) || !strings.Contains(err.Error(), otherSum) {
			t.Errorf("error %q: want both digests", err)
		}
		checkEmptyCache(t, f)
	})
	t.Run("missing", func(t *testing.T) {
		f, _ := newFetcher(t, Config{})
		_, err := f.Fetch(t.Context(), "file://"+filepath.Join(dir, "nope.tgz"), payloadSum)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("Fetch: got %v, want %v", err, ErrNotFound)
		}
		checkEmptyCache(t, f)
	})
	t.Run("directory", func(t *testing.T) {
		f, _ := newFetcher(t, Config{})
		_, err := f.Fetch(t.Context(), "file://"+dir, payloadSum)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("Fetch: got %v, want %v", err, ErrNotFound)
		}
	})
	t.Run("too large", func(t *testing.T) {
		f, _ := newFetcher(t, Config{MaxBytes: 1000})
		_, err := f.Fetch(t.Context(), fileURL, payloadSum)
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Fetch: got %v, want %v", err, ErrTooLarge)
		}
		checkEmptyCache(t, f)
	})
}

func TestFetchValidatesFirst(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Write(payload)
	}))
	defer srv.Close()
	cases := []struct {
		url, sum string
		want     error
	}{
		{"", payloadSum, ErrBadURL},
		{"pkg.tgz", payloadSum, ErrBadURL},
		{"/abs/pkg.tgz", payloadSum, ErrBadURL},
		{"gopher://example.com/pkg.tgz", payloadSum, ErrBadURL},
		{"s3://bucket/pkg.tgz", payloadSum, ErrBadURL},
		{"http:///pkg.tgz", payloadSum, ErrBadURL},
		{"http://host:70000/pkg.tgz", payloadSum, ErrBadURL},
		{"http://host:0/pkg.tgz", payloadSum, ErrBadURL},
		{"http://ho st/pkg.tgz", payloadSum, ErrBadURL},
		{"ftp://host/", payloadSum, ErrBadURL},
		{"ftp://host/dir/", payloadSum, ErrBadURL},
		{"ftp://host/a%0d%0aDELE%20b", payloadSum, ErrBadURL},
		{"file:relative/pkg.tgz", payloadSum, ErrBadURL},
		{"file://remote-host/pkg.tgz", payloadSum, ErrBadURL},
		{srv.URL + "/pkg.tgz", "", ErrBadDigest},
		{srv.URL + "/pkg.tgz", payloadSum[:63], ErrBadDigest},
		{srv.URL + "/pkg.tgz", payloadSum + "0", ErrBadDigest},
		{srv.URL + "/pkg.tgz", "g" + payloadSum[1:], ErrBadDigest},
		{srv.URL + "/pkg.tgz", "sha256:" + payloadSum[7:], ErrBadDigest},
	}
	f, _ := newFetcher(t, Config{HTTPClient: srv.Client()})
	for _, c := range cases {
		_, err := f.Fetch(t.Context(), c.url, c.sum)
		if !errors.Is(err, c.want) {
			t.Errorf("Fetch(%q, %q): got %v, want %v", c.url, c.sum, err, c.want)
		}
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("server calls: got %d, want 0", n)
	}
	checkEmptyCache(t, f)
}

// server is an httptest server whose handler is chosen per call.
type server struct {
	*httptest.Server
	calls atomic.Int32
}

func newServer(t *testing.T, h func(call int32, w http.ResponseWriter, r *http.Request)) *server {
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h(s.calls.Add(1), w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestFetchHTTP(t *testing.T) {
	ok := func(_ int32, w http.ResponseWriter, _ *http.Request) { w.Write(payload) }
	cases := []struct {
		name      string
		handler   func(call int32, w http.ResponseWriter, r *http.Request)
		cfg       Config
		sum       string
		want      error // nil: success
		wantCalls int32
	}{
		{name: "ok", handler: ok, wantCalls: 1},
		{name: "checksum mismatch", handler: ok, sum: otherSum, want: ErrChecksum, wantCalls: 1},
		{name: "503 then 200", handler: func(call int32, w http.ResponseWriter, r *http.Request) {
			if call == 1 {
				http.Error(w, "warming up", http.StatusServiceUnavailable)
				return
			}
			w.Write(payload)
		}, wantCalls: 2},
		{name: "503 always", handler: func(_ int32, w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "down", http.StatusServiceUnavailable)
		}, cfg: Config{Retries: 2}, want: ErrUnavailable, wantCalls: 3},
		{name: "429 retried", handler: func(call int32, w http.ResponseWriter, r *http.Request) {
			if call < 3 {
				http.Error(w, "slow down", http.StatusTooManyRequests)
				return
			}
			w.Write(payload)
		}, wantCalls: 3},
		{name: "no retries", handler: func(_ int32, w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "down", http.StatusBadGateway)
		}, cfg: Config{Retries: -1}, want: ErrUnavailable, wantCalls: 1},
		{name: "404 not retried", handler: func(_ int32, w http.ResponseWriter, r *http.Request) {
			http.NotFound(w, r)
		}, want: ErrNotFound, wantCalls: 1},
		{name: "403 not retried", handler: func(_ int32, w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "no", http.StatusForbidden)
		}, want: ErrDenied, wantCalls: 1},
		{name: "400 not retried", handler: func(_ int32, w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "bad", http.StatusBadRequest)
		}, want: ErrProtocol, wantCalls: 1},
		{name: "too large declared", handler: ok, cfg: Config{MaxBytes: 1000}, want: ErrTooLarge, wantCalls: 1},
		{name: "too large streamed", handler: func(_ int32, w http.ResponseWriter, _ *http.Request) {
			// Chunked, no Content-Length: the limit is counted.
			for i := 0; i < 10; i++ {
				w.Write(payload[:len(payload)/10])
				w.(http.Flusher).Flush()
			}
		}, cfg: Config{MaxBytes: 1000}, want: ErrTooLarge, wantCalls: 1},
		{name: "truncated then ok", handler: func(call int32, w http.ResponseWriter, _ *http.Request) {
			if call == 1 {
				w.Header().Set("Content-Length", fmt.Sprint(len(payload)))
				w.Write(payload[:100])
				panic(http.ErrAbortHandler) // Cut the connection mid-body.
			}
			w.Write(payload)
		}, wantCalls: 2},
		{name: "slow attempt times out, then ok", handler: func(call int32, w http.ResponseWriter, r *http.Request) {
			if call == 1 {
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
				return
			}
			w.Write(payload)
		}, cfg: Config{Timeout: 200 * time.Millisecond}, wantCalls: 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := newServer(t, c.handler)
			c.cfg.HTTPClient = srv.Client()
			f, reg := newFetcher(t, c.cfg)
			sum := c.sum
			if sum == "" {
				sum = payloadSum
			}
			p, err := f.Fetch(t.Context(), srv.URL+"/hotel/search-1.4.2.tgz", sum)
			if got := srv.calls.Load(); got != c.wantCalls {
				t.Errorf("server calls: got %d, want %d", got, c.wantCalls)
			}
			if got, want := metric(t, reg, "berth_artifact_fetch_retries_total", nil), float64(c.wantCalls-1); got != want {
				t.Errorf("retries metric: got %v, want %v", got, want)
			}
			if c.want == nil {
				if err != nil {
					t.Fatalf("Fetch: %v", err)
				}
				checkCached(t, f, p, payload)
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("Fetch: got %v, want %v", err, c.want)
			}
			for _, other := range []error{ErrBadURL, ErrBadDigest, ErrNotFound, ErrDenied, ErrTooLarge, ErrChecksum, ErrUnavailable, ErrProtocol} {
				if other != c.want && errors.Is(err, other) {
					t.Errorf("Fetch: error %v also matches %v", err, other)
				}
			}
			if p != "" {
				t.Errorf("path: got %q, want none on error", p)
			}
			checkEmptyCache(t, f)
		})
	}
}

func TestFetchCancelDuringBackoff(t *testing.T) {
	srv := newServer(t, func(_ int32, w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	f, _ := newFetcher(t, Config{HTTPClient: srv.Client(), Backoff: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := f.Fetch(ctx, srv.URL+"/x", payloadSum)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch: got %v, want %v", err, context.DeadlineExceeded)
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Fetch: got %v, want the last attempt's %v too", err, ErrUnavailable)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Fetch returned after %v, want soon after the context ended", d)
	}
}

func TestFetchRedactsPassword(t *testing.T) {
	srv := newServer(t, func(_ int32, w http.ResponseWriter, _ *http.Request) { http.NotFound(w, nil) })
	f, _ := newFetcher(t, Config{HTTPClient: srv.Client()})
	u := strings.Replace(srv.URL, "http://", "http://bob:hunter2@", 1) + "/x"
	for _, sum := range []string{payloadSum, "bad"} {
		_, err := f.Fetch(t.Context(), u, sum)
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Fetch: got %v, want an error without the password", err)
		}
	}
	_, err := f.Fetch(t.Context(), "gopher://bob:hunter2@host/x", payloadSum)
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Fetch: got %v, want an error without the password", err)
	}
}

func TestNewConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without CacheDir: got nil error")
	}
	if _, err := New(Config{CacheDir: t.TempDir(), MaxBytes: -1}); err == nil {
		t.Error("New with negative MaxBytes: got nil error")
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{CacheDir: t.TempDir(), Registerer: reg}); err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := New(Config{CacheDir: t.TempDir(), Registerer: reg}); err == nil {
		t.Error("New registering the same metrics twice: got nil error")
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
