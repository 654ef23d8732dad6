package instances

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/natsbus"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeRegistrar records the node writes.
type fakeRegistrar struct {
	mu    sync.Mutex
	ops   []op
	nodes map[string]*namesv1.Instance
	rev   int64
}

type op struct {
	kind string // put, delete
	path string
	in   *namesv1.Instance
}

func newRegistrar() *fakeRegistrar { return &fakeRegistrar{nodes: map[string]*namesv1.Instance{}} }

func (f *fakeRegistrar) Put(_ context.Context, path string, value []byte) (int64, error) {
	var in namesv1.Instance
	if err := protojson.Unmarshal(value, &in); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	f.ops = append(f.ops, op{"put", path, &in})
	f.nodes[path] = &in
	return f.rev, nil
}

func (f *fakeRegistrar) Delete(_ context.Context, path string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	f.ops = append(f.ops, op{"delete", path, nil})
	delete(f.nodes, path)
	return f.rev, nil
}

func (f *fakeRegistrar) node(path string) *namesv1.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[path]
}

func (f *fakeRegistrar) history() []op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]op(nil), f.ops...)
}

// events records event types.
type events struct {
	mu    sync.Mutex
	types []string
}

func (e *events) Publish(ev natsbus.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.types = append(e.types, ev.Type)
}

func (e *events) has(typ string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, t := range e.types {
		if t == "dev.berth.instance."+typ {
			return true
		}
	}
	return false
}

