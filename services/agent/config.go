package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent/internal/ctrdeploy"
	"github.com/berthdev/berth/services/agent/internal/docker"
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

	// AdvertiseIP is the address this host's instances are registered with; empty means
	// the address of the interface of the default route (127.0.0.1 without one).
	AdvertiseIP string `yaml:"advertise_ip" env:"ADVERTISE_IP" flag:"advertise-ip" usage:"address instances are registered with (default: the default route's interface)"`
	// ConfigDir holds services.d/*.yaml, the static services of apps Berth did not deploy;
	// empty means DataDir.
	ConfigDir string `yaml:"config_dir" env:"CONFIG_DIR" flag:"config-dir" usage:"directory holding services.d/ (default: data_dir)"`
	// DNSListen is host:port of the local caching DNS resolver (UDP and TCP); empty turns
	// it off.
	DNSListen string `yaml:"dns_listen" env:"DNS_LISTEN" flag:"dns-listen" usage:"host:port of the local DNS resolver (empty: off)"`
	// NameAPIListen is host:port of the local HTTP name API; empty turns it off.
	NameAPIListen string `yaml:"name_api_listen" env:"NAME_API_LISTEN" flag:"name-api-listen" usage:"host:port of the local HTTP name API (empty: off)"`
	// HTTPTLS serves listen_metrics over HTTPS, and the name API too when name_api_listen
	// is not a loopback address (--http-cert-file, --http-key-file; with
	// --http-trusted-ca-file clients need a certificate of that CA).
	HTTPTLS certs.Files `yaml:"http_tls" env:"HTTP_" flag:"http-"`
	// CoordTLS secures the link to coord (--coord-cert-file, ...).
	CoordTLS certs.Files `yaml:"coord_tls" env:"COORD_" flag:"coord-"`
	// NATSAuth is NATS's TLS and login (--nats-cert-file, --nats-nkey-seed-file, ...).
	NATSAuth natsbus.Auth `yaml:"nats_auth" env:"NATS_" flag:"nats-"`

	// Deploy configures the package-deploy plugin.
	Deploy DeployConfig `yaml:"deploy"`
	// Containers configures the container-deploy plugin.
	Containers ContainersConfig `yaml:"containers"`
	// DNS configures the local resolver.
	DNS DNSConfig `yaml:"dns"`
	// Health configures flapping detection of instances.
	Health HealthConfig `yaml:"health"`
	// Drain configures the drain barrier before an instance stops.
	Drain DrainConfig `yaml:"drain"`
	// Views configures how the name service's views are followed.
	Views ViewsConfig `yaml:"views"`

	// Once renders one template (Template) with the current inputs and exits; it needs
	// DryRun (the output goes to standard output). It is a command, not a setting.
	Once bool `yaml:"once" flag:"once" usage:"render --template once and exit (with --dry-run: print it)"`
	// DryRun prints what Once renders instead of writing it.
	DryRun bool `yaml:"dry_run" flag:"dry-run" usage:"with --once: print the rendered template"`
	// Template is the template file Once renders.
	Template string `yaml:"template" flag:"template" usage:"with --once: the template file to render"`

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

// ContainersConfig configures the built-in container-deploy plugin.
type ContainersConfig struct {
	// Enabled is auto (on when the engine answers when the agent starts), true or false.
	Enabled string `yaml:"enabled" env:"CONTAINERS_ENABLED" flag:"containers-enabled" usage:"container-deploy plugin: auto (on when the Docker engine answers), true or false"`
	// DockerHost is the engine containers run on; empty means docker_host (unless it is
	// "-"), else $DOCKER_HOST, else unix:///var/run/docker.sock.
	DockerHost string `yaml:"docker_host" env:"CONTAINERS_DOCKER_HOST" flag:"containers-docker-host" usage:"Docker engine containers run on (default: docker_host, else $DOCKER_HOST, else the default socket)"`
	// Network is the existing user-defined network containers are attached to.
	Network string `yaml:"network" env:"CONTAINERS_NETWORK" flag:"containers-network" usage:"existing user-defined Docker network containers are attached to"`
	// CapAllow are the capabilities containers keep; every other one is dropped.
	CapAllow []string `yaml:"cap_allow" env:"CONTAINERS_CAP_ALLOW" flag:"containers-cap-allow" usage:"capability containers keep (every other one is dropped)"`
	// StopTimeout is the time between SIGTERM and SIGKILL when a container stops.
	StopTimeout time.Duration `yaml:"stop_timeout" env:"CONTAINERS_STOP_TIMEOUT" flag:"containers-stop-timeout" usage:"time between SIGTERM and SIGKILL when a container stops"`
}

// Values of ContainersConfig.Enabled.
const (
	ContainersAuto = "auto"
	ContainersOn   = "true"
	ContainersOff  = "false"
)

// mode is Enabled normalized: auto, true or false ("" is auto; on/off/yes/no/1/0 are
// accepted).
func (c ContainersConfig) mode() (string, error) {
	switch strings.ToLower(strings.TrimSpace(c.Enabled)) {
	case "", "auto":
		return ContainersAuto, nil
	case "true", "on", "yes", "1":
		return ContainersOn, nil
	case "false", "off", "no", "0":
		return ContainersOff, nil
	}
	return "", fmt.Errorf("containers.enabled %q: want auto, true or false", c.Enabled)
}

