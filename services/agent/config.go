package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/proto/subjects"
)

// Config is berth-agent's configuration. Load it with pkg/config (defaults from
// DefaultConfig, then a YAML file, then BERTH_* variables, then flags); every field says its
// key, variable and flag.
type Config struct {
	// HostID is this host's id in subjects and coord; default the hostname.
	HostID string `yaml:"host_id" env:"HOST_ID" flag:"host-id" usage:"this host's id"`
	// DC is the host's datacenter.
	DC string `yaml:"dc" env:"DC" flag:"dc" usage:"the host's datacenter"`
	// DataDir holds the journal, the plugin work directories and the deployed apps.
	DataDir string `yaml:"data_dir" env:"DATA_DIR" flag:"data-dir" usage:"directory of the journal, plugin work directories and deployed apps"`
	// NATS is the NATS server URL (several, comma separated).
	NATS string `yaml:"nats" env:"NATS_URL" flag:"nats" usage:"NATS server URL(s), comma separated"`
	// Coord lists coord members' client addresses (host:port, comma separated); empty
	// runs the agent without presence in coord.
	Coord string `yaml:"coord" env:"COORD" flag:"coord" usage:"coord members (host:port, comma separated); empty: no coord presence"`
	// PluginDirs are the directories plugins are looked up in, in order.
	PluginDirs []string `yaml:"plugin_dirs" env:"PLUGIN_DIRS" flag:"plugin-dir" usage:"directory of task plugins"`
	// ListenMetrics is host:port of /metrics, /healthz and /readyz; empty disables them.
	ListenMetrics string `yaml:"listen_metrics" env:"LISTEN_METRICS" flag:"listen-metrics" usage:"host:port of /metrics, /healthz and /readyz (empty: off)"`

	// MaxConcurrentSteps is how many steps run at once on this host.
	MaxConcurrentSteps int `yaml:"max_concurrent_steps" env:"MAX_CONCURRENT_STEPS" flag:"max-concurrent-steps" usage:"steps run at once on this host"`
	// MaxQueuedSteps is how many accepted steps may wait for a slot.
	MaxQueuedSteps int `yaml:"max_queued_steps" env:"MAX_QUEUED_STEPS" flag:"max-queued-steps" usage:"accepted steps that may wait for a slot"`
	// DefaultStepTimeout is the timeout of a step request that gives none.
	DefaultStepTimeout time.Duration `yaml:"default_step_timeout" env:"DEFAULT_STEP_TIMEOUT" flag:"default-step-timeout" usage:"timeout of a step that gives none"`
	// MaxStepTimeout is the longest timeout a step may ask for.
	MaxStepTimeout time.Duration `yaml:"max_step_timeout" env:"MAX_STEP_TIMEOUT" flag:"max-step-timeout" usage:"longest timeout a step may ask for"`
	// KillGrace is the time between SIGTERM and SIGKILL to a timed-out process group.
	KillGrace time.Duration `yaml:"kill_grace" env:"KILL_GRACE" flag:"kill-grace" usage:"time between SIGTERM and SIGKILL on timeout"`
	// DrainTimeout is how long a stopping agent waits for running steps before it
	// cancels them.
	DrainTimeout time.Duration `yaml:"drain_timeout" env:"DRAIN_TIMEOUT" flag:"drain-timeout" usage:"how long a stopping agent waits for running steps"`
	// MaxOutputBytes caps the output streamed per step.
	MaxOutputBytes int64 `yaml:"max_output_bytes" env:"MAX_OUTPUT_BYTES" flag:"max-output-bytes" usage:"output streamed per step, at most"`
	// JournalRetention is how long ended steps are remembered (and answered from the
	// journal when sent again).
	JournalRetention time.Duration `yaml:"journal_retention" env:"JOURNAL_RETENTION" flag:"journal-retention" usage:"how long ended steps are remembered"`
	// PluginPath is the PATH plugins and package scripts run with.
	PluginPath string `yaml:"plugin_path" env:"PLUGIN_PATH" flag:"plugin-path" usage:"PATH of plugins and package scripts"`
	// SessionTTL is the TTL of the agent's coord session.
	SessionTTL time.Duration `yaml:"session_ttl" env:"SESSION_TTL" flag:"session-ttl" usage:"TTL of the coord session"`
	// DockerHost is the Docker engine checked for the fingerprint; "-" skips the check.
	DockerHost string `yaml:"docker_host" env:"DOCKER_HOST" flag:"docker-host" usage:"Docker engine address for the fingerprint (- to skip)"`

	// Deploy configures the package-deploy plugin.
	Deploy DeployConfig `yaml:"deploy"`

	// Log selects the log format and level.
	Log logging.Config `yaml:"log"`
}

