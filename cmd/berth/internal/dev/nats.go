package dev

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
)

// startNATS runs an embedded NATS server with JetStream stored under the data directory and
// creates Berth's streams.
func startNATS(ctx context.Context, e *env, g *run.Group) error {
	opts := &server.Options{
		ServerName: "berth-dev",
		Host:       e.cfg.Host,
		Port:       e.cfg.NATSPort,
		JetStream:  true,
		StoreDir:   filepath.Join(e.cfg.DataDir, "nats"),
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return fmt.Errorf("nats server on %s:%d did not become ready (is the port in use? pass --nats-port)", opts.Host, opts.Port)
	}
	e.natsURL = ns.ClientURL()
	bus, err := natsbus.Connect(ctx, natsbus.Config{URLs: []string{e.natsURL}, Name: "berth-dev", Source: "berth-dev", Registerer: e.reg, Logger: e.log})
	if err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		return err
	}
	if err := bus.EnsureStreams(ctx, natsbus.StreamConfig{}); err != nil {
		bus.Close(ctx)
		ns.Shutdown()
		ns.WaitForShutdown()
		return fmt.Errorf("create streams: %w", err)
	}
	e.bus = bus
	e.announce("NATS", e.natsURL)
	g.Add("nats", func(ctx context.Context) error {
		<-ctx.Done()
		// The services stopped before this part; drain the shared connection, then the server.
		_ = bus.Close(context.WithoutCancel(ctx))
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil
	})
	return nil
}
