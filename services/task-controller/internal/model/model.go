// Package model is the controller's vocabulary: the coord key layout, the states of runs
// and targets, the protojson codec of the values it stores, ids, and the checks of names
// that come from outside (service paths, hosts, versions, plugin names).
package model

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/proto/subjects"
)

// Coord paths.
const (
	TreePrefix        = "/berth/tree"
	DeploymentsPrefix = "/berth/deployments"
	TasksPrefix       = "/berth/tasks"
	ActivePrefix      = "/berth/controller/active"
	LocksPrefix       = "/berth/controller/locks"
	ReleasesPrefix    = "/berth/controller/releases"
	// HostsPrefix, AlivePrefix, AllocPrefix and InstancesPrefix are read (never written)
	// by the console's endpoints: the inventory (cmdb-sync), the agents' liveness nodes,
	// the scheduler's allocations and the agents' registered instances.
	HostsPrefix     = "/berth/hosts"
	AlivePrefix     = "/berth/alive"
	AllocPrefix     = "/berth/alloc"
	InstancesPrefix = "/berth/instances"
	// LeaderRole is the election role of the controller replicas.
	LeaderRole = "controller"
)

// Run kinds.
const (
	KindDeployment = "deployment"
	KindTask       = "task"
)

// Run states.
const (
	StatePending     = "pending"
	StateQueued      = "queued"
	StateRunning     = "running"
	StatePaused      = "paused"
	StateRollingBack = "rolling_back"
	StateSucceeded   = "succeeded"
	StateFailed      = "failed"
	StateAborted     = "aborted"
	StateRolledBack  = "rolled_back"
)

// Target (and step) states.
const (
	TargetPending     = "pending"
	TargetDispatched  = "dispatched"
	TargetRunning     = "running"
	TargetSucceeded   = "succeeded"
	TargetFailed      = "failed"
	TargetUnreachable = "unreachable"
	TargetTimedOut    = "timed_out"
	TargetSkipped     = "skipped"
)

// Failure classes.
const (
	ClassInfrastructure = "infrastructure"
	ClassApplication    = "application"
)

// Pause reasons.
const (
	PauseManual = "manual"
	PauseBatch  = "batch"
)

// RunStates lists every run state, for validating filters.
var RunStates = []string{StatePending, StateQueued, StateRunning, StatePaused, StateRollingBack,
	StateSucceeded, StateFailed, StateAborted, StateRolledBack}

// TerminalRun reports whether a run state is terminal.
func TerminalRun(s string) bool {
	switch s {
	case StateSucceeded, StateFailed, StateAborted, StateRolledBack:
		return true
	}
	return false
}

// TerminalTarget reports whether a target state is terminal.
func TerminalTarget(s string) bool {
	switch s {
	case TargetSucceeded, TargetFailed, TargetUnreachable, TargetTimedOut, TargetSkipped:
		return true
	}
	return false
}

// InFlightTarget reports whether a target has a step out at an agent.
func InFlightTarget(s string) bool { return s == TargetDispatched || s == TargetRunning }

// DeploymentPath is the path of a deployment's header.
func DeploymentPath(id string) string { return DeploymentsPrefix + "/" + id }

// TargetsPath is the directory of a deployment's targets.
func TargetsPath(id string) string { return DeploymentPath(id) + "/targets" }

// TargetPath is the path of one target.
func TargetPath(id, host string) string { return TargetsPath(id) + "/" + host }

// TaskPath is the path of a task's header.
func TaskPath(id string) string { return TasksPrefix + "/" + id }

// StepsPath is the directory of a task's steps.
func StepsPath(id string) string { return TaskPath(id) + "/steps" }

// StepPath is the path of one task step.
func StepPath(id, host string) string { return StepsPath(id) + "/" + host }

// ActivePath is the control node of a running deployment or task.
func ActivePath(id string) string { return ActivePrefix + "/" + id }

// TreePath is the path of a service-tree node.
func TreePath(service string) string { return TreePrefix + "/" + service }

// LockPath is the lock of a service's running deployment.
func LockPath(service string) string {
	return LocksPrefix + "/" + strings.ReplaceAll(service, "/", ".")
}

// ReleasesPath is the directory of a service's releases by host.
func ReleasesPath(service string) string {
	return ReleasesPrefix + "/" + strings.ReplaceAll(service, "/", ".")
}

