// Package dockernet makes sure the Docker network berth dev runs containers on exists: a
// user-defined bridge with a fixed subnet, so that the inventory's container pool of the
// local host matches the addresses the engine can hand out. It is the one package of the
// CLI that imports the moby client.
package dockernet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// ErrSubnetMismatch is returned when the network exists with another subnet.
var ErrSubnetMismatch = errors.New("dockernet: network exists with another subnet")

// Ensure creates the bridge network name with subnet (gateway: its first address) unless it
// exists; an existing network must have that subnet. created says whether it was made now.
func Ensure(ctx context.Context, host, name string, subnet netip.Prefix) (created bool, err error) {
	var opts []client.Opt
	if host != "" {
		opts = append(opts, client.WithHost(host))
	} else {
		opts = append(opts, client.FromEnv)
	}
	c, err := client.New(opts...)
	if err != nil {
		return false, fmt.Errorf("docker client %s: %w", host, err)
	}
	defer c.Close()
	res, err := c.NetworkInspect(ctx, name, client.NetworkInspectOptions{})
	if err == nil {
		for _, cfg := range res.Network.IPAM.Config {
			if cfg.Subnet == subnet.Masked() {
				return false, nil
			}
		}
		var got []string
		for _, cfg := range res.Network.IPAM.Config {
			got = append(got, cfg.Subnet.String())
		}
		return false, fmt.Errorf("%w: %s has %v, want %s (remove it with `docker network rm %s` or choose another --container-subnet)",
			ErrSubnetMismatch, name, got, subnet, name)
	}
	if !cerrdefs.IsNotFound(err) {
		return false, fmt.Errorf("inspect network %s: %w", name, err)
	}
	subnet = subnet.Masked()
	gw := subnet.Addr().Next()
	_, err = c.NetworkCreate(ctx, name, client.NetworkCreateOptions{
		Driver: "bridge",
		IPAM:   &network.IPAM{Config: []network.IPAMConfig{{Subnet: subnet, Gateway: gw}}},
		Labels: map[string]string{"dev.berth.managed": "true"},
	})
	if err != nil {
		return false, fmt.Errorf("create network %s (%s): %w", name, subnet, err)
	}
	return true, nil
}

// Labels the agent's container-deploy plugin puts on the containers it runs.
const (
	labelManaged    = "dev.berth.managed"
	labelHost       = "dev.berth.host"
	labelAllocation = "dev.berth.allocation"
)

// RemoveOrphans removes the containers on network that the agent of hostID runs (by their
// labels) whose allocation is not in keep, and returns their names. berth dev calls it
// before its agent starts, so that containers left by an earlier run whose data is gone
// (an --ephemeral run, a removed data directory) do not hold addresses the scheduler hands
// out again. Containers on other networks (another berth dev's) are left alone.
func RemoveOrphans(ctx context.Context, host, network, hostID string, keep map[string]bool) ([]string, error) {
	var opts []client.Opt
	if host != "" {
		opts = append(opts, client.WithHost(host))
	} else {
		opts = append(opts, client.FromEnv)
	}
	c, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client %s: %w", host, err)
	}
	defer c.Close()
	res, err := c.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: make(client.Filters).Add("label", labelManaged+"=true", labelHost+"="+hostID).Add("network", network)})
	if err != nil {
		return nil, fmt.Errorf("list containers of %s: %w", hostID, err)
	}
	var removed []string
	for _, s := range res.Items {
		if keep[s.Labels[labelAllocation]] {
			continue
		}
		if _, err := c.ContainerRemove(ctx, s.ID, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return removed, fmt.Errorf("remove container %s: %w", s.ID, err)
		}
		name := s.ID
		if len(s.Names) > 0 {
			name = s.Names[0]
		}
		removed = append(removed, name)
	}
	return removed, nil
}
