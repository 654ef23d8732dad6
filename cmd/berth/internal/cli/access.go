package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/berthdev/berth/cmd/berth/internal/natsconf"
	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/natsbus"
)

// The TLS files of the HTTP commands: the CA the APIs' certificates chain to, and the
// client certificate for APIs that require one (mutual TLS).
const (
	envCAFile   = "BERTH_CA_FILE"
	envCertFile = "BERTH_CERT_FILE"
	envKeyFile  = "BERTH_KEY_FILE"
)

// envNATSSeed is the NATS nkey seed of the CLI's NATS commands.
const envNATSSeed = "BERTH_NATS_NKEY_SEED_FILE"

var (
	settingNATSSeed = setting{"nats_nkey_seed_file", envNATSSeed, "", func(c *cliContext) string { return c.NATSNKeySeedFile }}
	settingCAFile   = setting{"ca_file", envCAFile, "", func(c *cliContext) string { return c.CAFile }}
	settingCertFile = setting{"cert_file", envCertFile, "", func(c *cliContext) string { return c.CertFile }}
	settingKeyFile  = setting{"key_file", envKeyFile, "", func(c *cliContext) string { return c.KeyFile }}
)

// contextValue resolves a setting without flags: the environment, else the context the
// command selected.
func contextValue(ctx context.Context, s setting) string {
	if v := os.Getenv(s.env); v != "" {
		return v
	}
	if sel, ok := ctx.Value(selectionKey{}).(*selection); ok && sel.ctx != nil {
		return s.get(sel.ctx)
	}
	if sel := selectContext(nil); sel.ctx != nil {
		return s.get(sel.ctx)
	}
	return ""
}

// cliTLS returns the TLS configuration of the HTTP commands, nil when no TLS file is set
// (https:// URLs then trust the system's roots).
func cliTLS(ctx context.Context) (*tls.Config, error) {
	f := certs.Files{CertFile: contextValue(ctx, settingCertFile), KeyFile: contextValue(ctx, settingKeyFile), TrustedCAFile: contextValue(ctx, settingCAFile)}
	if err := f.ValidateClient("TLS (ca_file, cert_file, key_file; $" + envCAFile + ", $" + envCertFile + ", $" + envKeyFile + ")"); err != nil {
		return nil, err
	}
	return f.ClientTLS("")
}

// natsSecurity sets the TLS and login of a NATS command's connection. With a nkey seed
// (nats_nkey_seed_file, $BERTH_NATS_NKEY_SEED_FILE) it logs in as the berth user of
// `berth certs nats-config`, with that user's inbox; with a seed or a tls:// URL it uses
// ca_file, cert_file and key_file, the same files as the HTTP commands. A plain nats://
// URL without a seed stays plaintext even when those files are set (berth dev --tls keeps
// its NATS in plaintext).
func natsSecurity(ctx context.Context, cfg *natsbus.Config) error {
	seed := contextValue(ctx, settingNATSSeed)
	secure := seed != ""
	for _, u := range cfg.URLs {
		if strings.HasPrefix(u, "tls://") {
			secure = true
		}
	}
	if !secure {
		return nil
	}
	a := natsbus.Auth{CertFile: contextValue(ctx, settingCertFile), KeyFile: contextValue(ctx, settingKeyFile),
		TrustedCAFile: contextValue(ctx, settingCAFile), NKeySeedFile: seed}
	if seed != "" {
		a.InboxPrefix = natsconf.Inbox("berth")
	}
	if err := a.Validate("NATS (ca_file, cert_file, key_file, nats_nkey_seed_file)"); err != nil {
		return err
	}
	return a.Apply(cfg)
}

// tlsMu orders tlsClient's check and set of a client's transport before every Do of that
// client, whichever goroutine calls it.
var tlsMu sync.Mutex

// tlsClient sets hc's transport from cliTLS before its first request; every request calls
// it first.
func tlsClient(ctx context.Context, hc *http.Client) error {
	cfg, err := cliTLS(ctx)
	if err != nil {
		return err
	}
	tlsMu.Lock()
	defer tlsMu.Unlock()
	if cfg != nil && hc.Transport == nil {
		hc.Transport = &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	}
	return nil
}

