// Package plugins holds the scheduler's in-tree filter and score plugins and the registry
// that lists them in the order filters run (NewInTreeRegistry), after the Kubernetes
// scheduler's in-tree registry. Nothing registers itself: a plugin exists for the
// scheduler when it is listed here.
package plugins

import (
	"slices"

	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
)

// Plugin names.
const (
	NameHostState      = "HostState"
	NameBusy           = "Busy"
	NameContainerCap   = "ContainerCap"
	NameFreeIP         = "FreeIP"
	NameResources      = "Resources"
	NamePerHostCap     = "PerHostCap"
	NameConstraints    = "Constraints"
	NameBinPack        = "BinPack"
	NameLeastAllocated = "LeastAllocated"
	NameSpread         = "Spread"
	NamePreferredDC    = "PreferredDC"
)

// Scoring policies.
const (
	PolicyBinPack        = "binpack"
	PolicyLeastAllocated = "least_allocated"
)

// NewInTreeRegistry lists the in-tree plugins; filters run in this order, cheapest and
// most selective first.
func NewInTreeRegistry() framework.Registry {
	return framework.Registry{
		{Name: NameHostState, New: func() (framework.Plugin, error) { return hostState{}, nil }},
		{Name: NameBusy, New: func() (framework.Plugin, error) { return busy{}, nil }},
		{Name: NameContainerCap, New: func() (framework.Plugin, error) { return containerCap{}, nil }},
		{Name: NameFreeIP, New: func() (framework.Plugin, error) { return freeIP{}, nil }},
		{Name: NameResources, New: func() (framework.Plugin, error) { return resources{}, nil }},
		{Name: NamePerHostCap, New: func() (framework.Plugin, error) { return perHostCap{}, nil }},
		{Name: NameConstraints, New: func() (framework.Plugin, error) { return constraints{}, nil }},
		{Name: NameBinPack, New: func() (framework.Plugin, error) { return binPack{}, nil }},
		{Name: NameLeastAllocated, New: func() (framework.Plugin, error) { return leastAllocated{}, nil }},
		{Name: NameSpread, New: func() (framework.Plugin, error) { return spread{}, nil }},
		{Name: NamePreferredDC, New: func() (framework.Plugin, error) { return preferredDC{}, nil }},
	}
}

// Weights of the default profile. They make the scores lexicographic: a preferred
// datacenter first, then the spread, then packing.
const (
	WeightPreferredDC = 1_000_000
	WeightSpread      = 1_000
	WeightPacking     = 1
)

// DefaultProfile runs every filter and scores with binpack or least_allocated packing,
// after the preferred datacenters and the spread.
func DefaultProfile() framework.Profile {
	return framework.Profile{Scores: map[string][]framework.ProfileScore{
		PolicyBinPack: {
			{Name: NamePreferredDC, Weight: WeightPreferredDC},
			{Name: NameSpread, Weight: WeightSpread},
			{Name: NameBinPack, Weight: WeightPacking},
		},
		PolicyLeastAllocated: {
			{Name: NamePreferredDC, Weight: WeightPreferredDC},
			{Name: NameSpread, Weight: WeightSpread},
			{Name: NameLeastAllocated, Weight: WeightPacking},
		},
	}}
}

// hostState keeps hosts that are in the inventory, ready and whose agent is alive.
type hostState struct{}

func (hostState) Name() string { return NameHostState }

func (hostState) Filter(_ *framework.CycleState, n *framework.NodeInfo) framework.Status {
	switch {
	case !n.Known || n.State == inventoryv1.HostState_HOST_STATE_DOWN:
		return framework.Reject(framework.ReasonDown)
	case n.State == inventoryv1.HostState_HOST_STATE_DRAINING:
		return framework.Reject(framework.ReasonDraining)
	case n.State != inventoryv1.HostState_HOST_STATE_READY:
		return framework.Reject(framework.ReasonDown)
	case !n.Alive:
		return framework.Reject(framework.ReasonNoAgent)
	}
	return framework.OK
}

// busy leaves alone hosts that another decision of this replica is committing to, and
// hosts that changed in ways the index has not seen yet.
type busy struct{}

func (busy) Name() string { return NameBusy }

func (busy) Filter(s *framework.CycleState, n *framework.NodeInfo) framework.Status {
	if n.Busy > 0 || n.Stale() || s.Req.Avoid[n] {
		return framework.Reject(framework.ReasonBusy)
	}
	return framework.OK
}

// containerCap keeps hosts under their container cap.
type containerCap struct{}

func (containerCap) Name() string { return NameContainerCap }

