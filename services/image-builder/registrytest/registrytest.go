// Package registrytest runs the parts the image builder's tests need for real: a Docker
// registry on loopback (Debian's docker-registry, the CNCF distribution registry, run in
// the foreground with a generated configuration and a storage directory in t.TempDir())
// and a check that a Docker engine answers. A test whose part is missing skips with the
// reason; CI installs them (apt-get install docker-registry busybox-static).
//
// Busybox is not checked here: a missing or dynamic busybox fails the base-image build
// with a message that says what to install.
//
// The engine treats 127.0.0.0/8 registries as insecure by default, so images are pushed to
// the test registry over plain HTTP without configuring the engine.
package registrytest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Binary is where Debian installs the registry.
const Binary = "/usr/bin/docker-registry"

// Registry is a running registry. Stop and Start keep its address and its storage.
type Registry struct {
	// Addr is host:port on 127.0.0.1.
	Addr string

	t      testing.TB
	bin    string
	config string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Run starts a registry on a free loopback port and stops it when the test ends. It skips
// the test when the docker-registry binary is missing ($BERTH_DOCKER_REGISTRY names
// another path).
func Run(t testing.TB) *Registry {
	t.Helper()
	bin := os.Getenv("BERTH_DOCKER_REGISTRY")
	if bin == "" {
		bin = Binary
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no Docker registry binary at %s (apt-get install docker-registry): %v", bin, err)
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "data"), addr)
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &Registry{Addr: addr, t: t, bin: bin, config: path}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the registry process (again) and waits until it answers /v2/.
func (r *Registry) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return
	}
	cmd := exec.Command(r.bin, "serve", r.config)
	logf, err := os.Create(r.config + ".log")
	if err != nil {
		r.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		r.t.Fatalf("start %s: %v", r.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	r.cmd, r.done = cmd, done
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + r.Addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			log, _ := os.ReadFile(r.config + ".log")
			r.t.Fatalf("docker-registry exited at start: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("docker-registry at %s did not answer within 15s: %v", r.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the registry process and waits for it.
func (r *Registry) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	r.cmd, r.done = nil, nil
}

// RequireDocker skips the test when no Docker engine answers at $DOCKER_HOST (a unix://
// or tcp:// address) or the default socket.
func RequireDocker(t testing.TB) {
	t.Helper()
	if err := PingDocker(t.Context()); err != nil {
		t.Skipf("no Docker engine: %v", err)
	}
}

// PingDocker checks that a Docker engine answers /_ping.
func PingDocker(ctx context.Context) error {
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil {
		return fmt.Errorf("DOCKER_HOST %q: %w", host, err)
	}
	tr := &http.Transport{}
	base := "http://docker"
	switch u.Scheme {
	case "unix":
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", u.Path)
		}
	case "tcp", "http":
		base = "http://" + u.Host
	default:
		return fmt.Errorf("DOCKER_HOST %q: unsupported scheme", host)
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("engine at %s: %w", host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("engine at %s: /_ping: %s", host, resp.Status)
	}
	return nil
}
