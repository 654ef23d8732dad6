// Package dev is `berth dev`: every Berth service in one process, with an embedded NATS
// server and a single-node coord, its data in one directory. The services it runs are the
// ordered list in services.go; each service adds itself there.
package dev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/admin"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/run"
)

// Config is what `berth dev` was asked for.
type Config struct {
	// DataDir holds every service's state; kept across restarts.
	DataDir string
	// Ephemeral removes DataDir when berth dev stops.
	Ephemeral bool
	// Host is the address every listener binds.
	Host string
	// NATSPort is the NATS client port.
	NATSPort int
	// CoordPort is coord's client port; its peer port is the next one.
	CoordPort int
	// DNSPort serves the name service's DNS (UDP and TCP).
	DNSPort int
	// NamesPort serves the name service's HTTP API.
	NamesPort int
	// ControllerPort serves the controller's HTTP API.
	ControllerPort int
	// AdminPort serves /metrics, /healthz and /readyz of everything.
	AdminPort int
	// ResolverPort is the local agent's caching DNS resolver (-1: off).
	ResolverPort int
	// AgentAPIPort is the local agent's HTTP name API (-1: off).
	AgentAPIPort int
	// ArtifactsDir is the directory the artifact server serves; "" means <DataDir>/artifacts.
	ArtifactsDir string
	// ArtifactsPort serves the artifacts over HTTP (downloads and uploads).
	ArtifactsPort int
	// FTPPort serves the artifacts over FTP (anonymous, read-only).
	FTPPort int
	// DockerHost is the Docker engine whose reachability is reported: unix:///path or
	// tcp://host:port; "" means $DOCKER_HOST, else unix:///var/run/docker.sock.
	DockerHost string
	// ContainerNetwork is the Docker bridge network containers run on ("" means
	// DefaultContainerNetwork); made with ContainerSubnet when missing.
	ContainerNetwork string
	// ContainerSubnet is that network's subnet ("" means DefaultContainerSubnet); the local
	// host's container pool in the inventory is its host addresses.
	ContainerSubnet string
	// Registry is an external registry (host:port) images are pushed to and pulled from;
	// "" runs one on loopback at RegistryPort.
	Registry string
	// RegistryPort is the loopback registry's port (-1: none, container mode off unless
	// Registry is set).
	RegistryPort int
	// Demo builds examples/demo, packs it and deploys it as demo/hello once everything is up.
	Demo bool
	// DemoPort is the port the demo app listens on.
	DemoPort int
	// DemoSource is the demo's source directory; "" looks for examples/demo in the working
	// directory and its parents, then next to this source file.
	DemoSource string
	// TLSDir, when set, is a `berth certs init` directory: the HTTP endpoints serve HTTPS
	// that requires client certificates of its CA (security.go).
	TLSDir string
	// TokensFile, when set, is the API token file (pkg/apitoken) of the controller and the
	// name service.
	TokensFile string
	// LogLevel is the level of the services' logs.
	LogLevel string
	// Out receives the endpoints and progress lines meant for the person running berth dev.
	Out io.Writer
	// Log receives the services' logs.
	Log io.Writer
}

// Defaults are the ports `berth dev` uses when not told otherwise; the CLI's defaults point
// at them, so that `berth ...` in another terminal reaches `berth dev` with no flags.
const (
	DefaultHost      = "127.0.0.1"
	DefaultNATSPort  = 4222
	DefaultCoordPort = 7379
	DefaultAdminPort = 7090
	// DefaultControllerPort is the controller API's port.
	DefaultControllerPort = 7070
	// DefaultResolverPort is the local agent's caching resolver port.
	DefaultResolverPort = 5300
	// DefaultAgentAPIPort is the local agent's HTTP name API port.
	DefaultAgentAPIPort = 7391
	// DefaultDNSPort is the name service's DNS port.
	DefaultDNSPort = 5354
	// DefaultNamesPort is the name service's HTTP API port.
	DefaultNamesPort = 7071
	// DefaultArtifactsPort is the artifact server's HTTP port.
	DefaultArtifactsPort = 7072
	// DefaultFTPPort is the artifact server's FTP port.
	DefaultFTPPort = 2121
	// DefaultDemoPort is the port of the demo app deployed by --demo.
	DefaultDemoPort = 8088
)

