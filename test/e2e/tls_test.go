//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestComposeTLS brings the stack up with docker-compose.tls.yml over docker-compose.yml
// (files from scripts/compose-tls.sh in a directory of its own) and checks from the host
// that every Berth link refuses plaintext and clients without a certificate of the stack's
// CA, that the CLI works with its certificate, and that a package deploy goes through.
// It runs only with BERTH_E2E_TLS=1, so that the default run stays as long as it is:
//
//	BERTH_E2E_TLS=1 go test -tags e2e -count=1 -timeout 20m -run TestComposeTLS ./e2e/
func TestComposeTLS(t *testing.T) {
	if os.Getenv("BERTH_E2E_TLS") == "" {
		t.Skip("BERTH_E2E_TLS is not set (the TLS stack is a run of its own)")
	}
	dir := filepath.Join(t.TempDir(), "tls")
	s := newStackWith(t, stackOptions{
		overrides: []string{"docker-compose.tls.yml"},
		scheme:    "https",
		env: []string{
			"BERTH_TLS_DIR=" + dir,
			"BERTH_CA_FILE=" + filepath.Join(dir, "ca.crt"),
			"BERTH_CERT_FILE=" + filepath.Join(dir, "berth.crt"),
			"BERTH_KEY_FILE=" + filepath.Join(dir, "berth.key"),
			"BERTH_NATS_NKEY_SEED_FILE=" + filepath.Join(dir, "nats", "berth.nk"),
		},
		prepare: func(s *stack) {
			s.env = append(s.env, "BERTH_BIN="+s.berthBin)
			s.run(2*time.Minute, filepath.Join(s.root, "scripts", "compose-tls.sh"))
		},
	})
	if len(s.missing) > 0 {
		t.Fatalf("not running (no image): %s", strings.Join(s.missing, ", "))
	}
	withCert, noCert := tlsClients(t, dir)
	t.Cleanup(withCert.CloseIdleConnections)
	t.Cleanup(noCert.CloseIdleConnections)

	endpoints := map[string]string{
		"controller-1":   s.addr("controller-1", 7070, "tcp"),
		"controller-2":   s.addr("controller-2", 7070, "tcp"),
		"name-service-1": s.addr("name-service-1", 7071, "tcp"),
		"name-service-2": s.addr("name-service-2", 7071, "tcp"),
	}
	for svc, addr := range endpoints {
		eventually(t, 2*time.Minute, svc+" /readyz over mTLS", func() error {
			return getStatus(t.Context(), withCert, "https://"+addr+"/readyz", http.StatusOK)
		})
	}
	eventually(t, 2*time.Minute, "berth hosts ls (coord over mTLS) shows agent-1 and agent-2 up", func() error {
		hosts, err := hostsLs(t, s)
		if err != nil {
			return err
		}
		if hosts["agent-1"] != "up" || hosts["agent-2"] != "up" {
			return fmt.Errorf("hosts %v, want agent-1 and agent-2 up", hosts)
		}
		return nil
	})

	t.Run("HTTP refuses plaintext and clients without a certificate", func(t *testing.T) {
		for svc, addr := range endpoints {
			if err := getStatus(t.Context(), http.DefaultClient, "http://"+addr+"/readyz", http.StatusBadRequest); err != nil {
				t.Errorf("%s plain HTTP: %v, want 400 (an HTTPS server)", svc, err)
			}
			err := getStatus(t.Context(), noCert, "https://"+addr+"/readyz", http.StatusOK)
			if err == nil || !strings.Contains(err.Error(), "certificate required") {
				t.Errorf("%s HTTPS without a client certificate: got %v, want a TLS alert 'certificate required'", svc, err)
			}
		}
	})

	t.Run("coord", func(t *testing.T) {
		out := s.mustBerth(30*time.Second, "coord", "members")
		for _, m := range []string{"coord-1", "coord-2", "coord-3"} {
			if !strings.Contains(out, m) {
				t.Errorf("berth coord members lacks %s:\n%s", m, out)
			}
		}
		// Without the client certificate coord refuses the CLI.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		cmd := s.berthCmd(ctx, "controller-1", "coord", "members", "--timeout", "5s")
		cmd.Env = append(cmd.Env, "BERTH_CERT_FILE=", "BERTH_KEY_FILE=")
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("berth coord members without a client certificate succeeded:\n%s", out)
		}
		// Plaintext on coord's client port gets a TLS server: the handshake answer is not
		// HTTP/2's.
		if err := plaintextRefused(s.addr("coord-1", 7379, "tcp")); err != nil {
			t.Error(err)
		}
	})

	t.Run("NATS", func(t *testing.T) {
		addr := s.addr("nats", 4222, "tcp")
		info, err := natsInfo(addr)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"tls_required":true`, `"tls_verify":true`, `"auth_required":true`} {
			if !strings.Contains(info, want) {
				t.Errorf("NATS INFO lacks %s: %s", want, info)
			}
		}
		ca := nats.RootCAs(filepath.Join(dir, "ca.crt"))
		cert := nats.ClientCert(filepath.Join(dir, "berth.crt"), filepath.Join(dir, "berth.key"))
		for _, tc := range []struct {
			what string
			opts []nats.Option
			want string
		}{
			{"no client certificate", []nats.Option{ca}, "certificate required"},
			{"a client certificate but no nkey", []nats.Option{ca, cert}, "Authorization Violation"},
		} {
			nc, err := nats.Connect("tls://"+addr, append(tc.opts, nats.Timeout(5*time.Second), nats.NoReconnect())...)
			if err == nil {
				nc.Close()
				t.Errorf("NATS with %s: connected, want %q", tc.what, tc.want)
			} else if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NATS with %s: got %v, want %q", tc.what, err, tc.want)
			}
		}
		// The CLI logs in as the berth user (nkey, own inbox) and reads the events.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		cmd := s.berthCmd(ctx, "controller-1", "events", "--since", "1h", "--type", "host")
		cmd.Env = append(cmd.Env, "BERTH_NATS_URL=tls://"+addr)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "host.added") {
			t.Errorf("berth events over TLS with the berth nkey: %v, want host.added events:\n%s", err, out)
		}
	})

	t.Run("package deploy", func(t *testing.T) {
		const svc = "e2e/tls"
		s.mustBerth(30*time.Second, "tree", "set", svc)
		p := makePkg(t, s.pkgDir, buildApp(t), svc, "1.0.0", appPort)
		out := s.mustBerth(2*time.Minute, "deploy", svc, "--version", p.version, "--package", p.url(), "--sha256", p.sha256,
			"--hosts", "agent-1,agent-2", "--wait")
		t.Logf("berth deploy:\n%s", out)
		checkAppVersion(t, s, "1.0.0", "agent-1", "agent-2")
		if out := s.mustBerth(30*time.Second, "resolve", svc); strings.Count(out, "1.0.0") != 2 {
			t.Errorf("berth resolve %s over mTLS: want 2 instances of 1.0.0:\n%s", svc, out)
		}
	})
}

// tlsClients returns an HTTP client that trusts the stack's CA and presents the CLI's
// certificate, and one that trusts the CA but presents none.
func tlsClients(t *testing.T, dir string) (withCert, noCert *http.Client) {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s/ca.crt: no certificate", dir)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "berth.crt"), filepath.Join(dir, "berth.key"))
	if err != nil {
		t.Fatal(err)
	}
	mk := func(certs []tls.Certificate) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12},
		}}
	}
	return mk([]tls.Certificate{cert}), mk(nil)
}

// getStatus GETs url with c and returns an error unless the status is want.
func getStatus(ctx context.Context, c *http.Client, url string, want int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != want {
		return fmt.Errorf("GET %s: status %d, want %d: %s", url, resp.StatusCode, want, strings.TrimSpace(string(body)))
	}
	return nil
}

// natsInfo reads the INFO line a NATS server sends a new plaintext connection.
func natsInfo(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read NATS INFO from %s: %w", addr, err)
	}
	return line, nil
}

// plaintextRefused sends the HTTP/2 client preface in plaintext to a gRPC port: a TLS
// server answers with a TLS alert or closes, never with an HTTP/2 SETTINGS frame.
func plaintextRefused(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
		return nil // closed already: refused
	}
	head := make([]byte, 9)
	n, _ := io.ReadFull(conn, head)
	// An HTTP/2 server's first frame is SETTINGS (type 4).
	if n == 9 && head[3] == 4 {
		return fmt.Errorf("coord at %s answered a plaintext HTTP/2 preface with a SETTINGS frame", addr)
	}
	return nil
}
