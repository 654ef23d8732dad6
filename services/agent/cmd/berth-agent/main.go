// Command berth-agent is the Berth agent of one host: it runs task steps sent by the
// controller (plugins and the built-in package-deploy and container-deploy plugins), keeps
// the host's presence in coord, registers and health-checks the host's instances, renders
// their templates, and serves a local DNS resolver and name API. `berth-agent --once --dry-run --template F`
// prints one template rendered with the current inputs. See services/agent/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berthdev/berth/pkg/config"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/run"
	"github.com/berthdev/berth/services/agent"
)

func main() {
	cfg := agent.DaemonConfig()
	if err := config.Load(&cfg, os.Args[1:], config.Options{Name: "berth-agent",
		Usage: "berth-agent runs task steps for the Berth controller on this host.\n\nFlags (also BERTH_* variables and a YAML --config file):"}); err != nil {
		if errors.Is(err, config.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "berth-agent:", err)
		os.Exit(2)
	}
	log, err := logging.New(cfg.Log, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-agent:", err)
		os.Exit(2)
	}
	ctx, stop := run.SignalContext(context.Background())
	defer stop()
	if cfg.Once {
		if err := agent.RenderOnce(ctx, cfg, os.Stdout, log); err != nil {
			fmt.Fprintln(os.Stderr, "berth-agent:", err)
			stop()
			os.Exit(1)
		}
		return
	}
	a, err := agent.New(cfg, agent.Deps{Logger: log})
	if err == nil {
		err = a.Run(ctx)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("berth-agent stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
