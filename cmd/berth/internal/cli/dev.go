package cli

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/berthdev/berth/cmd/berth/internal/dev"
)

func newDevCmd() *cobra.Command {
	cfg := dev.Config{NATSPort: dev.DefaultNATSPort, CoordPort: dev.DefaultCoordPort, AdminPort: dev.DefaultAdminPort, ControllerPort: dev.DefaultControllerPort, DNSPort: dev.DefaultDNSPort, ResolverPort: dev.DefaultResolverPort, AgentAPIPort: dev.DefaultAgentAPIPort, NamesPort: dev.DefaultNamesPort, Host: dev.DefaultHost,
		ArtifactsPort: dev.DefaultArtifactsPort, FTPPort: dev.DefaultFTPPort, DemoPort: dev.DefaultDemoPort, RegistryPort: dev.DefaultRegistryPort}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run every Berth service in this process, for trying Berth out",
		Long: `berth dev runs an embedded NATS server with JetStream and every Berth service in one
process, with its data in one directory (kept across restarts unless --ephemeral). It prints
every endpoint when it is up; Ctrl-C stops everything cleanly. Apps it deployed keep running
(the agent never owns app processes), and a later berth dev on the same data resumes.

It also serves packages from the artifacts directory (--artifacts, <data>/artifacts by
default) over HTTP, with uploads (PUT /<file>, or a multipart POST /), and over anonymous
read-only FTP, so that berth deploy --package can take http:// and ftp:// URLs.

Security is off by default (plaintext HTTP, an open API), for a first run on one machine.
--tls DIR (a directory made by ` + "`berth certs init --dir DIR`" + `) serves the controller's
API, the name service's API, the artifact server's HTTP and /metrics over HTTPS that
requires client certificates of DIR's CA; point the CLI at them with
` + "`berth context set dev --controller https://... --ca-file DIR/ca.crt --cert-file DIR/berth.crt --key-file DIR/berth.key`" + `.
--tokens FILE makes the controller's API require tokens (berth token new) and record every
write in an audit log.

--demo then builds the demo app from examples/demo with Go, packs it into the artifacts
directory, deploys it as demo/hello to this host through the controller, and prints the
commands that show the result. Run it again after editing the demo to deploy a new version.`,
		Example: `  go run ./cmd/berth dev --demo
  berth dev --ephemeral --demo --demo-port 9088
  berth dev --data /tmp/berth --artifacts ~/packages`,
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
			if cfg.ArtifactsDir != "" {
				if cfg.ArtifactsDir, err = filepath.Abs(cfg.ArtifactsDir); err != nil {
					return err
				}
			}
			if cfg.TLSDir != "" {
				if cfg.TLSDir, err = filepath.Abs(cfg.TLSDir); err != nil {
					return err
				}
			}
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
	f.IntVar(&cfg.ResolverPort, "resolver-port", dev.DefaultResolverPort, "port of the local agent's caching DNS resolver (0 picks one, -1 turns it off)")
	f.IntVar(&cfg.AgentAPIPort, "agent-api-port", dev.DefaultAgentAPIPort, "port of the local agent's HTTP name API (0 picks one, -1 turns it off)")
	f.IntVar(&cfg.AdminPort, "admin-port", dev.DefaultAdminPort, "port of /metrics, /healthz and /readyz of everything (0 picks one)")
	f.StringVar(&cfg.LogLevel, "log-level", "warn", "services' log level: debug, info, warn or error")
	f.StringVar(&cfg.ArtifactsDir, "artifacts", "", "directory the artifact server serves (default <data>/artifacts)")
	f.IntVar(&cfg.ArtifactsPort, "artifacts-port", dev.DefaultArtifactsPort, "HTTP port of the artifact server (0 picks one)")
	f.IntVar(&cfg.FTPPort, "ftp-port", dev.DefaultFTPPort, "FTP port of the artifact server (0 picks one)")
	f.StringVar(&cfg.DockerHost, "docker-host", "", "Docker engine of container mode (default $DOCKER_HOST, else unix:///var/run/docker.sock)")
	f.StringVar(&cfg.ContainerNetwork, "container-network", dev.DefaultContainerNetwork, "Docker bridge network containers run on (made when missing)")
	f.StringVar(&cfg.ContainerSubnet, "container-subnet", dev.DefaultContainerSubnet, "subnet of that network; the local host's container pool is its addresses")
	f.StringVar(&cfg.Registry, "registry", "", "external registry (host:port) for images (default: one on loopback at --registry-port)")
	f.IntVar(&cfg.RegistryPort, "registry-port", dev.DefaultRegistryPort, "port of the loopback registry (Debian docker-registry; -1: none)")
	f.BoolVar(&cfg.Demo, "demo", false, "build, pack and deploy the demo app (examples/demo) as demo/hello once up")
	f.IntVar(&cfg.DemoPort, "demo-port", dev.DefaultDemoPort, "port the demo app listens on (0 picks one)")
	f.StringVar(&cfg.DemoSource, "demo-src", "", "the demo's source directory (default examples/demo of the checkout)")
	f.StringVar(&cfg.TLSDir, "tls", "", "serve the HTTP endpoints over HTTPS with client certificates, from this `berth certs init` directory (default off)")
	f.StringVar(&cfg.TokensFile, "tokens", "", "require API tokens from this token file, and audit writes (default off: the API is open)")
	return cmd
}
