//go:build e2e

package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// publishedPorts are the variables of docker-compose.yml that choose a published host
// port; the suite sets each to "" so that Docker picks free ports, and asks
// `docker-compose port` for them.
var publishedPorts = []string{
	"BERTH_COORD_1_PORT", "BERTH_COORD_2_PORT", "BERTH_COORD_3_PORT",
	"BERTH_NATS_PORT", "BERTH_NATS_MONITOR_PORT",
	"BERTH_CONTROLLER_1_PORT", "BERTH_CONTROLLER_2_PORT",
	"BERTH_NAMES_1_PORT", "BERTH_NAMES_2_PORT", "BERTH_DNS_1_PORT", "BERTH_DNS_2_PORT",
	"BERTH_AGENT_1_APP_PORT", "BERTH_AGENT_2_APP_PORT",
}

// appPort is the port the test packages listen on inside the agent containers; the
// compose file publishes it on each agent.
const appPort = 18080

// stack is one docker-compose project of docker-compose.yml, brought up for the suite and
// taken down (with its volumes) when the test ends.
type stack struct {
	t        *testing.T
	root     string   // the repository root (docker-compose.yml)
	project  string   // the compose project name, unique per run
	env      []string // the environment of every docker-compose and berth command
	berthBin string   // the berth CLI built for the run
	pkgDir   string   // mounted into the ftp container as /srv/ftp
	started  []string // the services started
	missing  []string // services whose image does not exist (binary not written yet)
	files    []string // the compose files (-f): docker-compose.yml, then any overrides
	scheme   string   // of the controller's and name service's APIs: http, or https with TLS

	mu sync.Mutex
	// containers maps services to container ids.
	containers map[string]string
	// ports maps a running service's "port/proto" to its published host:port.
	ports map[string]map[string]string
}

// newStack builds the images and the CLI, starts every service whose image exists and
// registers the teardown. It skips the test when there is no Docker engine or
// docker-compose.
func newStack(t *testing.T) *stack {
	t.Helper()
	return newStackWith(t, stackOptions{})
}

// stackOptions vary the stack newStack brings up.
type stackOptions struct {
	// overrides are compose files given after docker-compose.yml (docker-compose.tls.yml).
	overrides []string
	// env is added to the environment of every docker-compose and berth command.
	env []string
	// scheme of the APIs; empty means http.
	scheme string
	// prepare runs once the CLI is built and before `up` (to write what an override mounts).
	prepare func(s *stack)
}

// newStackWith is newStack with options.
func newStackWith(t *testing.T, opts stackOptions) *stack {
	t.Helper()
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Skip("docker-compose is not installed (CI installs it: apt-get install docker-compose)")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker engine reachable: %v: %s", err, out)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{
		t:       t,
		root:    root,
		project: fmt.Sprintf("berthe2e%d", os.Getpid()),
		pkgDir:  t.TempDir(),

		containers: map[string]string{},
		ports:      map[string]map[string]string{},
		files:      append([]string{"docker-compose.yml"}, opts.overrides...),
		scheme:     cmp.Or(opts.scheme, "http"),
	}
	// The ftp container reads the packages as root, but keep the directory world-readable
	// for engines that remap users.
	if err := os.Chmod(s.pkgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.env = append(os.Environ(), "COMPOSE_PROJECT_NAME="+s.project, "BERTH_PACKAGES_DIR="+s.pkgDir,
		"BERTH_REGISTRY_PORT="+strconv.Itoa(freePort(t)))
	for _, v := range publishedPorts {
		s.env = append(s.env, v+"=")
	}
	s.env = append(s.env, opts.env...)

	if os.Getenv("BERTH_E2E_NO_IMAGES") == "" {
		s.run(10*time.Minute, filepath.Join(root, "scripts", "images.sh"))
	}
	s.berthBin = filepath.Join(t.TempDir(), "berth")
	s.run(5*time.Minute, "go", "build", "-o", s.berthBin, "./cmd/berth")
	if opts.prepare != nil {
		opts.prepare(s)
	}

	images := s.serviceImages()
	var names []string
	for name := range images {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := exec.Command("docker", "image", "inspect", images[name]).Run(); err != nil {
			s.missing = append(s.missing, name)
			t.Logf("service %s not started: image %s does not exist (scripts/images.sh could not build it)", name, images[name])
			continue
		}
		s.started = append(s.started, name)
	}
	t.Cleanup(s.down)
	s.compose(3*time.Minute, append([]string{"up", "-d"}, s.started...)...)
	return s
}

