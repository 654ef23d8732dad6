package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/coordclient"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	coordsrv "github.com/berthdev/berth/services/coord"
)

func TestCertsInitCLI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	out, err := runBerth(t.Context(), t, "certs", "init", "--dir", dir, "--hosts", "coord.example.org,10.9.8.7")
	if err != nil {
		t.Fatalf("certs init: %v\n%s", err, out)
	}
	for _, name := range append([]string{"ca"}, certs.ServiceNames()...) {
		for _, ext := range []string{".crt", ".key"} {
			p := filepath.Join(dir, name+ext)
			if !strings.Contains(out, p) {
				t.Errorf("output does not name %s:\n%s", p, out)
			}
			if _, err := os.Stat(p); err != nil {
				t.Errorf("%s: %v", p, err)
			}
		}
	}
	if !strings.Contains(out, "coord.example.org,10.9.8.7") {
		t.Errorf("output does not list the extra hosts:\n%s", out)
	}
	// A second run refuses to replace the CA and says how to.
	if out, err := runBerth(t.Context(), t, "certs", "init", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second certs init: got err %v (output %q), want a refusal naming --force", err, out)
	}
	out, err = runBerth(t.Context(), t, "certs", "init", "--dir", dir, "--force", "--services", "coord,berth", "--json")
	if err != nil {
		t.Fatalf("certs init --force: %v", err)
	}
	var written []certs.Written
	if err := json.Unmarshal([]byte(out), &written); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if len(written) != 6 {
		t.Errorf("--json: got %d files, want 6 (CA, coord, berth)", len(written))
	}
	for _, args := range [][]string{
		{"certs", "init"},
		{"certs", "init", "--dir", dir, "--services", "ftp"},
		{"certs", "init", "--dir", dir, "--hosts", "bad host"},
		{"certs", "init", "--dir", dir, "--days", "0"},
	} {
		if _, err := runBerth(t.Context(), t, args...); err == nil {
			t.Errorf("berth %v: got nil error, want a refusal", args)
		}
	}
}

// startTLSCoord runs a one-member berth-coord in process whose client API uses the
// certificates in dir (mutual TLS: coord.crt, trusting ca.crt), and returns its client
// address.
func startTLSCoord(t *testing.T, dir string) string {
	t.Helper()
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := coordsrv.New(coordsrv.Config{
		Name: "n1", DataDir: filepath.Join(t.TempDir(), "n1"), ClientListener: cl, PeerListener: peer,
		InitialCluster:    "n1=" + peer.Addr().String(),
		HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond, RequestTimeout: 2 * time.Second,
		ClientTLS: coordsrv.TLSFiles{
			Cert:      filepath.Join(dir, "coord.crt"),
			Key:       filepath.Join(dir, "coord.key"),
			TrustedCA: filepath.Join(dir, "ca.crt"),
		},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run coord: %v", err)
		}
	})
	return cl.Addr().String()
}

// TestCoordRefusesPlaintextUnderTLS starts berth-coord with the files of `berth certs
// init` and checks that only a client with a certificate of the same CA gets in.
func TestCoordRefusesPlaintextUnderTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if out, err := runBerth(t.Context(), t, "certs", "init", "--dir", dir); err != nil {
		t.Fatalf("certs init: %v\n%s", err, out)
	}
	other := filepath.Join(t.TempDir(), "other")
	if out, err := runBerth(t.Context(), t, "certs", "init", "--dir", other, "--services", "berth"); err != nil {
		t.Fatalf("certs init: %v\n%s", err, out)
	}
	addr := startTLSCoord(t, dir)
	tlsConfig := func(certDir, trustDir string) *tls.Config {
		t.Helper()
		var cert, key string
		if certDir != "" {
			cert, key = filepath.Join(certDir, "berth.crt"), filepath.Join(certDir, "berth.key")
		}
		cfg, err := certs.ClientConfig(cert, key, filepath.Join(trustDir, "ca.crt"), "")
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}

	// The berth CLI's certificate works, through pkg/coordclient.
	good, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{addr}, TLS: tlsConfig(dir, dir), RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		_, err := good.Put(ctx, "/berth/config/tls", []byte("on"))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("put over mutual TLS with the CLI certificate: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	n, err := good.Get(ctx, "/berth/config/tls")
	cancel()
	if err != nil || string(n.Value) != "on" {
		t.Fatalf("get over mutual TLS: got %v, %v; want value \"on\"", n, err)
	}

	refused := []struct {
		name  string
		creds credentials.TransportCredentials
	}{
		{"plaintext", insecure.NewCredentials()},
		{"TLS without a client certificate", credentials.NewTLS(tlsConfig("", dir))},
		{"client certificate of another CA", credentials.NewTLS(tlsConfig(other, dir))},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tt.creds))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			_, err = coordv1.NewCoordServiceClient(conn).Get(ctx, &coordv1.GetRequest{Path: "/berth/config/tls"})
			if err == nil {
				t.Fatal("got the node, want the connection refused")
			}
			if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
				t.Fatalf("got %v, want UNAVAILABLE (a failed handshake)", err)
			}
			t.Logf("refused: %v", err)
		})
	}
	// The same through pkg/coordclient without TLS.
	plain, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{addr}, RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Get(t.Context(), "/berth/config/tls"); err == nil {
		t.Fatal("a plaintext coordclient read a node from a TLS-only berth-coord")
	}
	// A client trusting another CA refuses the server.
	wrongTrust, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{addr}, TLS: tlsConfig(dir, other), RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer wrongTrust.Close()
	if _, err := wrongTrust.Get(t.Context(), "/berth/config/tls"); err == nil {
		t.Fatal("a client trusting another CA accepted the server")
	}

	// The CLI's coord commands take their TLS files from the context or the environment.
	if out, err := runBerth(t.Context(), t, "coord", "get", "/berth/config/tls", "--endpoints", addr, "--timeout", "2s"); err == nil {
		t.Fatalf("berth coord get without TLS files read a TLS-only coord: %s", out)
	}
	t.Setenv(envCAFile, filepath.Join(dir, "ca.crt"))
	t.Setenv(envCertFile, filepath.Join(dir, "berth.crt"))
	t.Setenv(envKeyFile, filepath.Join(dir, "berth.key"))
	out, err := runBerth(t.Context(), t, "coord", "get", "/berth/config/tls", "--endpoints", addr, "--timeout", "5s")
	if err != nil || !strings.Contains(out, "on") {
		t.Fatalf("berth coord get with the CLI's TLS files: got %q, %v; want the value on", out, err)
	}
}
