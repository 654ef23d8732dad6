// Package namesagent_test runs berth-agent against a real berth-coord member, a real NATS
// server with JetStream and a real berth-name-service, all in process on loopback ports
// chosen by the kernel (an agent that must die by SIGKILL runs as a process of its own):
// instance registration and health, removal when an agent dies, re-registration after a
// restart, the drain before a deploy stops an instance, nginx fed by a template, and the
// local DNS resolver.
package namesagent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/services/agent"
	coordsrv "github.com/berthdev/berth/services/coord"
	nameservice "github.com/berthdev/berth/services/name-service"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if binDir != "" {
			_ = os.RemoveAll(binDir)
		}
	}))
}

// env is one coord member, a NATS server and a name service.
type env struct {
	t         *testing.T
	dir       string
	nats      *natstest.Server
	coordAddr string
	coord     *coordclient.Client
	bus       *natsbus.Bus
	names     nameservice.Addrs
}

func logger() *slog.Logger {
	if os.Getenv("BERTH_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	l, _ := logging.New(logging.Config{Format: "text", Level: "debug"}, os.Stderr)
	return l
}

func startEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir()}
	e.nats = natstest.RunServer(t)

	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.coordAddr = cl.Addr().String()
	srv, err := coordsrv.New(coordsrv.Config{
		Name: "n1", DataDir: filepath.Join(e.dir, "coord"),
		ListenClient: cl.Addr().String(), ListenPeer: pl.Addr().String(), ClientListener: cl, PeerListener: pl,
		InitialCluster:    "n1=" + pl.Addr().String(),
		HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
	}, logger())
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	cdone := make(chan error, 1)
	go func() { cdone <- srv.Run(cctx) }()
	t.Cleanup(func() { ccancel(); <-cdone })

	e.coord, err = coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{e.coordAddr}, RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.coord.Close() })
	for {
		if _, err := e.coord.List(t.Context(), "/berth", coordclient.Limit(1)); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.bus = e.connect("names")
	if err := e.bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	cfg := nameservice.DefaultConfig()
	cfg.DNSAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.TTL = time.Second
	ns, err := nameservice.New(cfg, nameservice.Deps{Bus: e.bus, Coord: e.coord, Logger: logger(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if e.names, err = ns.Listen(); err != nil {
		t.Fatal(err)
	}
	nctx, ncancel := context.WithCancel(context.Background())
	ndone := make(chan error, 1)
	go func() { ndone <- ns.Run(nctx) }()
	t.Cleanup(func() { ncancel(); <-ndone })
	for ns.Ready(t.Context()) != nil {
		time.Sleep(10 * time.Millisecond)
	}
	return e
}

// connect returns a bus to the env's NATS, closed when the test ends.
func (e *env) connect(name string) *natsbus.Bus {
	e.t.Helper()
	b, err := natsbus.Connect(e.t.Context(), natsbus.Config{URLs: []string{e.nats.URL()}, Name: name})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// tree puts a service tree node with a DNS TTL.
func (e *env) tree(service string, ttl time.Duration) {
	e.t.Helper()
	n := &controllerv1.ServiceNode{Policy: &controllerv1.Policy{DnsTtl: durationpb.New(ttl)}}
	b, _ := protojson.Marshal(n)
	if _, err := e.coord.Put(e.t.Context(), "/berth/tree/"+service, b); err != nil {
		e.t.Fatal(err)
	}
}

// agentCfg is an agent configuration for host, with its data under the env's directory.
func (e *env) agentCfg(host string) agent.Config {
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
	cfg.Deploy.ScriptTimeout = 10 * time.Second
	cfg.Deploy.HealthDeadline = 20 * time.Second
	cfg.Views.Resync = 2 * time.Second
	return cfg
}

// runningAgent is an in-process agent.
type runningAgent struct {
	a    *agent.Agent
	stop func()
}

// startAgent runs an in-process agent until the test ends or stop is called.
func (e *env) startAgent(cfg agent.Config) *runningAgent {
	e.t.Helper()
	a, err := agent.New(cfg, agent.Deps{Logger: logger().With("host", cfg.HostID)})
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
				e.t.Errorf("agent %s: %v", cfg.HostID, err)
			}
		})
	}
	e.t.Cleanup(stop)
	deadline := time.Now().Add(15 * time.Second)
	for a.Ready(ctx) != nil {
		select {
		case err := <-errc:
			e.t.Fatalf("agent %s stopped while starting: %v", cfg.HostID, err)
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("agent %s not ready: %v", cfg.HostID, a.Ready(ctx))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &runningAgent{a: a, stop: stop}
}

// static writes a services.d entry (name.yaml and its directory with files) for cfg.
func static(t *testing.T, cfg agent.Config, name, yaml string, files map[string]string) string {
	t.Helper()
	dir := cfg.ConfigDir
	if dir == "" {
		dir = cfg.DataDir
	}
	sd := filepath.Join(dir, "services.d")
	base := filepath.Join(sd, name)
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sd, name+".yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	for f, body := range files {
		mode := os.FileMode(0o644)
		if filepath.Ext(f) == ".sh" {
			mode = 0o755
		}
		p := filepath.Join(base, f)
		_ = os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	return base
}

// instance reads an instance node; nil when it does not exist.
func (e *env) instance(service, id string) *namesv1.Instance {
	n, err := e.coord.Get(e.t.Context(), "/berth/instances/"+service+"/"+id)
	if errors.Is(err, coordclient.ErrNotFound) {
		return nil
	}
	if err != nil {
		e.t.Fatalf("get instance: %v", err)
	}
	var in namesv1.Instance
	if err := protojson.Unmarshal(n.Value, &in); err != nil {
		e.t.Fatalf("instance value %s: %v", n.Value, err)
	}
	return &in
}

// resolved returns the addresses the name service's HTTP API answers for service.
func (e *env) resolved(service string) []string {
	return resolveAt(e.t, "http://"+e.names.HTTP.String(), service)
}

func resolveAt(t *testing.T, base, service string) []string {
	t.Helper()
	resp, err := http.Get(base + "/v1/resolve/" + service)
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	b, _ := io.ReadAll(resp.Body)
	var ans struct {
		Instances []struct {
			Addr string `json:"addr"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		t.Fatalf("resolve %s: %d %s", service, resp.StatusCode, b)
	}
	var out []string
	for _, in := range ans.Instances {
		out = append(out, in.Addr)
	}
	sort.Strings(out)
	return out
}

// eventually polls cond every 10 ms for up to within and returns how long it took.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func equal(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }
