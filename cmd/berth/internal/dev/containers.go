package dev

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/cmd/berth/internal/dev/dockernet"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/run"
	imagebuilder "github.com/berthdev/berth/services/image-builder"
)

// Container mode in berth dev (DESIGN §9). When the Docker engine answers, berth dev
//
//   - makes sure the bridge network ContainerNetwork exists with ContainerSubnet, whose
//     host addresses are the local host's container pool in the inventory (cmdb-sync's
//     DevIPPool: 172.30.0.2-172.30.0.254 of 172.30.0.0/24, .1 being the bridge);
//   - runs a registry on loopback (Debian's docker-registry as a child process, its data
//     under <data>/registry) unless --registry names one; the engine pulls from a loopback
//     registry over plain HTTP without any daemon setting;
//   - makes the base image (scratch plus a static busybox, Debian busybox-static) and
//     pushes it to the registry;
//   - runs berth-image-builder against that registry;
//   - turns the local agent's container-deploy plugin on, on that network.
//
// Anything missing (no engine, no registry binary, no busybox, a network of that name with
// another subnet) turns container mode off with one line saying why and what to do;
// package mode is unaffected and berth dev starts anyway.

// Defaults of the container-mode settings.
const (
	defaultDockerHost       = "unix:///var/run/docker.sock"
	DefaultContainerNetwork = "berth-dev"
	DefaultContainerSubnet  = "172.30.0.0/24"
	DefaultRegistryPort     = 7073
	registryBinary          = "/usr/bin/docker-registry"
)

// containerMode is what the services after "containers" need to know of it.
type containerMode struct {
	dockerHost string
	network    string
	registry   string
	// pool is the local host's container pool: the subnet's addresses but the network's
	// own, its gateway (.1) and its broadcast address.
	pool string
}

// poolOf is the container pool of an IPv4 subnet of /29 or larger: .2 up to the last
// address before the broadcast address.
func poolOf(subnet netip.Prefix) string {
	subnet = subnet.Masked()
	first := subnet.Addr().Next().Next()
	b := subnet.Addr().As4()
	host := uint32(1)<<(32-subnet.Bits()) - 1
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n |= host
	n-- // the broadcast address is not a host's
	last := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	return first.String() + "-" + last.String()
}

