package dev

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/berthdev/berth/pkg/run"
	controller "github.com/berthdev/berth/services/task-controller"
)

// startController runs berth-controller's API on the controller port (the CLI's default)
// and its leader loop on the shared bus and coord.
func startController(ctx context.Context, e *env, g *run.Group) error {
	cfg := controller.DefaultConfig()
	cfg.Replica = "dev"
	cfg.Listen = net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.ControllerPort))
	cfg.ListenMetrics = ""
	cfg.NamesURL = e.namesURL // the console's Names page asks this berth dev's name service
	cfg.EnsureStreams = false // berth dev created them with NATS
	cfg.HTTPTLS = e.serverFiles("controller")
	cfg.TokensFile = e.cfg.TokensFile
	c, err := controller.New(cfg, controller.Deps{Bus: e.bus, Coord: e.coord, Logger: e.log, Registerer: e.reg})
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	addr, err := c.Listen()
	if err != nil {
		return fmt.Errorf("controller: %w (is another berth dev running? pass --controller-port)", err)
	}
	g.Add("controller", c.Run)
	e.controllerURL = e.scheme() + "://" + addr.String()
	e.announce("controller", e.controllerURL)
	// The console is served by the controller under /ui/.
	e.announce("console", e.controllerURL+"/ui/")
	return nil
}