// DefaultDataDir is where berth dev keeps its data when --data is not given.
func DefaultDataDir() string {
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "berth", "dev")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("--data: empty data directory")
	}
	if c.NATSPort < 0 || c.NATSPort > 65535 {
		return fmt.Errorf("--nats-port %d: want 0..65535", c.NATSPort)
	}
	if c.ResolverPort < -1 || c.ResolverPort > 65535 {
		return fmt.Errorf("--resolver-port %d: want -1 (off) or 0..65535", c.ResolverPort)
	}
	if c.AgentAPIPort < -1 || c.AgentAPIPort > 65535 {
		return fmt.Errorf("--agent-api-port %d: want -1 (off) or 0..65535", c.AgentAPIPort)
	}
	if c.AdminPort < 0 || c.AdminPort > 65535 {
		return fmt.Errorf("--admin-port %d: want 0..65535", c.AdminPort)
	}
	for _, p := range []struct {
		flag string
		port int
	}{{"--dns-port", c.DNSPort}, {"--names-port", c.NamesPort}, {"--artifacts-port", c.ArtifactsPort}, {"--ftp-port", c.FTPPort}, {"--demo-port", c.DemoPort}} {
		if p.port < 0 || p.port > 65535 {
			return fmt.Errorf("%s %d: want 0..65535", p.flag, p.port)
		}
	}
	if c.RegistryPort < -1 || c.RegistryPort > 65535 {
		return fmt.Errorf("--registry-port %d: want 0..65535, or -1 for none", c.RegistryPort)
	}
	if c.ContainerSubnet != "" {
		if p, err := netip.ParsePrefix(c.ContainerSubnet); err != nil || !p.Addr().Is4() || p.Bits() > 29 {
			return fmt.Errorf("--container-subnet %q: want an IPv4 CIDR of /29 or larger (172.30.0.0/24)", c.ContainerSubnet)
		}
	}
	if c.ControllerPort < 0 || c.ControllerPort > 65535 {
		return fmt.Errorf("--controller-port %d: want 0..65535", c.ControllerPort)
	}
	if c.CoordPort < 1 || c.CoordPort > 65534 {
		return fmt.Errorf("--coord-port %d: want 1..65534 (the next port is coord's peer port)", c.CoordPort)
	}
	return c.validateSecurity()
}

// env is what the services of berth dev share while starting.
type env struct {
	cfg     Config
	log     *slog.Logger
	natsURL string
	// coord is a client of the dev coord, shared by the services; closed by its part.
	coord         *coordclient.Client
	coordEndpoint string
	// bus is the services' shared NATS connection; drained by the nats part.
	bus *natsbus.Bus
	// reg holds the metrics of every embedded service but coord (which keeps its own).
	reg *prometheus.Registry
	// hostID is this machine's host id: the local agent's and the inventory's.
	hostID string
	// dnsAddr is the name service's DNS address.
	dnsAddr string
	// coordReg is coord's own registry, served with reg.
	coordReg prometheus.Gatherer
	// ownRegs are the registries of services whose metric names would collide in reg (the
	// image builder's pkg/artifact metrics are the agent's too), served with it.
	ownRegs []prometheus.Gatherer
	// readyChecks are served on /readyz.
	readyChecks []readyCheck
	// endpoints are printed once everything started, in order.
	endpoints []endpoint
	// controllerURL, namesURL are the controller's and the name service's HTTP APIs.
	controllerURL, namesURL string
	// artifactsDir is the artifact server's directory; artifactsURL and ftpURL its base
	// URLs, with no trailing slash.
	artifactsDir, artifactsURL, ftpURL string
	// containers is set when container mode is on (containers.go).
	containers *containerMode
	// up is closed once every service started and the endpoints were printed; parts that
	// talk to the person running berth dev wait for it.
	up chan struct{}
}

type endpoint struct{ name, url string }

type readyCheck struct {
	name  string
	check admin.Check
}

func (e *env) announce(name, url string) { e.endpoints = append(e.endpoints, endpoint{name, url}) }

// Run starts everything and blocks until ctx is cancelled, then stops everything in reverse
// order of start.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	if cfg.Host == "" {
		cfg.Host = DefaultHost
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if cfg.Ephemeral {
		defer os.RemoveAll(cfg.DataDir)
	}
	unlock, err := lockDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()

	log, err := logging.New(logging.Config{Format: "text", Level: cfg.LogLevel}, cfg.Log)
	if err != nil {
		return err
	}
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	e := &env{cfg: cfg, log: log, reg: prometheus.NewRegistry(), hostID: host, up: make(chan struct{})}
	g := &run.Group{StopTimeout: 8 * time.Second}
	g.OnStop = func(name string, took time.Duration, err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("stopped with error", "part", name, "took", took, "err", err)
		} else {
			log.Debug("stopped", "part", name, "took", took)
		}
	}
	started := time.Now()
	for _, s := range services {
		if ctx.Err() != nil {
			break
		}
		err := s.start(ctx, e, g)
		g.Start()
		if err != nil {
			// Stop what already started before reporting.
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			_ = g.Wait(cctx)
			return fmt.Errorf("start %s: %w", s.name, err)
		}
	}
	if ctx.Err() != nil {
		return g.Wait(ctx)
	}
	e.announceSecurity()
	fmt.Fprintf(cfg.Out, "berth dev is up in %s; data in %s\n", time.Since(started).Round(time.Millisecond), cfg.DataDir)
	for _, ep := range e.endpoints {
		fmt.Fprintf(cfg.Out, "  %-14s %s\n", ep.name, ep.url)
	}
	fmt.Fprintln(cfg.Out, "Press Ctrl-C to stop.")
	close(e.up)
	err = g.Wait(ctx)
	if cfg.Ephemeral {
		stopApps(context.WithoutCancel(ctx), filepath.Join(cfg.DataDir, "agent", "apps"), cfg.Out)
	}
	fmt.Fprintln(cfg.Out, "berth dev stopped")
	return err
}

// lockDir takes an exclusive lock on dir so that two berth dev processes never share one
// data directory.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "berth-dev.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data directory %s is in use by another berth dev (stop it, or pass --data DIR)", dir)
	}
	return func() { f.Close() }, nil
}
