package index

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/constraint"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
	"github.com/berthdev/berth/services/scheduler/internal/plugins"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const gib = 1 << 30

func newIndex(t testing.TB, seed uint64, reg framework.Registry) *Index {
	t.Helper()
	if reg == nil {
		reg = plugins.NewInTreeRegistry()
	}
	fw, err := framework.New(reg, plugins.DefaultProfile())
	if err != nil {
		t.Fatal(err)
	}
	return New(fw, Options{Seed: seed})
}

type hostSpec struct {
	id, dc, rack string
	cpu, mem     uint64
	cap          uint32
	pool         []string
	state        inventoryv1.HostState
	labels       map[string]string
}

func addHost(x *Index, h hostSpec) {
	if h.state == 0 {
		h.state = inventoryv1.HostState_HOST_STATE_READY
	}
	x.ApplyHost(&inventoryv1.Host{
		Id: h.id, Dc: h.dc, Rack: h.rack, CpuMillis: h.cpu, MemoryBytes: h.mem, MaxContainers: h.cap,
		IpPools: h.pool, State: h.state, Labels: h.labels,
	}, 1)
	x.ApplyAlive(h.id, true)
}

// commitAll applies a decision as if its transaction had succeeded.
func commitAll(x *Index, d *Decision, rev int64) []framework.AllocInfo {
	infos := make([]framework.AllocInfo, len(d.Placements))
	for i, p := range d.Placements {
		infos[i] = framework.AllocInfo{
			ID: fmt.Sprintf("a%d-%d", rev, i), Service: d.Req.Service, Deployment: d.Req.Deployment,
			Resources: d.Req.Resources, IP: p.IP,
		}
	}
	x.Commit(d, infos, rev)
	return infos
}

func req(svc string, count int, cpu, mem int64) *framework.Request {
	return &framework.Request{Service: svc, Count: count, Resources: framework.Resources{CPU: cpu, Memory: mem}, Scoring: plugins.PolicyBinPack}
}

// checkInvariants verifies, from the allocations alone, that no host is over its cap,
// its pool or its resources, and that no address is handed out twice.
func checkInvariants(t *testing.T, x *Index, seed uint64) {
	t.Helper()
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, n := range x.all {
		if len(n.Allocs) > n.MaxContainers {
			t.Fatalf("seed %d: host %s holds %d allocations, over its cap of %d", seed, n.ID, len(n.Allocs), n.MaxContainers)
		}
		var used framework.Resources
		ips := map[netip.Addr]string{}
		for _, a := range n.Allocs {
			used = used.Add(a.Resources)
			if !n.Pool.Contains(a.IP) {
				t.Fatalf("seed %d: host %s: allocation %s has %s, outside the pool %v", seed, n.ID, a.ID, a.IP, n.Pool.Ranges())
			}
			if other, dup := ips[a.IP]; dup {
				t.Fatalf("seed %d: host %s: %s given to %s and %s", seed, n.ID, a.IP, other, a.ID)
			}
			ips[a.IP] = a.ID
		}
		if used.CPU > n.Capacity.CPU || used.Memory > n.Capacity.Memory {
			t.Fatalf("seed %d: host %s uses %+v, over its capacity %+v", seed, n.ID, used, n.Capacity)
		}
	}
}

