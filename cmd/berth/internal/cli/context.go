package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newContextCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "context",
		Short: "Manage the CLI's contexts: named sets of endpoints and a token",
		Long: `A context names where a Berth installation is: its controller and name service URLs, its
coord members, its NATS URL, and the API token the HTTP commands send (Authorization: Bearer).
Contexts live in ~/.config/berth/config.yaml (or $` + envConfigFile + `), readable by you only.

Every command takes each endpoint from, in order: its flag (--controller, --names,
--endpoints / --coord, --nats), its environment variable ($` + envControllerURL + `, $` + envNamesURL + `,
$` + envCoordEndpoints + `, $` + envNATSURL + `; $` + envToken + ` for the token), the selected context, and
last the built-in default: berth dev's addresses on 127.0.0.1. The selected context is
--context NAME, else $` + envContext + `, else the current one (berth context use).`,
		Example: `  berth context set prod --controller https://berth.example.com:7070 --names https://names.example.com:7071 \
      --coord 10.0.0.1:7379,10.0.0.2:7379,10.0.0.3:7379 --nats nats://10.0.0.9:4222 --token-stdin < token
  berth context use prod
  berth context ls
  berth --context dev status
  berth context show`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newContextLsCmd(), newContextUseCmd(), newContextSetCmd(), newContextShowCmd(), newContextRmCmd())
	return cmd
}

// contextJSON is a context in --json output; the token itself is never printed.
type contextJSON struct {
	Name       string   `json:"name"`
	Current    bool     `json:"current"`
	Controller string   `json:"controller,omitempty"`
	Names      string   `json:"names,omitempty"`
	Coord      []string `json:"coord,omitempty"`
	NATS       string   `json:"nats,omitempty"`
	Token      bool     `json:"token"`
}

func newContextLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the contexts; * marks the current one",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig()
			if err != nil {
				return err
			}
			rows := make([]contextJSON, 0, len(c.Contexts))
			for _, n := range c.names() {
				x := c.Contexts[n]
				rows = append(rows, contextJSON{Name: n, Current: n == c.CurrentContext, Controller: x.Controller, Names: x.Names,
					Coord: x.Coord, NATS: x.NATS, Token: x.Token != ""})
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, map[string]any{"file": c.path, "current": c.CurrentContext, "contexts": rows})
			}
			if len(rows) == 0 {
				fmt.Fprintf(out, "no contexts in %s: commands use berth dev's addresses on 127.0.0.1 (create one with berth context set NAME --controller URL ...)\n", c.path)
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CURRENT\tNAME\tCONTROLLER\tNAMES\tCOORD\tNATS\tTOKEN")
			for _, r := range rows {
				cur, tok := "", "-"
				if r.Current {
					cur = "*"
				}
				if r.Token {
					tok = "set"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cur, r.Name, dash(r.Controller), dash(r.Names), dash(strings.Join(r.Coord, ",")), dash(r.NATS), tok)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newContextUseCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "use NAME",
		Short:             "Make NAME the current context",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeContexts,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig()
			if err != nil {
				return err
			}
			name := args[0]
			if _, ok := c.Contexts[name]; !ok {
				known := "none yet"
				if len(c.Contexts) > 0 {
					known = strings.Join(c.names(), ", ")
				}
				return fmt.Errorf("no context %q in %s (contexts: %s); create it with `berth context set %s --controller URL ...`", name, c.path, known, name)
			}
			c.CurrentContext = name
			if err := c.save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "current context is now %s\n", name)
			return nil
		},
	}
}

