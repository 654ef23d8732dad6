// Command berth is Berth's command-line interface, and `berth dev`, every Berth service in
// one process.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/berthdev/berth/cmd/berth/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.NewRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ex *cli.ExitError
		if errors.As(err, &ex) {
			if ex.Err != nil {
				fmt.Fprintln(os.Stderr, "berth:", ex.Err)
			}
			os.Exit(ex.Code)
		}
		fmt.Fprintln(os.Stderr, "berth:", err)
		os.Exit(1)
	}
}