// containersHost is the engine of the container-deploy plugin: containers.docker_host,
// else docker_host, else $DOCKER_HOST, else the default socket. skip is true when
// docker_host is "-" and containers.docker_host is empty: the agent contacts no engine.
func (c *Config) containersHost() (host string, skip bool) {
	switch {
	case c.Containers.DockerHost != "":
		return c.Containers.DockerHost, false
	case c.DockerHost == "-":
		return "", true
	case c.DockerHost != "":
		return c.DockerHost, false
	case os.Getenv("DOCKER_HOST") != "":
		return os.Getenv("DOCKER_HOST"), false
	}
	return docker.DefaultHost, false
}

// DNSConfig configures the local caching resolver.
type DNSConfig struct {
	// Zones are the Berth zones answered from views.
	Zones []string `yaml:"zones" env:"DNS_ZONES" flag:"dns-zone" usage:"Berth zone answered from the name service's views"`
	// Upstreams are the resolvers other names are forwarded to (ip or ip:port); empty
	// means the nameservers of /etc/resolv.conf.
	Upstreams []string `yaml:"upstreams" env:"DNS_UPSTREAMS" flag:"dns-upstream" usage:"upstream resolver for other names (default: /etc/resolv.conf)"`
	// CacheSize bounds the forwarding cache, in answers.
	CacheSize int `yaml:"cache_size" env:"DNS_CACHE_SIZE" flag:"dns-cache-size" usage:"answers kept in the forwarding cache"`
	// MaxTTL caps how long a forwarded answer is cached.
	MaxTTL time.Duration `yaml:"max_ttl" env:"DNS_MAX_TTL" flag:"dns-max-ttl" usage:"longest time a forwarded answer is cached"`
}

// HealthConfig configures flapping detection.
type HealthConfig struct {
	// FlapChanges is how many health changes an instance may make within FlapWindow; one
	// more makes it flapping (held out of service until it keeps one state for a whole
	// window). Negative turns detection off.
	FlapChanges int `yaml:"flap_changes" env:"HEALTH_FLAP_CHANGES" flag:"health-flap-changes" usage:"health changes allowed within the flap window"`
	// FlapWindow is the window.
	FlapWindow time.Duration `yaml:"flap_window" env:"HEALTH_FLAP_WINDOW" flag:"health-flap-window" usage:"window health changes are counted in"`
}

// DrainConfig configures the drain barrier.
type DrainConfig struct {
	// MaxWait caps the barrier: the service's DNS TTL and this host's template reloads.
	MaxWait time.Duration `yaml:"max_wait" env:"DRAIN_MAX_WAIT" flag:"drain-max-wait" usage:"longest drain barrier before an instance is stopped"`
	// DefaultTTL is the DNS TTL of a service whose tree node sets none.
	DefaultTTL time.Duration `yaml:"default_ttl" env:"DRAIN_DEFAULT_TTL" flag:"drain-default-ttl" usage:"DNS TTL of services whose tree sets none"`
}

// ViewsConfig configures how views are followed.
type ViewsConfig struct {
	// Idle is how long a service only the resolver or the name API asked for stays
	// followed after the last question.
	Idle time.Duration `yaml:"idle" env:"VIEWS_IDLE" flag:"views-idle" usage:"how long an unasked-for service stays followed"`
	// Resync is how often followed views are read again from the berth-names bucket.
	Resync time.Duration `yaml:"resync" env:"VIEWS_RESYNC" flag:"views-resync" usage:"how often followed views are read again from the bucket"`
}

