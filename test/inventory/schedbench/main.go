// Command schedbench measures berth-scheduler end to end with coord in the loop: it runs
// a one-member berth-coord and a NATS server in process, writes an inventory of hosts
// (with their alive nodes), starts scheduler replicas, and sends placement requests of 1
// to 50 replicas over NATS (berth.v1.rpc.place) from concurrent clients until the wanted
// number of allocations is committed. It prints placements per second and the latency
// percentiles of one request, request/reply and coord transaction included.
// scripts/bench/scheduler.sh runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	coordsrv "github.com/berthdev/berth/services/coord"
	"github.com/berthdev/berth/services/scheduler"
)

func main() {
	hosts := flag.Int("hosts", 20000, "hosts in the inventory")
	dcs := flag.Int("dcs", 10, "datacenters")
	placements := flag.Int("placements", 100000, "allocations to place")
	maxCount := flag.Int("max-count", 50, "largest request")
	clients := flag.Int("clients", 16, "concurrent requesters")
	replicas := flag.Int("replicas", 1, "scheduler replicas")
	seed := flag.Uint64("seed", 1, "random seed")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "schedbench:", err)
			os.Exit(1)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "schedbench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*hosts, *dcs, *placements, *maxCount, *clients, *replicas, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "schedbench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(hosts, dcs, placements, maxCount, clients, replicas int, seed uint64) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "schedbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.DiscardHandler)

	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv, err := coordsrv.New(coordsrv.Config{Name: "b", DataDir: filepath.Join(dir, "coord"), ClientListener: cl, PeerListener: pl,
		InitialCluster: "b=" + pl.Addr().String(), HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		RequestTimeout: 10 * time.Second, HistoryWindow: 1_000_000}, quiet)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = srv.Run(ctx) })

	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(dir, "nats"), NoLog: true, NoSigs: true})
	if err != nil {
		return err
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("nats did not start")
	}
	newCoord := func() (*coordclient.Client, error) {
		return coordclient.New(ctx, coordclient.Config{Endpoints: []string{cl.Addr().String()}, RequestTimeout: 30 * time.Second})
	}
	coord, err := newCoord()
	if err != nil {
		return err
	}
	defer coord.Close()
	for {
		if _, err := coord.Put(ctx, "/probe", nil); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	bus, err := natsbus.Connect(ctx, natsbus.Config{URLs: []string{ns.ClientURL()}, Name: "bench", RequestTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer bus.Close(context.Background())
	if err := bus.EnsureStreams(ctx, natsbus.StreamConfig{}); err != nil {
		return err
	}

	start := time.Now()
	var ops []coordclient.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := coord.Txn().Then(ops...).Commit(ctx)
		ops = ops[:0]
		return err
	}
	for i := range hosts {
		id := fmt.Sprintf("h%05d", i)
		h, _ := protojson.Marshal(&inventoryv1.Host{
			Id: id, Dc: fmt.Sprintf("dc%d", i%dcs), Rack: fmt.Sprintf("r%d", (i/dcs)%20), CpuMillis: 64000, MemoryBytes: 256 << 30,
			MaxContainers: 64, IpPools: []string{fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)},
			State: inventoryv1.HostState_HOST_STATE_READY, InCmdb: true, Liveness: inventoryv1.Liveness_LIVENESS_UP,
		})
		a, _ := protojson.Marshal(&agentv1.AgentInfo{HostId: id})
		ops = append(ops, coordclient.OpPut("/berth/hosts/"+id, h), coordclient.OpPut("/berth/alive/"+id, a))
		if len(ops) >= 120 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	fmt.Printf("inventory of %d hosts written in %s\n", hosts, time.Since(start).Round(time.Millisecond))

	var scheds []*scheduler.Scheduler
	for r := range replicas {
		cfg := scheduler.DefaultConfig()
		cfg.Name, cfg.ListenMetrics, cfg.MaxCount, cfg.Concurrency = fmt.Sprintf("s%d", r), "", min(maxCount, scheduler.HardMaxCount), 64
		c, err := newCoord()
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := natsbus.Connect(ctx, natsbus.Config{URLs: []string{ns.ClientURL()}, Name: cfg.Name})
		if err != nil {
			return err
		}
		defer b.Close(context.Background())
		s, err := scheduler.New(cfg, scheduler.Deps{Bus: b, Coord: c, Logger: quiet})
		if err != nil {
			return err
		}
		wg.Go(func() { _ = s.Run(ctx) })
		scheds = append(scheds, s)
	}
	for _, s := range scheds {
		for !s.Ready() {
			time.Sleep(10 * time.Millisecond)
		}
	}
	fmt.Printf("%d scheduler replica(s) ready after %s\n", replicas, time.Since(start).Round(time.Millisecond))

	var placed atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var failed, requests atomic.Int64
	t0 := time.Now()
	var cw sync.WaitGroup
	for c := range clients {
		rng := rand.New(rand.NewPCG(seed, uint64(c)))
		cw.Go(func() {
			for placed.Load() < int64(placements) {
				req := &inventoryv1.PlacementRequest{
					Service: fmt.Sprintf("svc/%d", rng.IntN(500)), Count: uint32(1 + rng.IntN(maxCount)),
					Resources: &inventoryv1.Resources{CpuMillis: uint64(250 * (1 + rng.IntN(4))), MemoryBytes: uint64(1+rng.IntN(6)) << 29},
				}
				if rng.IntN(5) == 0 {
					req.Spread = "dc"
				}
				rep := &inventoryv1.PlacementReply{}
				s := time.Now()
				err := bus.Request(ctx, subjects.RPCPlace, req, rep)
				d := time.Since(s)
				requests.Add(1)
				if err != nil {
					var se *natsbus.StatusError
					if !errors.As(err, &se) || se.Code != commonv1.Code_CODE_RESOURCE_EXHAUSTED {
						fmt.Fprintln(os.Stderr, "request:", err)
					}
					failed.Add(1)
					continue
				}
				placed.Add(int64(rep.GetPlaced()))
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	cw.Wait()
	el := time.Since(t0)
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	fmt.Printf("coord in the loop: %d hosts in %d dcs, %d placements in %d requests (1-%d replicas, %d clients, %d scheduler replica(s)) in %s\n",
		hosts, dcs, placed.Load(), requests.Load(), maxCount, clients, replicas, el.Round(time.Millisecond))
	fmt.Printf("  %.0f placements/s, %.0f requests/s; per request end to end p50 %s p99 %s max %s; %d requests failed\n",
		float64(placed.Load())/el.Seconds(), float64(requests.Load())/el.Seconds(), pct(0.5).Round(time.Microsecond),
		pct(0.99).Round(time.Microsecond), pct(1).Round(time.Microsecond), failed.Load())
	return nil
}
