// Command benchserver runs berth-name-service in process over a real single-member coord
// and an embedded NATS server, registers a zone of synthetic services, prints the DNS
// address, and serves until SIGINT or SIGTERM. scripts/bench/dns.sh runs it (pinned to one
// CPU) to compare the name service's DNS with unbound and dnsmasq serving the same records.
//
// It also writes the same records for the others: -hosts-out (dnsmasq addn-hosts),
// -unbound-out (unbound local-data) and -queries-out (a dnsperf input file).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/berthdev/berth/pkg/run"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	nameservice "github.com/berthdev/berth/services/name-service"
	"github.com/berthdev/berth/test/names"
)

func main() {
	services := flag.Int("services", 10000, "services in the zone")
	perService := flag.Int("instances", 2, "instances per service")
	dnsAddr := flag.String("dns", "127.0.0.1:15353", "DNS listen address")
	dir := flag.String("dir", "", "state directory (required)")
	hostsOut := flag.String("hosts-out", "", "write a dnsmasq addn-hosts file of the same records")
	unboundOut := flag.String("unbound-out", "", "write unbound local-data lines of the same records")
	queriesOut := flag.String("queries-out", "", "write a dnsperf query file (one A query per service)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the serving phase (after loading) to this file")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "benchserver: -dir is required")
		os.Exit(2)
	}
	if err := realMain(*services, *perService, *dnsAddr, *dir, *hostsOut, *unboundOut, *queriesOut, *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "benchserver:", err)
		os.Exit(1)
	}
}

// name and ip give service i's DNS name and instance j's address.
func name(i int) string { return fmt.Sprintf("s%d.bench.ns.berth.internal", i) }
func ip(i, j int) string {
	n := i*8 + j
	return fmt.Sprintf("10.%d.%d.%d", 100+n>>16&0xff, n>>8&0xff, n&0xff)
}

func writeLines(path string, line func(w *bufio.Writer, i, j int), services, per int, perService bool) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for i := range services {
		if perService {
			line(w, i, 0)
			continue
		}
		for j := range per {
			line(w, i, j)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func realMain(services, per int, dnsAddr, dir, hostsOut, unboundOut, queriesOut, cpuProfile string) error {
	if err := writeLines(hostsOut, func(w *bufio.Writer, i, j int) { fmt.Fprintf(w, "%s %s\n", ip(i, j), name(i)) }, services, per, false); err != nil {
		return err
	}
	if err := writeLines(unboundOut, func(w *bufio.Writer, i, j int) {
		fmt.Fprintf(w, "    local-data: \"%s. 5 IN A %s\"\n", name(i), ip(i, j))
	}, services, per, false); err != nil {
		return err
	}
	if err := writeLines(queriesOut, func(w *bufio.Writer, i, _ int) { fmt.Fprintf(w, "%s A\n", name(i)) }, services, per, true); err != nil {
		return err
	}
	ctx, stop := run.SignalContext(context.Background())
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	env, err := names.Start(ctx, dir, log, func(c *nameservice.Config) { c.DNSAddr = dnsAddr })
	if err != nil {
		return err
	}
	defer env.Close()
	start := time.Now()
	work := make(chan [2]int)
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	for range 32 {
		wg.Go(func() {
			for ij := range work {
				i, j := ij[0], ij[1]
				in := &namesv1.Instance{Host: fmt.Sprintf("h%d", i), Ip: ip(i, j), Port: 8080, Version: "1.0", Health: namesv1.Health_HEALTH_HEALTHY}
				if _, err := env.Register(ctx, fmt.Sprintf("bench/s%d", i), fmt.Sprintf("i%d", j), in, 0); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		})
	}
	for i := range services {
		for j := range per {
			work <- [2]int{i, j}
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("register: %w", err)
	default:
	}
	// Wait until the name service has every instance.
	for {
		if n, _ := countInstances(env); n == services*per {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("ready dns=%s http=%s services=%d instances=%d load=%s\n", env.Addrs.DNSUDP, env.Addrs.HTTP, services, services*per, time.Since(start).Round(time.Millisecond))
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	<-ctx.Done()
	return nil
}

// countInstances reads berth_names_instances from the service's registry.
func countInstances(env *names.Env) (int, error) {
	mfs, err := env.Registry.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == "berth_names_instances" {
			return int(mf.GetMetric()[0].GetGauge().GetValue()), nil
		}
	}
	return 0, nil
}
