// Package inventory_test runs berth-cmdb-sync and berth-scheduler together against a real
// berth-coord (one member, in process) and a real NATS server (in process, JetStream):
// concurrent scheduler replicas that must never hand out an address twice or overfill a
// host, placement over NATS (request/reply and the work queue), the CMDB reconciled into
// coord, liveness, and the allocations of a killed host placed again.
package inventory_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	cmdbsync "github.com/berthdev/berth/services/cmdb-sync"
	coordsrv "github.com/berthdev/berth/services/coord"
	"github.com/berthdev/berth/services/scheduler"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logger is quiet unless BERTH_TEST_LOG is set.
func logger() *slog.Logger {
	if os.Getenv("BERTH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// env is one coord member and one NATS server.
type env struct {
	t         *testing.T
	coordAddr string
	natsURL   string
	// coord and bus are the test's own clients.
	coord *coordclient.Client
	bus   *natsbus.Bus
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t}
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := coordsrv.New(coordsrv.Config{Name: "c1", DataDir: filepath.Join(t.TempDir(), "coord"), ClientListener: cl, PeerListener: pl,
		InitialCluster: "c1=" + pl.Addr().String(), HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
		RequestTimeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("coord: %v", err)
		}
	})
	e.coordAddr = cl.Addr().String()
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
	ns := natstest.RunServer(t)
	e.natsURL = ns.URL()
	e.bus = e.newBus("test")
	if err := e.bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
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
	b, err := natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{e.natsURL}, Name: name})
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

// runPart runs fn(ctx) until the test ends, and fails the test if it returns an error.
func (e *env) runPart(name string, fn func(ctx context.Context) error) context.CancelFunc {
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

// startScheduler runs a scheduler replica with its own coord client and bus.
func (e *env) startScheduler(name string, tweak func(*scheduler.Config)) *scheduler.Scheduler {
	e.t.Helper()
	cfg := scheduler.DefaultConfig()
	cfg.Name, cfg.ListenMetrics, cfg.RescheduleInterval = name, "", 200*time.Millisecond
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := scheduler.New(cfg, scheduler.Deps{Bus: e.newBus(name), Coord: e.newCoord(), Logger: logger().With("replica", name)})
	if err != nil {
		e.t.Fatal(err)
	}
	e.runPart(name, s.Run)
	deadline := time.Now().Add(10 * time.Second)
	for !s.Ready() {
		if time.Now().After(deadline) {
			e.t.Fatalf("scheduler %s did not read the inventory", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// startSync runs a cmdb-sync replica reading cfg's source.
func (e *env) startSync(name string, tweak func(*cmdbsync.Config)) (*cmdbsync.Syncer, context.CancelFunc) {
	e.t.Helper()
	cfg := cmdbsync.DefaultConfig()
	cfg.Name, cfg.ListenMetrics = name, ""
	cfg.PollInterval, cfg.GracePeriod = 200*time.Millisecond, time.Second
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := cmdbsync.New(cfg, cmdbsync.Deps{Bus: e.newBus(name), Coord: e.newCoord(), Logger: logger().With("replica", name)})
	if err != nil {
		e.t.Fatal(err)
	}
	return s, e.runPart(name, s.Run)
}

func mustJSON(m proto.Message) []byte {
	b, err := protojson.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// putHost writes a ready host straight into the inventory, and its alive node unless
// alive is false.
func (e *env) putHost(h *inventoryv1.Host, alive bool) {
	e.t.Helper()
	if h.State == 0 {
		h.State = inventoryv1.HostState_HOST_STATE_READY
	}
	h.InCmdb = true
	if _, err := e.coord.Put(e.t.Context(), "/berth/hosts/"+h.GetId(), mustJSON(h)); err != nil {
		e.t.Fatal(err)
	}
	if alive {
		if _, err := e.coord.Put(e.t.Context(), "/berth/alive/"+h.GetId(), mustJSON(&agentv1.AgentInfo{HostId: h.GetId()})); err != nil {
			e.t.Fatal(err)
		}
	}
}

// getHost reads a host record; nil when there is none.
func (e *env) getHost(id string) *inventoryv1.Host {
	n, err := e.coord.Get(e.t.Context(), "/berth/hosts/"+id)
	if err != nil {
		return nil
	}
	h := &inventoryv1.Host{}
	if err := protojson.Unmarshal(n.Value, h); err != nil {
		e.t.Fatal(err)
	}
	return h
}

// allocations reads every allocation in coord, by host, and the guards' counts.
func (e *env) allocations() (map[string][]*inventoryv1.Allocation, map[string]uint32) {
	e.t.Helper()
	list, err := e.coord.List(e.t.Context(), "/berth/alloc", coordclient.Recursive())
	if err != nil {
		e.t.Fatal(err)
	}
	byHost := map[string][]*inventoryv1.Allocation{}
	guards := map[string]uint32{}
	for _, n := range list.Nodes {
		if n.Version == 0 || n.Path == "/berth/alloc" {
			continue
		}
		rel := n.Path[len("/berth/alloc/"):]
		if host, id, ok := cut(rel); ok {
			a := &inventoryv1.Allocation{}
			if err := protojson.Unmarshal(n.Value, a); err != nil {
				e.t.Fatal(err)
			}
			if a.GetId() != id || a.GetHost() != host {
				e.t.Fatalf("%s holds allocation %s of host %s", n.Path, a.GetId(), a.GetHost())
			}
			byHost[host] = append(byHost[host], a)
		} else {
			g := &inventoryv1.AllocationGuard{}
			if err := protojson.Unmarshal(n.Value, g); err != nil {
				e.t.Fatal(err)
			}
			guards[rel] = g.GetCount()
		}
	}
	return byHost, guards
}

func cut(s string) (string, string, bool) {
	for i := range len(s) {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// events subscribes to the events matching filter and returns a function that waits up
// to d for the next one on subject (exact) and consumes it; events on other subjects are
// kept for later calls.
func (e *env) events(filter string) func(subject string, d time.Duration) *nats.Msg {
	e.t.Helper()
	sub, err := e.bus.Conn().SubscribeSync(filter)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	var mu sync.Mutex
	var seen []*nats.Msg
	return func(subject string, d time.Duration) *nats.Msg {
		mu.Lock()
		defer mu.Unlock()
		for i, m := range seen {
			if m.Subject == subject {
				seen = append(seen[:i], seen[i+1:]...)
				return m
			}
		}
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			m, err := sub.NextMsg(time.Until(deadline))
			if err != nil {
				break
			}
			if m.Subject == subject {
				return m
			}
			seen = append(seen, m)
		}
		var got []string
		for _, m := range seen {
			got = append(got, m.Subject)
		}
		e.t.Fatalf("no event on %s within %s; saw %v", subject, d, got)
		return nil
	}
}

// eventually polls cond every 20 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hostName(i int) string { return fmt.Sprintf("h%03d", i) }
