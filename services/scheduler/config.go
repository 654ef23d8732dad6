package scheduler

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/proto/subjects"
)

// HardMaxCount is the largest Config.MaxCount: one placement is one coord transaction,
// and a transaction holds at most 128 compares and 128 ops per branch (two compares per
// host touched plus one for the request record; an allocation and a guard per host plus
// the record).
const HardMaxCount = 63

// Config is berth-scheduler's configuration. Load it with pkg/config (defaults from
// DefaultConfig, then a YAML file, then BERTH_* variables, then flags).
type Config struct {
	// Name identifies this replica in events (ce-source berth-scheduler/<name>) and logs.
	Name string `yaml:"name" env:"NAME" flag:"name" usage:"this replica's name (ce-source)"`
	// NATS is the NATS server URL (several, comma separated).
	NATS string `yaml:"nats" env:"NATS_URL" flag:"nats" usage:"NATS server URL(s), comma separated"`
	// Coord lists coord members' client addresses (host:port, comma separated).
	Coord string `yaml:"coord" env:"COORD_ENDPOINTS" flag:"coord" usage:"coord members (host:port, comma separated)"`
	// ListenMetrics is host:port of /metrics, /healthz and /readyz; empty disables them.
	ListenMetrics string `yaml:"listen_metrics" env:"LISTEN_METRICS" flag:"listen-metrics" usage:"host:port of /metrics, /healthz and /readyz (empty: off)"`

	// MaxCount is the largest count a placement request may ask for (1 to HardMaxCount).
	MaxCount int `yaml:"max_count" env:"MAX_COUNT" flag:"max-count" usage:"largest count of one placement request"`
	// SampleMin is the fewest feasible hosts a decision ranks before choosing.
	SampleMin int `yaml:"sample_min" env:"SAMPLE_MIN" flag:"sample-min" usage:"fewest feasible hosts ranked per decision"`
	// SampleFactor is the feasible hosts ranked per allocation asked for, at least.
	SampleFactor int `yaml:"sample_factor" env:"SAMPLE_FACTOR" flag:"sample-factor" usage:"feasible hosts ranked per allocation asked for"`
	// MaxAttempts bounds the decisions made for one request when concurrent schedulers
	// keep winning its transaction.
	MaxAttempts int `yaml:"max_attempts" env:"MAX_ATTEMPTS" flag:"max-attempts" usage:"decisions per request before giving up on conflicts"`
	// RescheduleInterval is how often allocations of down hosts are looked for.
	RescheduleInterval time.Duration `yaml:"reschedule_interval" env:"RESCHEDULE_INTERVAL" flag:"reschedule-interval" usage:"how often allocations of down hosts are placed again"`
	// RecordTTL is how long the record of a committed request is kept to answer retries.
	RecordTTL time.Duration `yaml:"record_ttl" env:"RECORD_TTL" flag:"record-ttl" usage:"how long committed requests are remembered for retries"`
	// WorkConsumer is the durable consumer of berth.v1.work.place on BERTH_WORK, shared by
	// every replica.
	WorkConsumer string `yaml:"work_consumer" env:"WORK_CONSUMER" flag:"work-consumer" usage:"durable consumer name of the placement work queue"`
	// Concurrency is how many requests a replica handles at once (per subject).
	Concurrency int `yaml:"concurrency" env:"CONCURRENCY" flag:"concurrency" usage:"requests handled at once"`

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

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Name:               host,
		NATS:               "nats://127.0.0.1:4222",
		Coord:              "127.0.0.1:7379",
		ListenMetrics:      "127.0.0.1:7393",
		MaxCount:           60,
		SampleMin:          64,
		SampleFactor:       2,
		MaxAttempts:        16,
		RescheduleInterval: 2 * time.Second,
		RecordTTL:          24 * time.Hour,
		WorkConsumer:       "berth-scheduler",
		Concurrency:        16,
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("name: empty")
	case c.MaxCount < 1 || c.MaxCount > HardMaxCount:
		return fmt.Errorf("max_count %d: want 1 to %d (one coord transaction per request)", c.MaxCount, HardMaxCount)
	case c.SampleMin < 1:
		return fmt.Errorf("sample_min %d: want at least 1", c.SampleMin)
	case c.SampleFactor < 1:
		return fmt.Errorf("sample_factor %d: want at least 1", c.SampleFactor)
	case c.MaxAttempts < 1:
		return fmt.Errorf("max_attempts %d: want at least 1", c.MaxAttempts)
	case c.RescheduleInterval <= 0:
		return fmt.Errorf("reschedule_interval %s: want more than 0", c.RescheduleInterval)
	case c.RecordTTL < time.Minute:
		return fmt.Errorf("record_ttl %s: want at least 1m", c.RecordTTL)
	case c.Concurrency < 1:
		return fmt.Errorf("concurrency %d: want at least 1", c.Concurrency)
	}
	if err := subjects.Token(c.WorkConsumer); err != nil || strings.ContainsAny(c.WorkConsumer, "/\\") {
		return fmt.Errorf("work_consumer %q: want a NATS consumer name (no dots, spaces, wildcards or slashes)", c.WorkConsumer)
	}
	for _, ep := range c.CoordEndpoints() {
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

// NATSURLs splits NATS.
func (c *Config) NATSURLs() []string { return splitList(c.NATS) }

// CoordEndpoints splits Coord.
func (c *Config) CoordEndpoints() []string { return splitList(c.Coord) }

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
