// Command berth-name-service is Berth's authoritative name service: DNS and an HTTP
// resolve/watch API over the instances registered in coord, with traffic policy, and
// per-service views published on NATS. See services/name-service/README.md. It is wiring
// only: configuration, connections, a signal context, Run, an exit code.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/berthdev/berth/pkg/config"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
	nameservice "github.com/berthdev/berth/services/name-service"
)

func main() { os.Exit(realMain()) }

func realMain() int {
	cfg := nameservice.DefaultConfig()
	if err := config.Load(&cfg, os.Args[1:], config.Options{Name: "berth-name-service",
		Usage: "berth-name-service serves DNS and the name API of Berth's registered instances.\n\nFlags (also BERTH_* variables and a YAML --config file):"}); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "berth-name-service:", err)
		return 2
	}
	log, err := logging.New(cfg.Log, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-name-service:", err)
		return 2
	}
	ctx, stop := run.SignalContext(context.Background())
	defer stop()
	ncfg := natsbus.Config{URLs: cfg.NATSURLs(), Name: "berth-name-service/" + cfg.Name, Logger: log}
	if err := cfg.NATSAuth.Apply(&ncfg); err != nil {
		log.Error("berth-name-service: nats", "err", err)
		return 1
	}
	bus, err := natsbus.Connect(ctx, ncfg)
	if err != nil {
		log.Error("berth-name-service: nats", "err", err)
		return 1
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = bus.Close(cctx)
	}()
	coordTLS, err := cfg.CoordTLS.ClientTLS("")
	if err != nil {
		log.Error("berth-name-service: coord_tls", "err", err)
		return 1
	}
	coord, err := coordclient.New(ctx, coordclient.Config{Endpoints: cfg.CoordEndpoints(), Logger: log, TLS: coordTLS})
	if err != nil {
		log.Error("berth-name-service: coord", "err", err)
		return 1
	}
	defer coord.Close()
	svc, err := nameservice.New(cfg, nameservice.Deps{Bus: bus, Coord: coord, Logger: log})
	if err != nil {
		log.Error("berth-name-service", "err", err)
		return 1
	}
	if err := svc.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("berth-name-service stopped", "err", err)
		return 1
	}
	return 0
}
