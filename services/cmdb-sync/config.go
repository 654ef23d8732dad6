package cmdbsync

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/services/cmdb-sync/internal/source"
)

// Config is berth-cmdb-sync's configuration. Load it with pkg/config (defaults from
// DefaultConfig, then a YAML file, then BERTH_* variables, then flags).
type Config struct {
	// Name identifies this replica in the election, events (ce-source) and logs.
	Name string `yaml:"name" env:"NAME" flag:"name" usage:"this replica's name"`
	// NATS is the NATS server URL (several, comma separated).
	NATS string `yaml:"nats" env:"NATS_URL" flag:"nats" usage:"NATS server URL(s), comma separated"`
	// Coord lists coord members' client addresses (host:port, comma separated).
	Coord string `yaml:"coord" env:"COORD_ENDPOINTS" flag:"coord" usage:"coord members (host:port, comma separated)"`
	// ListenMetrics is host:port of /metrics, /healthz and /readyz; empty disables them.
	ListenMetrics string `yaml:"listen_metrics" env:"LISTEN_METRICS" flag:"listen-metrics" usage:"host:port of /metrics, /healthz and /readyz (empty: off)"`

	// Source is the CMDB.
	Source SourceConfig `yaml:"source"`
	// PollInterval is how often the source is read.
	PollInterval time.Duration `yaml:"poll_interval" env:"POLL_INTERVAL" flag:"poll-interval" usage:"how often the CMDB is read"`
	// GracePeriod is how long a host's agent may be gone before the host is down.
	GracePeriod time.Duration `yaml:"grace_period" env:"GRACE_PERIOD" flag:"grace-period" usage:"how long an agent may be gone before its host is down"`
	// DefaultMaxContainers is the container cap of a host whose row gives none.
	DefaultMaxContainers int `yaml:"default_max_containers" env:"DEFAULT_MAX_CONTAINERS" flag:"default-max-containers" usage:"container cap of a host whose row gives none"`
	// MismatchTolerance is how far (a fraction) the agent's CPU count or memory may be
	// from the CMDB's before the host is reported as a mismatch.
	MismatchTolerance float64 `yaml:"mismatch_tolerance" env:"MISMATCH_TOLERANCE" flag:"mismatch-tolerance" usage:"fraction the agent's CPU or memory may differ from the CMDB's"`
	// SessionTTL is the TTL of the coord session the replica campaigns with.
	SessionTTL time.Duration `yaml:"session_ttl" env:"SESSION_TTL" flag:"session-ttl" usage:"TTL of the election session"`

	// HTTPTLS serves listen_metrics over HTTPS (--http-cert-file, --http-key-file); with
	// trusted_ca_file (--http-trusted-ca-file) scrapers need a certificate of that CA.
	HTTPTLS certs.Files `yaml:"http_tls" env:"HTTP_" flag:"http-"`
	// CoordTLS secures the link to coord (--coord-cert-file, ...).
	CoordTLS certs.Files `yaml:"coord_tls" env:"COORD_" flag:"coord-"`
	// NATSAuth is NATS's TLS and login (--nats-cert-file, --nats-nkey-seed-file, ...).
	NATSAuth natsbus.Auth `yaml:"nats_auth" env:"NATS_" flag:"nats-"`

	// Log selects the log format and level.
	Log logging.Config `yaml:"log"`
}

// SourceConfig says which CMDB to read.
type SourceConfig struct {
	// Kind is file, http or postgres.
	Kind string `yaml:"kind" env:"SOURCE_KIND" flag:"source-kind" usage:"CMDB source: file, http or postgres"`
	// Path is the file of a file source.
	Path string `yaml:"path" env:"SOURCE_PATH" flag:"source-path" usage:"file source: the inventory file (YAML, JSON or CSV)"`
	// Format is yaml, json or csv; empty guesses from the file's extension.
	Format string `yaml:"format" env:"SOURCE_FORMAT" flag:"source-format" usage:"file source: yaml, json or csv (default: from the extension)"`
	// URL is the endpoint of an http source.
	URL string `yaml:"url" env:"SOURCE_URL" flag:"source-url" usage:"http source: the JSON endpoint"`
	// Headers are sent with every request of an http source ("Name: value").
	Headers []string `yaml:"headers" env:"SOURCE_HEADERS" flag:"source-header" usage:"http source: a request header, Name: value"`
	// ItemsPath is where the host list is in a JSON or YAML document that is not a list
	// (dot separated keys; default hosts).
	ItemsPath string `yaml:"items_path" env:"SOURCE_ITEMS_PATH" flag:"source-items-path" usage:"key path of the host list in the document (default hosts)"`
	// DSN is the connection string of a postgres source.
	DSN string `yaml:"dsn" env:"SOURCE_DSN" flag:"source-dsn" usage:"postgres source: connection string or URL"`
	// Query is the SELECT of a postgres source, or a table name.
	Query string `yaml:"query" env:"SOURCE_QUERY" flag:"source-query" usage:"postgres source: the SELECT, or a table name"`
	// Timeout bounds one read of the source.
	Timeout time.Duration `yaml:"timeout" env:"SOURCE_TIMEOUT" flag:"source-timeout" usage:"bound of one read of the CMDB"`
	// Mapping maps Berth's field names onto the source's.
	Mapping Mapping `yaml:"mapping"`
}

