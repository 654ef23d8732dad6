package inventory_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/natsbus"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/scheduler"
)

const gib = 1 << 30

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

// TestReplicasNeverDoubleBook runs two and three scheduler replicas, each with its own
// coord client, against one coord, with random placements and releases sent to random
// replicas at once; then it reads every allocation back from coord and checks that no
// address was given twice, no host is over its cap, its pool or its resources, and every
// guard counts its host's allocations. BERTH_TEST_SEED=<seed> repeats a run.
func TestReplicasNeverDoubleBook(t *testing.T) {
	for _, replicas := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			seed := testSeed(t)
			t.Logf("seed %d (BERTH_TEST_SEED to repeat)", seed)
			rng := rand.New(rand.NewPCG(seed, 7))
			e := newEnv(t)
			hosts := map[string]*inventoryv1.Host{}
			for i := range 24 {
				poolSize := 3 + rng.IntN(10)
				h := &inventoryv1.Host{
					Id: hostName(i), Dc: fmt.Sprintf("dc%d", i%3), Rack: fmt.Sprintf("r%d", i%4),
					CpuMillis: uint64(4000 + 1000*rng.IntN(12)), MemoryBytes: uint64(8+rng.IntN(24)) * gib,
					MaxContainers: uint32(4 + rng.IntN(7)), IpPools: []string{fmt.Sprintf("10.%d.0.1-10.%d.0.%d", i, i, poolSize)},
				}
				hosts[h.Id] = h
				e.putHost(h, true)
			}
			var scheds []*scheduler.Scheduler
			for r := range replicas {
				scheds = append(scheds, e.startScheduler(fmt.Sprintf("s%d", r), nil))
			}
			var mu sync.Mutex
			placed := map[string]*inventoryv1.Allocation{}
			released := map[string]bool{}
			outcomes := map[string]int{}
			var wg sync.WaitGroup
			for w := range 8 {
				wrng := rand.New(rand.NewPCG(seed, uint64(w)))
				wg.Go(func() {
					for range 30 {
						s := scheds[wrng.IntN(len(scheds))]
						mu.Lock()
						var victim string
						if wrng.IntN(5) == 0 {
							for id := range placed {
								if !released[id] {
									victim = id
									break
								}
							}
						}
						mu.Unlock()
						if victim != "" {
							rep, err := s.Release(t.Context(), &inventoryv1.ReleaseRequest{AllocationIds: []string{victim}})
							mu.Lock()
							if err == nil {
								for _, id := range rep.GetReleased() {
									released[id] = true
								}
								outcomes["released"]++
							} else {
								outcomes["release error"]++
							}
							mu.Unlock()
							continue
						}
						req := &inventoryv1.PlacementRequest{
							Service: fmt.Sprintf("svc/%d", wrng.IntN(4)), Count: uint32(1 + wrng.IntN(6)),
							Resources:    &inventoryv1.Resources{CpuMillis: uint64(250 * (1 + wrng.IntN(8))), MemoryBytes: uint64(1+wrng.IntN(8)) * gib / 2},
							Spread:       []string{"", "dc", "rack"}[wrng.IntN(3)],
							AllowPartial: wrng.IntN(2) == 0,
						}
						if wrng.IntN(3) == 0 {
							req.MaxPerHost = uint32(1 + wrng.IntN(2))
						}
						rep, err := s.Place(t.Context(), req)
						mu.Lock()
						var se *natsbus.StatusError
						switch {
						case err == nil:
							outcomes["placed"]++
							for _, a := range rep.GetAllocations() {
								if placed[a.GetId()] != nil {
									t.Errorf("seed %d: allocation id %s returned twice", seed, a.GetId())
								}
								placed[a.GetId()] = a
							}
						case errors.As(err, &se) && se.Code == commonv1.Code_CODE_RESOURCE_EXHAUSTED:
							outcomes["unplaceable"]++
						default:
							outcomes["error: "+err.Error()]++
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			t.Logf("outcomes: %v; %d allocations placed, %d released", outcomes, len(placed), len(released))
			if outcomes["placed"] < 20 {
				t.Fatalf("seed %d: only %d requests placed: %v", seed, outcomes["placed"], outcomes)
			}
			byHost, guards := e.allocations()
			ips := map[netip.Addr]string{}
			stored := 0
			for host, allocs := range byHost {
				h := hosts[host]
				var cpu, mem uint64
				for _, a := range allocs {
					stored++
					cpu += a.GetResources().GetCpuMillis()
					mem += a.GetResources().GetMemoryBytes()
					ip := netip.MustParseAddr(a.GetIp())
					if other, dup := ips[ip]; dup {
						t.Errorf("seed %d: %s given to %s and %s", seed, ip, other, a.GetId())
					}
					ips[ip] = a.GetId()
					if !inPool(h.GetIpPools()[0], ip) {
						t.Errorf("seed %d: %s of %s is outside the pool %s", seed, ip, host, h.GetIpPools()[0])
					}
					if placed[a.GetId()] == nil {
						t.Errorf("seed %d: allocation %s in coord was never returned by a replica", seed, a.GetId())
					}
					if released[a.GetId()] {
						t.Errorf("seed %d: allocation %s was released but is still in coord", seed, a.GetId())
					}
				}
				if n := len(allocs); n > int(h.GetMaxContainers()) {
					t.Errorf("seed %d: host %s holds %d allocations, cap %d", seed, host, n, h.GetMaxContainers())
				}
				if cpu > h.GetCpuMillis() || mem > h.GetMemoryBytes() {
					t.Errorf("seed %d: host %s uses %d mCPU / %d B, capacity %d / %d", seed, host, cpu, mem, h.GetCpuMillis(), h.GetMemoryBytes())
				}
				if guards[host] != uint32(len(allocs)) {
					t.Errorf("seed %d: guard of %s counts %d, host holds %d", seed, host, guards[host], len(allocs))
				}
			}
			if want := len(placed) - len(released); stored != want {
				t.Errorf("seed %d: coord holds %d allocations, replicas placed %d and released %d", seed, stored, len(placed), len(released))
			}
		})
	}
}

func inPool(r string, ip netip.Addr) bool {
	first, last, _ := strings.Cut(r, "-")
	return netip.MustParseAddr(first).Compare(ip) <= 0 && ip.Compare(netip.MustParseAddr(last)) <= 0
}

func TestPlacementOverNATS(t *testing.T) {
	e := newEnv(t)
	for i := range 4 {
		e.putHost(&inventoryv1.Host{Id: hostName(i), Dc: fmt.Sprintf("dc%d", i%2), CpuMillis: 8000, MemoryBytes: 16 * gib,
			MaxContainers: 64, IpPools: []string{fmt.Sprintf("172.30.%d.0/24", i)}, Labels: map[string]string{"ssd": strconv.FormatBool(i < 2)}}, true)
	}
	e.putHost(&inventoryv1.Host{Id: "dead", Dc: "dc0", CpuMillis: 8000, MemoryBytes: 16 * gib, MaxContainers: 64,
		IpPools: []string{"172.31.0.0/24"}, State: inventoryv1.HostState_HOST_STATE_DOWN}, false)
	e.startScheduler("s0", nil)
	wait := e.events("berth.v1.events.alloc.>")
	ctx := t.Context()
	res := &inventoryv1.Resources{CpuMillis: 500, MemoryBytes: gib}

	rep := &inventoryv1.PlacementReply{}
	err := e.bus.Request(ctx, subjects.RPCPlace, &inventoryv1.PlacementRequest{RequestId: "r1", Service: "hotel/search",
		DeploymentId: "d1", Count: 3, Resources: res, Constraints: "ssd=true", Spread: "dc"}, rep)
	if err != nil {
		t.Fatalf("place: %v", err)
	}
	if rep.GetPlaced() != 3 || len(rep.GetAllocations()) != 3 {
		t.Fatalf("place: got %v", rep)
	}
	for _, a := range rep.GetAllocations() {
		if a.GetHost() != hostName(0) && a.GetHost() != hostName(1) {
			t.Errorf("allocation on %s, which is not ssd=true", a.GetHost())
		}
	}
	// The same request id is answered from the record, not placed again.
	again := &inventoryv1.PlacementReply{}
	if err := e.bus.Request(ctx, subjects.RPCPlace, &inventoryv1.PlacementRequest{RequestId: "r1", Service: "hotel/search",
		DeploymentId: "d1", Count: 3, Resources: res, Constraints: "ssd=true", Spread: "dc"}, again); err != nil {
		t.Fatal(err)
	}
	if again.GetAllocations()[0].GetId() != rep.GetAllocations()[0].GetId() {
		t.Fatalf("retried request: got allocation %s, want %s", again.GetAllocations()[0].GetId(), rep.GetAllocations()[0].GetId())
	}
	if byHost, _ := e.allocations(); len(byHost[hostName(0)])+len(byHost[hostName(1)]) != 3 {
		t.Fatalf("after a retried request coord holds %v, want 3 allocations", byHost)
	}

	bad := []struct {
		req   *inventoryv1.PlacementRequest
		field string
	}{
		{&inventoryv1.PlacementRequest{Service: "s", Count: 0, Resources: res}, "count"},
		{&inventoryv1.PlacementRequest{Service: "s", Count: 1000, Resources: res}, "count"},
		{&inventoryv1.PlacementRequest{Service: "s", Count: 1, Resources: &inventoryv1.Resources{MemoryBytes: 1}}, "resources.cpu_millis"},
		{&inventoryv1.PlacementRequest{Service: "s", Count: 1, Resources: &inventoryv1.Resources{CpuMillis: 1}}, "resources.memory_bytes"},
		{&inventoryv1.PlacementRequest{Service: "s", Count: 1}, "resources"},
		{&inventoryv1.PlacementRequest{Service: "s", Count: 1, Resources: res, Spread: "zone"}, "spread"},
		{&inventoryv1.PlacementRequest{Service: "s", Count: 1, Resources: res, Constraints: "dc~dc1"}, "constraints"},
		{&inventoryv1.PlacementRequest{Service: "", Count: 1, Resources: res}, "service"},
		{&inventoryv1.PlacementRequest{Service: "s", Count: 1, Resources: res, RequestId: "a/b"}, "request_id"},
		{&inventoryv1.PlacementRequest{Service: "s", Count: 1, Resources: res, Scoring: "random"}, "scoring"},
	}
	for _, b := range bad {
		err := e.bus.Request(ctx, subjects.RPCPlace, b.req, &inventoryv1.PlacementReply{})
		var se *natsbus.StatusError
		if !errors.As(err, &se) || se.Code != commonv1.Code_CODE_INVALID_ARGUMENT || se.Details["field"] != b.field {
			t.Errorf("place %v: got %v, want INVALID_ARGUMENT naming %s", b.req, err, b.field)
		}
	}

	err = e.bus.Request(ctx, subjects.RPCPlace, &inventoryv1.PlacementRequest{Service: "big", Count: 2,
		Resources: &inventoryv1.Resources{CpuMillis: 100, MemoryBytes: 20 * gib}}, &inventoryv1.PlacementReply{})
	var se *natsbus.StatusError
	if !errors.As(err, &se) || se.Code != commonv1.Code_CODE_RESOURCE_EXHAUSTED ||
		!strings.Contains(se.Message, "placed 0 of 2: of 5 hosts, 4 lack memory, 1 are down") || se.Details["rejected_memory"] != "4" {
		t.Fatalf("unplaceable: got %v (%v)", err, se)
	}
	partial := &inventoryv1.PlacementReply{}
	if err := e.bus.Request(ctx, subjects.RPCPlace, &inventoryv1.PlacementRequest{Service: "part", Count: 6, MaxPerHost: 1,
		Resources: res, AllowPartial: true}, partial); err != nil {
		t.Fatal(err)
	}
	if partial.GetPlaced() != 4 || !strings.Contains(partial.GetExplanation(), "placed 4 of 6") {
		t.Fatalf("partial: got placed %d, %q", partial.GetPlaced(), partial.GetExplanation())
	}

	rel := &inventoryv1.ReleaseReply{}
	if err := e.bus.Request(ctx, scheduler.SubjectRPCRelease, &inventoryv1.ReleaseRequest{DeploymentId: "d1", AllocationIds: []string{"gone"}}, rel); err != nil {
		t.Fatal(err)
	}
	if len(rel.GetReleased()) != 3 || len(rel.GetNotFound()) != 1 {
		t.Fatalf("release: got %v", rel)
	}
	wait("berth.v1.events.alloc.released.hotel.search", 5*time.Second)
	if byHost, _ := e.allocations(); len(byHost[hostName(0)])+len(byHost[hostName(1)]) != 2 { // the partial's
		t.Fatalf("after release coord holds %v", byHost)
	}
	if err := e.bus.Request(ctx, scheduler.SubjectRPCRelease, &inventoryv1.ReleaseRequest{}, &inventoryv1.ReleaseReply{}); !errors.Is(err, natsbus.ErrInvalidArgument) {
		t.Fatalf("empty release: got %v, want INVALID_ARGUMENT", err)
	}

	// The work queue: the outcome is an event.
	if err := e.bus.PublishWork(ctx, subjects.WorkPlace, &inventoryv1.PlacementRequest{Service: "hotel/booking", Count: 2, Resources: res},
		natsbus.WithID("work-1")); err != nil {
		t.Fatal(err)
	}
	m := wait("berth.v1.events.alloc.placed.hotel.booking", 10*time.Second)
	ce, err := natsbus.DecodeEvent(m)
	if err != nil {
		t.Fatal(err)
	}
	ev := &inventoryv1.AllocationEvent{}
	if err := natsbus.UnmarshalEventData(ce, ev); err != nil {
		t.Fatal(err)
	}
	if len(ev.GetAllocations()) != 2 || ev.GetRequestId() != "work-1" || ce.Type != "dev.berth.alloc.placed" {
		t.Fatalf("work event: got %s %v", ce.Type, ev)
	}
	if err := e.bus.PublishWork(ctx, subjects.WorkPlace, &inventoryv1.PlacementRequest{Service: "hotel/huge", Count: 1,
		Resources: &inventoryv1.Resources{CpuMillis: 1, MemoryBytes: 99 * gib}}, natsbus.WithID("work-2")); err != nil {
		t.Fatal(err)
	}
	wait("berth.v1.events.alloc.failed.hotel.huge", 10*time.Second)
}
