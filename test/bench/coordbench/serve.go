package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/berthdev/berth/services/coord"
)

// serveConfig configures the serve subcommand: a berth-coord cluster in this process,
// for profiling the server under the benchmarks with runtime/pprof.
type serveConfig struct {
	clientAddrs, peerAddrs []string
	dataDir                string
	heartbeat, election    time.Duration
	cpuProfile             string
	profileDelay           time.Duration
	profileFor             time.Duration
	pprofAddr              string
}

// runServe runs the members until ctx ends; with cpuProfile set it writes a CPU profile of
// the whole process from profileDelay after the start, for profileFor (or until the end);
// with pprofAddr set it serves net/http/pprof there.
func runServe(ctx context.Context, cfg serveConfig) error {
	if len(cfg.clientAddrs) == 0 || len(cfg.clientAddrs) != len(cfg.peerAddrs) {
		return fmt.Errorf("--client-addrs and --peer-addrs must name as many addresses (got %d and %d)", len(cfg.clientAddrs), len(cfg.peerAddrs))
	}
	if cfg.dataDir == "" {
		return errors.New("--data-dir is required")
	}
	var entries []string
	for i, p := range cfg.peerAddrs {
		entries = append(entries, fmt.Sprintf("n%d=%s", i+1, p))
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var srvs []*coord.Server
	for i := range cfg.clientAddrs {
		s, err := coord.New(coord.Config{
			Name: fmt.Sprintf("n%d", i+1), DataDir: filepath.Join(cfg.dataDir, fmt.Sprintf("n%d", i+1)),
			ListenClient: cfg.clientAddrs[i], ListenPeer: cfg.peerAddrs[i], InitialCluster: strings.Join(entries, ","),
			HeartbeatInterval: cfg.heartbeat, ElectionTimeout: cfg.election,
		}, logger)
		if err != nil {
			for _, s := range srvs {
				s.Close()
			}
			return err
		}
		srvs = append(srvs, s)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(srvs))
	for _, s := range srvs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Run(ctx); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	if cfg.pprofAddr != "" {
		l, err := net.Listen("tcp", cfg.pprofAddr)
		if err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("pprof listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		wg.Add(2)
		go func() { defer wg.Done(); srv.Serve(l) }()
		go func() { defer wg.Done(); <-ctx.Done(); srv.Close() }()
	}
	if cfg.cpuProfile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := profile(ctx, cfg); err != nil {
				errc <- err
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	close(errc)
	return <-errc
}

func profile(ctx context.Context, cfg serveConfig) error {
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(cfg.profileDelay):
	}
	f, err := os.Create(cfg.cpuProfile)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer pprof.StopCPUProfile()
	end := make(<-chan time.Time)
	if cfg.profileFor > 0 {
		end = time.After(cfg.profileFor)
	}
	select {
	case <-ctx.Done():
	case <-end:
	}
	return nil
}
