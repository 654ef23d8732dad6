package coord

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/certs"
)

// TestMetricsOverMutualTLS serves /metrics with HTTPTLS: plaintext and a scraper without
// a certificate of the CA are refused, one with it is answered.
func TestMetricsOverMutualTLS(t *testing.T) {
	pki := filepath.Join(t.TempDir(), "pki")
	if _, err := certs.Init(certs.Options{Dir: pki, Services: []string{"coord", "berth"}}); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(pki, certs.CACertFile)
	var addr string
	startCluster(t, 1, func(c *Config) {
		l := listen(t)
		addr = l.Addr().String()
		c.MetricsListener = l
		c.HTTPTLS = TLSFiles{Cert: filepath.Join(pki, "coord.crt"), Key: filepath.Join(pki, "coord.key"), TrustedCA: ca}
	})
	get := func(scheme string, f certs.Files) (string, error) {
		tr := &http.Transport{DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		if f.Enabled() {
			cfg, err := f.ClientTLS("")
			if err != nil {
				t.Fatal(err)
			}
			tr.TLSClientConfig = cfg
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(scheme + "://" + addr + "/healthz")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Status + " " + string(b), nil
	}
	if got, err := get("http", certs.Files{}); err == nil && !strings.HasPrefix(got, "400") {
		t.Fatalf("plaintext: got %q, want refused", got)
	}
	if got, err := get("https", certs.Files{TrustedCAFile: ca}); err == nil {
		t.Fatalf("no client certificate: got %q, want the handshake refused", got)
	}
	got, err := get("https", certs.Files{CertFile: filepath.Join(pki, "berth.crt"), KeyFile: filepath.Join(pki, "berth.key"), TrustedCAFile: ca})
	if err != nil || !strings.HasPrefix(got, "200") {
		t.Fatalf("client of the CA: got %q, %v; want 200", got, err)
	}
	bad := Config{Name: "x", DataDir: t.TempDir(), ListenClient: "127.0.0.1:0", ListenPeer: "127.0.0.1:0", InitialCluster: "x=127.0.0.1:1",
		HTTPTLS: TLSFiles{TrustedCA: ca}}
	if _, err := New(bad, nil); err == nil || !strings.Contains(err.Error(), "http-cert-file") {
		t.Fatalf("HTTP TLS with a CA only: got %v, want an error naming http-cert-file", err)
	}
}
