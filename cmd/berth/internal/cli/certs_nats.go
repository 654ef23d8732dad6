package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berthdev/berth/cmd/berth/internal/natsconf"
)

func newCertsNATSConfigCmd() *cobra.Command {
	var (
		o      natsconf.Options
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "nats-config --dir DIR [--agent-hosts H1,H2]",
		Short: "Write a nats-server configuration with TLS and one user per service",
		Long: `berth certs nats-config writes, next to the certificates of ` + "`berth certs init`" + ` in --dir:

  nats-server.conf     TLS that requires a client certificate signed by ca.crt, JetStream,
                       and one nkey user per service with only the subjects it needs
                       (proto/subjects): the controller may send steps to every agent, an
                       agent only receives its own host's steps, each service publishes
                       only its own events, and each user reads replies only on its own
                       inbox (_INBOX_<user>).
  nats/<user>.nk       the user's nkey seed (0600): controller, scheduler, image-builder,
                       cmdb-sync, name-service, berth (the CLI) and agent-<host> for every
                       --agent-hosts entry.
  nats/<user>.env      the BERTH_NATS_* settings of that service (CA, certificate, key,
                       seed file, inbox prefix), for an env_file or EnvironmentFile.

A user that already has a seed keeps it, so running it again with a new agent host leaves
the others alone; --force makes new seeds for everyone. Start the server with
nats-server -c DIR/nats-server.conf and point every service at tls://HOST:4222.`,
		Example: `  berth certs init --dir /etc/berth/tls
  berth certs nats-config --dir /etc/berth/tls --agent-hosts h-001,h-002
  berth certs nats-config --dir ./tls --path /etc/berth/tls --agent-hosts agent-1,agent-2   # files mounted elsewhere`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.AgentHosts = splitList(o.AgentHosts)
			written, err := natsconf.Write(o)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), written)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FILE\tMODE\tWHAT\tUSER\tNKEY")
			for _, w := range written {
				what := w.What
				if w.Kept {
					what += " (kept)"
				}
				user, key := w.User, w.PublicKey
				if user == "" {
					user = "-"
				}
				if key == "" {
					key = "-"
				}
				fmt.Fprintf(tw, "%s\t%04o\t%s\t%s\t%s\n", w.Path, w.Mode.Perm(), what, user, key)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "", "a `berth certs init` directory (must hold ca.crt, nats.crt, nats.key; required)")
	f.StringVar(&o.Path, "path", "", "where --dir is on the machines that read the files (default: --dir, absolute)")
	f.StringVar(&o.Listen, "listen", "0.0.0.0:4222", "the server's client address")
	f.StringVar(&o.StoreDir, "store-dir", "/data/jetstream", "JetStream's store directory")
	f.StringArrayVar(&o.AgentHosts, "agent-hosts", nil, "agent host ids, one NATS user each (agent-<host>), comma separated")
	f.BoolVar(&o.Force, "force", false, "make new seeds for every user")
	f.BoolVar(&asJSON, "json", false, "print the files written as JSON")
	cmd.MarkFlagRequired("dir")
	return cmd
}
