// Command berth-image-builder builds and caches the container images of Berth's services.
// See services/image-builder/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berthdev/berth/pkg/config"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/run"
	imagebuilder "github.com/berthdev/berth/services/image-builder"
)

func main() {
	cfg := imagebuilder.DefaultConfig()
	if err := config.Load(&cfg, os.Args[1:], config.Options{Name: "berth-image-builder",
		Usage: "berth-image-builder answers image requests with a digest, building and pushing the image when the registry has none.\n\nFlags (also BERTH_* variables and a YAML --config file):"}); err != nil {
		if errors.Is(err, config.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "berth-image-builder:", err)
		os.Exit(2)
	}
	log, err := logging.New(cfg.Log, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-image-builder:", err)
		os.Exit(2)
	}
	ctx, stop := run.SignalContext(context.Background())
	defer stop()
	b, err := imagebuilder.New(cfg, imagebuilder.Deps{Logger: log})
	if err == nil {
		err = b.Run(ctx)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("berth-image-builder stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
