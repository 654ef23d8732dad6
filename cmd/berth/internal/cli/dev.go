package cli

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/berthdev/berth/cmd/berth/internal/dev"
)

func newDevCmd() *cobra.Command {
	cfg := dev.Config{NATSPort: dev.DefaultNATSPort, CoordPort: dev.DefaultCoordPort, AdminPort: dev.DefaultAdminPort, ControllerPort: dev.DefaultControllerPort, DNSPort: dev.DefaultDNSPort, NamesPort: dev.DefaultNamesPort, Host: dev.DefaultHost}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run every Berth service in this process, for trying Berth out",
		Long: `berth dev runs an embedded NATS server with JetStream and every Berth service in one
process, with its data in one directory (kept across restarts unless --ephemeral). It prints
every endpoint when it is up; Ctrl-C stops everything cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Ephemeral && !cmd.Flags().Changed("data") {
				d, err := os.MkdirTemp("", "berth-dev-")
				if err != nil {
					return err
				}
				cfg.DataDir = d
			}
			abs, err := filepath.Abs(cfg.DataDir)
			if err != nil {
				return err
			}
			cfg.DataDir = abs
			cfg.Out = cmd.OutOrStdout()
			cfg.Log = cmd.ErrOrStderr()
			return dev.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", dev.DefaultDataDir(), "directory for all of berth dev's state")
	f.BoolVar(&cfg.Ephemeral, "ephemeral", false, "use a throwaway data directory, removed on exit")
	f.IntVar(&cfg.NATSPort, "nats-port", dev.DefaultNATSPort, "NATS client port (0 picks a free one)")
	f.IntVar(&cfg.CoordPort, "coord-port", dev.DefaultCoordPort, "coord client port; the next port is its peer port")
	f.IntVar(&cfg.ControllerPort, "controller-port", dev.DefaultControllerPort, "port of the controller's HTTP API (0 picks one)")
	f.IntVar(&cfg.DNSPort, "dns-port", dev.DefaultDNSPort, "port of the name service's DNS, UDP and TCP (0 picks one)")
	f.IntVar(&cfg.NamesPort, "names-port", dev.DefaultNamesPort, "port of the name service's HTTP API (0 picks one)")
	f.IntVar(&cfg.AdminPort, "admin-port", dev.DefaultAdminPort, "port of /metrics, /healthz and /readyz of everything (0 picks one)")
	f.StringVar(&cfg.LogLevel, "log-level", "warn", "services' log level: debug, info, warn or error")
	return cmd
}
