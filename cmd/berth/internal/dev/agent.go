package dev

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/berthdev/berth/pkg/run"
	"github.com/berthdev/berth/services/agent"
)

// startAgent runs one berth-agent for this machine, with its apps and journal under the
// data directory and its plugins from <data>/plugins (created empty; drop executables in
// it to run them with berth run).
func startAgent(ctx context.Context, e *env, g *run.Group) error {
	cfg := agent.DefaultConfig()
	cfg.HostID = e.hostID
	cfg.DC = "dev"
	cfg.DataDir = filepath.Join(e.cfg.DataDir, "agent")
	cfg.NATS = e.natsURL
	cfg.Coord = e.coordEndpoint
	cfg.ListenMetrics = ""
	// Old releases wait the DNS TTL before they stop; in dev that wait is kept short.
	cfg.Drain.MaxWait = time.Second
	if e.cfg.ResolverPort >= 0 {
		cfg.DNSListen = net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.ResolverPort))
	}
	if e.cfg.AgentAPIPort >= 0 {
		cfg.NameAPIListen = net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.AgentAPIPort))
	}
	plugins := filepath.Join(e.cfg.DataDir, "plugins")
	if err := os.MkdirAll(plugins, 0o755); err != nil {
		return fmt.Errorf("plugin directory: %w", err)
	}
	cfg.PluginDirs = []string{plugins}
	// Container mode (containers.go): the container-deploy plugin runs on the dev network,
	// or is off when berth dev could not turn container mode on.
	if c := e.containers; c != nil {
		cfg.Containers.Enabled = agent.ContainersOn
		cfg.Containers.DockerHost = c.dockerHost
		cfg.Containers.Network = c.network
	} else {
		cfg.Containers.Enabled = agent.ContainersOff
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	a, err := agent.New(cfg, agent.Deps{Bus: e.bus, Coord: e.coord, Logger: e.log.With("service", "agent"), Registerer: e.reg})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	g.Add("agent", a.Run)
	g.Start()
	// The agent binds its listeners as it starts running; wait briefly to print them.
	var addrs *agent.Addrs
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if addrs = a.Addrs(); addrs != nil || (e.cfg.ResolverPort < 0 && e.cfg.AgentAPIPort < 0) {
			break
		}
	}
	if addrs != nil {
		if addrs.DNS != nil {
			e.announce("local DNS", addrs.DNS.String()+" (the agent's caching resolver: Berth zones and forwarding)")
		}
		if addrs.NameAPI != nil {
			e.announce("local names", "http://"+addrs.NameAPI.String()+" (the agent's name API)")
		}
	}
	e.announce("agent", fmt.Sprintf("host %s, apps in %s, plugins in %s", e.hostID, filepath.Join(cfg.DataDir, "apps"), plugins))
	return nil
}
