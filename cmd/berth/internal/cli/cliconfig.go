package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/berthdev/berth/pkg/natsbus"
)

// The CLI configuration: named contexts, each a set of endpoints and a token, and the
// current one. Every endpoint a command uses is, in order of precedence, its flag, its
// environment variable, the selected context's value, then the built-in default (berth
// dev's address on 127.0.0.1). The selected context is --context, else $BERTH_CONTEXT,
// else the file's current_context; none at all is fine (the defaults apply).
const (
	envConfigFile = "BERTH_CONFIG_FILE"
	envContext    = "BERTH_CONTEXT"
	envToken      = "BERTH_TOKEN"
)

// cliConfig is the file ~/.config/berth/config.yaml (or $BERTH_CONFIG_FILE).
type cliConfig struct {
	CurrentContext string                 `yaml:"current_context,omitempty"`
	Contexts       map[string]*cliContext `yaml:"contexts,omitempty"`

	// path is where the configuration was read from and is saved to.
	path string
}

// cliContext is one named context. Empty fields fall through to the defaults.
type cliContext struct {
	Controller string       `yaml:"controller,omitempty"`
	Names      string       `yaml:"names,omitempty"`
	Coord      endpointList `yaml:"coord,omitempty"`
	NATS       string       `yaml:"nats,omitempty"`
	Token      string       `yaml:"token,omitempty"`
	// CAFile, CertFile and KeyFile are the TLS files of the HTTP commands: the CA of the
	// APIs' certificates and the client certificate for mutual TLS.
	CAFile   string `yaml:"ca_file,omitempty"`
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
	// NATSNKeySeedFile logs the NATS commands in as the berth user of `berth certs
	// nats-config`.
	NATSNKeySeedFile string `yaml:"nats_nkey_seed_file,omitempty"`
}

// contextFields are the keys of a context, for messages and `berth context set --unset`.
var contextFields = []string{"controller", "names", "coord", "nats", "token", "ca_file", "cert_file", "key_file", "nats_nkey_seed_file"}

// endpointList is coord's members: a YAML list, or one string of comma-separated members.
type endpointList []string

// UnmarshalYAML takes a sequence or a comma-separated scalar.
func (l *endpointList) UnmarshalYAML(n *yaml.Node) error {
	var raw []string
	switch n.Kind {
	case yaml.ScalarNode:
		raw = strings.Split(n.Value, ",")
	case yaml.SequenceNode:
		if err := n.Decode(&raw); err != nil {
			return err
		}
	default:
		return fmt.Errorf("line %d: coord: want host:port members, as a list or comma separated", n.Line)
	}
	*l = splitEndpoints(strings.Join(raw, ","))
	return nil
}

func splitEndpoints(s string) []string {
	var out []string
	for ep := range strings.SplitSeq(s, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			out = append(out, ep)
		}
	}
	return out
}

// contextName is what a context may be called.
var contextName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func checkContextName(name string) error {
	if !contextName.MatchString(name) {
		return fmt.Errorf("context name %q: want 1 to 63 letters, digits, . _ -, starting with a letter or digit", name)
	}
	return nil
}

// configPath is $BERTH_CONFIG_FILE, else berth/config.yaml in the user's configuration
// directory (~/.config on Linux).
func configPath() (string, error) {
	if p := os.Getenv(envConfigFile); p != "" {
		return p, nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the CLI config: %w (set $%s)", err, envConfigFile)
	}
	return filepath.Join(d, "berth", "config.yaml"), nil
}

// loadConfig reads the configuration; a missing file is an empty configuration.
func loadConfig() (*cliConfig, error) {
	path, err := configPath()
	if err != nil {
		return nil, err
	}
	c := &cliConfig{path: path}
	data, err := readFileLimit(path, maxInputFile)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the CLI config: %w", err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return c, nil
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.ReplaceAll(msg, "in type cli.cliContext", "in a context (want "+strings.Join(contextFields, ", ")+")")
		msg = strings.ReplaceAll(msg, "in type cli.cliConfig", "at the top (want current_context, contexts)")
		return nil, fmt.Errorf("CLI config %s: %s (fix the file, or point $%s at another)", path, msg, envConfigFile)
	}
	for name, ctx := range c.Contexts {
		if err := checkContextName(name); err != nil {
			return nil, fmt.Errorf("CLI config %s: %w", path, err)
		}
		if ctx == nil {
			c.Contexts[name] = &cliContext{}
			continue
		}
		if err := ctx.validate(); err != nil {
			return nil, fmt.Errorf("CLI config %s: context %s: %w", path, name, err)
		}
	}
	return c, nil
}

