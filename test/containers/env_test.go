// Package containers_test runs container mode end to end with real parts: a berth-coord
// member and a NATS server with JetStream in process, the real scheduler, image builder,
// name service and controller in process, and two real agents (host ids h1 and h2) whose
// container-deploy plugin runs containers on the machine's Docker engine. The hosts' IP
// pools are two disjoint ranges of one user-defined bridge network the test makes; images
// go through a Docker registry on loopback (services/image-builder/registrytest). Requests
// reach the containers at their scheduled addresses, found through the name service.
//
// The tests skip when there is no Docker engine or no docker-registry binary. Everything
// they make in the engine (network, images, containers) is removed when they end.
package containers_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent"
	coordsrv "github.com/berthdev/berth/services/coord"
	imagebuilder "github.com/berthdev/berth/services/image-builder"
	"github.com/berthdev/berth/services/image-builder/registrytest"
	nameservice "github.com/berthdev/berth/services/name-service"
	"github.com/berthdev/berth/services/scheduler"
	controller "github.com/berthdev/berth/services/task-controller"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func logger() *slog.Logger {
	if os.Getenv("BERTH_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	l, _ := logging.New(logging.Config{Format: "text", Level: "debug"}, os.Stderr)
	return l
}

// hostSpec is one host of the test's inventory: its agent and its IP pool.
type hostSpec struct {
	id, rack, pool string
}

// env is one test's Berth.
type env struct {
	t   *testing.T
	run string
	dir string
	// network is the Docker network containers join; subnet its /24 ("172.31.N").
	network, subnet string
	hosts           []hostSpec
	registry        *registrytest.Registry
	coordAddr       string
	nats            *natstest.Server
	coord           *coordclient.Client
	bus             *natsbus.Bus
	names           nameservice.Addrs
	api             string

	// stopScheduler and stopBuilder stop those parts (for the failure tests).
	stopScheduler, stopBuilder func()

	mu     sync.Mutex
	agents map[string]func()
}

// runPart runs fn until the test ends (or the returned stop is called) and fails the test
// when it returns an error.
func (e *env) runPart(name string, fn func(ctx context.Context) error) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("%s: %v", name, err)
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

func newEnv(t *testing.T) *env {
	t.Helper()
	registrytest.RequireDocker(t)
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("the docker CLI is not installed (the test makes its network and cleans up with it)")
	}
	e := &env{t: t, run: strings.ToLower(rand.Text()[:10]), dir: t.TempDir(), agents: map[string]func(){}}
	e.registry = registrytest.Run(t)
	label := "dev.berth.test=" + e.run
	t.Cleanup(func() { e.cleanupEngine(label) })

	// The network: a /24 of 172.31.0.0/16 that no other network uses.
	e.network = "berth-test-" + e.run
	var err error
	for try := 0; ; try++ {
		n, _ := rand.Int(rand.Reader, big.NewInt(200))
		e.subnet = fmt.Sprintf("172.31.%d", 20+n.Int64())
		out, cerr := exec.Command("docker", "network", "create", "--driver", "bridge", "--subnet", e.subnet+".0/24",
			"--label", label, e.network).CombinedOutput()
		if cerr == nil {
			break
		}
		if try == 5 {
			t.Fatalf("create docker network: %v: %s", cerr, out)
		}
	}
	t.Cleanup(func() {
		e.cleanupEngine(label) // the containers first: a network with endpoints stays
		if out, err := exec.Command("docker", "network", "rm", e.network).CombinedOutput(); err != nil {
			t.Errorf("remove docker network %s: %v: %s", e.network, err, out)
		}
	})
	e.hosts = []hostSpec{{"h1", "r1", e.subnet + ".10-" + e.subnet + ".19"}, {"h2", "r2", e.subnet + ".20-" + e.subnet + ".29"}}

	base, err := imagebuilder.MakeBaseImage(t.Context(), imagebuilder.BaseOptions{Name: "berth-test/base:" + e.run, Registry: e.registry.Addr,
		Labels: map[string]string{"dev.berth.test": e.run}})
	if err != nil {
		t.Fatalf("make the base image: %v", err)
	}

	// coord and NATS.
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := coordsrv.New(coordsrv.Config{Name: "c1", DataDir: filepath.Join(e.dir, "coord"), ClientListener: cl, PeerListener: pl,
		InitialCluster: "c1=" + pl.Addr().String(), HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
		RequestTimeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e.coordAddr = cl.Addr().String()
	e.runPart("coord", srv.Run)
	e.coord = e.newCoord()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.coord.Put(t.Context(), "/probe", nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("coord has no leader: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.nats = natstest.RunServer(t)
	e.bus = e.newBus("test")
	if err := e.bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}

	// The inventory: two ready hosts with disjoint pools of the network's subnet.
	for _, h := range e.hosts {
		e.putHost(h, inventoryv1.HostState_HOST_STATE_READY)
	}

	// The name service.
	ncfg := nameservice.DefaultConfig()
	ncfg.DNSAddr, ncfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	ncfg.TTL = time.Second
	ns, err := nameservice.New(ncfg, nameservice.Deps{Bus: e.newBus("names"), Coord: e.newCoord(), Logger: logger().With("part", "names"),
		Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if e.names, err = ns.Listen(); err != nil {
		t.Fatal(err)
	}
	e.runPart("name service", ns.Run)
	for ns.Ready(t.Context()) != nil {
		time.Sleep(10 * time.Millisecond)
	}

	// The scheduler.
	scfg := scheduler.DefaultConfig()
	scfg.Name, scfg.ListenMetrics, scfg.RescheduleInterval = "s1", "", 200*time.Millisecond
	sch, err := scheduler.New(scfg, scheduler.Deps{Bus: e.newBus("scheduler"), Coord: e.newCoord(), Logger: logger().With("part", "scheduler")})
	if err != nil {
		t.Fatal(err)
	}
	e.stopScheduler = e.runPart("scheduler", sch.Run)
	e.eventually(10*time.Second, "the scheduler reads the inventory", sch.Ready)

	// The image builder.
	bcfg := imagebuilder.DefaultConfig()
	bcfg.Name, bcfg.ListenMetrics, bcfg.Registry, bcfg.WorkDir = "b1", "", e.registry.Addr, filepath.Join(e.dir, "builder")
	bcfg.DefaultBaseImage = base.Reference
	bcfg.ImageLabels = []string{label}
	b, err := imagebuilder.New(bcfg, imagebuilder.Deps{Bus: e.newBus("builder"), Coord: e.newCoord(), Logger: logger().With("part", "builder"),
		Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	e.stopBuilder = e.runPart("image builder", b.Run)
	e.eventually(20*time.Second, "the image builder answers", b.Ready)

	// The agents.
	for _, h := range e.hosts {
		e.startAgent(h.id)
	}

	// The controller.
	ccfg := controller.DefaultConfig()
	ccfg.Replica, ccfg.Listen, ccfg.SessionTTL = "c1", "127.0.0.1:0", time.Second
	ccfg.RetryBackoff, ccfg.RetryBackoffMax, ccfg.PollInterval = 50*time.Millisecond, 200*time.Millisecond, time.Second
	ccfg.ResultGrace, ccfg.StepRequestTimeout, ccfg.EnsureStreams = 2*time.Second, 2*time.Second, false
	ccfg.NamesURL = ""
	ctrl, err := controller.New(ccfg, controller.Deps{Bus: e.newBus("controller"), Coord: e.newCoord(), Logger: logger().With("part", "controller"),
		Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := ctrl.Listen()
	if err != nil {
		t.Fatal(err)
	}
	e.api = "http://" + addr.String()
	e.runPart("controller", ctrl.Run)
	e.eventually(15*time.Second, "a controller leader", func() bool {
		_, err := e.coord.Leader(t.Context(), "controller")
		return err == nil
	})
	return e
}

// newCoord is a coord client of its own, closed when the test ends.
func (e *env) newCoord() *coordclient.Client {
	c, err := coordclient.New(context.Background(), coordclient.Config{Endpoints: []string{e.coordAddr}, RequestTimeout: 10 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// newBus is a NATS connection of its own, closed when the test ends.
func (e *env) newBus(name string) *natsbus.Bus {
	b, err := natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{e.nats.URL()}, Name: name, Source: name})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// putHost writes a host into the inventory.
func (e *env) putHost(h hostSpec, state inventoryv1.HostState) {
	e.t.Helper()
	liveness := inventoryv1.Liveness_LIVENESS_UP
	if state == inventoryv1.HostState_HOST_STATE_DOWN {
		liveness = inventoryv1.Liveness_LIVENESS_DOWN
	}
	rec := &inventoryv1.Host{Id: h.id, Dc: "dc1", Rack: h.rack, Ip: "127.0.0.1", CpuMillis: 4000, MemoryBytes: 4 << 30, DiskBytes: 10 << 30,
		MaxContainers: 64, IpPools: []string{h.pool}, State: state, InCmdb: true, Liveness: liveness}
	if _, err := e.coord.Put(e.t.Context(), "/berth/hosts/"+h.id, mustJSON(rec)); err != nil {
		e.t.Fatal(err)
	}
}

// startAgent runs host's agent with the container-deploy plugin on the test's network.
func (e *env) startAgent(host string) {
	e.t.Helper()
	cfg := agent.DefaultConfig()
	cfg.HostID = host
	cfg.DC = "dc1"
	cfg.DataDir = filepath.Join(e.dir, "agents", host)
	cfg.NATS = e.nats.URL()
	cfg.Coord = e.coordAddr
	cfg.ListenMetrics = ""
	cfg.DockerHost = "-"
	cfg.AdvertiseIP = "127.0.0.1"
	cfg.SessionTTL = 2 * time.Second
	cfg.KillGrace = 500 * time.Millisecond
	cfg.DrainTimeout = time.Second
	cfg.Drain.MaxWait = 5 * time.Second
	cfg.Deploy.HealthDeadline = 30 * time.Second
	cfg.Containers.Enabled = agent.ContainersOn
	cfg.Containers.DockerHost = "unix:///var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		cfg.Containers.DockerHost = h
	}
	cfg.Containers.Network = e.network
	cfg.Containers.StopTimeout = 2 * time.Second
	a, err := agent.New(cfg, agent.Deps{Logger: logger().With("host", host)})
	if err != nil {
		e.t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				e.t.Errorf("agent %s: %v", host, err)
			}
		})
	}
	e.t.Cleanup(stop)
	deadline := time.Now().Add(20 * time.Second)
	for a.Ready(ctx) != nil {
		select {
		case err := <-errc:
			e.t.Fatalf("agent %s stopped while starting: %v", host, err)
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("agent %s not ready: %v", host, a.Ready(ctx))
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.mu.Lock()
	e.agents[host] = stop
	e.mu.Unlock()
}

// stopAgent stops host's agent (its containers keep running; its session ends).
func (e *env) stopAgent(host string) {
	e.mu.Lock()
	stop := e.agents[host]
	e.mu.Unlock()
	stop()
}

// cleanupEngine removes the containers of the test's services and everything labelled
// with the test's run.
func (e *env) cleanupEngine(label string) {
	ctx := context.Background()
	ids := map[string]bool{}
	for _, filter := range []string{"label=" + label, "label=dev.berth.service"} {
		out, err := exec.CommandContext(ctx, "docker", "ps", "-aq", "--filter", filter, "--format", "{{.ID}} {{.Label \"dev.berth.service\"}}").Output()
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
			id, svc, _ := strings.Cut(line, " ")
			if id != "" && (filter == "label="+label || strings.Contains(svc, "/r"+e.run+"/")) {
				ids[id] = true
			}
		}
	}
	for id := range ids {
		_ = exec.CommandContext(ctx, "docker", "rm", "-f", id).Run()
	}
	out, err := exec.CommandContext(ctx, "docker", "images", "-q", "--filter", "label="+label).Output()
	if err != nil {
		return
	}
	for id := range strings.FieldsSeq(string(out)) {
		_ = exec.CommandContext(ctx, "docker", "rmi", "-f", id).Run()
	}
}

// service is a service path unique to the run.
func (e *env) service(name string) string { return "ctest/r" + e.run + "/" + name }

// tree creates the service's node with a short DNS TTL (the agents' drain barrier waits it).
func (e *env) tree(service string, ttl time.Duration) {
	e.t.Helper()
	n := &controllerv1.ServiceNode{Policy: &controllerv1.Policy{DnsTtl: durationpb.New(ttl)}}
	if _, err := e.coord.Put(e.t.Context(), "/berth/tree/"+service, mustJSON(n)); err != nil {
		e.t.Fatal(err)
	}
}

// webPackage is a package of service at version: busybox httpd serving the version on
// BERTH_IP:8080, its health a GET of it (with nc).
func (e *env) webPackage(service, version string, extra map[string]string) (string, string) {
	e.t.Helper()
	files := map[string]string{
		"berth.yaml": "service: " + service + "\nport: 8080\nscripts:\n  start: bin/start\n  stop: bin/stop\n  health: bin/health\n" +
			"health:\n  interval: 1s\n  timeout: 1s\n  rise: 1\n  fall: 2\n",
		"bin/start": "#!/bin/sh\nexec httpd -f -p \"$BERTH_IP:$BERTH_PORT\" -h /app/www\n",
		"bin/stop":  "#!/bin/sh\nexit 0\n",
		// The static busybox's wget crashes resolving; nc does not resolve.
		"bin/health":     "#!/bin/sh\nprintf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 \"$BERTH_IP\" \"$BERTH_PORT\" | head -1 | grep -q ' 200 '\n",
		"www/index.html": version,
	}
	for k, v := range extra {
		if v == "" {
			delete(files, k)
		} else {
			files[k] = v
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, n := range names {
		mode := int64(0o644)
		if strings.HasPrefix(n, "bin/") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(files[n])), Typeflag: tar.TypeReg, ModTime: time.Unix(1, 0)}); err != nil {
			e.t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[n])); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		e.t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		e.t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	p := filepath.Join(e.dir, "pkgs", strings.ReplaceAll(service, "/", "-")+"-"+version+".tar.gz")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return "file://" + p, hex.EncodeToString(sum[:])
}

// call sends a request to the controller's API and returns the status and body.
func (e *env) call(method, path string, body any) (int, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.api+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// deploy posts a deployment and returns its id.
func (e *env) deploy(body map[string]any) string {
	e.t.Helper()
	code, b := e.call("POST", "/v1/deployments", body)
	if code != http.StatusCreated {
		e.t.Fatalf("POST /v1/deployments: %d %s", code, b)
	}
	d := &controllerv1.Deployment{}
	if err := protojson.Unmarshal(b, d); err != nil {
		e.t.Fatal(err)
	}
	return d.GetId()
}

// containerBody is a container deployment request.
func containerBody(service, version, url, sum string, replicas int, strategy map[string]any) map[string]any {
	b := map[string]any{"service": service, "version": version, "mode": "container",
		"artifact":  map[string]string{"url": url, "sha256": sum},
		"placement": map[string]any{"replicas": replicas, "cpu_millis": 100, "memory_bytes": 64 << 20, "spread": "rack"}}
	if strategy != nil {
		b["strategy"] = strategy
	}
	return b
}

// deployment reads a deployment with its targets.
func (e *env) deployment(id string) *controllerv1.Deployment {
	e.t.Helper()
	code, b := e.call("GET", "/v1/deployments/"+id, nil)
	if code != http.StatusOK {
		e.t.Fatalf("GET /v1/deployments/%s: %d %s", id, code, b)
	}
	d := &controllerv1.Deployment{}
	if err := protojson.Unmarshal(b, d); err != nil {
		e.t.Fatal(err)
	}
	return d
}

// wait polls a deployment until ok, and fails the test when it ends otherwise.
func (e *env) wait(id string, timeout time.Duration, ok func(*controllerv1.Deployment) bool) *controllerv1.Deployment {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d := e.deployment(id)
		if ok(d) {
			return d
		}
		if terminal(d) || time.Now().After(deadline) {
			e.t.Fatalf("deployment %s: condition not met (state %s) within %s: %s", id, d.GetStatus().GetState(), timeout, dump(d))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func terminal(d *controllerv1.Deployment) bool {
	switch d.GetStatus().GetState() {
	case "succeeded", "failed", "aborted", "rolled_back":
		return !d.GetStatus().GetDraining() && d.GetStatus().GetReleasesRecorded()
	}
	return false
}

// ended waits for state (terminal, recorded and drained).
func ended(state string) func(*controllerv1.Deployment) bool {
	return func(d *controllerv1.Deployment) bool { return terminal(d) && d.GetStatus().GetState() == state }
}

func dump(m proto.Message) string {
	b, _ := protojson.Marshal(m)
	return string(b)
}

func mustJSON(m proto.Message) []byte {
	b, err := protojson.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// allocations reads the service's allocations from coord.
func (e *env) allocations(service string) []*inventoryv1.Allocation {
	e.t.Helper()
	list, err := e.coord.List(e.t.Context(), "/berth/alloc", coordclient.Recursive())
	if err != nil && !errors.Is(err, coordclient.ErrNotFound) {
		e.t.Fatal(err)
	}
	var out []*inventoryv1.Allocation
	if list == nil {
		return nil
	}
	for _, n := range list.Nodes {
		if n.Version == 0 || strings.Count(n.Path, "/") != 4 {
			continue
		}
		a := &inventoryv1.Allocation{}
		if err := protojson.Unmarshal(n.Value, a); err != nil {
			e.t.Fatal(err)
		}
		if a.GetService() == service {
			out = append(out, a)
		}
	}
	return out
}

// resolved answers the name service's addresses of service (sorted) and the TTL.
func (e *env) resolved(service string) ([]string, time.Duration, error) {
	resp, err := http.Get("http://" + e.names.HTTP.String() + "/v1/resolve/" + service)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("resolve %s: %d %s", service, resp.StatusCode, bytes.TrimSpace(b))
	}
	var ans struct {
		TTLSeconds uint32 `json:"ttl_seconds"`
		Instances  []struct {
			Addr string `json:"addr"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		return nil, 0, fmt.Errorf("resolve %s: %v: %s", service, err, b)
	}
	var out []string
	for _, in := range ans.Instances {
		out = append(out, in.Addr)
	}
	sort.Strings(out)
	return out, time.Duration(ans.TTLSeconds) * time.Second, nil
}

var httpClient = &http.Client{Timeout: 3 * time.Second}

// get asks one container for its version.
func get(addr string) (string, error) {
	resp, err := httpClient.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: status %d", addr, resp.StatusCode)
	}
	return strings.TrimSpace(string(b)), nil
}

// versions asks every address the name service answers for its version.
func (e *env) versions(service string) (map[string]string, error) {
	addrs, _, err := e.resolved(service)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, a := range addrs {
		v, err := get(a)
		if err != nil {
			return nil, err
		}
		out[a] = v
	}
	return out, nil
}

// eventually polls cond every 50 ms for up to d.
func (e *env) eventually(d time.Duration, what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// deployEvents reads the deploy events of service stored so far: type and message.
func (e *env) deployEvents(service string) []string {
	e.t.Helper()
	tokens, err := subjects.ServiceTokens(service)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	err = e.bus.ConsumeEvents(e.t.Context(), natsbus.EventConsumerConfig{FilterSubjects: []string{"berth.v1.events.deploy.*." + tokens},
		StopWhenCaughtUp: true}, func(_ context.Context, d natsbus.EventDelivery) error {
		ev := &eventsv1.DeployEvent{}
		if err := natsbus.UnmarshalEventData(d.Event, ev); err != nil {
			return err
		}
		out = append(out, strings.TrimPrefix(d.Event.Type, "dev.berth.deploy.")+" "+ev.GetDeploymentId()+": "+ev.GetMessage())
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// containerIP is the address docker reports for the container of allocation on the test's
// network ("" when it has none).
func (e *env) containerIP(allocation string) string {
	out, err := exec.Command("docker", "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
		"berth-"+allocation).Output()
	if err != nil {
		return ""
	}
	for f := range strings.FieldsSeq(string(out)) {
		if n, ip, ok := strings.Cut(f, "="); ok && n == e.network {
			return ip
		}
	}
	return ""
}
