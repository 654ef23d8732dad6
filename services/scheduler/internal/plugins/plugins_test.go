package plugins

import (
	"net/netip"
	"testing"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/ippool"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/constraint"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const gib = 1 << 30

// host returns a ready, alive host with 8 cores, 32 GiB, a cap of 4 and a pool of 3.
func host(mod func(n *framework.NodeInfo)) *framework.NodeInfo {
	n := framework.NewNodeInfo("h1")
	n.Known, n.Alive, n.State = true, true, inventoryv1.HostState_HOST_STATE_READY
	n.DC, n.Rack = "dc1", "r1"
	n.Labels = map[string]string{"ssd": "true"}
	n.Capacity = framework.Resources{CPU: 8000, Memory: 32 * gib}
	n.MaxContainers = 4
	n.Pool, _ = ippool.Parse([]string{"10.0.0.1-10.0.0.3"})
	n.PoolSize = n.Pool.Size()
	if mod != nil {
		mod(n)
	}
	return n
}

func withAllocs(k int, svc string, res framework.Resources) func(*framework.NodeInfo) {
	return func(n *framework.NodeInfo) {
		for i := range k {
			ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + i)})
			n.Allocs = append(n.Allocs, framework.AllocInfo{ID: string(rune('a' + i)), Service: svc, Resources: res, IP: ip})
			n.UsedIPs, _ = ippool.Insert(n.UsedIPs, ip)
			n.Used = n.Used.Add(res)
		}
	}
}

func request(mod func(r *framework.Request)) *framework.Request {
	r := &framework.Request{Service: "hotel/search", Count: 1, Resources: framework.Resources{CPU: 1000, Memory: 2 * gib}, Scoring: PolicyBinPack}
	if mod != nil {
		mod(r)
	}
	return r
}

func TestFilters(t *testing.T) {
	fw, err := framework.New(NewInTreeRegistry(), DefaultProfile())
	if err != nil {
		t.Fatal(err)
	}
	small := framework.Resources{CPU: 100, Memory: gib}
	tests := []struct {
		name string
		node *framework.NodeInfo
		req  *framework.Request
		want framework.Reason
	}{
		{"fits", host(nil), request(nil), ""},
		{"not in inventory", host(func(n *framework.NodeInfo) { n.Known = false }), request(nil), framework.ReasonDown},
		{"down", host(func(n *framework.NodeInfo) { n.State = inventoryv1.HostState_HOST_STATE_DOWN }), request(nil), framework.ReasonDown},
		{"draining", host(func(n *framework.NodeInfo) { n.State = inventoryv1.HostState_HOST_STATE_DRAINING }), request(nil), framework.ReasonDraining},
		{"no agent", host(func(n *framework.NodeInfo) { n.Alive = false }), request(nil), framework.ReasonNoAgent},
		{"busy", host(func(n *framework.NodeInfo) { n.Busy = 1 }), request(nil), framework.ReasonBusy},
		{"stale", host(func(n *framework.NodeInfo) { n.WantGuardModRev = 9 }), request(nil), framework.ReasonBusy},
		{"at cap", host(func(n *framework.NodeInfo) {
			withAllocs(3, "x", small)(n)
			n.MaxContainers = 3
		}), request(nil), framework.ReasonCap},
		{"pool exhausted", host(withAllocs(3, "x", small)), request(nil), framework.ReasonIP},
		{"memory", host(nil), request(func(r *framework.Request) { r.Resources.Memory = 33 * gib }), framework.ReasonMemory},
		{"memory used", host(withAllocs(2, "x", framework.Resources{CPU: 1, Memory: 15*gib + 1})), request(nil), framework.ReasonMemory},
		{"cpu", host(nil), request(func(r *framework.Request) { r.Resources.CPU = 8001 }), framework.ReasonCPU},
		{"disk", host(nil), request(func(r *framework.Request) { r.Resources.Disk = 1 }), framework.ReasonDisk},
		{"per host cap", host(withAllocs(2, "hotel/search", small)), request(func(r *framework.Request) { r.MaxPerHost = 2 }), framework.ReasonPerHost},
		{"per host cap other service", host(withAllocs(2, "other", small)), request(func(r *framework.Request) { r.MaxPerHost = 2 }), ""},
		{"constraints", host(nil), request(func(r *framework.Request) { r.Constraints, _ = constraint.Parse("has gpu") }), framework.ReasonConstraints},
		{"constraints match", host(nil), request(func(r *framework.Request) { r.Constraints, _ = constraint.Parse("dc=dc1,ssd=true") }), ""},
	}
	for _, tt := range tests {
		s := framework.NewCycleState(tt.req, 1, nil)
		st := fw.RunFilters(s, tt.node)
		if got := st.Reason; got != tt.want || st.IsSuccess() != (tt.want == "") {
			t.Errorf("%s: got %q (code %d), want %q", tt.name, got, st.Code, tt.want)
		}
	}
}