func newContextSetCmd() *cobra.Command {
	var (
		x          cliContext
		coord      string
		tokenStdin bool
		unset      []string
		use        bool
	)
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Create a context, or change the fields given of an existing one",
		Long: `berth context set creates the context NAME, or changes the fields given of an existing one
(the others stay). --unset FIELD clears a field (controller, names, coord, nats, token), so
that it falls back to the default. The first context created becomes the current one;
--use makes this one current.

--token-stdin reads the token from standard input, which keeps it out of the shell's
history; --token takes it as an argument.`,
		Example: `  berth context set dev --controller http://127.0.0.1:7070
  berth context set prod --coord 10.0.0.1:7379,10.0.0.2:7379 --token-stdin < token --use
  berth context set prod --unset nats`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeContexts,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkContextName(name); err != nil {
				return err
			}
			c, err := loadConfig()
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if tokenStdin {
				if f.Changed("token") {
					return errors.New("--token and --token-stdin: give one")
				}
				line, err := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), 64<<10)).ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("read the token from stdin: %w", err)
				}
				if x.Token = strings.TrimSpace(line); x.Token == "" {
					return errors.New("--token-stdin: standard input has no token")
				}
			}
			cur, existed := c.Contexts[name]
			if !existed {
				cur = &cliContext{}
			}
			next := *cur
			if f.Changed("controller") {
				next.Controller = x.Controller
			}
			if f.Changed("names") {
				next.Names = x.Names
			}
			if f.Changed("coord") {
				next.Coord = splitEndpoints(coord)
			}
			if f.Changed("nats") {
				next.NATS = x.NATS
			}
			if f.Changed("token") || tokenStdin {
				next.Token = x.Token
			}
			if f.Changed("ca-file") {
				next.CAFile = x.CAFile
			}
			if f.Changed("cert-file") {
				next.CertFile = x.CertFile
			}
			if f.Changed("key-file") {
				next.KeyFile = x.KeyFile
			}
			if f.Changed("nats-nkey-seed-file") {
				next.NATSNKeySeedFile = x.NATSNKeySeedFile
			}
			for _, u := range splitList(unset) {
				switch u {
				case "controller":
					next.Controller = ""
				case "names":
					next.Names = ""
				case "coord":
					next.Coord = nil
				case "nats":
					next.NATS = ""
				case "token":
					next.Token = ""
				case "ca_file":
					next.CAFile = ""
				case "cert_file":
					next.CertFile = ""
				case "key_file":
					next.KeyFile = ""
				case "nats_nkey_seed_file":
					next.NATSNKeySeedFile = ""
				default:
					return fmt.Errorf("--unset %q: want one of %s", u, strings.Join(contextFields, ", "))
				}
			}
			if err := next.validate(); err != nil {
				return fmt.Errorf("context %s: %w", name, err)
			}
			if err := checkContextSet(f, &next); err != nil {
				return fmt.Errorf("context %s: %w", name, err)
			}
			if c.Contexts == nil {
				c.Contexts = map[string]*cliContext{}
			}
			c.Contexts[name] = &next
			if use || c.CurrentContext == "" {
				c.CurrentContext = name
			}
			if err := c.save(); err != nil {
				return err
			}
			verb := "created"
			if existed {
				verb = "updated"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "context %s %s in %s", name, verb, c.path)
			if c.CurrentContext == name {
				fmt.Fprint(cmd.OutOrStdout(), " (current)")
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&x.Controller, "controller", "", "berth-controller API URL (http:// or https://)")
	f.StringVar(&x.Names, "names", "", "name service API URL (http:// or https://)")
	f.StringVar(&coord, "coord", "", "coord members, host:port comma separated")
	f.StringVar(&x.NATS, "nats", "", "NATS server URL")
	f.StringVar(&x.Token, "token", "", "API token sent as Authorization: Bearer (prefer --token-stdin)")
	f.BoolVar(&tokenStdin, "token-stdin", false, "read the API token from standard input")
	f.StringVar(&x.CAFile, "ca-file", "", "CA bundle the APIs' HTTPS certificates chain to")
	f.StringVar(&x.CertFile, "cert-file", "", "client certificate for APIs that require one (mutual TLS)")
	f.StringVar(&x.KeyFile, "key-file", "", "key of the client certificate")
	f.StringVar(&x.NATSNKeySeedFile, "nats-nkey-seed-file", "", "NATS nkey seed of the berth user (berth certs nats-config writes DIR/nats/berth.nk)")
	f.StringArrayVar(&unset, "unset", nil, "clear these fields (controller, names, coord, nats, token, ca_file, cert_file, key_file, nats_nkey_seed_file)")
	f.BoolVar(&use, "use", false, "also make it the current context")
	return cmd
}

func newContextShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the endpoints and token commands would use now, and where each comes from",
		Long: `berth context show resolves every endpoint as a command would (flags aside): from the
environment, the selected context (--context, $` + envContext + `, or the current one) or the default,
and says which. The token is never printed, only whether one is set and from where.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel := selectionOf(cmd)
			if sel.err != nil {
				return sel.err
			}
			vals := map[string]resolved{}
			for _, s := range allSettings {
				r, err := resolveSetting(cmd, s, "", "")
				if err != nil {
					return err
				}
				if s.name == "token" && r.Value != "" {
					r.Value = "(set)"
				}
				vals[s.name] = r
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, map[string]any{"context": sel.name, "context_source": sel.source, "file": sel.path, "settings": vals})
			}
			if sel.name == "" {
				fmt.Fprintf(out, "context     none (no current context in %s)\n", sel.path)
			} else {
				fmt.Fprintf(out, "context     %s (from %s, in %s)\n", sel.name, sel.source, sel.path)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			for _, s := range allSettings {
				r := vals[s.name]
				fmt.Fprintf(tw, "%s\t%s\t(%s)\n", s.name, dash(r.Value), r.Source)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newContextRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "rm NAME",
		Aliases:           []string{"delete"},
		Short:             "Delete a context (when current, no context is current afterwards)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeContexts,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig()
			if err != nil {
				return err
			}
			name := args[0]
			if _, ok := c.Contexts[name]; !ok {
				return fmt.Errorf("no context %q in %s (see berth context ls)", name, c.path)
			}
			delete(c.Contexts, name)
			if c.CurrentContext == name {
				c.CurrentContext = ""
			}
			if err := c.save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "context %s deleted\n", name)
			return nil
		},
	}
}

func newCompletionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "Print the shell completion script for berth",
		Long: `berth completion prints a script that makes the shell complete berth's commands, flags
and context names. Load it in the current shell, or install it once:

  bash:        source <(berth completion bash)
               berth completion bash > /etc/bash_completion.d/berth
  zsh:         berth completion zsh > "${fpath[1]}/_berth"   (with compinit enabled)
  fish:        berth completion fish > ~/.config/fish/completions/berth.fish
  powershell:  berth completion powershell | Out-String | Invoke-Expression`,
		ValidArgs: []string{"bash", "zsh", "fish", "powershell"},
		Args:      cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			root, out := cmd.Root(), cmd.OutOrStdout()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(out, true)
			case "zsh":
				return root.GenZshCompletion(out)
			case "fish":
				return root.GenFishCompletion(out, true)
			default:
				return root.GenPowerShellCompletionWithDesc(out)
			}
		},
	}
}

// checkContextSet checks what `berth context set` is given beyond what a stored context
// must hold (validate): the files named now exist, the coord members are host:port with
// a host name or IP address, and the token has no control character. A context that
// breaks every later command is refused when it is set, not when it is used.
func checkContextSet(f *pflag.FlagSet, x *cliContext) error {
	for _, fl := range []struct{ flag, path string }{
		{"ca-file", x.CAFile}, {"cert-file", x.CertFile}, {"key-file", x.KeyFile}, {"nats-nkey-seed-file", x.NATSNKeySeedFile},
	} {
		if !f.Changed(fl.flag) || fl.path == "" {
			continue
		}
		fi, err := os.Stat(fl.path)
		if err != nil {
			return fmt.Errorf("--%s: %w", fl.flag, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("--%s %q: not a file", fl.flag, fl.path)
		}
	}
	if f.Changed("coord") {
		for _, ep := range x.Coord {
			host, port, err := net.SplitHostPort(ep)
			n, perr := strconv.ParseUint(port, 10, 16)
			if err != nil || perr != nil || n == 0 || !validHost(host) {
				return fmt.Errorf("coord member %q: want host:port with a host name or IP address and a port from 1 to 65535", ep)
			}
		}
	}
	if f.Changed("nats") {
		for _, u := range strings.Split(x.NATS, ",") {
			p, err := url.Parse(strings.TrimSpace(u))
			if err != nil || !validHost(p.Hostname()) {
				return fmt.Errorf("nats %q: want nats://host:port with a host name or IP address", x.NATS)
			}
		}
	}
	if strings.ContainsFunc(x.Token, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return errors.New("token: contains a control character")
	}
	return nil
}

// validHost reports whether host is an IP address or a host name (letters, digits, '.',
// '-' and '_').
func validHost(host string) bool {
	return host != "" && (net.ParseIP(host) != nil || strings.Trim(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") == "")
}
