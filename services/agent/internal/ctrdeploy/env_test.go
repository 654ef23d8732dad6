package ctrdeploy

// The tests run against the real Docker engine ($DOCKER_HOST or the default socket) and a
// real registry on loopback (Debian's docker-registry): TestMain makes a base image from
// scratch and the static busybox (as the image builder does), builds the app images on it,
// pushes them to the registry and removes them from the engine, so that every deploy pulls
// by digest. Tests skip with the reason when a part is missing (CI installs docker.io,
// docker-registry and busybox-static). Setup and checks use the docker CLI, so that what
// the tests see of a container is the engine's word, not the plugin's.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/services/agent/internal/docker"
	"github.com/berthdev/berth/services/agent/internal/instances"
	"github.com/berthdev/berth/services/agent/internal/plugin"
)

const (
	busyboxPath    = "/bin/busybox"
	registryBinary = "/usr/bin/docker-registry"
	appPort        = 8080
)

// fixture is what TestMain made: the images in the registry, by variant.
type fixture struct {
	run      string // random id of this run, in every name the tests make
	registry string // host:port
	images   map[string]string
	base     string
	ids      []string // image ids to remove at the end
}

var (
	fx         *fixture
	skipReason string
)

func TestMain(m *testing.M) {
	var cleanup func()
	fx, cleanup, skipReason = setup()
	code := m.Run()
	if cleanup != nil {
		cleanup()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func requireEnv(t *testing.T) *fixture {
	t.Helper()
	if fx == nil {
		t.Skip(skipReason)
	}
	return fx
}

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// dockerCLI runs the docker command and returns its trimmed standard output.
func dockerCLI(args ...string) (string, error) {
	cmd := exec.Command("docker", args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// app variants: files under /app. The descriptor's port is appPort; health runs every
// second (a check of a loaded 2-core machine may take a few hundred ms).
const descriptorYAML = `service: test/web
port: 8080
scripts:
  start: bin/start
  stop: bin/stop
  health: bin/health
health:
  interval: 1s
  timeout: 1s
  rise: 1
  fall: 3
`

var variants = map[string]map[string]string{
	// v1 starts httpd in the background: the start script returns.
	"v1": {
		"berth.yaml":     descriptorYAML,
		"bin/start":      "#!/bin/sh\nexec httpd -p \"$BERTH_PORT\" -h /app/www\n",
		"bin/stop":       "#!/bin/sh\nexit 0\n",
		"bin/health":     "#!/bin/sh\nexec wget -q -O /dev/null \"http://127.0.0.1:$BERTH_PORT/\"\n",
		"www/index.html": "v1\n",
	},
	// v2 runs httpd in the foreground: the start script never returns.
	"v2": {
		"berth.yaml":     descriptorYAML,
		"bin/start":      "#!/bin/sh\nexec httpd -f -p \"$BERTH_PORT\" -h /app/www\n",
		"bin/stop":       "#!/bin/sh\nexit 0\n",
		"bin/health":     "#!/bin/sh\nexec wget -q -O /dev/null \"http://127.0.0.1:$BERTH_PORT/\"\n",
		"www/index.html": "v2\n",
	},
	// sick runs but its health never passes.
	"sick": {
		"berth.yaml":     descriptorYAML,
		"bin/start":      "#!/bin/sh\nexec httpd -p \"$BERTH_PORT\" -h /app/www\n",
		"bin/stop":       "#!/bin/sh\nexit 0\n",
		"bin/health":     "#!/bin/sh\necho not ready >&2\nexit 1\n",
		"www/index.html": "sick\n",
	},
	// nodesc is a package image without berth.yaml.
	"nodesc": {
		"bin/start": "#!/bin/sh\nexit 0\n",
	},
	// other is a package of another service.
	"other": {
		"berth.yaml": strings.Replace(descriptorYAML, "test/web", "test/other", 1),
		"bin/start":  "#!/bin/sh\nexit 0\n",
		"bin/stop":   "#!/bin/sh\nexit 0\n",
		"bin/health": "#!/bin/sh\nexit 0\n",
	},
}

// setup makes the fixture, or says why it cannot.
func setup() (*fixture, func(), string) {
	if _, err := exec.LookPath("docker"); err != nil {
		return nil, nil, "no docker CLI (apt-get install docker.io): " + err.Error()
	}
	if _, err := dockerCLI("version", "--format", "{{.Server.Version}}"); err != nil {
		return nil, nil, "no Docker engine: " + err.Error()
	}
	if _, err := os.Stat(busyboxPath); err != nil {
		return nil, nil, "no static busybox at " + busyboxPath + " (apt-get install busybox-static)"
	}
	if _, err := os.Stat(registryBinary); err != nil {
		return nil, nil, "no Docker registry at " + registryBinary + " (apt-get install docker-registry)"
	}
	f := &fixture{run: randomID(), images: map[string]string{}}
	hostID = "h-" + f.run
	dir, err := os.MkdirTemp("", "ctrdeploy-test-")
	if err != nil {
		panic(err)
	}
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		_ = os.RemoveAll(dir)
	}
	fail := func(err error) (*fixture, func(), string) {
		cleanup()
		panic(fmt.Sprintf("ctrdeploy test setup: %v", err))
	}
	stopRegistry, addr, err := startRegistry(dir)
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, stopRegistry)
	f.registry = addr
	cleanups = append(cleanups, func() {
		for _, id := range f.ids {
			_, _ = dockerCLI("rmi", "-f", id)
		}
	})

	f.base = "berth-agent-test/base:" + f.run
	if err := buildBase(filepath.Join(dir, "base"), f.base); err != nil {
		return fail(err)
	}
	id, _ := dockerCLI("image", "inspect", "--format", "{{.Id}}", f.base)
	f.ids = append(f.ids, id)
	for name, files := range variants {
		ref := fmt.Sprintf("%s/berth-agent-test/app:%s-%s", addr, name, f.run)
		pinned, id, err := buildApp(filepath.Join(dir, name), f.base, ref, files)
		if err != nil {
			return fail(err)
		}
		f.images[name] = pinned
		f.ids = append(f.ids, id)
		// Off the engine, so that deploys pull.
		if _, err := dockerCLI("rmi", "-f", id); err != nil {
			return fail(err)
		}
	}
	return f, cleanup, ""
}

// startRegistry runs docker-registry on a free loopback port until the returned stop.
func startRegistry(dir string) (func(), string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "registry"), addr)
	path := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, "", err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, "", err
	}
	// Files as stdout and stderr: no copying goroutine is left for goleak to see.
	cmd := exec.Command(registryBinary, "serve", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, "", err
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	for deadline := time.Now().Add(15 * time.Second); ; {
		resp, err := hc.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return stop, addr, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			log, _ := os.ReadFile(logf.Name())
			return nil, "", fmt.Errorf("docker-registry at %s did not answer within 15s: %v: %s", addr, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// buildBase builds a base image as the image builder does (scratch, the static busybox at
// /bin/busybox, links for the applets the tests use, /tmp, /etc/passwd).
func buildBase(dir, tag string) error {
	root := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "etc", "tmp", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return err
	}
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		return err
	}
	for _, a := range []string{"sh", "sleep", "httpd", "wget", "kill", "cat", "echo", "true", "false", "test", "[", "ls", "ps"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n"), 0o644); err != nil {
		return err
	}
	_, err = dockerCLI("build", "-q", "-t", tag, dir)
	return err
}

// buildApp builds base + files under /app, pushes it as ref and returns its reference by
// digest and its image id.
func buildApp(dir, base, ref string, files map[string]string) (string, string, error) {
	for name, body := range files {
		p := filepath.Join(dir, "app", filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", "", err
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(name, "bin/") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			return "", "", err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+base+"\nCOPY app/ /app/\n"), 0o644); err != nil {
		return "", "", err
	}
	if _, err := dockerCLI("build", "-q", "-t", ref, dir); err != nil {
		return "", "", err
	}
	if _, err := dockerCLI("push", "-q", ref); err != nil {
		return "", "", err
	}
	digests, err := dockerCLI("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
	if err != nil {
		return "", "", err
	}
	var ds []string
	if err := json.Unmarshal([]byte(digests), &ds); err != nil || len(ds) == 0 {
		return "", "", fmt.Errorf("no digest of %s after the push: %s", ref, digests)
	}
	id, err := dockerCLI("image", "inspect", "--format", "{{.Id}}", ref)
	return ds[0], id, err
}

// testNet is a user-defined bridge network of one test, with a fixed subnet.
type testNet struct {
	name   string
	prefix string // "10.x.y." for addresses
}

var netSeq struct {
	sync.Mutex
	n int
}

// newNet creates a network with a /24 of its own, removed when the test ends (after the
// test's containers, whose cleanups run first).
func newNet(t *testing.T) testNet {
	t.Helper()
	for range 20 {
		netSeq.Lock()
		netSeq.n++
		n := netSeq.n
		netSeq.Unlock()
		var b [2]byte
		_, _ = rand.Read(b[:])
		prefix := fmt.Sprintf("10.%d.%d.", 150+int(b[0])%50, int(b[1])) // clear of compose's 10.213.0.0/16
		name := fmt.Sprintf("berth-agent-test-%s-%d", fx.run, n)
		_, err := dockerCLI("network", "create", "--driver", "bridge", "--subnet", prefix+"0/24", name)
		if err != nil {
			if strings.Contains(err.Error(), "overlap") {
				continue
			}
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := dockerCLI("network", "rm", name); err != nil {
				t.Errorf("remove network: %v", err)
			}
		})
		return testNet{name: name, prefix: prefix}
	}
	t.Fatal("no free /24 for a test network after 20 tries")
	return testNet{}
}

// registrar records instance nodes as coord would hold them (the tests cannot run coord:
// it is another service; test/ runs the agent against a real one).
type registrar struct {
	mu    sync.Mutex
	nodes map[string]*namesv1.Instance
	ops   []string
}

func newRegistrar() *registrar { return &registrar{nodes: map[string]*namesv1.Instance{}} }

func (r *registrar) Put(_ context.Context, path string, value []byte) (int64, error) {
	var in namesv1.Instance
	if err := protojson.Unmarshal(value, &in); err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodes[path] = &in
	r.ops = append(r.ops, "put "+path+" "+in.GetState().String())
	return int64(len(r.ops)), nil
}

func (r *registrar) Delete(_ context.Context, path string) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.nodes, path)
	r.ops = append(r.ops, "delete "+path)
	return int64(len(r.ops)), nil
}