func TestFilterSeesTheDecisionsOwnPlacements(t *testing.T) {
	fw, _ := framework.New(NewInTreeRegistry(), DefaultProfile())
	n := host(nil) // pool of 3, cap 4
	s := framework.NewCycleState(request(nil), 1, nil)
	for i := range 3 {
		if st := fw.RunFilters(s, n); !st.IsSuccess() {
			t.Fatalf("placement %d: got %q, want success", i+1, st.Reason)
		}
		ip, ok := s.FreeIP(n)
		if !ok {
			t.Fatalf("placement %d: no free IP", i+1)
		}
		s.Assume(n, ip)
	}
	if st := fw.RunFilters(s, n); st.Reason != framework.ReasonIP {
		t.Fatalf("fourth placement: got %q, want %q", st.Reason, framework.ReasonIP)
	}
	// A new decision (another cycle) does not see the first one's assumptions.
	if st := fw.RunFilters(framework.NewCycleState(request(nil), 2, nil), n); !st.IsSuccess() {
		t.Fatalf("new cycle: got %q, want success", st.Reason)
	}
}

func TestScores(t *testing.T) {
	half := host(withAllocs(1, "x", framework.Resources{CPU: 3000, Memory: 14 * gib}))
	empty := host(nil)
	dc2 := host(func(n *framework.NodeInfo) { n.DC = "dc2" })
	tests := []struct {
		name   string
		plugin framework.ScorePlugin
		req    *framework.Request
		node   *framework.NodeInfo
		want   int64
	}{
		// (3000+1000)/8000 = 50, (14+2)/32 = 50.
		{"binpack half full", binPack{}, request(nil), half, 50},
		// 1000/8000 = 12, 2/32 = 6 → 9.
		{"binpack empty", binPack{}, request(nil), empty, 9},
		{"least allocated half full", leastAllocated{}, request(nil), half, 50},
		{"least allocated empty", leastAllocated{}, request(nil), empty, 91},
		{"preferred first", preferredDC{}, request(func(r *framework.Request) { r.PreferredDCs = []string{"dc1", "dc2"} }), empty, 100},
		{"preferred second", preferredDC{}, request(func(r *framework.Request) { r.PreferredDCs = []string{"dc1", "dc2"} }), dc2, 50},
		{"not preferred", preferredDC{}, request(func(r *framework.Request) { r.PreferredDCs = []string{"dc3"} }), dc2, 0},
		{"no spread", spread{}, request(nil), empty, 0},
	}
	for _, tt := range tests {
		s := framework.NewCycleState(tt.req, 1, nil)
		if got := tt.plugin.Score(s, tt.node); got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestSpreadPrefersTheEmptiestDomain(t *testing.T) {
	fw, _ := framework.New(NewInTreeRegistry(), DefaultProfile())
	req := request(func(r *framework.Request) { r.Spread = "dc" })
	full := host(nil)                                                           // dc1: 5 of the service
	emptyish := host(func(n *framework.NodeInfo) { n.DC = "dc2"; n.ID = "h2" }) // dc2: 1
	// The fuller host would win on packing; the spread must win.
	withAllocs(2, "other", framework.Resources{CPU: 3000, Memory: 10 * gib})(full)
	s := framework.NewCycleState(req, 1, map[string]int{"dc1": 5, "dc2": 1})
	var sc framework.Scratch
	cands := []*framework.NodeInfo{full, emptyish}
	if got := fw.Best(s, cands, PolicyBinPack, &sc); cands[got] != emptyish {
		t.Fatalf("Best with spread: got %s, want h2 (dc2 holds fewer)", cands[got].ID)
	}
	req.Spread = ""
	if got := fw.Best(framework.NewCycleState(req, 2, nil), cands, PolicyBinPack, &sc); cands[got] != full {
		t.Fatalf("Best without spread: got %s, want h1 (fuller)", cands[got].ID)
	}
	if got := fw.Best(framework.NewCycleState(request(func(r *framework.Request) { r.Scoring = PolicyLeastAllocated }), 3, nil), cands, PolicyLeastAllocated, &sc); cands[got] != emptyish {
		t.Fatalf("Best least allocated: got %s, want h2 (emptier)", cands[got].ID)
	}
}

func TestRegistryErrors(t *testing.T) {
	reg := NewInTreeRegistry()
	bad := []framework.Profile{
		{Filters: []string{"NoSuchFilter"}},
		{Filters: []string{NameBinPack}},
		{Scores: map[string][]framework.ProfileScore{PolicyBinPack: {{Name: NameResources, Weight: 1}}}},
		{Scores: map[string][]framework.ProfileScore{PolicyBinPack: {{Name: NameBinPack, Weight: 0}}}},
	}
	for i, p := range bad {
		if _, err := framework.New(reg, p); err == nil {
			t.Errorf("profile %d: got no error", i)
		}
	}
	fw, err := framework.New(reg, framework.Profile{Filters: []string{NameConstraints, NameHostState}, Scores: DefaultProfile().Scores})
	if err != nil {
		t.Fatal(err)
	}
	if len(fw.Filters) != 2 || fw.Filters[0].Name() != NameHostState {
		t.Fatalf("filters: got %d starting with %s, want 2 in registry order starting with %s", len(fw.Filters), fw.Filters[0].Name(), NameHostState)
	}
}
