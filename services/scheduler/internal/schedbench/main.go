// Command schedbench measures the scheduler's in-memory decision alone: it builds an
// inventory of hosts in datacenters, then places allocations arriving as requests of 1 to
// 50 replicas, each decision applied to the index at once (no coord), and prints
// placements per second and the latency percentiles of one request. scripts/bench/
// scheduler.sh runs it beside the run with coord in the loop (test/inventory/schedbench).
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"time"

	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
	"github.com/berthdev/berth/services/scheduler/internal/index"
	"github.com/berthdev/berth/services/scheduler/internal/plugins"
)

func main() {
	hosts := flag.Int("hosts", 20000, "hosts in the inventory")
	dcs := flag.Int("dcs", 10, "datacenters")
	placements := flag.Int("placements", 1000000, "allocations to place")
	maxCount := flag.Int("max-count", 50, "largest request (requests are 1 to this many replicas)")
	seed := flag.Uint64("seed", 1, "random seed")
	spreadShare := flag.Float64("spread", 0.2, "share of requests that spread over dc")
	flag.Parse()
	if err := run(*hosts, *dcs, *placements, *maxCount, *seed, *spreadShare); err != nil {
		fmt.Fprintln(os.Stderr, "schedbench:", err)
		os.Exit(1)
	}
}

func run(hosts, dcs, placements, maxCount int, seed uint64, spreadShare float64) error {
	fw, err := framework.New(plugins.NewInTreeRegistry(), plugins.DefaultProfile())
	if err != nil {
		return err
	}
	x := index.New(fw, index.Options{Seed: seed})
	for i := range hosts {
		x.ApplyHost(&inventoryv1.Host{
			Id: fmt.Sprintf("h%05d", i), Dc: fmt.Sprintf("dc%d", i%dcs), Rack: fmt.Sprintf("r%d", (i/dcs)%20),
			CpuMillis: 64000, MemoryBytes: 256 << 30, MaxContainers: 64,
			IpPools: []string{fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)},
			State:   inventoryv1.HostState_HOST_STATE_READY, Labels: map[string]string{"ssd": fmt.Sprint(i%2 == 0)},
		}, 1)
		x.ApplyAlive(fmt.Sprintf("h%05d", i), true)
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	var lat []time.Duration
	placed, requests, short := 0, 0, 0
	var rev int64 = 10
	runtime.GC()
	start := time.Now()
	for placed < placements {
		count := min(1+rng.IntN(maxCount), placements-placed)
		req := &framework.Request{
			Service: fmt.Sprintf("svc%d", rng.IntN(500)), Count: count,
			Resources: framework.Resources{CPU: int64(250 * (1 + rng.IntN(4))), Memory: int64(1+rng.IntN(6)) << 29},
			Scoring:   plugins.PolicyBinPack,
		}
		if rng.Float64() < spreadShare {
			req.Spread = "dc"
		}
		t0 := time.Now()
		d := x.Decide(req, false)
		infos := make([]framework.AllocInfo, len(d.Placements))
		for i, p := range d.Placements {
			infos[i] = framework.AllocInfo{ID: fmt.Sprintf("a%d", placed+i), Service: req.Service, Resources: req.Resources, IP: p.IP}
		}
		rev++
		x.Commit(d, infos, rev)
		lat = append(lat, time.Since(t0))
		requests++
		placed += len(d.Placements)
		if len(d.Placements) < count {
			short++
			if len(d.Placements) == 0 {
				fmt.Printf("inventory full after %d placements: %s\n", placed, d.Explanation())
				break
			}
		}
	}
	el := time.Since(start)
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
	st := x.Stats()
	fmt.Printf("decision only: %d hosts in %d dcs, %d placements in %d requests (1-%d replicas) in %s\n",
		hosts, dcs, placed, requests, maxCount, el.Round(time.Millisecond))
	fmt.Printf("  %.0f placements/s, %.0f requests/s; per request p50 %s p99 %s max %s; %d requests placed short; %d hosts still available\n",
		float64(placed)/el.Seconds(), float64(requests)/el.Seconds(), pct(0.5), pct(0.99), lat[len(lat)-1], short, st.Available)
	return nil
}