// startContainers turns container mode on when it can (see above) and says which it is.
func startContainers(ctx context.Context, e *env, g *run.Group) error {
	host := e.cfg.DockerHost
	if host == "" {
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = defaultDockerHost
	}
	off := func(why string) error {
		e.announce("containers", "off: "+why+"; package mode works")
		return nil
	}
	if err := dialDocker(ctx, host); err != nil {
		return off(fmt.Sprintf("the Docker engine at %s is not reachable (%v)", host, err))
	}
	network := e.cfg.ContainerNetwork
	if network == "" {
		network = DefaultContainerNetwork
	}
	subnet, err := netip.ParsePrefix(cmpOr(e.cfg.ContainerSubnet, DefaultContainerSubnet))
	if err != nil {
		return fmt.Errorf("--container-subnet %q: %w", e.cfg.ContainerSubnet, err)
	}
	nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = dockernet.Ensure(nctx, host, network, subnet)
	cancel()
	if err != nil {
		return off(err.Error())
	}
	// Containers of this host whose allocation coord does not hold (left by a run whose data
	// is gone) would keep addresses the scheduler hands out again: they go.
	keep := map[string]bool{}
	allocs, err := e.coord.List(ctx, "/berth/alloc/"+e.hostID)
	if err != nil && !errors.Is(err, coordclient.ErrNotFound) {
		return fmt.Errorf("read the allocations of %s: %w", e.hostID, err)
	}
	if allocs != nil {
		for _, n := range allocs.Nodes {
			keep[n.Path[strings.LastIndexByte(n.Path, '/')+1:]] = true
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	removed, err := dockernet.RemoveOrphans(rctx, host, network, e.hostID, keep)
	cancel()
	if err != nil {
		return off(err.Error())
	}
	if len(removed) > 0 {
		e.announce("containers", fmt.Sprintf("removed %d container(s) of an earlier run whose allocations are gone: %s", len(removed), strings.Join(removed, ", ")))
	}
	registry := e.cfg.Registry
	if registry == "" {
		if e.cfg.RegistryPort < 0 {
			return off("no registry (--registry-port -1 and no --registry)")
		}
		addr, err := startRegistry(ctx, e, g)
		if err != nil {
			return off(err.Error())
		}
		registry = addr
	}
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	base, err := imagebuilder.MakeBaseImage(bctx, imagebuilder.BaseOptions{Registry: registry, DockerHost: host})
	cancel()
	if err != nil {
		return off(fmt.Sprintf("base image: %v", err))
	}
	cfg := imagebuilder.DefaultConfig()
	cfg.Name = "dev"
	cfg.Registry = registry
	cfg.DockerHost = host
	cfg.WorkDir = filepath.Join(e.cfg.DataDir, "image-builder")
	cfg.ListenMetrics = ""
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("image builder config: %w", err)
	}
	// The builder fetches packages with pkg/artifact, as the agent does: its metrics go to a
	// registry of its own, served on the same /metrics.
	reg := prometheus.NewRegistry()
	e.ownRegs = append(e.ownRegs, reg)
	b, err := imagebuilder.New(cfg, imagebuilder.Deps{Bus: e.bus, Coord: e.coord, Logger: e.log.With("service", "image-builder"), Registerer: reg})
	if err != nil {
		return fmt.Errorf("image builder: %w", err)
	}
	g.Add("image-builder", b.Run)
	if e.cfg.Ephemeral {
		// A throwaway run leaves no containers behind: its allocations go with its data.
		g.Add("containers", func(ctx context.Context) error {
			<-ctx.Done()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			removed, err := dockernet.RemoveOrphans(rctx, host, network, e.hostID, nil)
			if err != nil {
				return err
			}
			if len(removed) > 0 {
				e.log.Info("removed the containers of this ephemeral run", "containers", removed)
			}
			return nil
		})
	}
	e.containers = &containerMode{dockerHost: host, network: network, registry: registry, pool: poolOf(subnet)}
	e.announce("containers", fmt.Sprintf("on: network %s (%s), registry %s, base image %s", network, subnet, registry, base.Reference))
	return nil
}

// startRegistry runs Debian's docker-registry on loopback with its data under
// <data>/registry, and waits until it answers.
func startRegistry(ctx context.Context, e *env, g *run.Group) (string, error) {
	bin := cmpOr(os.Getenv("BERTH_DOCKER_REGISTRY"), registryBinary)
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("no registry: %s is missing (apt-get install docker-registry, or pass --registry host:port)", bin)
	}
	port := e.cfg.RegistryPort
	if port == 0 { // a free port, as for the other listeners; the registry binds it itself
		l, err := net.Listen("tcp", net.JoinHostPort(e.cfg.Host, "0"))
		if err != nil {
			return "", fmt.Errorf("registry port: %w", err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	addr := net.JoinHostPort(e.cfg.Host, strconv.Itoa(port))
	dir := filepath.Join(e.cfg.DataDir, "registry")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("registry directory: %w", err)
	}
	conf := filepath.Join(dir, "config.yml")
	body := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), addr)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return "", fmt.Errorf("registry config: %w", err)
	}
	cmd := exec.Command(bin, "serve", conf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	logf, err := os.OpenFile(filepath.Join(dir, "registry.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return "", fmt.Errorf("registry log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return "", fmt.Errorf("start registry: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	// Wait until /v2/ answers (or the process exits: the port is taken, say).
	hc := &http.Client{Timeout: time.Second}
	u := (&url.URL{Scheme: "http", Host: addr, Path: "/v2/"}).String()
	for deadline := time.Now().Add(10 * time.Second); ; {
		select {
		case err := <-exited:
			exited <- err
			return "", fmt.Errorf("registry on %s exited at start (%v); see %s", addr, err, filepath.Join(dir, "registry.log"))
		default:
		}
		if resp, err := hc.Get(u); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("registry on %s did not answer within 10s; see %s", addr, filepath.Join(dir, "registry.log"))
		}
		select {
		case <-ctx.Done():
			stop()
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	g.Add("registry", func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			stop()
			return nil
		case err := <-exited:
			return fmt.Errorf("registry exited: %w", errors.Join(err, errors.New("see "+filepath.Join(dir, "registry.log"))))
		}
	})
	e.announce("registry", "http://"+addr+" (images berth-image-builder pushes; data in "+dir+")")
	return addr, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
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