// DeployConfig configures the built-in package-deploy plugin.
type DeployConfig struct {
	// KeepReleases is how many releases of a service are kept on disk, the current one
	// included.
	KeepReleases int `yaml:"keep_releases" env:"DEPLOY_KEEP_RELEASES" flag:"deploy-keep-releases" usage:"releases kept per service"`
	// ScriptTimeout bounds the start, stop and reload scripts.
	ScriptTimeout time.Duration `yaml:"script_timeout" env:"DEPLOY_SCRIPT_TIMEOUT" flag:"deploy-script-timeout" usage:"timeout of start, stop and reload scripts"`
	// HealthDeadline is how long a new release has to pass its health checks, unless the
	// step's health_deadline argument says otherwise.
	HealthDeadline time.Duration `yaml:"health_deadline" env:"DEPLOY_HEALTH_DEADLINE" flag:"deploy-health-deadline" usage:"time a new release has to become healthy"`
	// FetchTimeout bounds an artifact download.
	FetchTimeout time.Duration `yaml:"fetch_timeout" env:"DEPLOY_FETCH_TIMEOUT" flag:"deploy-fetch-timeout" usage:"timeout of an artifact download"`
	// MaxPackageBytes bounds an artifact and its unpacked size.
	MaxPackageBytes int64 `yaml:"max_package_bytes" env:"DEPLOY_MAX_PACKAGE_BYTES" flag:"deploy-max-package-bytes" usage:"largest artifact and unpacked package"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		HostID:             host,
		DataDir:            "/var/lib/berth/agent",
		NATS:               "nats://127.0.0.1:4222",
		ListenMetrics:      "127.0.0.1:7390",
		MaxConcurrentSteps: 4,
		MaxQueuedSteps:     64,
		DefaultStepTimeout: 10 * time.Minute,
		MaxStepTimeout:     24 * time.Hour,
		KillGrace:          5 * time.Second,
		DrainTimeout:       5 * time.Second,
		MaxOutputBytes:     1 << 20,
		JournalRetention:   7 * 24 * time.Hour,
		PluginPath:         "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		SessionTTL:         10 * time.Second,
		Deploy: DeployConfig{
			KeepReleases:    5,
			ScriptTimeout:   time.Minute,
			HealthDeadline:  time.Minute,
			FetchTimeout:    10 * time.Minute,
			MaxPackageBytes: 2 << 30,
		},
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	if err := subjects.Host(c.HostID); err != nil {
		return fmt.Errorf("host_id: %w", err)
	}
	if c.DC != "" {
		if err := subjects.Token(c.DC); err != nil {
			return fmt.Errorf("dc: %w", err)
		}
	}
	if c.DataDir == "" {
		return errors.New("data_dir: empty")
	}
	if !filepath.IsAbs(c.DataDir) {
		abs, err := filepath.Abs(c.DataDir)
		if err != nil {
			return fmt.Errorf("data_dir %q: %w", c.DataDir, err)
		}
		c.DataDir = abs
	}
	if len(c.NATSURLs()) == 0 {
		return errors.New("nats: empty URL")
	}
	for _, ep := range c.CoordEndpoints() {
		if _, _, err := net.SplitHostPort(ep); err != nil {
			return fmt.Errorf("coord: endpoint %q: want host:port", ep)
		}
	}
	for i, d := range c.PluginDirs {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("plugin_dirs[%d] %q: want an absolute path", i, d)
		}
	}
	if c.ListenMetrics != "" {
		if _, _, err := net.SplitHostPort(c.ListenMetrics); err != nil {
			return fmt.Errorf("listen_metrics %q: want host:port", c.ListenMetrics)
		}
	}
	switch {
	case c.MaxConcurrentSteps < 1:
		return fmt.Errorf("max_concurrent_steps %d: want at least 1", c.MaxConcurrentSteps)
	case c.MaxQueuedSteps < 0:
		return fmt.Errorf("max_queued_steps %d: want 0 or more", c.MaxQueuedSteps)
	case c.DefaultStepTimeout <= 0:
		return fmt.Errorf("default_step_timeout %s: want more than 0", c.DefaultStepTimeout)
	case c.MaxStepTimeout < c.DefaultStepTimeout:
		return fmt.Errorf("max_step_timeout %s: want at least default_step_timeout %s", c.MaxStepTimeout, c.DefaultStepTimeout)
	case c.KillGrace <= 0:
		return fmt.Errorf("kill_grace %s: want more than 0", c.KillGrace)
	case c.DrainTimeout < 0:
		return fmt.Errorf("drain_timeout %s: want 0 or more", c.DrainTimeout)
	case c.MaxOutputBytes < 0:
		return fmt.Errorf("max_output_bytes %d: want 0 (no cap) or more", c.MaxOutputBytes)
	case c.JournalRetention < time.Hour:
		return fmt.Errorf("journal_retention %s: want at least 1h, longer than any controller retries a step", c.JournalRetention)
	case c.PluginPath == "":
		return errors.New("plugin_path: empty")
	case c.SessionTTL < time.Second:
		return fmt.Errorf("session_ttl %s: want at least 1s", c.SessionTTL)
	case c.Deploy.KeepReleases < 2:
		return fmt.Errorf("deploy.keep_releases %d: want at least 2 (the current release and one to roll back to)", c.Deploy.KeepReleases)
	case c.Deploy.ScriptTimeout <= 0:
		return fmt.Errorf("deploy.script_timeout %s: want more than 0", c.Deploy.ScriptTimeout)
	case c.Deploy.HealthDeadline <= 0:
		return fmt.Errorf("deploy.health_deadline %s: want more than 0", c.Deploy.HealthDeadline)
	case c.Deploy.FetchTimeout <= 0:
		return fmt.Errorf("deploy.fetch_timeout %s: want more than 0", c.Deploy.FetchTimeout)
	case c.Deploy.MaxPackageBytes <= 0:
		return fmt.Errorf("deploy.max_package_bytes %d: want more than 0", c.Deploy.MaxPackageBytes)
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
