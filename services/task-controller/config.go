package controller

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
)

// DefaultListen is where the API listens by default; the CLI's default endpoint
// (http://127.0.0.1:7070) and berth dev use it.
const DefaultListen = "127.0.0.1:7070"

// DefaultNamesURL is the name service's default HTTP API address (berth dev serves it
// there too).
const DefaultNamesURL = "http://127.0.0.1:7071"

// Config is berth-controller's configuration: defaults from DefaultConfig, then a YAML
// file, then BERTH_* variables, then flags (pkg/config).
type Config struct {
	// Listen is host:port of the HTTP API, which also serves /metrics, /healthz, /readyz.
	Listen string `yaml:"listen" env:"LISTEN" flag:"listen" usage:"host:port of the HTTP API (also /metrics, /healthz, /readyz)"`
	// ListenMetrics, when set, serves /metrics, /healthz and /readyz on a second address.
	ListenMetrics string `yaml:"listen_metrics" env:"LISTEN_METRICS" flag:"listen-metrics" usage:"host:port of a second /metrics, /healthz, /readyz (empty: only on --listen)"`
	// Replica names this replica in logs, events and the election.
	Replica string `yaml:"replica" env:"REPLICA" flag:"replica" usage:"this replica's name (default hostname-pid)"`
	// NATS is the NATS server URL (several, comma separated).
	NATS string `yaml:"nats" env:"NATS_URL" flag:"nats" usage:"NATS server URL(s), comma separated"`
	// Coord lists coord members' client addresses (host:port, comma separated).
	Coord string `yaml:"coord" env:"COORD" flag:"coord" usage:"coord members (host:port, comma separated)"`
	// SessionTTL is the TTL of the replica's coord session: how long a dead leader keeps
	// its leadership.
	SessionTTL time.Duration `yaml:"session_ttl" env:"SESSION_TTL" flag:"session-ttl" usage:"TTL of the coord session (a dead leader's leadership lasts this long)"`
	// StepRequestTimeout bounds the wait for an agent's immediate reply to a step.
	StepRequestTimeout time.Duration `yaml:"step_request_timeout" env:"STEP_REQUEST_TIMEOUT" flag:"step-request-timeout" usage:"wait for an agent's reply to a step request"`
	// RetryBackoff is the first pause before an infrastructure failure is retried.
	RetryBackoff time.Duration `yaml:"retry_backoff" env:"RETRY_BACKOFF" flag:"retry-backoff" usage:"first pause before retrying an infrastructure failure (doubles)"`
	// RetryBackoffMax caps the pause between retries.
	RetryBackoffMax time.Duration `yaml:"retry_backoff_max" env:"RETRY_BACKOFF_MAX" flag:"retry-backoff-max" usage:"longest pause between retries"`
	// PollInterval is how often a step out at an agent is asked about again.
	PollInterval time.Duration `yaml:"poll_interval" env:"POLL_INTERVAL" flag:"poll-interval" usage:"how often a running step is asked about again"`
	// ResultGrace is how long past a step's timeout its result is waited for.
	ResultGrace time.Duration `yaml:"result_grace" env:"RESULT_GRACE" flag:"result-grace" usage:"wait past a step's timeout before it is timed_out"`
	// NamesURL is the base URL of the name service's HTTP API (berth-name-service
	// http_listen); /v1/names/ proxies to it so that the console talks to one origin.
	// Empty turns the proxy off.
	NamesURL string `yaml:"names_url" env:"NAMES_URL" flag:"names-url" usage:"base URL of the name service's HTTP API, proxied at /v1/names/ (empty: off)"`
	// EnsureStreams creates or updates the JetStream streams at start.
	EnsureStreams bool `yaml:"ensure_streams" env:"ENSURE_STREAMS" flag:"ensure-streams" usage:"create or update the JetStream streams at start"`
	// HTTPTLS serves the API (and listen_metrics) over HTTPS: cert_file and key_file turn
	// it on, trusted_ca_file requires client certificates of that CA (mutual TLS). Flags
	// --http-cert-file, --http-key-file, --http-trusted-ca-file. The same files are the
	// controller's identity towards an https names_url.
	HTTPTLS certs.Files `yaml:"http_tls" env:"HTTP_" flag:"http-"`
	// CoordTLS secures the link to coord: trusted_ca_file is the CA of coord's certificate,
	// cert_file and key_file the client certificate (--coord-cert-file, ...).
	CoordTLS certs.Files `yaml:"coord_tls" env:"COORD_" flag:"coord-"`
	// NATSAuth is NATS's TLS and login (--nats-cert-file, --nats-nkey-seed-file, ...).
	NATSAuth natsbus.Auth `yaml:"nats_auth" env:"NATS_" flag:"nats-"`
	// TokensFile names the API token file (pkg/apitoken); empty leaves the API open to
	// anyone who reaches it, without audit records (berth dev).
	TokensFile string `yaml:"tokens_file" env:"TOKENS_FILE" flag:"tokens-file" usage:"API token file (roles and scopes; empty: the API is open and unaudited)"`
	// Log selects the log format and level.
	Log logging.Config `yaml:"log"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Listen:             DefaultListen,
		Replica:            fmt.Sprintf("%s-%d", host, os.Getpid()),
		NATS:               "nats://127.0.0.1:4222",
		Coord:              "127.0.0.1:7379",
		SessionTTL:         3 * time.Second,
		StepRequestTimeout: 5 * time.Second,
		RetryBackoff:       time.Second,
		RetryBackoffMax:    30 * time.Second,
		PollInterval:       5 * time.Second,
		ResultGrace:        30 * time.Second,
		EnsureStreams:      true,
		NamesURL:           DefaultNamesURL,
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen %q: want host:port", c.Listen)
	}
	if c.ListenMetrics != "" {
		if _, _, err := net.SplitHostPort(c.ListenMetrics); err != nil {
			return fmt.Errorf("listen_metrics %q: want host:port", c.ListenMetrics)
		}
	}
	if c.Replica == "" || strings.ContainsAny(c.Replica, " \t\n/") {
		return fmt.Errorf("replica %q: want a name without spaces or slashes", c.Replica)
	}
	switch {
	case c.SessionTTL < coordclient.MinSessionTTL || c.SessionTTL > time.Minute:
		return fmt.Errorf("session_ttl %s: want %s to 1m", c.SessionTTL, coordclient.MinSessionTTL)
	case c.StepRequestTimeout <= 0:
		return fmt.Errorf("step_request_timeout %s: want more than 0", c.StepRequestTimeout)
	case c.RetryBackoff <= 0:
		return fmt.Errorf("retry_backoff %s: want more than 0", c.RetryBackoff)
	case c.RetryBackoffMax < c.RetryBackoff:
		return fmt.Errorf("retry_backoff_max %s: want at least retry_backoff %s", c.RetryBackoffMax, c.RetryBackoff)
	case c.PollInterval <= 0:
		return fmt.Errorf("poll_interval %s: want more than 0", c.PollInterval)
	case c.ResultGrace < 0:
		return fmt.Errorf("result_grace %s: want 0 or more", c.ResultGrace)
	}
	for _, ep := range splitList(c.Coord) {
		if _, _, err := net.SplitHostPort(ep); err != nil {
			return fmt.Errorf("coord: endpoint %q: want host:port", ep)
		}
	}
	if _, err := ParseNamesURL(c.NamesURL); err != nil {
		return fmt.Errorf("names_url: %w", err)
	}
	if err := c.Log.Validate(); err != nil {
		return fmt.Errorf("log: %w", err)
	}
	if err := c.HTTPTLS.ValidateServer("http_tls"); err != nil {
		return err
	}
	if err := c.CoordTLS.ValidateClient("coord_tls"); err != nil {
		return err
	}
	if err := c.NATSAuth.Validate("nats_auth"); err != nil {
		return err
	}
	if c.TokensFile != "" {
		if _, err := apitoken.Load(c.TokensFile); err != nil {
			return fmt.Errorf("tokens_file: %w", err)
		}
	}
	return nil
}

// ParseNamesURL checks a names_url: empty (nil: no proxy), or an http or https URL with a
// host and no query, user or fragment; a path is kept as a prefix (a proxy in front of the
// name service).
func ParseNamesURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%q: want an http:// or https:// URL", s)
	case u.Host == "":
		return nil, fmt.Errorf("%q: no host", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return nil, fmt.Errorf("%q: want scheme://host[:port][/path] without user, query or fragment", s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

var errNoCoord = errors.New("coord: no endpoint configured and no client given")

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
