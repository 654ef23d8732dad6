package dev

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/berthdev/berth/pkg/run"
)

// defaultDockerHost is where the Docker engine listens when $DOCKER_HOST is not set.
const defaultDockerHost = "unix:///var/run/docker.sock"

// startContainers reports in one line whether the Docker engine is reachable, which
// container mode needs. It only dials the engine's socket: no Docker client, no `docker
// info`.
func startContainers(ctx context.Context, e *env, g *run.Group) error {
	host := e.cfg.DockerHost
	if host == "" {
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = defaultDockerHost
	}
	if err := dialDocker(ctx, host); err != nil {
		e.announce("containers", fmt.Sprintf("off: the Docker engine at %s is not reachable (%v); container mode is off, package mode works", host, err))
		return nil
	}
	e.announce("containers", "Docker engine reachable at "+host)
	return nil
}

// dialDocker connects to the engine's address (unix:// or tcp://) and hangs up.
func dialDocker(ctx context.Context, host string) error {
	u, err := url.Parse(host)
	if err != nil {
		return fmt.Errorf("docker host %q: %w", host, err)
	}
	var network, addr string
	switch u.Scheme {
	case "unix":
		network, addr = "unix", u.Path
	case "tcp", "http", "https":
		network, addr = "tcp", u.Host
	default:
		return fmt.Errorf("docker host %q: want unix:// or tcp://", host)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		if oe, ok := err.(*net.OpError); ok && oe.Err != nil {
			return oe.Err
		}
		return err
	}
	return c.Close()
}
