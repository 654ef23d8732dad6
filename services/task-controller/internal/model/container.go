package model

import (
	"fmt"
	"regexp"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// Deployment modes.
const (
	ModePackage   = "package"
	ModeContainer = "container"
)

// Coord paths of container mode.
const (
	// ReplacementsPrefix holds one Replacement per rescheduled allocation the controller
	// deployed (or is deploying), so that an alloc.rescheduled event seen twice, or by
	// two leaders, makes one run.
	ReplacementsPrefix = "/berth/controller/replacements"
	// ImagesPrefix is where the image builder records pushed images (ImageRecord).
	ImagesPrefix = "/berth/images"
)

// Container limits.
const (
	// MaxReplicas bounds a container deployment's replicas.
	MaxReplicas = 1000
	// MinMemoryBytes is Docker's smallest memory limit.
	MinMemoryBytes = 6 << 20
	// MaxConstraintsLen bounds a placement's constraint expression.
	MaxConstraintsLen = 1024
	// MaxPerHostCap is the largest per-host cap (a host takes at most 64 containers).
	MaxPerHostCap = 64
)

// ReplacementPath is the record of the run deploying a rescheduled allocation.
func ReplacementPath(alloc string) string { return ReplacementsPrefix + "/" + alloc }

// ImagePath is the image builder's record of service's version.
func ImagePath(service, version string) string { return ImagesPrefix + "/" + service + "/" + version }

// AllocPath is a scheduler allocation; AllocGuardPath is its host's guard node.
func AllocPath(host, id string) string { return AllocPrefix + "/" + host + "/" + id }

// AllocGuardPath is the node every write under /berth/alloc/<host>/ rewrites.
func AllocGuardPath(host string) string { return AllocPrefix + "/" + host }

// IsContainer reports whether d runs in container mode.
func IsContainer(d *controllerv1.Deployment) bool { return d.GetMode() == ModeContainer }

// TargetKeys are the keys of a deployment's targets in order: its hosts in package mode;
// in container mode its allocations (rollout order), then the old allocations it retires.
func TargetKeys(d *controllerv1.Deployment) []string {
	if !IsContainer(d) {
		return d.GetHosts()
	}
	out := make([]string, 0, len(d.GetAllocations())+len(d.GetRetire()))
	for _, a := range d.GetAllocations() {
		out = append(out, a.GetId())
	}
	for _, a := range d.GetRetire() {
		out = append(out, a.GetId())
	}
	return out
}

// TargetKey is the key of a target: its allocation in container mode, else its host.
func TargetKey(t *controllerv1.Target) string {
	if a := t.GetAllocation(); a != "" {
		return a
	}
	return t.GetHost()
}

// PendingTarget is the record of a target that has none yet: key is one of TargetKeys(d).
func PendingTarget(d *controllerv1.Deployment, key string) *controllerv1.Target {
	if !IsContainer(d) {
		return &controllerv1.Target{Host: key, State: TargetPending}
	}
	for _, a := range d.GetAllocations() {
		if a.GetId() == key {
			return &controllerv1.Target{Host: a.GetHost(), Allocation: key, Ip: a.GetIp(), Version: d.GetVersion(), State: TargetPending}
		}
	}
	for _, a := range d.GetRetire() {
		if a.GetId() == key {
			return &controllerv1.Target{Host: a.GetHost(), Allocation: key, Ip: a.GetIp(), Version: a.GetVersion(), Retire: true,
				State: TargetPending, Batch: -1}
		}
	}
	return &controllerv1.Target{Allocation: key, State: TargetPending}
}

var allocIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// CheckAllocationID checks an allocation id that becomes a path segment and a step id.
func CheckAllocationID(id string) error {
	if !allocIDRE.MatchString(id) {
		return fmt.Errorf("allocation id %q: want 1 to 64 characters of [A-Za-z0-9_-]", id)
	}
	return nil
}