// save writes the configuration atomically, readable by its owner only (it holds tokens).
func (c *cliConfig) save() error {
	var buf bytes.Buffer
	buf.WriteString("# berth CLI configuration: see `berth context --help`.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	data := buf.Bytes()
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("save the CLI config: %w", err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(c.path), "."+filepath.Base(c.path)+"."+hex.EncodeToString(rnd[:]))
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("save the CLI config: %w", err)
	}
	if err := os.Rename(tmp, c.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save the CLI config: %w", err)
	}
	return nil
}

// names returns the contexts' names in order.
func (c *cliConfig) names() []string {
	out := make([]string, 0, len(c.Contexts))
	for n := range c.Contexts {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// validate checks the endpoints a context sets.
func (x *cliContext) validate() error {
	for _, f := range []struct{ name, v string }{{"controller", x.Controller}, {"names", x.Names}} {
		if f.v == "" {
			continue
		}
		if err := checkHTTPURL(f.v); err != nil {
			return fmt.Errorf("%s %q: %w", f.name, f.v, err)
		}
	}
	if x.NATS != "" {
		for u := range strings.SplitSeq(x.NATS, ",") {
			p, err := url.Parse(strings.TrimSpace(u))
			if err != nil || (p.Scheme != "nats" && p.Scheme != "tls" && p.Scheme != "ws" && p.Scheme != "wss") || p.Host == "" {
				return fmt.Errorf("nats %q: want nats://host:port (comma separated for several)", x.NATS)
			}
		}
	}
	for _, ep := range x.Coord {
		if _, port, ok := strings.Cut(ep, ":"); !ok || port == "" || strings.Contains(ep, "/") {
			return fmt.Errorf("coord member %q: want host:port", ep)
		}
	}
	if strings.ContainsAny(x.Token, " \t\r\n") {
		return errors.New("token: contains white space")
	}
	if (x.CertFile == "") != (x.KeyFile == "") {
		return errors.New("cert_file and key_file: set both or neither")
	}
	return nil
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("want an http:// or https:// URL")
	}
	return nil
}

// setting is one value the CLI resolves: its environment variable, built-in default and
// field of a context.
type setting struct {
	name string
	env  string
	def  string
	get  func(*cliContext) string
}

var (
	settingController = setting{"controller", envControllerURL, defaultControllerURL, func(c *cliContext) string { return c.Controller }}
	settingNames      = setting{"names", envNamesURL, defaultNamesURL, func(c *cliContext) string { return c.Names }}
	settingCoord      = setting{"coord", envCoordEndpoints, defaultCoordEndpoint, func(c *cliContext) string { return strings.Join(c.Coord, ",") }}
	settingNATS       = setting{"nats", envNATSURL, natsbus.DefaultURL, func(c *cliContext) string { return c.NATS }}
	settingToken      = setting{"token", envToken, "", func(c *cliContext) string { return c.Token }}
	allSettings       = []setting{settingController, settingNames, settingCoord, settingNATS, settingToken, settingCAFile, settingCertFile, settingKeyFile, settingNATSSeed}
)

// resolved is a setting's value and where it came from.
type resolved struct {
	Value  string `json:"value"`
	Source string `json:"source"`
}

// selection is the context a command uses: its name ("" when none) and values, or why it
// could not be read.
type selection struct {
	name   string
	source string // where the name came from: --context, $BERTH_CONTEXT, current_context
	ctx    *cliContext
	path   string
	err    error
}

type selectionKey struct{}

// useContexts adds --context to root and makes every command resolve its context before
// it runs, so that the HTTP clients find the token in the command's context.
func useContexts(root *cobra.Command) {
	root.PersistentFlags().String("context", "", "use this context of the CLI config (also $"+envContext+"; see berth context)")
	_ = root.RegisterFlagCompletionFunc("context", completeContexts)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		cmd.SetContext(context.WithValue(cmd.Context(), selectionKey{}, selectContext(cmd)))
		return nil
	}
}

