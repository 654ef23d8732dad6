package inventory_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/natsbus"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	cmdbsync "github.com/berthdev/berth/services/cmdb-sync"
)

// TestKilledHostsAllocationsArePlacedAgain kills a host's agent (its session ends, its
// alive node goes): after the grace period cmdb-sync marks the host down, the scheduler
// places its allocations on another host in one transaction and announces each on
// berth.v1.events.alloc.rescheduled.<service> for the controller to deploy.
func TestKilledHostsAllocationsArePlacedAgain(t *testing.T) {
	e := newEnv(t)
	waitHost := e.events("berth.v1.events.host.>")
	waitAlloc := e.events("berth.v1.events.alloc.>")
	path := filepath.Join(t.TempDir(), "hosts.yaml")
	writeInventory(t, path, "hosts:\n"+hostYAML("h0", "10.0.0.0/24", "")+hostYAML("h1", "10.1.0.0/24", "")+
		hostYAML("h2", "10.2.0.0/24", "")+hostYAML("h3", "10.3.0.0/24", ""))
	agents := map[string]*agent{}
	for _, h := range []string{"h0", "h1", "h2", "h3"} {
		agents[h] = e.startAgent(h, nil)
	}
	e.startSync("sync", func(c *cmdbsync.Config) {
		c.Source = cmdbsync.SourceConfig{Kind: "file", Path: path, Timeout: time.Second}
	})
	for _, h := range []string{"h0", "h1", "h2", "h3"} {
		hostEvent(t, waitHost, "up", h)
	}
	s := e.startScheduler("s0", nil)
	// Three allocations on four hosts, one per host (max_per_host 1); then one more, of
	// another service, pinned to the victim's host.
	rep, err := s.Place(t.Context(), &inventoryv1.PlacementRequest{Service: "hotel/search", DeploymentId: "d1", Count: 3, MaxPerHost: 1,
		Resources: &inventoryv1.Resources{CpuMillis: 1000, MemoryBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}
	victim := rep.GetAllocations()[0]
	dead, free := victim.GetHost(), ""
	for _, h := range []string{"h0", "h1", "h2", "h3"} {
		used := false
		for _, a := range rep.GetAllocations() {
			used = used || a.GetHost() == h
		}
		if !used {
			free = h
		}
	}
	pinned, err := s.Place(t.Context(), &inventoryv1.PlacementRequest{Service: "hotel/pinned", Count: 1, Constraints: "id=" + dead,
		Resources: &inventoryv1.Resources{CpuMillis: 1000, MemoryBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}

	agents[dead].kill(t)
	killed := time.Now()
	hostEvent(t, waitHost, "down", dead)
	m := waitAlloc("berth.v1.events.alloc.rescheduled.hotel.search", 10*time.Second)
	t.Logf("rescheduled %s after the agent died", time.Since(killed).Round(time.Millisecond))
	ce, err := natsbus.DecodeEvent(m)
	if err != nil {
		t.Fatal(err)
	}
	ev := &inventoryv1.AllocationEvent{}
	if err := natsbus.UnmarshalEventData(ce, ev); err != nil {
		t.Fatal(err)
	}
	if ev.GetReplaced().GetId() != victim.GetId() || len(ev.GetAllocations()) != 1 || ev.GetHost() != dead {
		t.Fatalf("rescheduled event: got %v", ev)
	}
	repl := ev.GetAllocations()[0]
	if repl.GetHost() != free || repl.GetReplaces() != victim.GetId() || repl.GetDeploymentId() != "d1" || repl.GetMaxPerHost() != 1 {
		t.Fatalf("replacement: got %v, want on %s (the only host without one), replacing %s", repl, free, victim.GetId())
	}
	// The pinned allocation cannot go anywhere else: it is reported lost, and stays.
	lost := waitAlloc("berth.v1.events.alloc.lost.hotel.pinned", 10*time.Second)
	if lost == nil {
		t.Fatal("no lost event")
	}
	byHost, guards := e.allocations()
	if len(byHost[dead]) != 1 || byHost[dead][0].GetId() != pinned.GetAllocations()[0].GetId() || guards[dead] != 1 {
		t.Fatalf("%s holds %v (guard %d), want only the pinned allocation", dead, byHost[dead], guards[dead])
	}
	if len(byHost[free]) != 1 || byHost[free][0].GetId() != repl.GetId() || guards[free] != 1 {
		t.Fatalf("%s holds %v (guard %d), want the replacement", free, byHost[free], guards[free])
	}
	// The agent comes back: the host is up and ready again.
	e.startAgent(dead, nil)
	hostEvent(t, waitHost, "up", dead)
	eventually(t, 5*time.Second, dead+" ready", func() bool {
		return e.getHost(dead).GetState() == inventoryv1.HostState_HOST_STATE_READY
	})
}
