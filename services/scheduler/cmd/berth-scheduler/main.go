// Command berth-scheduler places containers on the hosts of Berth's inventory. See
// services/scheduler/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berthdev/berth/pkg/config"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/run"
	"github.com/berthdev/berth/services/scheduler"
)

func main() {
	cfg := scheduler.DefaultConfig()
	if err := config.Load(&cfg, os.Args[1:], config.Options{Name: "berth-scheduler",
		Usage: "berth-scheduler places containers on the hosts of the inventory.\n\nFlags (also BERTH_* variables and a YAML --config file):"}); err != nil {
		if errors.Is(err, config.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "berth-scheduler:", err)
		os.Exit(2)
	}
	log, err := logging.New(cfg.Log, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-scheduler:", err)
		os.Exit(2)
	}
	ctx, stop := run.SignalContext(context.Background())
	defer stop()
	s, err := scheduler.New(cfg, scheduler.Deps{Logger: log})
	if err == nil {
		err = s.Run(ctx)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("berth-scheduler stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