// selectContext finds the selected context: --context (when cmd has it), $BERTH_CONTEXT,
// then the file's current_context.
func selectContext(cmd *cobra.Command) *selection {
	s := &selection{}
	if cmd != nil {
		if f := cmd.Flags().Lookup("context"); f != nil && f.Changed {
			s.name, s.source = f.Value.String(), "--context"
		}
	}
	if s.name == "" {
		if v := os.Getenv(envContext); v != "" {
			s.name, s.source = v, "$"+envContext
		}
	}
	c, err := loadConfig()
	if err != nil {
		s.err = err
		return s
	}
	s.path = c.path
	if s.name == "" && c.CurrentContext != "" {
		s.name, s.source = c.CurrentContext, "current_context"
	}
	if s.name == "" {
		return s
	}
	x, ok := c.Contexts[s.name]
	if !ok {
		known := "none yet"
		if len(c.Contexts) > 0 {
			known = strings.Join(c.names(), ", ")
		}
		s.err = fmt.Errorf("context %q (from %s) is not in %s (contexts: %s); create it with `berth context set %s --controller URL ...` or pick one with `berth context use`",
			s.name, s.source, c.path, known, s.name)
		return s
	}
	s.ctx = x
	return s
}

// selectionOf returns the selection the command resolved before it ran, or resolves it now.
func selectionOf(cmd *cobra.Command) *selection {
	if cmd != nil {
		if s, ok := cmd.Context().Value(selectionKey{}).(*selection); ok {
			return s
		}
	}
	return selectContext(cmd)
}

// resolveSetting resolves s for cmd: the flag flagName when given on the command line
// (flagValue is its value), else the environment, else the selected context, else
// flagValue (the flag's default) or the built-in default.
func resolveSetting(cmd *cobra.Command, s setting, flagName, flagValue string) (resolved, error) {
	if flagName != "" && cmd != nil {
		if f := cmd.Flags().Lookup(flagName); f != nil && f.Changed {
			return resolved{flagValue, "--" + flagName}, nil
		}
	}
	if v := os.Getenv(s.env); v != "" {
		return resolved{v, "$" + s.env}, nil
	}
	sel := selectionOf(cmd)
	if sel.err != nil {
		return resolved{}, sel.err
	}
	if sel.ctx != nil {
		if v := s.get(sel.ctx); v != "" {
			return resolved{v, "context " + sel.name}, nil
		}
	}
	if flagName != "" && flagValue != "" {
		return resolved{flagValue, "default"}, nil
	}
	return resolved{s.def, "default"}, nil
}

// bearerToken is the API token for the HTTP commands: $BERTH_TOKEN, else the selected
// context's (as resolved before the command ran).
func bearerToken(ctx context.Context) string {
	if v := os.Getenv(envToken); v != "" {
		return v
	}
	if s, ok := ctx.Value(selectionKey{}).(*selection); ok && s.ctx != nil {
		return s.ctx.Token
	}
	if s := selectContext(nil); s.ctx != nil {
		return s.ctx.Token
	}
	return ""
}

// unreachable is the error of an HTTP endpoint that did not answer, saying what to do.
func unreachable(what, base, flag string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if hint := tlsProblem(err); hint != "" {
		return fmt.Errorf("TLS with the %s at %s failed (%w): %s", what, base, err, hint)
	}
	return fmt.Errorf("cannot reach the %s at %s (%w): is `berth dev` running? set %s, or pick a context with `berth context use`", what, base, err, flag)
}

// completeContexts completes context names from the CLI config.
func completeContexts(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	c, err := loadConfig()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return c.names(), cobra.ShellCompDirectiveNoFileComp
}
