// Command berth-cmdb-sync keeps Berth's host inventory in coord in step with the CMDB and
// tracks host liveness. See services/cmdb-sync/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berthdev/berth/pkg/config"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/run"
	cmdbsync "github.com/berthdev/berth/services/cmdb-sync"
)

func main() {
	cfg := cmdbsync.DefaultConfig()
	if err := config.Load(&cfg, os.Args[1:], config.Options{Name: "berth-cmdb-sync",
		Usage: "berth-cmdb-sync keeps the host inventory in coord in step with the CMDB.\n\nFlags (also BERTH_* variables and a YAML --config file):"}); err != nil {
		if errors.Is(err, config.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "berth-cmdb-sync:", err)
		os.Exit(2)
	}
	log, err := logging.New(cfg.Log, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-cmdb-sync:", err)
		os.Exit(2)
	}
	ctx, stop := run.SignalContext(context.Background())
	defer stop()
	s, err := cmdbsync.New(cfg, cmdbsync.Deps{Logger: log})
	if err == nil {
		err = s.Run(ctx)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("berth-cmdb-sync stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