// ReleasePath is the release record of a service on a host.
func ReleasePath(service, host string) string { return ReleasesPath(service) + "/" + host }

// Marshal encodes a stored value: protojson with proto field names.
func Marshal(m proto.Message) ([]byte, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return b, nil
}

// MustMarshal is Marshal for messages that always encode (no invalid UTF-8 can reach
// them: every string was checked on the way in).
func MustMarshal(m proto.Message) []byte {
	b, err := Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// Unmarshal decodes a stored value; unknown fields are ignored, since a newer controller
// may have written them.
func Unmarshal(b []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// NewID returns a new run id: a prefix (d or t), the UTC time to the second and 6 random
// hex digits, so that ids sort by creation time and are subject tokens.
func NewID(prefix string, now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// KindOf returns the kind of a run id.
func KindOf(id string) string {
	if strings.HasPrefix(id, "t-") {
		return KindTask
	}
	return KindDeployment
}

var (
	segmentRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$`)
	idRE      = regexp.MustCompile(`^[dt]-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$`)
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	hexRE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
	labelRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_./-]{0,62}[A-Za-z0-9])?$`)
)

// MaxHostLen bounds a host id so that step ids (rollback-<host>) fit the agent's limit.
const MaxHostLen = 80

// CheckService checks a service path: 1 to 8 segments of lowercase letters, digits and
// '-', each a DNS label (the path becomes a DNS name and subject tokens).
func CheckService(s string) error {
	if s == "" {
		return errors.New("empty service path")
	}
	segs := strings.Split(s, "/")
	if len(segs) > 8 {
		return fmt.Errorf("service path %q: %d segments, at most 8", s, len(segs))
	}
	for _, seg := range segs {
		if !segmentRE.MatchString(seg) {
			return fmt.Errorf("service path %q: segment %q: want lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 bytes", s, seg)
		}
	}
	return nil
}

// CheckVersion checks a version: letters, digits, '.', '_', '+' and '-', no path
// characters, at most 128 bytes.
func CheckVersion(v string) error {
	if v == "" {
		return errors.New("empty version")
	}
	if !versionRE.MatchString(v) {
		return fmt.Errorf("version %q: want letters, digits, '.', '_', '+' and '-', starting with a letter or digit, at most 128 bytes (no '/' or '..')", v)
	}
	if strings.Contains(v, "..") {
		return fmt.Errorf("version %q: contains \"..\"", v)
	}
	return nil
}

// CheckHost checks a host id: a subject token that is not reserved, at most MaxHostLen
// bytes, with no '/'.
func CheckHost(h string) error {
	if err := subjects.Host(h); err != nil {
		return err
	}
	if len(h) > MaxHostLen {
		return fmt.Errorf("host id %.20q...: longer than %d bytes", h, MaxHostLen)
	}
	if strings.ContainsAny(h, "/\\") {
		return fmt.Errorf("host id %q: contains a slash", h)
	}
	return nil
}

// CheckID checks a run id.
func CheckID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("id %q: want d-YYYYMMDD-HHMMSS-xxxxxx or t-YYYYMMDD-HHMMSS-xxxxxx", id)
	}
	return nil
}

// CheckName checks a plugin or action name: [a-z0-9][a-z0-9_-]*, at most 64 bytes.
func CheckName(what, n string) error {
	if !nameRE.MatchString(n) {
		return fmt.Errorf("%s %q: want lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 64 bytes, not a path", what, n)
	}
	return nil
}

// CheckSHA256 checks a sha256 hex digest.
func CheckSHA256(s string) error {
	if s == "" {
		return errors.New("missing: the package's sha256 is required (64 hex digits)")
	}
	if !hexRE.MatchString(s) {
		return fmt.Errorf("%q: want 64 lowercase hex digits", s)
	}
	return nil
}

// CheckLabelKey checks a label key.
func CheckLabelKey(k string) error {
	if !labelRE.MatchString(k) {
		return fmt.Errorf("label key %q: want letters, digits, '_', '.', '/' and '-', at most 64 bytes", k)
	}
	return nil
}

// ServiceAncestors returns the paths from the root down to service, service included:
// a/b/c gives a, a/b, a/b/c.
func ServiceAncestors(service string) []string {
	segs := strings.Split(service, "/")
	out := make([]string, len(segs))
	for i := range segs {
		out[i] = strings.Join(segs[:i+1], "/")
	}
	return out
}
