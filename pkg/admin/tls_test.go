package admin

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/certs"
)

// TestMutualTLSAndWrap serves the admin endpoints over mutual TLS behind a middleware:
// plaintext and a client without a certificate get nothing, a client of the CA gets
// /metrics, and every request passes the middleware.
func TestMutualTLSAndWrap(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := certs.Init(certs.Options{Dir: dir, Services: []string{"scheduler", "berth"}}); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, certs.CACertFile)
	srvTLS, err := certs.Files{CertFile: filepath.Join(dir, "scheduler.crt"), KeyFile: filepath.Join(dir, "scheduler.key"), TrustedCAFile: ca}.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	s := New("127.0.0.1:0", prometheus.NewRegistry())
	s.UseTLS(srvTLS)
	s.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Wrapped", "1")
			next.ServeHTTP(w, r)
		})
	})
	addr, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	do := func(url string, f certs.Files) (*http.Response, error) {
		tr := &http.Transport{DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		if f.Enabled() {
			cfg, err := f.ClientTLS("")
			if err != nil {
				t.Fatal(err)
			}
			tr.TLSClientConfig = cfg
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			resp.Body = io.NopCloser(strings.NewReader(string(b)))
		}
		return resp, err
	}
	if resp, err := do("http://"+addr.String()+"/healthz", certs.Files{}); err == nil && resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plaintext /healthz: got %d, want 400 or a refused connection", resp.StatusCode)
	}
	if _, err := do("https://"+addr.String()+"/healthz", certs.Files{TrustedCAFile: ca}); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("no client certificate: got err %v, want the handshake refused (certificate required)", err)
	}
	resp, err := do("https://"+addr.String()+"/healthz", certs.Files{CertFile: filepath.Join(dir, "berth.crt"), KeyFile: filepath.Join(dir, "berth.key"), TrustedCAFile: ca})
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("X-Wrapped") != "1" {
		t.Fatalf("client of the CA: got %v %v; want 200 through the middleware", resp, err)
	}
	if s.TLS() != srvTLS {
		t.Fatal("TLS(): want the configuration UseTLS set")
	}
}
