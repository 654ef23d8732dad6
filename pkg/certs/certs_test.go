package certs

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// initDir runs Init into a fresh directory and returns it.
func initDir(t *testing.T, opts Options) string {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = filepath.Join(t.TempDir(), "pki")
	}
	if _, err := Init(opts); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return opts.Dir
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCertPEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func TestInitWritesEveryFileWithModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	written, err := Init(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ca.crt", "ca.key"}
	for _, s := range ServiceNames() {
		want = append(want, s+".crt", s+".key")
	}
	var got []string
	for _, w := range written {
		got = append(got, filepath.Base(w.Path))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("written: got %v, want %v", got, want)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Errorf("dir holds %d entries, want %d (no temporary files left)", len(entries), len(want))
	}
	for _, name := range want {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		wantMode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".key") {
			wantMode = 0o600
		}
		if st.Mode().Perm() != wantMode {
			t.Errorf("%s: mode got %v, want %v", name, st.Mode().Perm(), wantMode)
		}
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode: got %v, want 0700", st.Mode().Perm())
	}
}

func TestChainVerifies(t *testing.T) {
	dir := initDir(t, Options{Hosts: []string{"coord.example.org", "10.1.2.3"}})
	ca := readCert(t, filepath.Join(dir, CACertFile))
	if !ca.IsCA {
		t.Fatal("ca.crt is not a CA")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tests := []struct {
		cert  string
		name  string // DNS name or IP to verify; "" verifies only the chain
		usage x509.ExtKeyUsage
		ok    bool
	}{
		{"coord", "coord-1", x509.ExtKeyUsageServerAuth, true},
		{"coord", "coord-3", x509.ExtKeyUsageServerAuth, true},
		{"coord", "localhost", x509.ExtKeyUsageServerAuth, true},
		{"coord", "127.0.0.1", x509.ExtKeyUsageServerAuth, true},
		{"coord", "::1", x509.ExtKeyUsageServerAuth, true},
		{"coord", "coord.example.org", x509.ExtKeyUsageServerAuth, true},
		{"coord", "10.1.2.3", x509.ExtKeyUsageServerAuth, true},
		{"coord", "nats", x509.ExtKeyUsageServerAuth, false},
		{"coord", "", x509.ExtKeyUsageClientAuth, true},
		{"coord-peer", "coord-2", x509.ExtKeyUsageServerAuth, true},
		{"coord-peer", "", x509.ExtKeyUsageClientAuth, true},
		{"nats", "nats", x509.ExtKeyUsageServerAuth, true},
		{"controller", "controller-2", x509.ExtKeyUsageServerAuth, true},
		{"scheduler", "scheduler", x509.ExtKeyUsageServerAuth, true},
		{"cmdb-sync", "cmdb-sync", x509.ExtKeyUsageServerAuth, true},
		{"image-builder", "image-builder", x509.ExtKeyUsageServerAuth, true},
		{"name-service", "name-service-2", x509.ExtKeyUsageServerAuth, true},
		{"agent", "agent-1", x509.ExtKeyUsageServerAuth, true},
		{"berth", "", x509.ExtKeyUsageClientAuth, true},
		{"berth", "", x509.ExtKeyUsageServerAuth, false},
	}
	for _, tt := range tests {
		leaf := readCert(t, filepath.Join(dir, tt.cert+".crt"))
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: tt.name, KeyUsages: []x509.ExtKeyUsage{tt.usage}})
		if (err == nil) != tt.ok {
			t.Errorf("verify %s for %q usage %v: got err %v, want ok=%t", tt.cert, tt.name, tt.usage, err, tt.ok)
		}
		if leaf.Subject.CommonName != tt.cert {
			t.Errorf("%s.crt: common name got %q, want %q", tt.cert, leaf.Subject.CommonName, tt.cert)
		}
	}
	// Every key belongs to its certificate.
	for _, s := range ServiceNames() {
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, s+".crt"), filepath.Join(dir, s+".key")); err != nil {
			t.Errorf("key pair %s: %v", s, err)
		}
	}
	if _, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)); err != nil {
		t.Errorf("LoadCA: %v", err)
	}
	// A certificate of another CA does not verify against this one.
	other := initDir(t, Options{Services: []string{"coord"}})
	foreign := readCert(t, filepath.Join(other, "coord.crt"))
	if _, err := foreign.Verify(x509.VerifyOptions{Roots: pool, DNSName: "coord-1"}); err == nil {
		t.Error("a certificate of another CA verified against this CA")
	}
}

func TestInitRefusesToReplaceCA(t *testing.T) {
	dir := initDir(t, Options{Services: []string{"berth"}})
	before, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Init(Options{Dir: dir, Services: []string{"berth"}})
	if !errors.Is(err, ErrCAExists) {
		t.Fatalf("second Init: got err %v, want ErrCAExists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	if !bytes.Equal(before, after) {
		t.Fatal("a refused Init changed ca.crt")
	}
	// A key alone is enough to refuse.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, CAKeyFile), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(Options{Dir: dir2}); !errors.Is(err, ErrCAExists) {
		t.Fatalf("Init over a lone ca.key: got err %v, want ErrCAExists", err)
	}
	if _, err := Init(Options{Dir: dir, Services: []string{"berth"}, Force: true}); err != nil {
		t.Fatalf("Init --force: %v", err)
	}
	after, _ = os.ReadFile(filepath.Join(dir, CACertFile))
	if bytes.Equal(before, after) {
		t.Fatal("Init with Force kept the old CA")
	}
}

func TestInitRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no dir", Options{}, "dir: required"},
		{"unknown service", Options{Dir: "x", Services: []string{"coord", "ftp"}}, `unknown service "ftp"`},
		{"duplicate service", Options{Dir: "x", Services: []string{"nats", "nats"}}, `"nats" is listed twice`},
		{"bad host", Options{Dir: "x", Hosts: []string{"a b"}}, `host "a b"`},
		{"empty label", Options{Dir: "x", Hosts: []string{"a..b"}}, `label ""`},
		{"leading dash", Options{Dir: "x", Hosts: []string{"-a"}}, "starts or ends with '-'"},
		{"negative validity", Options{Dir: "x", LeafValidity: -time.Hour}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			if tt.opts.Dir != "" {
				tt.opts.Dir = dir
			}
			_, err := Init(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got err %v, want one containing %q", err, tt.want)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused Init created %s", dir)
			}
		})
	}
}

func TestValidateHost(t *testing.T) {
	for _, h := range []string{"localhost", "coord-1", "a.b.example", "*.berth.internal", "10.0.0.1", "::1", "fe80::1"} {
		if err := ValidateHost(h); err != nil {
			t.Errorf("ValidateHost(%q): got %v, want nil", h, err)
		}
	}
	for _, h := range []string{"", "a_b", "a/b", "-x", "x-", "a..b", strings.Repeat("a", 64), "*.", "é.example"} {
		if err := ValidateHost(h); err == nil {
			t.Errorf("ValidateHost(%q): got nil, want an error", h)
		}
	}
}

// handshake runs one TLS connection between a server with srv and a client with cli over
// loopback, exchanges a byte, and returns the client's and the server's errors.
func handshake(t *testing.T, srv, cli *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.(*tls.Conn).Handshake(); err != nil {
			done <- err
			return
		}
		_, err = io.Copy(c, io.LimitReader(c, 1))
		done <- err
	}()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cli}
	c, err := d.DialContext(t.Context(), "tcp", l.Addr().String())
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// TLS 1.3 reports a refused client certificate on the first read.
		if _, err = c.Write([]byte{1}); err == nil {
			_, err = io.ReadFull(c, make([]byte, 1))
		}
		c.Close()
	}
	return err, <-done
}

func TestMutualTLS(t *testing.T) {
	dir := initDir(t, Options{})
	other := initDir(t, Options{Services: []string{"coord", "berth"}})
	f := func(d, name string) (string, string) {
		return filepath.Join(d, name+".crt"), filepath.Join(d, name+".key")
	}
	ca, otherCA := filepath.Join(dir, CACertFile), filepath.Join(other, CACertFile)
	srvCert, srvKey := f(dir, "coord")
	srv, err := ServerConfig(srvCert, srvKey, ca)
	if err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey := f(dir, "berth")
	foreignCert, foreignKey := f(other, "berth")
	foreignSrvCert, foreignSrvKey := f(other, "coord")
	foreignSrv, err := ServerConfig(foreignSrvCert, foreignSrvKey, ca)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                string
		srv                 *tls.Config
		cert, key, trust    string
		serverName          string
		ok                  bool
		wantServerRefusedIt bool
	}{
		{name: "CLI cert", srv: srv, cert: cliCert, key: cliKey, trust: ca, ok: true},
		{name: "service cert as client", srv: srv, cert: filepath.Join(dir, "controller.crt"), key: filepath.Join(dir, "controller.key"), trust: ca, ok: true},
		{name: "compose host name", srv: srv, cert: cliCert, key: cliKey, trust: ca, serverName: "coord-2", ok: true},
		{name: "wrong server name", srv: srv, cert: cliCert, key: cliKey, trust: ca, serverName: "nats"},
		{name: "client cert of another CA", srv: srv, cert: foreignCert, key: foreignKey, trust: ca, wantServerRefusedIt: true},
		{name: "no client cert", srv: srv, trust: ca, wantServerRefusedIt: true},
		{name: "server cert of another CA", srv: foreignSrv, cert: cliCert, key: cliKey, trust: ca},
		{name: "client trusts another CA", srv: srv, cert: cliCert, key: cliKey, trust: otherCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cli, err := ClientConfig(tt.cert, tt.key, tt.trust, tt.serverName)
			if err != nil {
				t.Fatal(err)
			}
			if tt.serverName == "" {
				cli.ServerName = "127.0.0.1"
			}
			cerr, serr := handshake(t, tt.srv, cli)
			if tt.ok {
				if cerr != nil || serr != nil {
					t.Fatalf("got client err %v, server err %v; want a working connection", cerr, serr)
				}
				return
			}
			if cerr == nil {
				t.Fatalf("client: got a working connection, want it refused (server err %v)", serr)
			}
			if serr == nil {
				t.Fatalf("server: got a working connection, want it refused (client err %v)", cerr)
			}
			if tt.wantServerRefusedIt && !strings.Contains(serr.Error(), "certificate") {
				t.Errorf("server error: got %v, want a certificate error", serr)
			}
		})
	}
}

func TestIssueRejects(t *testing.T) {
	ca, err := NewCA("t", time.Time{}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"no name", Request{Hosts: []string{"a"}}, "empty name"},
		{"server without host", Request{Name: "x"}, "at least one host"},
		{"bad host", Request{Name: "x", Hosts: []string{"a b"}}, `host "a b"`},
		{"bad usage", Request{Name: "x", Hosts: []string{"a"}, Usage: 7}, "unknown usage"},
	}
	for _, tt := range tests {
		if _, _, err := ca.Issue(tt.req); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got err %v, want one containing %q", tt.name, err, tt.want)
		}
	}
	// A leaf never outlives its CA.
	c, _, err := ca.Issue(Request{Name: "x", Hosts: []string{"a"}, Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ParseCertPEM(c)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("leaf expires %v, after its CA %v", leaf.NotAfter, ca.Cert.NotAfter)
	}
}