// DaemonConfig returns the defaults of the berth-agent binary: DefaultConfig with the local
// resolver on 127.0.0.1:5300, the name API on 127.0.0.1:7391 and static services under
// /etc/berth/agent. Embedded agents (berth dev, tests) start from DefaultConfig, which
// opens no listener but the metrics one.
func DaemonConfig() Config {
	c := DefaultConfig()
	c.DNSListen = "127.0.0.1:5300"
	c.NameAPIListen = "127.0.0.1:7391"
	c.ConfigDir = "/etc/berth/agent"
	return c
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
		Containers: ContainersConfig{Enabled: ContainersAuto, Network: ctrdeploy.DefaultNetwork, StopTimeout: ctrdeploy.DefaultStopTimeout},
		DNS:        DNSConfig{Zones: []string{"ns.berth.internal"}, CacheSize: 10000, MaxTTL: time.Hour},
		Health:     HealthConfig{FlapChanges: 3, FlapWindow: 2 * time.Minute},
		Drain:      DrainConfig{MaxWait: 30 * time.Second, DefaultTTL: 5 * time.Second},
		Views:      ViewsConfig{Idle: 10 * time.Minute, Resync: 30 * time.Second},
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	if err := subjects.Host(c.HostID); err != nil {
		return fmt.Errorf("host_id: %w", err)
	}
	if c.DC != "" {
		if err := subjects.DC(c.DC); err != nil {
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
	case c.Containers.StopTimeout <= 0:
		return fmt.Errorf("containers.stop_timeout %s: want more than 0", c.Containers.StopTimeout)
	case c.DNS.CacheSize < 1:
		return fmt.Errorf("dns.cache_size %d: want at least 1", c.DNS.CacheSize)
	case c.DNS.MaxTTL < time.Second:
		return fmt.Errorf("dns.max_ttl %s: want at least 1s", c.DNS.MaxTTL)
	case c.Health.FlapWindow < time.Second:
		return fmt.Errorf("health.flap_window %s: want at least 1s", c.Health.FlapWindow)
	case c.Health.FlapChanges == 0:
		return errors.New("health.flap_changes 0: want at least 1 (or negative to turn flapping detection off)")
	case c.Drain.MaxWait < 0:
		return fmt.Errorf("drain.max_wait %s: want 0 or more", c.Drain.MaxWait)
	case c.Drain.DefaultTTL <= 0:
		return fmt.Errorf("drain.default_ttl %s: want more than 0", c.Drain.DefaultTTL)
	case c.Views.Idle < time.Second:
		return fmt.Errorf("views.idle %s: want at least 1s", c.Views.Idle)
	case c.Views.Resync < time.Second:
		return fmt.Errorf("views.resync %s: want at least 1s", c.Views.Resync)
	}
	mode, err := c.Containers.mode()
	if err != nil {
		return err
	}
	c.Containers.Enabled = mode
	if mode == ContainersOn && c.DockerHost == "-" && c.Containers.DockerHost == "" {
		return errors.New(`containers.enabled is true but docker_host is "-" (no engine); set containers.docker_host`)
	}
	if err := ctrdeploy.CheckNetworkName(c.Containers.Network); err != nil {
		return fmt.Errorf("containers.network: %w", err)
	}
	caps, err := ctrdeploy.CheckCaps(c.Containers.CapAllow)
	if err != nil {
		return fmt.Errorf("containers.cap_allow: %w", err)
	}
	c.Containers.CapAllow = caps
	if c.Containers.DockerHost != "" && !strings.Contains(c.Containers.DockerHost, "://") {
		return fmt.Errorf("containers.docker_host %q: want unix:///path or tcp://host:port", c.Containers.DockerHost)
	}
	if c.AdvertiseIP != "" && net.ParseIP(c.AdvertiseIP) == nil {
		return fmt.Errorf("advertise_ip %q: want an IPv4 or IPv6 address", c.AdvertiseIP)
	}
	if c.ConfigDir != "" && !filepath.IsAbs(c.ConfigDir) {
		abs, err := filepath.Abs(c.ConfigDir)
		if err != nil {
			return fmt.Errorf("config_dir %q: %w", c.ConfigDir, err)
		}
		c.ConfigDir = abs
	}
	if err := c.validateSecurity(); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{"dns_listen", c.DNSListen}, {"name_api_listen", c.NameAPIListen}} {
		if f.v == "" {
			continue
		}
		host, _, err := net.SplitHostPort(f.v)
		if err != nil {
			return fmt.Errorf("%s %q: want host:port", f.name, f.v)
		}
		if ip := net.ParseIP(host); host != "" && host != "localhost" && ip == nil {
			return fmt.Errorf("%s %q: want an IP address as host", f.name, f.v)
		}
	}
	if len(c.DNS.Zones) == 0 {
		return errors.New("dns.zones: empty (want at least the Berth zone, ns.berth.internal)")
	}
	for i, z := range c.DNS.Zones {
		if _, err := dnsview.CanonicalZone(z); err != nil {
			return fmt.Errorf("dns.zones[%d]: %w", i, err)
		}
	}
	for i, u := range c.DNS.Upstreams {
		host := u
		if h, _, err := net.SplitHostPort(u); err == nil {
			host = h
		}
		if net.ParseIP(host) == nil {
			return fmt.Errorf("dns.upstreams[%d] %q: want an IP address or IP:port", i, u)
		}
	}
	if c.Once {
		switch {
		case c.Template == "":
			return errors.New("--once needs --template FILE")
		case !c.DryRun:
			return errors.New("--once needs --dry-run: it prints the rendered template (the running agent writes files)")
		}
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

// staticDir is the services.d directory.
func (c *Config) staticDir() string {
	dir := c.ConfigDir
	if dir == "" {
		dir = c.DataDir
	}
	return filepath.Join(dir, "services.d")
}

// advertiseIP is AdvertiseIP, or the address of the interface of the default route, or
// 127.0.0.1.
func (c *Config) advertiseIP() string {
	if c.AdvertiseIP != "" {
		return c.AdvertiseIP
	}
	// A UDP "connection" sends nothing; it only picks the source address of the route.
	conn, err := net.Dial("udp", "192.0.2.1:9")
	if err != nil {
		return "127.0.0.1"
	}
	defer conn.Close()
	if a, ok := conn.LocalAddr().(*net.UDPAddr); ok && !a.IP.IsUnspecified() {
		return a.IP.String()
	}
	return "127.0.0.1"
}
