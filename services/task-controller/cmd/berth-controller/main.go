// Command berth-controller runs one replica of Berth's control center: the HTTP API for
// deployments, tasks and the service tree, and — on the elected leader — the rollouts.
// See services/task-controller/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berthdev/berth/pkg/config"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/run"
	controller "github.com/berthdev/berth/services/task-controller"
)

func main() {
	cfg := controller.DefaultConfig()
	if err := config.Load(&cfg, os.Args[1:], config.Options{Name: "berth-controller",
		Usage: "berth-controller serves Berth's deployment API and, when elected, runs the deployments.\n\nFlags (also BERTH_* variables and a YAML --config file):"}); err != nil {
		if errors.Is(err, config.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "berth-controller:", err)
		os.Exit(2)
	}
	log, err := logging.New(cfg.Log, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-controller:", err)
		os.Exit(2)
	}
	ctx, stop := run.SignalContext(context.Background())
	defer stop()
	c, err := controller.New(cfg, controller.Deps{Logger: log})
	if err == nil {
		err = c.Run(ctx)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("berth-controller stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