func (r *registrar) node(path string) *namesv1.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nodes[path]
}

func (r *registrar) history() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ops...)
}

// host is one agent's plugin: an engine client, an instance manager with its registrar,
// the plugin.
type host struct {
	t    *testing.T
	net  testNet
	eng  *docker.Client
	reg  *registrar
	inst *instances.Manager
	p    *Plugin
	n    int
}

// hostID is the host id of this run's plugins, unique so that a concurrent run (or another
// package's agent on the same engine) never adopts or cleans up this run's containers.
var hostID = "h-test"

// newHost makes a plugin on net; it stops with the test (or stop).
func newHost(t *testing.T, net testNet) *host {
	t.Helper()
	eng, err := docker.New("")
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, net: net, eng: eng, reg: newRegistrar()}
	h.inst, err = instances.New(instances.Config{Host: hostID, IP: "192.0.2.1", Registrar: h.reg, FlapChanges: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = h.inst.Run(ctx); close(done) }()
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() { cancel(); <-done; eng.Close() })
	})
	h.p, err = New(Config{Host: hostID, DC: "dc1", Engine: eng, Network: net.name, HealthDeadline: 20 * time.Second,
		StopTimeout: 2 * time.Second, Instances: h.inst})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// run runs one action and returns its error and output.
func (h *host) run(action string, args map[string]string) (string, error) {
	h.t.Helper()
	h.n++
	var mu sync.Mutex
	var lines []string
	out := plugin.NewOutput(func(_ agentv1.Stream, ls []string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, ls...)
	}, 0)
	req := plugin.Request{TaskID: "t", StepID: fmt.Sprintf("s%d", h.n), Attempt: 1, Host: hostID, Plugin: Name, Action: action,
		Arguments: args, Deadline: time.Now().Add(time.Minute)}
	ctx, cancel := context.WithTimeout(h.t.Context(), 90*time.Second)
	defer cancel()
	start := time.Now()
	err := h.p.Run(ctx, req, plugin.Writers{Stdout: out.Stdout(), Stderr: out.Stderr()})
	out.Flush()
	mu.Lock()
	defer mu.Unlock()
	text := strings.Join(lines, "\n")
	h.t.Logf("%s %v: %v in %s\n%s", action, args, err, time.Since(start).Round(time.Millisecond), text)
	return text, err
}

