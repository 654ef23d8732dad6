package dev

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/run"
	"github.com/berthdev/berth/services/coord"
)

// startCoord runs a single-member berth-coord with its data under the data directory and
// waits until it has elected itself, so that every service after it can use it. Its peer
// address is fixed (the client port + 1) because the cluster id is derived from it: a
// later berth dev on the same data must present the same cluster.
func startCoord(ctx context.Context, e *env, g *run.Group) error {
	client := net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.CoordPort))
	peer := net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.CoordPort+1))
	cfg := coord.DefaultConfig()
	cfg.Name = "dev"
	cfg.DataDir = filepath.Join(e.cfg.DataDir, "coord")
	cfg.ListenClient = client
	cfg.ListenPeer = peer
	cfg.InitialCluster = "dev=" + peer
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.ElectionTimeout = 500 * time.Millisecond
	srv, err := coord.New(cfg, e.log.With("service", "coord"))
	if err != nil {
		return fmt.Errorf("coord: %w", err)
	}
	e.coordReg = srv.Registry()
	g.Add("coord", srv.Run)
	g.Start()

	cc, err := coordclient.New(ctx, coordclient.Config{Endpoints: []string{client}, Logger: e.log})
	if err != nil {
		return fmt.Errorf("coord client: %w", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := cc.Status(ctx, client)
		if err == nil && st.IsLeader {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			cc.Close()
			return fmt.Errorf("coord on %s has no leader after 20 s: %v", client, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.coord = cc
	e.coordEndpoint = client
	g.Add("coord client", func(ctx context.Context) error {
		<-ctx.Done()
		return cc.Close()
	})
	e.announce("coord", client)
	return nil
}