func testSeed(t *testing.T) uint64 {
	if s := os.Getenv("BERTH_TEST_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("BERTH_TEST_SEED: %v", err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

// TestNeverOverCapOrPool places and releases at random on small, mixed hosts (caps under
// and over their pool sizes) and checks after every step that no host exceeds its cap,
// its pool or its resources. Run again with BERTH_TEST_SEED=<seed> to repeat a failure.
func TestNeverOverCapOrPool(t *testing.T) {
	seed := testSeed(t)
	t.Logf("seed %d (BERTH_TEST_SEED to repeat)", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	x := newIndex(t, seed, nil)
	for i := range 40 {
		poolSize := 1 + rng.IntN(12)
		addHost(x, hostSpec{
			id: fmt.Sprintf("h%02d", i), dc: fmt.Sprintf("dc%d", i%3), rack: fmt.Sprintf("r%d", i%5),
			cpu: uint64(1000 + rng.IntN(16000)), mem: uint64(1+rng.IntN(64)) * gib, cap: uint32(1 + rng.IntN(10)),
			pool: []string{fmt.Sprintf("10.%d.0.1-10.%d.0.%d", i, i, poolSize)},
		})
	}
	rev := int64(10)
	var live []struct {
		n  *framework.NodeInfo
		id string
	}
	for step := range 3000 {
		if rng.IntN(4) == 0 && len(live) > 0 {
			k := rng.IntN(len(live))
			l := live[k]
			rev++
			x.Removed(l.n, []string{l.id}, rev)
			live = append(live[:k], live[k+1:]...)
		} else {
			r := req(fmt.Sprintf("svc%d", rng.IntN(5)), 1+rng.IntN(8), int64(100+rng.IntN(3000)), int64(1+rng.IntN(8))*gib/2)
			if rng.IntN(3) == 0 {
				r.MaxPerHost = 1 + rng.IntN(2)
			}
			r.Spread = []string{"", "dc", "rack"}[rng.IntN(3)]
			d := x.Decide(r, rng.IntN(2) == 0)
			if len(d.Placements) > r.Count {
				t.Fatalf("seed %d step %d: placed %d, asked %d", seed, step, len(d.Placements), r.Count)
			}
			rev++
			infos := commitAll(x, d, rev)
			for i, p := range d.Placements {
				live = append(live, struct {
					n  *framework.NodeInfo
					id string
				}{p.Node, infos[i].ID})
			}
			if r.MaxPerHost > 0 {
				for _, p := range d.Placements {
					s := framework.NewCycleState(r, 0, nil)
					if c := s.ServiceCount(p.Node); c > r.MaxPerHost {
						t.Fatalf("seed %d step %d: host %s holds %d of %s, max_per_host %d", seed, step, p.Node.ID, c, r.Service, r.MaxPerHost)
					}
				}
			}
		}
		checkInvariants(t, x, seed)
	}
	if st := x.Stats(); st.Allocations != len(live) {
		t.Fatalf("seed %d: index counts %d allocations, want %d", seed, st.Allocations, len(live))
	}
}

func TestTheCapOf64(t *testing.T) {
	x := newIndex(t, 1, nil)
	addHost(x, hostSpec{id: "h1", dc: "dc1", cpu: 1 << 40, mem: 1 << 50, cap: 64, pool: []string{"172.30.0.0/24"}})
	placed := 0
	for rev := int64(2); ; rev++ {
		d := x.Decide(req("s", 10, 1, 1), true)
		if len(d.Placements) == 0 {
			if got, want := d.Explanation(), "placed 0 of 10: of 1 hosts, 1 are at the 64-container cap"; got != want {
				t.Fatalf("explanation: got %q, want %q", got, want)
			}
			break
		}
		commitAll(x, d, rev)
		placed += len(d.Placements)
	}
	if placed != 64 {
		t.Fatalf("placed %d on a host capped at 64, want 64", placed)
	}
	checkInvariants(t, x, 1)
}

func TestExplanation(t *testing.T) {
	x := newIndex(t, 1, nil)
	pool := func(i int) []string { return []string{fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)} }
	i := 0
	for range 8 { // lack memory
		addHost(x, hostSpec{id: fmt.Sprintf("m%d", i), dc: "dc1", cpu: 64000, mem: 1 * gib, cap: 64, pool: pool(i)})
		i++
	}
	for range 3 { // at the cap
		id := fmt.Sprintf("c%d", i)
		addHost(x, hostSpec{id: id, dc: "dc1", cpu: 64000, mem: 64 * gib, cap: 1, pool: pool(i)})
		x.ApplyAlloc(id, framework.AllocInfo{ID: id, Service: "other", Resources: framework.Resources{CPU: 1, Memory: 1},
			IP: netip.AddrFrom4([4]byte{10, 0, byte(i), 1})}, 0)
		i++
	}
	for range 2 { // down
		addHost(x, hostSpec{id: fmt.Sprintf("d%d", i), dc: "dc1", cpu: 64000, mem: 64 * gib, cap: 64, pool: pool(i), state: inventoryv1.HostState_HOST_STATE_DOWN})
		i++
	}
	addHost(x, hostSpec{id: "ok", dc: "dc1", cpu: 64000, mem: 8 * gib, cap: 64, pool: pool(i)})
	d := x.Decide(req("s", 10, 100, 2*gib), false)
	want := "placed 4 of 10: of 14 hosts, 9 lack memory, 3 are at the 1-container cap, 2 are down"
	if got := d.Explanation(); got != want {
		t.Fatalf("explanation: got %q, want %q", got, want)
	}
	if d.Rejections[framework.ReasonMemory] != 9 {
		t.Fatalf("memory rejections: got %d, want 9", d.Rejections[framework.ReasonMemory])
	}
}

func TestSpreadAndPreferredDCs(t *testing.T) {
	x := newIndex(t, 7, nil)
	for i := range 30 {
		addHost(x, hostSpec{id: fmt.Sprintf("h%d", i), dc: fmt.Sprintf("dc%d", i%3), rack: fmt.Sprintf("r%d", i%2),
			cpu: 64000, mem: 256 * gib, cap: 64, pool: []string{fmt.Sprintf("10.0.%d.0/24", i)}})
	}
	perDC := func(d *Decision) map[string]int {
		m := map[string]int{}
		for _, p := range d.Placements {
			m[p.Node.DC]++
		}
		return m
	}
	r := req("spread", 9, 100, gib)
	r.Spread = "dc"
	d := x.Decide(r, false)
	if got := perDC(d); got["dc0"] != 3 || got["dc1"] != 3 || got["dc2"] != 3 {
		t.Fatalf("spread dc over 3 dcs: got %v, want 3 each", got)
	}
	commitAll(x, d, 100)
	// Existing allocations count: 3 more go one per dc.
	r.Count = 3
	if got := perDC(x.Decide(r, false)); len(got) != 3 {
		t.Fatalf("spread dc after 9: got %v, want one in each dc", got)
	}
	// Without spread, bin packing fills one host.
	nr := req("pack", 5, 100, gib)
	d = x.Decide(nr, false)
	hosts := map[string]bool{}
	for _, p := range d.Placements {
		hosts[p.Node.ID] = true
	}
	if len(hosts) != 1 {
		t.Fatalf("binpack: got %d hosts, want 1", len(hosts))
	}
	nr.Scoring = plugins.PolicyLeastAllocated
	nr.PreferredDCs = []string{"dc2"}
	if got := perDC(x.Decide(nr, false)); got["dc2"] != 5 {
		t.Fatalf("preferred dc2: got %v, want all 5 in dc2", got)
	}
	cr := req("c", 4, 100, gib)
	cr.Constraints, _ = constraint.Parse("dc in (dc1), rack=r1")
	for _, p := range x.Decide(cr, false).Placements {
		if p.Node.DC != "dc1" || p.Node.Rack != "r1" {
			t.Fatalf("constraints dc1/r1: got %s/%s", p.Node.DC, p.Node.Rack)
		}
	}
}

// countingFilter counts the hosts a decision looks at.
type countingFilter struct{ n *int }

func (countingFilter) Name() string { return "Counting" }
func (c countingFilter) Filter(*framework.CycleState, *framework.NodeInfo) framework.Status {
	*c.n++
	return framework.OK
}

func TestDecisionLooksAtASample(t *testing.T) {
	var looked int
	reg := append(framework.Registry{{Name: "Counting", New: func() (framework.Plugin, error) { return countingFilter{&looked}, nil }}},
		plugins.NewInTreeRegistry()...)
	x := newIndex(t, 3, reg)
	const hosts = 20000
	for i := range hosts {
		addHost(x, hostSpec{id: fmt.Sprintf("h%05d", i), dc: fmt.Sprintf("dc%d", i%10), cpu: 32000, mem: 128 * gib, cap: 64,
			pool: []string{fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)}})
	}
	// Fill a third of the hosts: full hosts leave the available sets.
	for i := 0; i < hosts/3; i++ {
		n := x.hosts[fmt.Sprintf("h%05d", i*3)]
		for j := range 64 {
			x.ApplyAlloc(n.ID, framework.AllocInfo{ID: fmt.Sprintf("f%d-%d", i, j), Service: "fill", Resources: framework.Resources{CPU: 1, Memory: 1},
				IP: netip.AddrFrom4([4]byte{10, byte((i * 3) / 256), byte((i * 3) % 256), byte(j + 1)})}, 0)
		}
	}
	looked = 0
	d := x.Decide(req("s", 20, 500, gib), false)
	if len(d.Placements) != 20 {
		t.Fatalf("placed %d, want 20", len(d.Placements))
	}
	if looked > 2000 {
		t.Fatalf("a decision of 20 looked at %d hosts of %d, want a sample (≤ 2000)", looked, hosts)
	}
	if x.Stats().Available != hosts-hosts/3 {
		t.Fatalf("available: got %d, want %d", x.Stats().Available, hosts-hosts/3)
	}
}

func TestReservedHostsAreLeftToTheirDecision(t *testing.T) {
	x := newIndex(t, 1, nil)
	addHost(x, hostSpec{id: "a", dc: "dc1", cpu: 64000, mem: 64 * gib, cap: 64, pool: []string{"10.0.0.0/24"}})
	addHost(x, hostSpec{id: "b", dc: "dc1", cpu: 64000, mem: 64 * gib, cap: 64, pool: []string{"10.0.1.0/24"}})
	d1 := x.Decide(req("s", 1, 100, gib), true)
	d2 := x.Decide(req("s", 1, 100, gib), true)
	if d1.Placements[0].Node == d2.Placements[0].Node {
		t.Fatalf("two reserved decisions chose the same host %s", d1.Placements[0].Node.ID)
	}
	d3 := x.Decide(req("s", 1, 100, gib), true)
	if len(d3.Placements) != 0 || !d3.Busy {
		t.Fatalf("third decision: got %d placements busy=%v, want 0 and busy", len(d3.Placements), d3.Busy)
	}
	if !strings.Contains(d3.Explanation(), "2 are being updated") {
		t.Fatalf("explanation: got %q", d3.Explanation())
	}
	x.Abort(d3, nil)
	first := d1.Placements[0].Node
	x.Abort(d1, []Stale{{Node: first, GuardModRev: 50}})
	// first is stale until its guard reaches revision 50; the other is d2's.
	if d := x.Decide(req("s", 1, 100, gib), false); len(d.Placements) != 0 {
		t.Fatalf("decision on a stale host: got %s", d.Placements[0].Node.ID)
	}
	ip := first.Pool.Ranges()[0].First
	x.ApplyAlloc(first.ID, framework.AllocInfo{ID: "z", Service: "s", Resources: framework.Resources{CPU: 1, Memory: 1}, IP: ip}, 50)
	d := x.Decide(req("s", 1, 100, gib), false)
	if len(d.Placements) != 1 || d.Placements[0].Node != first || d.Placements[0].IP == ip {
		t.Fatalf("after catching up: got %+v, want a placement on %s with another IP than %s", d.Placements, first.ID, ip)
	}
}