// down dumps the logs of a failed run and removes the project with its volumes.
func (s *stack) down() {
	if s.t.Failed() || os.Getenv("BERTH_E2E_LOGS") != "" {
		out, _ := s.composeErr(time.Minute, "logs", "--no-color", "--tail", "60")
		s.t.Logf("docker-compose logs (last 60 lines per service):\n%s", out)
	}
	http.DefaultClient.CloseIdleConnections() // the stack may outlive the test (BERTH_E2E_KEEP)
	if os.Getenv("BERTH_E2E_KEEP") != "" {
		s.t.Logf("BERTH_E2E_KEEP set: project %s left running (docker-compose -p %s down -v)", s.project, s.project)
		return
	}
	// The app containers of container-mode deploys were started by the agents through the
	// host's engine, so they are not the project's: they go first, or the apps network
	// cannot be removed. The controllers and agents stop before, so that no replacement
	// starts another one meanwhile.
	if out, err := s.composeErr(2*time.Minute, "stop", "--timeout", "5", "controller-1", "controller-2", "agent-1", "agent-2"); err != nil {
		s.t.Logf("docker-compose stop of the controllers and agents: %v\n%s", err, out)
	}
	apps := s.project + "-apps"
	if ids, err := exec.Command("docker", "ps", "-aq", "--filter", "network="+apps, "--filter", "label=dev.berth.managed=true").Output(); err == nil {
		if f := strings.Fields(string(ids)); len(f) > 0 {
			if out, err := exec.Command("docker", append([]string{"rm", "-f"}, f...)...).CombinedOutput(); err != nil {
				s.t.Errorf("remove the app containers on %s: %v\n%s", apps, err, out)
			}
		}
	}
	if out, err := s.composeErr(3*time.Minute, "down", "-v", "--remove-orphans", "--timeout", "5"); err != nil {
		s.t.Errorf("docker-compose down: %v\n%s", err, out)
	}
}

