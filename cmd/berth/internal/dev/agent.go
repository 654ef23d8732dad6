package dev

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

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
	plugins := filepath.Join(e.cfg.DataDir, "plugins")
	if err := os.MkdirAll(plugins, 0o755); err != nil {
		return fmt.Errorf("plugin directory: %w", err)
	}
	cfg.PluginDirs = []string{plugins}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	a, err := agent.New(cfg, agent.Deps{Bus: e.bus, Coord: e.coord, Logger: e.log.With("service", "agent"), Registerer: e.reg})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	g.Add("agent", a.Run)
	e.announce("agent", fmt.Sprintf("host %s, apps in %s, plugins in %s", e.hostID, filepath.Join(cfg.DataDir, "apps"), plugins))
	return nil
}
