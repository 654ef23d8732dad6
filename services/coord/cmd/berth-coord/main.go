// Command berth-coord runs one member of Berth's coordination store. It is wiring only:
// flags to coord.Config, a signal context, coord.Run, an exit code.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/berthdev/berth/services/coord"
)

func main() {
	os.Exit(run())
}

func run() int {
	cfg := coord.DefaultConfig()
	fs := flag.NewFlagSet("berth-coord", flag.ContinueOnError)
	fs.StringVar(&cfg.Name, "name", cfg.Name, "this member's name (its id is derived from it)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the Raft log and snapshots")
	fs.StringVar(&cfg.ListenClient, "listen-client", cfg.ListenClient, "host:port of the client gRPC API")
	fs.StringVar(&cfg.AdvertiseClient, "advertise-client", "", "client address announced to other members (default --listen-client)")
	fs.StringVar(&cfg.ListenPeer, "listen-peer", cfg.ListenPeer, "host:port of the Raft peer service")
	fs.StringVar(&cfg.ListenMetrics, "listen-metrics", "", "host:port of /metrics, /healthz, /readyz (empty: off)")
	fs.StringVar(&cfg.InitialCluster, "initial-cluster", "", "members as name=peer-host:port,... (must include --name)")
	fs.StringVar(&cfg.InitialClusterState, "initial-cluster-state", cfg.InitialClusterState, "new (bootstrap) or existing (join after member add)")
	clusterID := fs.String("cluster-id", "", "cluster id in hex, to join a cluster whose id cannot be derived from --initial-cluster")
	hb := fs.Int("heartbeat-interval", int(cfg.HeartbeatInterval/time.Millisecond), "Raft heartbeat interval in ms")
	et := fs.Int("election-timeout", int(cfg.ElectionTimeout/time.Millisecond), "Raft election timeout in ms")
	rt := fs.Int("request-timeout", int(cfg.RequestTimeout/time.Millisecond), "ms a write or linearizable read waits for the cluster")
	fs.IntVar(&cfg.HistoryWindow, "history-window", cfg.HistoryWindow, "watch events kept for watchers that start from an older revision")
	skew := fs.Int("max-clock-skew", int(cfg.MaxClockSkew/time.Millisecond), "ms the members' wall clocks may disagree (session deadlines are recorded on the leader's clock)")
	snapEntries := fs.Uint64("snapshot-entries", cfg.SnapshotEntries, "applied entries between Raft snapshots")
	fs.StringVar(&cfg.ClientTLS.Cert, "client-cert-file", "", "client API TLS certificate")
	fs.StringVar(&cfg.ClientTLS.Key, "client-key-file", "", "client API TLS key")
	fs.StringVar(&cfg.ClientTLS.TrustedCA, "client-trusted-ca-file", "", "CA that client certificates must chain to (mutual TLS)")
	fs.StringVar(&cfg.PeerTLS.Cert, "peer-cert-file", "", "peer TLS certificate (used as server and client)")
	fs.StringVar(&cfg.PeerTLS.Key, "peer-key-file", "", "peer TLS key")
	fs.StringVar(&cfg.PeerTLS.TrustedCA, "peer-trusted-ca-file", "", "CA that peer certificates must chain to")
	fs.StringVar(&cfg.HTTPTLS.Cert, "http-cert-file", "", "TLS certificate of /metrics, /healthz, /readyz")
	fs.StringVar(&cfg.HTTPTLS.Key, "http-key-file", "", "TLS key of /metrics, /healthz, /readyz")
	fs.StringVar(&cfg.HTTPTLS.TrustedCA, "http-trusted-ca-file", "", "CA that scrapers' certificates must chain to (mutual TLS)")
	restore := fs.String("restore-snapshot", "", "seed the empty --data-dir from this snapshot file, then start")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg.HeartbeatInterval = time.Duration(*hb) * time.Millisecond
	cfg.ElectionTimeout = time.Duration(*et) * time.Millisecond
	cfg.RequestTimeout = time.Duration(*rt) * time.Millisecond
	cfg.SnapshotEntries = *snapEntries
	cfg.MaxClockSkew = time.Duration(*skew) * time.Millisecond
	if *clusterID != "" {
		id, err := strconv.ParseUint(*clusterID, 16, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "berth-coord: --cluster-id %q: not a hex number\n", *clusterID)
			return 2
		}
		cfg.ClusterID = id
	}
	var handler slog.Handler = slog.NewJSONHandler(os.Stderr, nil)
	if *logFormat == "text" {
		handler = slog.NewTextHandler(os.Stderr, nil)
	}
	logger := slog.New(handler)

	if *restore != "" {
		if err := coord.RestoreSnapshot(*restore, cfg.DataDir); err != nil {
			logger.Error("restore snapshot", "err", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := coord.New(cfg, logger)
	if err != nil {
		logger.Error("start berth-coord", "err", err)
		return 1
	}
	if err := srv.Run(ctx); err != nil {
		logger.Error("berth-coord stopped", "err", err)
		return 1
	}
	return 0
}
