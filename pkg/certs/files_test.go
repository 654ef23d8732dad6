package certs

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFilesValidate(t *testing.T) {
	dir := initDir(t, Options{Services: []string{"controller"}})
	crt, key, ca := filepath.Join(dir, "controller.crt"), filepath.Join(dir, "controller.key"), filepath.Join(dir, CACertFile)
	tests := []struct {
		name           string
		f              Files
		server, client string // wanted error substrings; "" = valid
	}{
		{name: "zero", f: Files{}},
		{name: "server TLS", f: Files{CertFile: crt, KeyFile: key}},
		{name: "mutual", f: Files{CertFile: crt, KeyFile: key, TrustedCAFile: ca}},
		{name: "CA only", f: Files{TrustedCAFile: ca}, server: "cert_file and key_file are both required"},
		{name: "cert without key", f: Files{CertFile: crt}, server: "both required", client: "go together"},
		{name: "missing file", f: Files{CertFile: crt, KeyFile: key, TrustedCAFile: filepath.Join(dir, "nope.crt")},
			server: "http_tls.trusted_ca_file", client: "http_tls.trusted_ca_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range []struct {
				side string
				err  error
				want string
			}{{"server", tt.f.ValidateServer("http_tls"), tt.server}, {"client", tt.f.ValidateClient("http_tls"), tt.client}} {
				switch {
				case c.want == "" && c.err != nil:
					t.Errorf("%s: got %v, want nil", c.side, c.err)
				case c.want != "" && (c.err == nil || !strings.Contains(c.err.Error(), c.want)):
					t.Errorf("%s: got %v, want an error containing %q", c.side, c.err, c.want)
				}
			}
		})
	}
}

// TestListenRefusesPlaintextAndStrangers serves HTTP through Listen with Files the way
// every service does, and checks who gets an answer: plaintext never, a client without a
// certificate or with one from another CA not when the server requires client
// certificates, a client of the CA always.
func TestListenRefusesPlaintextAndStrangers(t *testing.T) {
	dir := initDir(t, Options{})
	other := initDir(t, Options{Services: []string{"berth"}})
	p := func(d, name string) Files {
		return Files{CertFile: filepath.Join(d, name+".crt"), KeyFile: filepath.Join(d, name+".key"), TrustedCAFile: filepath.Join(dir, CACertFile)}
	}
	serve := func(t *testing.T, f Files) string {
		cfg, err := f.ServerTLS()
		if err != nil {
			t.Fatal(err)
		}
		l, err := Listen("127.0.0.1:0", cfg)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "secret") }),
			ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(l) }()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
			<-done
		})
		return l.Addr().String()
	}
	get := func(t *testing.T, url string, f *Files) (string, error) {
		tr := &http.Transport{DisableKeepAlives: true}
		if f != nil {
			cfg, err := f.ClientTLS("")
			if err != nil {
				t.Fatal(err)
			}
			tr.TLSClientConfig = cfg
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Status + " " + string(b), nil
	}

	mutual := serve(t, p(dir, "controller"))
	serverOnly := serve(t, Files{CertFile: filepath.Join(dir, "controller.crt"), KeyFile: filepath.Join(dir, "controller.key")})
	plain := serve(t, Files{})
	caOnly := &Files{TrustedCAFile: filepath.Join(dir, CACertFile)}
	client := p(dir, "berth")
	stranger := p(other, "berth")
	tests := []struct {
		name, url string
		client    *Files
		ok        bool
		want      string // substring of the answer or the error
	}{
		{name: "plaintext to mutual", url: "http://" + mutual, want: "400 Bad Request Client sent an HTTP request to an HTTPS server"},
		{name: "plaintext to server-only", url: "http://" + serverOnly, want: "400 Bad Request Client sent an HTTP request to an HTTPS server"},
		{name: "no client cert", url: "https://" + mutual, client: caOnly, want: "certificate required"},
		{name: "client cert of another CA", url: "https://" + mutual, client: &stranger, want: "unknown certificate authority"},
		{name: "client of the CA", url: "https://" + mutual, client: &client, ok: true},
		{name: "server-only without client cert", url: "https://" + serverOnly, client: caOnly, ok: true},
		{name: "plain server stays plain", url: "http://" + plain, ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := get(t, tt.url, tt.client)
			if tt.ok {
				if err != nil || got != "200 OK secret" {
					t.Fatalf("GET %s: got %q, %v; want 200 OK secret", tt.url, got, err)
				}
				return
			}
			if strings.Contains(got, "secret") {
				t.Fatalf("GET %s: got %q; want it refused", tt.url, got)
			}
			msg := got
			if err != nil {
				msg = err.Error()
			}
			if !strings.Contains(msg, tt.want) {
				t.Fatalf("GET %s: got %q (err %v); want %q", tt.url, got, err, tt.want)
			}
		})
	}
}

func TestListenPlainWhenNoConfig(t *testing.T) {
	l, err := Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, ok := l.(*net.TCPListener); !ok {
		t.Fatalf("Listen without TLS: got %T, want a plain *net.TCPListener", l)
	}
	var f Files
	cfg, err := f.ServerTLS()
	if cfg != nil || err != nil {
		t.Fatalf("zero Files: got %v, %v; want nil, nil (plaintext)", cfg, err)
	}
	if Scheme(cfg) != "http" || Scheme(&tls.Config{}) != "https" {
		t.Fatal("Scheme: want http for nil and https for a config")
	}
	if _, err := (Files{TrustedCAFile: "x"}).ServerTLS(); err == nil {
		t.Fatal("ServerTLS with only a CA: got nil error")
	}
}
