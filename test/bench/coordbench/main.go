// Command coordbench drives berth-coord and a baseline (etcd 3.4 or ZooKeeper 3.8) with
// the same workloads and prints a side-by-side table with the ratios and the goals of
// DESIGN.md §12. The scripts scripts/bench/coord-vs-etcd.sh and
// scripts/bench/coord-vs-zookeeper.sh start the clusters and run it.
//
//	coordbench kv --etcd A,B,C --etcd-pids P,Q,R --coord A,B,C --coord-pids P,Q,R
//	coordbench ephemeral --zk A,B,C --coord A,B,C --n 10000 --ttl 2s
//	coordbench serve --client-addrs A,B,C --peer-addrs A,B,C --data-dir D --cpu-profile F
//
// ephemeral-child is the client process that the ephemeral benchmark kills.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

const usage = "usage: coordbench kv|ephemeral|ephemeral-child|serve [flags] (-h for the flags of each)"

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("coordbench "+args[0], flag.ContinueOnError)
	var exec func() error
	switch args[0] {
	case "kv":
		var cfg kvConfig
		etcd := fs.String("etcd", "", "etcd client endpoints, comma separated")
		coord := fs.String("coord", "", "berth-coord client endpoints, comma separated")
		etcdPIDs := fs.String("etcd-pids", "", "etcd server pids, for RSS")
		coordPIDs := fs.String("coord-pids", "", "berth-coord server pids, for RSS")
		only := fs.String("only", "", "benchmarks to run: put,read,watch (default all)")
		fs.IntVar(&cfg.clients, "clients", 1000, "concurrent clients of the throughput runs")
		fs.IntVar(&cfg.conns, "conns", 100, "connections the clients share")
		fs.IntVar(&cfg.valueSize, "value-size", 256, "value size in bytes")
		fs.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "unmeasured warm-up of each run")
		fs.DurationVar(&cfg.duration, "duration", 8*time.Second, "measured time of each run")
		fs.IntVar(&cfg.watchers, "watchers", 10000, "watchers of the watch benchmark")
		fs.IntVar(&cfg.watchPuts, "watch-puts", 20, "puts of the watch benchmark")
		fs.IntVar(&cfg.keys, "keys", 10000, "key space of the put runs")
		fs.IntVar(&cfg.rounds, "rounds", 3, "alternating rounds of etcd and berth-coord; the median round is reported")
		fs.BoolVar(&cfg.requestIDs, "coord-request-ids", true, "send a request id with every berth-coord put, as pkg/coordclient does")
		exec = func() error {
			var err error
			cfg.etcd, cfg.coord = list(*etcd), list(*coord)
			if cfg.etcdPIDs, err = ints(*etcdPIDs); err != nil {
				return fmt.Errorf("--etcd-pids: %w", err)
			}
			if cfg.coordPIDs, err = ints(*coordPIDs); err != nil {
				return fmt.Errorf("--coord-pids: %w", err)
			}
			if *only != "" {
				cfg.only = map[string]bool{}
				for _, b := range list(*only) {
					if b != "put" && b != "read" && b != "watch" {
						return fmt.Errorf("--only: unknown benchmark %q (want put, read, watch)", b)
					}
					cfg.only[b] = true
				}
			}
			return runKV(ctx, os.Stdout, cfg)
		}
	case "ephemeral":
		var cfg ephConfig
		zk := fs.String("zk", "", "ZooKeeper client addresses, comma separated")
		coord := fs.String("coord", "", "berth-coord client endpoints, comma separated")
		inflight := fs.String("inflight", "1,100", "creates in flight, one run per value")
		fs.IntVar(&cfg.n, "n", 10000, "ephemeral nodes to create")
		fs.DurationVar(&cfg.ttl, "ttl", 2*time.Second, "ZooKeeper session timeout and berth session TTL")
		fs.IntVar(&cfg.valueSize, "value-size", 32, "value size in bytes")
		exec = func() error {
			var err error
			cfg.zk, cfg.coord = list(*zk), list(*coord)
			if cfg.inflight, err = ints(*inflight); err != nil {
				return fmt.Errorf("--inflight: %w", err)
			}
			return runEphemeral(ctx, os.Stdout, cfg)
		}
	case "ephemeral-child":
		var cfg childConfig
		addrs := fs.String("addrs", "", "server addresses, comma separated")
		fs.StringVar(&cfg.system, "system", "", "zk or coord")
		fs.IntVar(&cfg.n, "n", 10000, "ephemeral nodes to create")
		fs.DurationVar(&cfg.ttl, "ttl", 2*time.Second, "session timeout / TTL")
		fs.IntVar(&cfg.inflight, "inflight", 1, "creates in flight")
		fs.StringVar(&cfg.prefix, "prefix", "", "parent path of the nodes")
		fs.IntVar(&cfg.valueSize, "value-size", 32, "value size in bytes")
		exec = func() error {
			cfg.addrs = list(*addrs)
			if len(cfg.addrs) == 0 || cfg.prefix == "" || cfg.n < 1 || cfg.inflight < 1 {
				return errors.New("--addrs, --prefix, --n and --inflight are required")
			}
			return runChild(ctx, cfg)
		}
	case "serve":
		var cfg serveConfig
		clients := fs.String("client-addrs", "", "client addresses of the members, comma separated")
		peers := fs.String("peer-addrs", "", "peer addresses of the members, comma separated")
		fs.StringVar(&cfg.dataDir, "data-dir", "", "parent of the members' data dirs")
		fs.DurationVar(&cfg.heartbeat, "heartbeat", 100*time.Millisecond, "Raft heartbeat")
		fs.DurationVar(&cfg.election, "election", time.Second, "Raft election timeout")
		fs.StringVar(&cfg.cpuProfile, "cpu-profile", "", "write a CPU profile of the process here")
		fs.DurationVar(&cfg.profileDelay, "profile-delay", 0, "start the profile this long after the start")
		fs.DurationVar(&cfg.profileFor, "profile-for", 0, "stop the profile after this long (0: at exit)")
		fs.StringVar(&cfg.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this address")
		exec = func() error {
			cfg.clientAddrs, cfg.peerAddrs = list(*clients), list(*peers)
			return runServe(ctx, cfg)
		}
	default:
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := exec(); err != nil {
		fmt.Fprintf(os.Stderr, "coordbench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func list(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func ints(s string) ([]int, error) {
	var out []int
	for _, p := range list(s) {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", p)
		}
		out = append(out, n)
	}
	return out, nil
}