func start(t *testing.T, cfg Config) *Manager {
	t.Helper()
	cfg.Host, cfg.DC, cfg.IP = "h-1", "dc1", "10.0.0.7"
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

func waitHealth(t *testing.T, r *fakeRegistrar, path string, want namesv1.Health, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if n := r.node(path); n != nil && n.GetHealth() == want {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: health %v not reached within %s (node %v)", path, want, within, r.node(path))
	return 0
}

func TestLifecycle(t *testing.T) {
	reg, ev := newRegistrar(), &events{}
	m := start(t, Config{Registrar: reg, Reporter: ev, FlapChanges: -1})
	var pass atomic.Bool
	pass.Store(true)
	id, err := m.Add(t.Context(), Spec{Service: "hotel/search", Version: "1.0", Port: 8080, Tags: []string{"a"}, Weight: 5,
		Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 3,
		Probe: func(context.Context) error {
			if pass.Load() {
				return nil
			}
			return errors.New("down")
		}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if id != "h-1-8080" {
		t.Errorf("id: got %s, want h-1-8080", id)
	}
	path := "/berth/instances/hotel/search/h-1-8080"
	// Not registered before rise passes.
	if n := reg.node(path); n != nil {
		t.Fatalf("registered before any check: %v", n)
	}
	// Healthy after rise: first check after 100 ms, second 100 ms later.
	took := waitHealth(t, reg, path, namesv1.Health_HEALTH_HEALTHY, 2*time.Second)
	if took > time.Second {
		t.Errorf("registration took %s, want about 2 checks (≈200ms)", took)
	}
	n := reg.node(path)
	if n.GetIp() != "10.0.0.7" || n.GetPort() != 8080 || n.GetDc() != "dc1" || n.GetVersion() != "1.0" || n.GetWeight() != 5 ||
		n.GetState() != namesv1.InstanceState_INSTANCE_STATE_ACTIVE || n.GetHost() != "h-1" || n.GetRegisteredAt() == nil {
		t.Errorf("node: got %v", n)
	}
	// Unhealthy after fall failures: stays registered with health UNHEALTHY.
	pass.Store(false)
	took = waitHealth(t, reg, path, namesv1.Health_HEALTH_UNHEALTHY, 2*time.Second)
	if took < 200*time.Millisecond {
		t.Errorf("unhealthy after %s, want at least fall-1 intervals", took)
	}
	pass.Store(true)
	waitHealth(t, reg, path, namesv1.Health_HEALTH_HEALTHY, 2*time.Second)
	if !ev.has(EventHealthy) || !ev.has(EventUnhealthy) {
		t.Errorf("events: got %v, want healthy and unhealthy", ev.types)
	}

	// Drain: draining put, then delete; the checks stop.
	rev, err := m.Drain(t.Context(), "hotel/search", id)
	if err != nil || rev == 0 {
		t.Fatalf("Drain: rev %d, %v", rev, err)
	}
	h := reg.history()
	last2 := h[len(h)-2:]
	if last2[0].kind != "put" || last2[0].in.GetState() != namesv1.InstanceState_INSTANCE_STATE_DRAINING || last2[1].kind != "delete" {
		t.Errorf("drain writes: got %+v, want a draining put then a delete", last2)
	}
	time.Sleep(300 * time.Millisecond)
	if got := len(reg.history()); got != len(h) {
		t.Errorf("writes after the drain: got %d more, want none", got-len(h))
	}
	if m.Has("hotel/search", id) {
		t.Errorf("instance still managed after the drain")
	}
}

func TestTimeoutIsFailure(t *testing.T) {
	reg := newRegistrar()
	m := start(t, Config{Registrar: reg, FlapChanges: -1})
	_, err := m.Add(t.Context(), Spec{Service: "a/b", Port: 1, Interval: 100 * time.Millisecond, Timeout: 30 * time.Millisecond, Rise: 1, Fall: 2,
		Probe: func(ctx context.Context) error {
			<-ctx.Done() // a check that hangs
			return ctx.Err()
		}}, true)
	if err != nil {
		t.Fatal(err)
	}
	waitHealth(t, reg, "/berth/instances/a/b/h-1-1", namesv1.Health_HEALTH_UNHEALTHY, 2*time.Second)
	if st := m.List(); len(st) != 1 || st[0].LastError == "" {
		t.Errorf("status: got %+v, want the timeout as last error", st)
	}
}

func TestFlapping(t *testing.T) {
	reg, ev := newRegistrar(), &events{}
	m := start(t, Config{Registrar: reg, Reporter: ev, FlapChanges: 2, FlapWindow: time.Minute})
	var n atomic.Int64
	_, err := m.Add(t.Context(), Spec{Service: "a/b", Port: 2, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 1, Fall: 1,
		Probe: func(context.Context) error {
			if n.Add(1)%2 == 0 {
				return errors.New("down")
			}
			return nil
		}}, false)
	if err != nil {
		t.Fatal(err)
	}
	waitHealth(t, reg, "/berth/instances/a/b/h-1-2", namesv1.Health_HEALTH_FLAPPING, 3*time.Second)
	if !ev.has(EventFlapping) {
		t.Errorf("no flapping event")
	}
	// Held out: passes alternate with failures, the node stays FLAPPING.
	time.Sleep(500 * time.Millisecond)
	if got := reg.node("/berth/instances/a/b/h-1-2").GetHealth(); got != namesv1.Health_HEALTH_FLAPPING {
		t.Errorf("health while still flapping: got %v, want FLAPPING", got)
	}
}

func TestNoProbeHealthyAtOnce(t *testing.T) {
	reg := newRegistrar()
	m := start(t, Config{Registrar: reg})
	if _, err := m.Add(t.Context(), Spec{Service: "a/b", Port: 3, Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3}, false); err != nil {
		t.Fatal(err)
	}
	if n := reg.node("/berth/instances/a/b/h-1-3"); n.GetHealth() != namesv1.Health_HEALTH_HEALTHY {
		t.Errorf("instance without a health script: got %v, want registered healthy at once", n)
	}
}

func TestBadSpecs(t *testing.T) {
	m, err := New(Config{Host: "h", IP: "10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []Spec{
		{Service: "a/b", Port: 70000, Interval: time.Second, Rise: 1, Fall: 1},
		{Service: "a/b", Port: 1, Interval: 0, Rise: 1, Fall: 1},
		{Service: "a/b", Port: 1, Interval: time.Second, Rise: 0, Fall: 1},
		{Service: "a/b", Port: 1, Interval: time.Second, Rise: 1, Fall: 1, ID: "Not_A_Label"},
		{Service: "a/b", Port: 1, Interval: time.Second, Rise: 1, Fall: 1, ID: "-x"},
	}
	for _, s := range tests {
		if _, err := m.Add(t.Context(), s, false); err == nil {
			t.Errorf("Add(%+v): got nil error", s)
		}
	}
}

func TestInstanceID(t *testing.T) {
	tests := []struct {
		host string
		port int
		want string
	}{
		{"h-017", 8080, "h-017-8080"},
		{"Web01.BJ", 80, "web01-bj-80"},
		{"h", 0, "h"},
		{"a-very-long-host-name-that-goes-on-and-on-and-on-for-ever-and-ever", 65535, "a-very-long-host-name-that-goes-on-and-on-and-on-for-ever-65535"},
	}
	for _, tt := range tests {
		if got := InstanceID(tt.host, tt.port); got != tt.want || len(got) > 63 {
			t.Errorf("InstanceID(%q, %d): got %q, want %q", tt.host, tt.port, got, tt.want)
		}
	}
}

func TestInstanceIDWith(t *testing.T) {
	long := "a-very-long-host-name-that-goes-on-and-on-and-on-for-ever-and-ever"
	tests := []struct {
		host, suffix, want string
	}{
		{"h-017", "3fa9c0d2e1b4a5968778", "h-017-3fa9c0d2e1b4a5968778"},
		{"h-017", "", "h-017"},
		{long, "3fa9c0d2e1b4a5968778", long[:63-21] + "-3fa9c0d2e1b4a5968778"},
		{"h", "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijab", "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijab"},
	}
	for _, tt := range tests {
		if got := InstanceIDWith(tt.host, tt.suffix); got != tt.want || len(got) > 63 {
			t.Errorf("InstanceIDWith(%q, %q): got %q, want %q", tt.host, tt.suffix, got, tt.want)
		}
	}
}

// TestOwnIDAndIP: an instance with an id and an address of its own (a container) is
// registered under them, and Lookup reports it.
func TestOwnIDAndIP(t *testing.T) {
	reg := newRegistrar()
	m := start(t, Config{Registrar: reg})
	id, err := m.Add(t.Context(), Spec{Service: "a/b", Port: 8080, ID: "h-1-alloc1", IP: "172.30.0.5",
		Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}, true)
	if err != nil || id != "h-1-alloc1" {
		t.Fatalf("Add: id %q, %v; want h-1-alloc1", id, err)
	}
	n := reg.node("/berth/instances/a/b/h-1-alloc1")
	if n.GetIp() != "172.30.0.5" || n.GetId() != "h-1-alloc1" || n.GetPort() != 8080 {
		t.Errorf("node: got %v, want id h-1-alloc1 at 172.30.0.5:8080", n)
	}
	st, ok := m.Lookup("a/b", "h-1-alloc1")
	if !ok || !st.Registered || st.IP != "172.30.0.5" {
		t.Errorf("Lookup: got %+v, %v; want registered at 172.30.0.5", st, ok)
	}
	if _, ok := m.Lookup("a/b", "h-1-8080"); ok {
		t.Errorf("Lookup of an id never added: found")
	}
}
