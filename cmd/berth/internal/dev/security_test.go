package dev

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/certs"
)

// TestTLSAndTokens runs berth dev with --tls and --tokens: every HTTP endpoint refuses
// plaintext and clients without a certificate of the CA, and the controller's API wants a
// token.
func TestTLSAndTokens(t *testing.T) {
	pki := filepath.Join(t.TempDir(), "pki")
	if _, err := certs.Init(certs.Options{Dir: pki}); err != nil {
		t.Fatal(err)
	}
	tok, err := apitoken.New()
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(tokens, []byte("tokens:\n"+apitoken.FormatEntry("me", apitoken.Admin, []string{"/"}, tok)), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		errc <- Run(ctx, Config{DataDir: t.TempDir(), NATSPort: 0, CoordPort: freePortPair(t), Out: out, Log: out, LogLevel: "warn",
			TLSDir: pki, TokensFile: tokens, ResolverPort: -1, AgentAPIPort: -1})
	}()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("berth dev: %v", err)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "berth dev is up") {
		if time.Now().After(deadline) {
			t.Fatalf("berth dev not up in 30 s: %s", out)
		}
		select {
		case err := <-errc:
			t.Fatalf("berth dev ended early: %v: %s", err, out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	url := func(name string) string {
		m := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(name) + ` +(https?://[0-9.:]+)`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("no %s endpoint printed: %s", name, out)
		}
		return m[1]
	}
	ca := filepath.Join(pki, certs.CACertFile)
	withCert := certs.Files{CertFile: filepath.Join(pki, "berth.crt"), KeyFile: filepath.Join(pki, "berth.key"), TrustedCAFile: ca}
	get := func(u string, f certs.Files, token string) (int, error) {
		tr := &http.Transport{DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		if f.Enabled() {
			cfg, err := f.ClientTLS("")
			if err != nil {
				t.Fatal(err)
			}
			tr.TLSClientConfig = cfg
		}
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	for _, ep := range []struct{ name, path string }{
		{"controller", "/v1/tree"}, {"names API", "/v1/services"}, {"artifacts", "/"}, {"metrics", "/metrics"},
	} {
		u := url(ep.name)
		if !strings.HasPrefix(u, "https://") {
			t.Fatalf("%s: got %s, want https", ep.name, u)
		}
		u += ep.path
		if code, err := get("http://"+strings.TrimPrefix(u, "https://"), certs.Files{}, tok); err == nil && code != http.StatusBadRequest {
			t.Errorf("%s in plaintext: got %d, want refused (400 or a closed connection)", ep.name, code)
		}
		if _, err := get(u, certs.Files{TrustedCAFile: ca}, tok); err == nil {
			t.Errorf("%s without a client certificate: got an answer, want the handshake refused", ep.name)
		}
		if code, err := get(u, withCert, tok); err != nil || code != http.StatusOK {
			t.Errorf("%s with the CLI's certificate: got %d, %v; want 200", ep.name, code, err)
		}
	}
	// The controller reaches the name service over mutual TLS with its own certificate.
	if code, err := get(url("controller")+"/v1/names/dcs", withCert, tok); err != nil || code != http.StatusOK {
		t.Errorf("controller's names proxy: got %d, %v; want 200", code, err)
	}
	if code, err := get(url("controller")+"/v1/tree", withCert, ""); err != nil || code != http.StatusUnauthorized {
		t.Errorf("controller without a token: got %d, %v; want 401", code, err)
	}
	if !strings.Contains(out.String(), "--ca-file "+ca) {
		t.Errorf("berth dev does not say how to point the CLI at it: %s", out)
	}
}

// TestSecurityOffByDefault checks that a plain berth dev says its endpoints are open.
func TestSecurityOffByDefault(t *testing.T) {
	cfg := Config{DataDir: "x", CoordPort: 7379}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e := &env{cfg: cfg}
	e.announceSecurity()
	if len(e.endpoints) != 1 || !strings.HasPrefix(e.endpoints[0].url, "off: plaintext HTTP, no API tokens") {
		t.Fatalf("announced %v, want one line saying security is off", e.endpoints)
	}
	bad := Config{DataDir: "x", CoordPort: 7379, TLSDir: t.TempDir()}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "berth certs init") {
		t.Fatalf("--tls of an empty directory: got %v, want an error saying to run berth certs init", err)
	}
}