// deployArgs are the arguments of a deploy of variant on allocation at the address .n of
// the host's network.
func (h *host) deployArgs(variant, alloc string, n int) map[string]string {
	return map[string]string{
		"service": "test/web", "version": variant, "deployment": "d-" + variant, "allocation": alloc,
		"image": fx.images[variant], "ip": fmt.Sprintf("%s%d", h.net.prefix, n),
		"cpu_millis": "250", "memory_bytes": fmt.Sprint(64 << 20),
	}
}

// allocation returns an allocation id unique to this run, whose container is removed when
// the test ends.
func allocation(t *testing.T, name string) string {
	a := "a" + fx.run + "-" + name
	t.Cleanup(func() { _, _ = dockerCLI("rm", "-f", ContainerName(a)) })
	return a
}

// inspected is what the tests read of `docker inspect`.
type inspected struct {
	ID    string
	State struct {
		Status    string
		Running   bool
		StartedAt string
	}
	Config struct {
		Labels     map[string]string
		Entrypoint []string
		Cmd        []string
		WorkingDir string
		Image      string
	}
	HostConfig struct {
		Privileged     bool
		CapAdd         []string
		CapDrop        []string
		SecurityOpt    []string
		NetworkMode    string
		PidMode        string
		IpcMode        string
		UTSMode        string
		UsernsMode     string
		Binds          []string
		Mounts         []json.RawMessage
		VolumesFrom    []string
		Devices        []json.RawMessage
		NanoCpus       int64
		Memory         int64
		PidsLimit      *int64
		Init           *bool
		ReadonlyRootfs bool
		RestartPolicy  struct{ Name string }
	}
	Mounts          []json.RawMessage
	NetworkSettings struct {
		Networks map[string]struct{ IPAddress string }
	}
}

// inspect returns the engine's view of a container, or nil when it does not exist.
func inspect(t *testing.T, name string) *inspected {
	t.Helper()
	out, err := dockerCLI("container", "inspect", name)
	if err != nil {
		if strings.Contains(err.Error(), "No such") {
			return nil
		}
		t.Fatal(err)
	}
	var cs []inspected
	if err := json.Unmarshal([]byte(out), &cs); err != nil || len(cs) != 1 {
		t.Fatalf("docker inspect %s: %v: %s", name, err, out)
	}
	return &cs[0]
}

// get fetches http://addr/ from the host.
func get(addr string) (string, error) {
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET http://%s/: %s", addr, resp.Status)
	}
	return strings.TrimSpace(b.String()), nil
}

// waitNode waits until the node at path is (present) or is not.
func (h *host) waitNode(path string, present bool, within time.Duration) *namesv1.Instance {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		n := h.reg.node(path)
		if (n != nil) == present {
			return n
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("instance node %s: present %v not reached within %s (writes %v)", path, present, within, h.reg.history())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
