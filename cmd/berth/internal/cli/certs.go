package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthdev/berth/pkg/certs"
)

// maxCertDays bounds --days: 100 years, far below where days as a time.Duration overflow.
const maxCertDays = 36500

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make the certificates for mutual TLS between Berth's parts",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newCertsInitCmd(), newCertsNATSConfigCmd())
	return cmd
}

func newCertsInitCmd() *cobra.Command {
	var (
		dir      string
		services []string
		hosts    []string
		force    bool
		days     int
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Create a CA and a certificate for every service",
		Long: `berth certs init creates a private certificate authority (ca.crt, ca.key; ECDSA P-256)
in --dir and signs a certificate and key for every service with it: <service>.crt and
<service>.key. Service certificates are valid for server and client authentication (each
service serves an API and calls the others with the same identity), for localhost,
127.0.0.1, ::1, the service's host names in the docker-compose suite and every --hosts
entry. berth.crt is a client certificate for the berth CLI. Keys are written with mode
0600.

It refuses to replace an existing CA unless --force is given: every certificate the old
CA signed stops being trusted.

Services: ` + strings.Join(certs.ServiceNames(), ", ") + `.
coord.crt is for berth-coord's client API (--client-cert-file), coord-peer.crt for its
peer links (--peer-cert-file); ca.crt is the trusted CA of both sides.`,
		Example: `  berth certs init --dir /etc/berth/tls
  berth certs init --dir ./tls --hosts coord.prod.example,10.0.0.5 --services coord,coord-peer,berth`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days <= 0 {
				return fmt.Errorf("certs init: --days: %d is not positive", days)
			}
			if days > maxCertDays {
				return fmt.Errorf("certs init: --days: %d is more than %d (a validity that long overflows)", days, maxCertDays)
			}
			written, err := certs.Init(certs.Options{
				Dir:          dir,
				Services:     splitList(services),
				Hosts:        splitList(hosts),
				Force:        force,
				LeafValidity: time.Duration(days) * 24 * time.Hour,
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), written)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FILE\tMODE\tWHAT\tNAME\tHOSTS\tEXPIRES")
			for _, w := range written {
				expires := "-"
				if !w.NotAfter.IsZero() {
					expires = w.NotAfter.UTC().Format(time.DateOnly)
				}
				hs := "-"
				if len(w.Hosts) > 0 {
					hs = strings.Join(w.Hosts, ",")
				}
				fmt.Fprintf(tw, "%s\t%04o\t%s\t%s\t%s\t%s\n", w.Path, w.Mode.Perm(), w.What, w.Name, hs, expires)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory for the CA, certificates and keys (created 0700 when missing; required)")
	f.StringArrayVar(&services, "services", nil, "services to issue certificates for, comma separated (default all)")
	f.StringArrayVar(&hosts, "hosts", nil, "extra DNS names or IP addresses for every server certificate, comma separated")
	f.BoolVar(&force, "force", false, "replace an existing CA and every certificate in --dir")
	f.IntVar(&days, "days", int(certs.DefaultLeafValidity/(24*time.Hour)), "days the service certificates are valid")
	f.BoolVar(&asJSON, "json", false, "print the files written as JSON")
	cmd.MarkFlagRequired("dir")
	return cmd
}