// Mapping names, for each of Berth's fields, the source's field (a key, a CSV column, a
// SQL column) holding it; an empty name means Berth's own name.
type Mapping struct {
	ID            string `yaml:"id"`
	DC            string `yaml:"dc"`
	Rack          string `yaml:"rack"`
	IP            string `yaml:"ip"`
	CPU           string `yaml:"cpu"`
	Memory        string `yaml:"memory"`
	Disk          string `yaml:"disk"`
	Labels        string `yaml:"labels"`
	MaxContainers string `yaml:"max_containers"`
	IPPool        string `yaml:"ip_pool"`
	State         string `yaml:"state"`
	// LabelPrefix makes every source field named <prefix><key> a label; default "label.".
	LabelPrefix string `yaml:"label_prefix"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Name:                 host,
		NATS:                 "nats://127.0.0.1:4222",
		Coord:                "127.0.0.1:7379",
		ListenMetrics:        "127.0.0.1:7394",
		Source:               SourceConfig{Kind: "file", Path: "/etc/berth/hosts.yaml", Timeout: 30 * time.Second, Query: "hosts"},
		PollInterval:         30 * time.Second,
		GracePeriod:          30 * time.Second,
		DefaultMaxContainers: 64,
		MismatchTolerance:    0.1,
		SessionTTL:           10 * time.Second,
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("name: empty")
	case c.PollInterval < 100*time.Millisecond:
		return fmt.Errorf("poll_interval %s: want at least 100ms", c.PollInterval)
	case c.GracePeriod < 100*time.Millisecond:
		return fmt.Errorf("grace_period %s: want at least 100ms", c.GracePeriod)
	case c.DefaultMaxContainers < 1 || c.DefaultMaxContainers > 1024:
		return fmt.Errorf("default_max_containers %d: want 1 to 1024", c.DefaultMaxContainers)
	case c.MismatchTolerance < 0 || c.MismatchTolerance >= 1:
		return fmt.Errorf("mismatch_tolerance %v: want 0 to 1 (exclusive)", c.MismatchTolerance)
	case c.SessionTTL < time.Second:
		return fmt.Errorf("session_ttl %s: want at least 1s", c.SessionTTL)
	case c.Source.Timeout <= 0:
		return fmt.Errorf("source.timeout %s: want more than 0", c.Source.Timeout)
	}
	if _, err := c.Source.build(); err != nil {
		return err
	}
	for _, ep := range splitList(c.Coord) {
		if _, _, err := net.SplitHostPort(ep); err != nil {
			return fmt.Errorf("coord: endpoint %q: want host:port", ep)
		}
	}
	if c.ListenMetrics != "" {
		if _, _, err := net.SplitHostPort(c.ListenMetrics); err != nil {
			return fmt.Errorf("listen_metrics %q: want host:port", c.ListenMetrics)
		}
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
	return c.Log.Validate()
}

// build makes the source the configuration names.
func (s SourceConfig) build() (source.Source, error) {
	switch s.Kind {
	case "file":
		src, err := source.NewFile(s.Path, s.Format, s.ItemsPath)
		if err != nil {
			return nil, fmt.Errorf("source: %w", err)
		}
		return src, nil
	case "http":
		h := http.Header{}
		for _, line := range s.Headers {
			k, v, ok := strings.Cut(line, ":")
			if !ok || strings.TrimSpace(k) == "" {
				return nil, fmt.Errorf("source.headers: %q: want Name: value", line)
			}
			h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
		src, err := source.NewHTTP(s.URL, s.ItemsPath, h, nil, s.Timeout)
		if err != nil {
			return nil, fmt.Errorf("source: %w", err)
		}
		return src, nil
	case "postgres":
		src, err := source.NewPostgres(s.DSN, s.Query, s.Timeout)
		if err != nil {
			return nil, fmt.Errorf("source: %w", err)
		}
		return src, nil
	}
	return nil, fmt.Errorf("source.kind %q: want file, http or postgres", s.Kind)
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