// serviceImages reads the resolved compose file: service name → image.
func (s *stack) serviceImages() map[string]string {
	out := s.compose(time.Minute, "config")
	var cfg struct {
		Services map[string]struct {
			Image string `yaml:"image"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal([]byte(out), &cfg); err != nil {
		s.t.Fatalf("parse docker-compose config: %v", err)
	}
	m := map[string]string{}
	for name, svc := range cfg.Services {
		m[name] = svc.Image
	}
	return m
}

// has reports whether the service was started.
func (s *stack) has(service string) bool { return slices.Contains(s.started, service) }

// run runs a command in the repository root, failing the test on error.
func (s *stack) run(timeout time.Duration, name string, args ...string) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = s.root, s.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// compose runs docker-compose with the project's environment, failing the test on error;
// it returns stdout.
func (s *stack) compose(timeout time.Duration, args ...string) string {
	s.t.Helper()
	out, err := s.composeErr(timeout, args...)
	if err != nil {
		s.t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (s *stack) composeErr(timeout time.Duration, args ...string) (string, error) {
	// Cleanup runs after t.Context is cancelled: use a context of its own.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var files []string
	for _, f := range s.files {
		files = append(files, "-f", f)
	}
	cmd := exec.CommandContext(ctx, "docker-compose", append(files, args...)...)
	cmd.Dir, cmd.Env = s.root, s.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// addr is the loopback host:port that the service's container port is published on.
func (s *stack) addr(service string, port int, proto string) string {
	s.t.Helper()
	a, err := s.lookupAddr(service, port, proto)
	if err != nil {
		s.t.Fatal(err)
	}
	return a
}

// lookupAddr asks the engine (docker inspect, much faster than docker-compose port) for
// the published port, once per container start: kill and start forget what was learnt,
// since a restarted container may get other host ports.
func (s *stack) lookupAddr(service string, port int, proto string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ports, ok := s.ports[service]
	if !ok {
		id, err := s.containerLocked(service)
		if err != nil {
			return "", err
		}
		out, err := exec.Command("docker", "inspect", "-f", "{{json .NetworkSettings.Ports}}", id).Output()
		if err != nil {
			return "", fmt.Errorf("docker inspect %s (%s): %w", id, service, err)
		}
		var raw map[string][]struct{ HostIP, HostPort string }
		if err := json.Unmarshal(out, &raw); err != nil {
			return "", fmt.Errorf("docker inspect %s ports: %w: %s", service, err, out)
		}
		ports = map[string]string{}
		for k, bs := range raw {
			for _, b := range bs {
				ip := b.HostIP
				if ip == "" || ip == "0.0.0.0" {
					ip = "127.0.0.1"
				}
				ports[k] = net.JoinHostPort(ip, b.HostPort)
			}
		}
		if len(ports) > 0 {
			s.ports[service] = ports
		}
	}
	a, ok := ports[fmt.Sprintf("%d/%s", port, proto)]
	if !ok {
		return "", fmt.Errorf("service %s publishes no %d/%s (is it running?)", service, port, proto)
	}
	return a, nil
}

// container is the id of the service's container.
func (s *stack) container(service string) string {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	id, err := s.containerLocked(service)
	if err != nil {
		s.t.Fatal(err)
	}
	return id
}

func (s *stack) containerLocked(service string) (string, error) {
	if id, ok := s.containers[service]; ok {
		return id, nil
	}
	out, err := exec.Command("docker", "ps", "-a", "--filter", "label=com.docker.compose.project="+s.project,
		"--format", `{{.ID}} {{.Label "com.docker.compose.service"}}`).Output()
	if err != nil {
		return "", fmt.Errorf("docker ps: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if id, svc, ok := strings.Cut(line, " "); ok {
			s.containers[svc] = id
		}
	}
	id, ok := s.containers[service]
	if !ok {
		return "", fmt.Errorf("service %s has no container", service)
	}
	return id, nil
}

// kill sends SIGKILL to the service's container (docker kill), as a crash would.
func (s *stack) kill(service string) {
	s.t.Helper()
	s.run(time.Minute, "docker", "kill", s.container(service))
	s.forget(service)
	s.t.Logf("killed %s", service)
}

// start starts a stopped service again.
func (s *stack) start(service string) {
	s.t.Helper()
	s.compose(time.Minute, "start", service)
	s.forget(service)
}

func (s *stack) forget(service string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ports, service)
}

// coordEndpoints are the published client addresses of the running coord members.
func (s *stack) coordEndpoints() string {
	var eps []string
	for _, m := range []string{"coord-1", "coord-2", "coord-3"} {
		if a, err := s.lookupAddr(m, 7379, "tcp"); err == nil {
			eps = append(eps, a)
		}
	}
	return strings.Join(eps, ",")
}

// controllerURL is the API URL of a controller replica.
func (s *stack) controllerURL(service string) string {
	return s.scheme + "://" + s.addr(service, 7070, "tcp")
}

// berth runs the CLI with the endpoints of the stack; it returns the combined output and
// the exit code (-1 when it could not run).
func (s *stack) berth(timeout time.Duration, args ...string) (string, int) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), timeout)
	defer cancel()
	cmd := s.berthCmd(ctx, "controller-1", args...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	return string(out) + err.Error(), -1
}

// mustBerth runs the CLI and fails the test unless it exits 0.
func (s *stack) mustBerth(timeout time.Duration, args ...string) string {
	s.t.Helper()
	out, code := s.berth(timeout, args...)
	if code != 0 {
		s.t.Fatalf("berth %s: exit %d, want 0\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// berthCmd is a berth command whose controller is the given replica.
func (s *stack) berthCmd(ctx context.Context, controller string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, s.berthBin, args...)
	cmd.Dir = s.root
	cmd.Env = append(slices.Clone(s.env),
		"BERTH_COORD_ENDPOINTS="+s.coordEndpoints(),
		"BERTH_CONTROLLER_URL="+s.controllerURL(controller),
		"BERTH_NAMES_URL="+s.scheme+"://"+s.addr("name-service-1", 7071, "tcp"),
	)
	return cmd
}

// eventually retries f every 250 ms until it returns nil or the timeout passes; then it
// fails the test with f's last error.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for {
		if err = f(); err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout || t.Context().Err() != nil {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// httpGet returns the body of a GET, or an error for a status other than 200.
func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return b.String(), fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, strings.TrimSpace(b.String()))
	}
	return b.String(), nil
}

// freePort is a TCP port free on loopback now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for a command writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