func (containerCap) Filter(s *framework.CycleState, n *framework.NodeInfo) framework.Status {
	if s.Count(n) >= n.MaxContainers {
		return framework.Reject(framework.ReasonCap)
	}
	return framework.OK
}

// freeIP keeps hosts with an address left in their pool.
type freeIP struct{}

func (freeIP) Name() string { return NameFreeIP }

func (freeIP) Filter(s *framework.CycleState, n *framework.NodeInfo) framework.Status {
	if !s.HasFreeIP(n) {
		return framework.Reject(framework.ReasonIP)
	}
	return framework.OK
}

// resources keeps hosts with the request's CPU, memory and disk free.
type resources struct{}

func (resources) Name() string { return NameResources }

func (resources) Filter(s *framework.CycleState, n *framework.NodeInfo) framework.Status {
	free := n.Capacity.Sub(s.Used(n))
	r := s.Req.Resources
	switch {
	case free.Memory < r.Memory:
		return framework.Reject(framework.ReasonMemory)
	case free.CPU < r.CPU:
		return framework.Reject(framework.ReasonCPU)
	case free.Disk < r.Disk:
		return framework.Reject(framework.ReasonDisk)
	}
	return framework.OK
}

// perHostCap keeps hosts with fewer than max_per_host allocations of the service.
type perHostCap struct{}

func (perHostCap) Name() string { return NamePerHostCap }

func (perHostCap) Filter(s *framework.CycleState, n *framework.NodeInfo) framework.Status {
	if m := s.Req.MaxPerHost; m > 0 && s.ServiceCount(n) >= m {
		return framework.Reject(framework.ReasonPerHost)
	}
	return framework.OK
}

// constraints keeps hosts that satisfy the request's label expression.
type constraints struct{}

func (constraints) Name() string { return NameConstraints }

func (constraints) Filter(s *framework.CycleState, n *framework.NodeInfo) framework.Status {
	if !s.Req.Constraints.Match(n) {
		return framework.Reject(framework.ReasonConstraints)
	}
	return framework.OK
}

// utilisation is the share (0 to MaxScore) of the host's CPU and memory used once one
// more allocation of the request is on it, the two averaged.
func utilisation(s *framework.CycleState, n *framework.NodeInfo) int64 {
	used := s.Used(n).Add(s.Req.Resources)
	var sum, parts int64
	if c := n.Capacity.CPU; c > 0 {
		sum += min(used.CPU, c) * framework.MaxScore / c
		parts++
	}
	if c := n.Capacity.Memory; c > 0 {
		sum += min(used.Memory, c) * framework.MaxScore / c
		parts++
	}
	if parts == 0 {
		return 0
	}
	return sum / parts
}

// binPack prefers the fullest hosts (Kubernetes MostAllocated), so that whole hosts stay
// free for large requests.
type binPack struct{}

func (binPack) Name() string { return NameBinPack }

func (binPack) Score(s *framework.CycleState, n *framework.NodeInfo) int64 {
	return utilisation(s, n)
}

// leastAllocated prefers the emptiest hosts (Kubernetes LeastAllocated).
type leastAllocated struct{}

func (leastAllocated) Name() string { return NameLeastAllocated }

func (leastAllocated) Score(s *framework.CycleState, n *framework.NodeInfo) int64 {
	return framework.MaxScore - utilisation(s, n)
}

// spread prefers the hosts of the spread domain (dc or rack) holding the fewest
// allocations of the service; its raw score is minus that count, normalized over the
// round's candidates (Kubernetes PodTopologySpread).
type spread struct{}

func (spread) Name() string { return NameSpread }

func (spread) Score(s *framework.CycleState, n *framework.NodeInfo) int64 {
	if s.Req.Spread == "" {
		return 0
	}
	c, _ := s.DomainCount(n)
	return -int64(c)
}

// NormalizeScores maps the raw scores onto 0 to MaxScore: the least loaded domain gets
// MaxScore, the most loaded 0.
func (spread) NormalizeScores(scores []int64) {
	lo, hi := slices.Min(scores), slices.Max(scores)
	for i, v := range scores {
		if hi == lo {
			scores[i] = framework.MaxScore
			continue
		}
		scores[i] = (v - lo) * framework.MaxScore / (hi - lo)
	}
}

// preferredDC prefers the request's preferred datacenters, the first most.
type preferredDC struct{}

func (preferredDC) Name() string { return NamePreferredDC }

func (preferredDC) Score(s *framework.CycleState, n *framework.NodeInfo) int64 {
	p := s.Req.PreferredDCs
	for i, dc := range p {
		if dc == n.DC {
			return int64(len(p)-i) * framework.MaxScore / int64(len(p))
		}
	}
	return 0
}