// tlsProblem explains an error that is a TLS failure (an unknown CA, a certificate the
// server refused, plaintext against HTTPS); "" when it is not one.
func tlsProblem(err error) string {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var cv *tls.CertificateVerificationError
	msg := err.Error()
	switch {
	case errors.As(err, &ua), errors.As(err, &cv):
		return "its TLS certificate is not signed by a CA this CLI trusts; set ca_file (berth context set NAME --ca-file FILE, or $" + envCAFile + ")"
	case errors.As(err, &hn):
		return "its TLS certificate is not valid for this host name (" + hn.Error() + ")"
	case strings.Contains(msg, "certificate required"), strings.Contains(msg, "bad certificate"), strings.Contains(msg, "unknown certificate authority"):
		return "it requires a client certificate of its CA; set cert_file and key_file (berth context set NAME --cert-file F --key-file F, or $" + envCertFile + " and $" + envKeyFile + ")"
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return "it speaks plain HTTP; use an http:// URL"
	}
	return ""
}

// accessHint rewrites the message of a 401 or 403 answer of an API so that it says what
// to do; other answers keep their message.
func accessHint(ctx context.Context, status int, what, base, msg string) string {
	switch status {
	case http.StatusUnauthorized:
		sent := "no API token was sent"
		if bearerToken(ctx) != "" {
			sent = "the API token sent was not accepted"
		}
		return fmt.Sprintf("the %s at %s requires an API token (401: %s; %s): give one with $%s or `berth context set NAME --token-stdin`",
			what, base, msg, sent, envToken)
	case http.StatusForbidden:
		return fmt.Sprintf("the %s at %s refused this (403): %s; ask an admin for a token whose role and scopes cover it", what, base, msg)
	}
	return msg
}

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Make API tokens for the controller's token file",
		Long: `The controller's API takes bearer tokens when it has a token file (tokens_file,
--tokens-file, $BERTH_TOKENS_FILE). Each token has a name (who, in the audit records), a
role and scopes:

  viewer    reads everything
  deployer  also deploys, runs tasks, pauses, resumes, aborts and rolls back, in its scopes
  admin     also edits the service tree, in its scopes

A scope is a subtree of the service tree (hotel covers hotel and hotel/search, not hotels);
"/" is the whole tree. The file stores only the SHA-256 of each token:

  tokens:
    - name: alice
      role: deployer
      scopes: [hotel]
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newTokenNewCmd(), newTokenHashCmd())
	return cmd
}

func newTokenNewCmd() *cobra.Command {
	var (
		name, role string
		scopes     []string
	)
	cmd := &cobra.Command{
		Use:   "new --name NAME --role ROLE --scope PATH",
		Short: "Make a token; print it once, and the entry to add to the token file",
		Long: `berth token new makes a random token and prints it on standard output, once: the
controller only ever stores its hash. The entry for the token file goes to standard error,
so that the token alone can be piped into ` + "`berth context set NAME --token-stdin`" + `.`,
		Example: `  berth token new --name alice --role deployer --scope hotel
  berth token new --name ci --role deployer --scope hotel/search --scope flight/search 2>>tokens.yaml | berth context set prod --token-stdin`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := apitoken.ParseRole(role)
			if err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			clean, err := apitoken.CheckEntry(name, r, scopes)
			if err != nil {
				return err
			}
			tok, err := apitoken.New()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "# add under tokens: in the controller's token file, then restart the controller\n%s", apitoken.FormatEntry(name, r, clean, tok))
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "who the token is, in audit records (required)")
	f.StringVar(&role, "role", "", "viewer, deployer or admin (required)")
	f.StringArrayVar(&scopes, "scope", nil, `a subtree the token may act on (repeatable; "/" for the whole tree; required)`)
	cmd.MarkFlagRequired("name")
	cmd.MarkFlagRequired("role")
	cmd.MarkFlagRequired("scope")
	return cmd
}

func newTokenHashCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "hash < TOKEN",
		Short: "Print the SHA-256 of a token read from standard input, as the token file stores it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
			if err != nil {
				return err
			}
			tok := strings.TrimSpace(string(b))
			if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
				return errors.New("token hash: want one token on standard input")
			}
			fmt.Fprintln(cmd.OutOrStdout(), apitoken.Hash(tok))
			return nil
		},
	}
}
