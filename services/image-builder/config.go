package imagebuilder

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/image-builder/internal/buildctx"
	"github.com/berthdev/berth/services/image-builder/internal/engine"
)

// DefaultBaseName is the repository and tag of the base image `berth images base` makes,
// and of the builder's default base (in the configured registry).
const DefaultBaseName = "berth/base:busybox"

// Config is berth-image-builder's configuration. Load it with pkg/config (defaults from
// DefaultConfig, then a YAML file, then BERTH_* variables, then flags).
type Config struct {
	// Name identifies this replica in events (ce-source berth-image-builder/<name>), image
	// records and logs.
	Name string `yaml:"name" env:"NAME" flag:"name" usage:"this replica's name (ce-source)"`
	// NATS is the NATS server URL (several, comma separated).
	NATS string `yaml:"nats" env:"NATS_URL" flag:"nats" usage:"NATS server URL(s), comma separated"`
	// Coord lists coord members' client addresses (host:port, comma separated).
	Coord string `yaml:"coord" env:"COORD_ENDPOINTS" flag:"coord" usage:"coord members (host:port, comma separated)"`
	// ListenMetrics is host:port of /metrics, /healthz and /readyz; empty disables them.
	ListenMetrics string `yaml:"listen_metrics" env:"LISTEN_METRICS" flag:"listen-metrics" usage:"host:port of /metrics, /healthz and /readyz (empty: off)"`

	// DockerHost is the Docker engine's address (unix:///var/run/docker.sock,
	// tcp://host:2375); empty means $DOCKER_HOST, else the default socket.
	DockerHost string `yaml:"docker_host" env:"DOCKER_HOST" flag:"docker-host" usage:"Docker engine address (empty: $DOCKER_HOST, else the default socket)"`
	// Registry is the registry images are pushed to, host[:port].
	Registry string `yaml:"registry" env:"REGISTRY" flag:"registry" usage:"registry to push images to (host[:port])"`
	// RegistryEndpoint is where the builder itself reaches the registry's HTTP API,
	// host[:port], when that differs from Registry: the engine pushes to and pulls from
	// Registry, and in a container the builder may reach the registry only by another name
	// (docker-compose: 127.0.0.1:<published port> for the host's engine, registry:5000 for
	// the builder). Empty means Registry.
	RegistryEndpoint string `yaml:"registry_endpoint" env:"REGISTRY_ENDPOINT" flag:"registry-endpoint" usage:"host[:port] at which the builder reaches the registry's API (empty: registry)"`
	// RegistryScheme is http or https; empty means http for a loopback registry (as the
	// engine allows) and https otherwise.
	RegistryScheme string `yaml:"registry_scheme" env:"REGISTRY_SCHEME" flag:"registry-scheme" usage:"http or https (empty: http for loopback, else https)"`
	// RegistryUsername and RegistryPassword are the registry's credentials (HTTP basic);
	// empty for a registry without authentication.
	RegistryUsername string `yaml:"registry_username" env:"REGISTRY_USERNAME" flag:"registry-username" usage:"registry user (empty: none)"`
	RegistryPassword string `yaml:"registry_password" env:"REGISTRY_PASSWORD" flag:"registry-password" usage:"registry password"`
	// DefaultBaseImage is the base of services whose tree sets no base_image label; empty
	// means <registry>/berth/base:busybox (made by `berth images base`).
	DefaultBaseImage string `yaml:"default_base_image" env:"DEFAULT_BASE_IMAGE" flag:"default-base-image" usage:"base image of services without a base_image label (empty: <registry>/berth/base:busybox)"`
	// ConfirmTTL is how long a registry answer that confirmed an image record is trusted: a
	// cache hit within it reads the record from coord but skips the registry. Zero asks the
	// registry on every request.
	ConfirmTTL time.Duration `yaml:"confirm_ttl" env:"CONFIRM_TTL" flag:"confirm-ttl" usage:"how long a registry confirmation of an image record is trusted (0: ask every time)"`
	// ImageLabels are extra labels (key=value) set on every image built.
	ImageLabels []string `yaml:"image_labels" env:"IMAGE_LABELS" flag:"image-label" usage:"extra label key=value on every image built (repeatable)"`

	// WorkDir holds build directories (removed after each build) and the artifact cache.
	WorkDir string `yaml:"work_dir" env:"WORK_DIR" flag:"work-dir" usage:"directory of build contexts and the artifact cache"`
	// MaxPackageBytes bounds a package, downloaded and unpacked.
	MaxPackageBytes int64 `yaml:"max_package_bytes" env:"MAX_PACKAGE_BYTES" flag:"max-package-bytes" usage:"largest package, downloaded and unpacked, in bytes"`
	// Builds is how many builds this replica runs at once.
	Builds int `yaml:"builds" env:"BUILDS" flag:"builds" usage:"builds run at once"`
	// Concurrency is how many requests a replica handles at once (cache decisions and
	// waits for builds).
	Concurrency int `yaml:"concurrency" env:"CONCURRENCY" flag:"concurrency" usage:"requests handled at once"`
	// BuildTimeout bounds one build: fetch, unpack, build, push and record.
	BuildTimeout time.Duration `yaml:"build_timeout" env:"BUILD_TIMEOUT" flag:"build-timeout" usage:"bound of one build"`
	// LockTTL is the TTL of the coord session that holds build locks: a replica that dies
	// while building releases its lock after it.
	LockTTL time.Duration `yaml:"lock_ttl" env:"LOCK_TTL" flag:"lock-ttl" usage:"TTL of the coord session holding build locks"`
	// WorkConsumer is the durable consumer of berth.v1.work.build on BERTH_WORK, shared by
	// every replica.
	WorkConsumer string `yaml:"work_consumer" env:"WORK_CONSUMER" flag:"work-consumer" usage:"durable consumer name of the build work queue"`
	// RetryDelay is how long a work-queue request that failed on infrastructure waits
	// before it is delivered again.
	RetryDelay time.Duration `yaml:"retry_delay" env:"RETRY_DELAY" flag:"retry-delay" usage:"delay before a work request that failed on infrastructure is retried"`
	// MaxDeliver bounds the deliveries of one work-queue request.
	MaxDeliver int `yaml:"max_deliver" env:"MAX_DELIVER" flag:"max-deliver" usage:"deliveries of one work request before it fails for good"`
	// LogTail is how many lines of build output a reply or event carries.
	LogTail int `yaml:"log_tail" env:"LOG_TAIL" flag:"log-tail" usage:"lines of build output kept in replies and events"`

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
		Name:            host,
		NATS:            "nats://127.0.0.1:4222",
		Coord:           "127.0.0.1:7379",
		ListenMetrics:   "127.0.0.1:7395",
		Registry:        "127.0.0.1:5000",
		WorkDir:         filepath.Join(os.TempDir(), "berth-image-builder"),
		MaxPackageBytes: 2 << 30,
		Builds:          2,
		Concurrency:     64,
		BuildTimeout:    15 * time.Minute,
		LockTTL:         10 * time.Second,
		WorkConsumer:    "berth-image-builder",
		RetryDelay:      10 * time.Second,
		MaxDeliver:      10,
		LogTail:         30,
		ConfirmTTL:      5 * time.Second,
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("name: empty")
	case c.Registry == "" || strings.ContainsAny(c.Registry, "/ \t@"):
		return fmt.Errorf("registry %q: want host[:port]", c.Registry)
	case c.RegistryEndpoint != "" && (strings.ContainsAny(c.RegistryEndpoint, "/ ") || strings.Contains(c.RegistryEndpoint, "://")):
		return fmt.Errorf("registry_endpoint %q: want host[:port]", c.RegistryEndpoint)
	case c.RegistryScheme != "" && c.RegistryScheme != "http" && c.RegistryScheme != "https":
		return fmt.Errorf("registry_scheme %q: want http, https or empty", c.RegistryScheme)
	case c.RegistryPassword != "" && c.RegistryUsername == "":
		return errors.New("registry_password: set without registry_username")
	case c.WorkDir == "":
		return errors.New("work_dir: empty")
	case c.MaxPackageBytes < 1<<10:
		return fmt.Errorf("max_package_bytes %d: want at least 1024", c.MaxPackageBytes)
	case c.Builds < 1:
		return fmt.Errorf("builds %d: want at least 1", c.Builds)
	case c.Concurrency < 1:
		return fmt.Errorf("concurrency %d: want at least 1", c.Concurrency)
	case c.BuildTimeout < time.Second:
		return fmt.Errorf("build_timeout %s: want at least 1s", c.BuildTimeout)
	case c.LockTTL < time.Second:
		return fmt.Errorf("lock_ttl %s: want at least 1s", c.LockTTL)
	case c.RetryDelay <= 0:
		return fmt.Errorf("retry_delay %s: want more than 0", c.RetryDelay)
	case c.MaxDeliver < 1:
		return fmt.Errorf("max_deliver %d: want at least 1", c.MaxDeliver)
	case c.ConfirmTTL < 0:
		return fmt.Errorf("confirm_ttl %s: want 0 or more", c.ConfirmTTL)
	case c.LogTail < 1 || c.LogTail > 1000:
		return fmt.Errorf("log_tail %d: want 1 to 1000", c.LogTail)
	}
	if _, err := engine.ParseReference(c.Registry + "/berth/probe:1"); err != nil {
		return fmt.Errorf("registry %q: not a registry host: %w", c.Registry, err)
	}
	if c.DefaultBaseImage != "" {
		if _, err := engine.ParseReference(c.DefaultBaseImage); err != nil {
			return fmt.Errorf("default_base_image: %w", err)
		}
	}
	if _, err := c.labels(); err != nil {
		return err
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

// labels parses ImageLabels.
func (c *Config) labels() (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range c.ImageLabels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("image_labels: %q: want key=value", kv)
		}
		if err := buildctx.CheckLabel(k, v); err != nil {
			return nil, fmt.Errorf("image_labels: %w", err)
		}
		switch k {
		case buildctx.LabelService, buildctx.LabelVersion, buildctx.LabelPackageSHA256, buildctx.LabelBase:
			return nil, fmt.Errorf("image_labels: %q is the builder's own label", k)
		}
		out[k] = v
	}
	return out, nil
}

// BaseImage is the default base: DefaultBaseImage, else <registry>/berth/base:busybox.
func (c *Config) BaseImage() string {
	if c.DefaultBaseImage != "" {
		return c.DefaultBaseImage
	}
	return c.Registry + "/" + DefaultBaseName
}

// RegistryInsecure reports whether the registry is reached over plain HTTP.
func (c *Config) RegistryInsecure() bool {
	switch c.RegistryScheme {
	case "http":
		return true
	case "https":
		return false
	}
	return IsLoopback(c.Registry)
}

// IsLoopback reports whether a registry host[:port] is on the loopback interface, which
// the Docker engine reaches over plain HTTP without configuration.
func IsLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
