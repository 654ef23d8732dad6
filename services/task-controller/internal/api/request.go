package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/services/task-controller/internal/model"
	"github.com/berthdev/berth/services/task-controller/internal/strategy"
)

// flexString is a JSON string or number, kept as its text: batches ([1, "10%"]) and
// max_failures (2 or "10%").
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("want a number or a string, got %s", b)
	}
	*f = flexString(n.String())
	return nil
}

// durationString is a Go duration ("30s") or a number of seconds.
type durationString string

func (d *durationString) UnmarshalJSON(b []byte) error {
	var f flexString
	if err := f.UnmarshalJSON(b); err != nil {
		return err
	}
	*d = durationString(f)
	return nil
}

func (d durationString) parse(field string) (*durationpb.Duration, error) {
	s := strings.TrimSpace(string(d))
	if v, err := strconv.ParseFloat(s, 64); err == nil {
		return durationpb.New(time.Duration(v * float64(time.Second))), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return nil, &strategy.FieldError{Field: field, Reason: fmt.Sprintf("%q: want a duration (30s, 5m) or a number of seconds", s)}
	}
	return durationpb.New(v), nil
}

// StrategyJSON is a strategy as the API takes it: batches and max_failures may be numbers
// or strings, durations are Go durations or seconds.
type StrategyJSON struct {
	Batches     []flexString `json:"batches,omitempty"`
	MaxParallel *uint32      `json:"max_parallel,omitempty"`
	Pause       *flexString  `json:"pause,omitempty"`
	MaxFailures *flexString  `json:"max_failures,omitempty"`
	HealthGate  *struct {
		MinHealthyTime *durationString `json:"min_healthy_time,omitempty"`
		Deadline       *durationString `json:"deadline,omitempty"`
	} `json:"health_gate,omitempty"`
	ProgressDeadline *durationString `json:"progress_deadline,omitempty"`
	AutoRollback     *bool           `json:"auto_rollback,omitempty"`
	StepTimeout      *durationString `json:"step_timeout,omitempty"`
	InfraRetries     *uint32         `json:"infra_retries,omitempty"`
}

// proto converts and validates the strategy; prefix names its fields in errors.
func (s *StrategyJSON) proto(prefix string) (*controllerv1.Strategy, error) {
	out := &controllerv1.Strategy{}
	if s == nil {
		return out, nil
	}
	for _, b := range s.Batches {
		out.Batches = append(out.Batches, string(b))
	}
	out.MaxParallel = s.MaxParallel
	if s.Pause != nil {
		out.Pause = proto.String(string(*s.Pause))
	}
	if s.MaxFailures != nil {
		out.MaxFailures = proto.String(string(*s.MaxFailures))
	}
	var err error
	if hg := s.HealthGate; hg != nil {
		out.HealthGate = &controllerv1.HealthGate{}
		if hg.MinHealthyTime != nil {
			if out.HealthGate.MinHealthyTime, err = hg.MinHealthyTime.parse(prefix + "health_gate.min_healthy_time"); err != nil {
				return nil, err
			}
		}
		if hg.Deadline != nil {
			if out.HealthGate.Deadline, err = hg.Deadline.parse(prefix + "health_gate.deadline"); err != nil {
				return nil, err
			}
		}
	}
	if s.ProgressDeadline != nil {
		if out.ProgressDeadline, err = s.ProgressDeadline.parse(prefix + "progress_deadline"); err != nil {
			return nil, err
		}
	}
	out.AutoRollback = s.AutoRollback
	if s.StepTimeout != nil {
		if out.StepTimeout, err = s.StepTimeout.parse(prefix + "step_timeout"); err != nil {
			return nil, err
		}
	}
	out.InfraRetries = s.InfraRetries
	if err := strategy.Validate(prefix, out); err != nil {
		return nil, err
	}
	return out, nil
}

// ArtifactJSON is a package to deploy.
type ArtifactJSON struct {
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
}

// DeploymentRequest is the body of POST /v1/deployments.
type DeploymentRequest struct {
	Service  string        `json:"service"`
	Version  string        `json:"version"`
	Mode     string        `json:"mode,omitempty"`
	Artifact *ArtifactJSON `json:"artifact"`
	Hosts    []string      `json:"hosts,omitempty"`
	Strategy *StrategyJSON `json:"strategy,omitempty"`
	Queue    bool          `json:"queue,omitempty"`

	// placement is Placement once checked (container mode).
	placement *controllerv1.Placement
	// Placement is container mode's: what to ask the scheduler for.
	Placement *PlacementJSON `json:"placement,omitempty"`
}

// PlacementJSON is a container deployment's placement as the API takes it.
type PlacementJSON struct {
	Replicas    uint32 `json:"replicas"`
	CPUMillis   uint64 `json:"cpu_millis"`
	MemoryBytes uint64 `json:"memory_bytes"`
	Spread      string `json:"spread,omitempty"`
	Constraints string `json:"constraints,omitempty"`
	MaxPerHost  uint32 `json:"max_per_host,omitempty"`
}

// maxCPUMillis bounds a container's CPU (1024 cores).
const maxCPUMillis = 1 << 20

// proto checks the placement; fields are named placement.<field> in errors.
func (p *PlacementJSON) proto() (*controllerv1.Placement, error) {
	switch {
	case p.Replicas < 1 || p.Replicas > model.MaxReplicas:
		return nil, fieldErr("placement.replicas", "%d: want 1 to %d containers", p.Replicas, model.MaxReplicas)
	case p.CPUMillis == 0:
		return nil, fieldErr("placement.cpu_millis", "missing or 0: want the CPU of each container in thousandths of a core (100 is 0.1 core)")
	case p.CPUMillis > maxCPUMillis:
		return nil, fieldErr("placement.cpu_millis", "%d: at most %d", p.CPUMillis, maxCPUMillis)
	case p.MemoryBytes < model.MinMemoryBytes:
		return nil, fieldErr("placement.memory_bytes", "%d: want at least %d bytes (6 MiB, Docker's smallest limit)", p.MemoryBytes, model.MinMemoryBytes)
	case p.MemoryBytes > 1<<50:
		return nil, fieldErr("placement.memory_bytes", "%d: absurdly large", p.MemoryBytes)
	case p.MaxPerHost > model.MaxPerHostCap:
		return nil, fieldErr("placement.max_per_host", "%d: want 0 (no cap) to %d", p.MaxPerHost, model.MaxPerHostCap)
	case len(p.Constraints) > model.MaxConstraintsLen:
		return nil, fieldErr("placement.constraints", "%d bytes, at most %d", len(p.Constraints), model.MaxConstraintsLen)
	}
	switch p.Spread {
	case "", "dc", "rack":
	default:
		return nil, fieldErr("placement.spread", "%q: want dc, rack or empty", p.Spread)
	}
	for _, r := range p.Constraints {
		if r < ' ' || r == 0x7f {
			return nil, fieldErr("placement.constraints", "contains a control character")
		}
	}
	return &controllerv1.Placement{Replicas: p.Replicas, CpuMillis: p.CPUMillis, MemoryBytes: p.MemoryBytes,
		Spread: p.Spread, Constraints: strings.TrimSpace(p.Constraints), MaxPerHost: p.MaxPerHost}, nil
}

func fieldErr(field, format string, args ...any) error {
	return &strategy.FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// checkURL accepts file://, http(s):// and ftp:// URLs of a package.
func checkURL(raw string) error {
	if raw == "" {
		return fieldErr("artifact.url", "missing: the package's URL is required (file://, http://, https:// or ftp://)")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fieldErr("artifact.url", "%q is not a URL: %v", raw, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return fieldErr("artifact.url", "%q: a file URL names a local path (file:///path)", raw)
		}
		if !filepath.IsAbs(u.Path) {
			return fieldErr("artifact.url", "%q: want an absolute path (file:///path/pkg.tar.gz)", raw)
		}
	case "http", "https", "ftp":
		if u.Host == "" {
			return fieldErr("artifact.url", "%q: no host", raw)
		}
	default:
		return fieldErr("artifact.url", "scheme %q is not supported: want file, http, https or ftp", u.Scheme)
	}
	return nil
}

// checkHosts validates a target list: valid ids, no duplicates.
func checkHosts(field string, hosts []string, limit int) error {
	if len(hosts) > limit {
		return fieldErr(field, "%d hosts, at most %d", len(hosts), limit)
	}
	seen := make(map[string]bool, len(hosts))
	for i, h := range hosts {
		if err := model.CheckHost(h); err != nil {
			return fieldErr(fmt.Sprintf("%s[%d]", field, i), "%v", err)
		}
		if seen[h] {
			return fieldErr(fmt.Sprintf("%s[%d]", field, i), "host %q is listed twice", h)
		}
		seen[h] = true
	}
	return nil
}

// validate checks every field that does not need coord. A container deployment's
// placement is checked and kept in d.placement.
func (d *DeploymentRequest) validate() (*controllerv1.Strategy, error) {
	if err := model.CheckService(d.Service); err != nil {
		return nil, fieldErr("service", "%v", err)
	}
	if err := model.CheckVersion(d.Version); err != nil {
		return nil, fieldErr("version", "%v", err)
	}
	switch d.Mode {
	case "", model.ModePackage:
		if d.Placement != nil {
			return nil, fieldErr("placement", "a placement is for container mode only (\"mode\": \"container\"); package mode deploys to hosts")
		}
	case model.ModeContainer:
		if len(d.Hosts) > 0 {
			return nil, fieldErr("hosts", "hosts are for package mode only; container mode places its containers with the scheduler (placement)")
		}
		if d.Placement == nil {
			return nil, fieldErr("placement", "missing: container mode needs {\"replicas\", \"cpu_millis\", \"memory_bytes\"}")
		}
		p, err := d.Placement.proto()
		if err != nil {
			return nil, err
		}
		d.placement = p
	default:
		return nil, fieldErr("mode", "%q: want package or container", d.Mode)
	}
	if d.Artifact == nil {
		return nil, fieldErr("artifact", "missing: give the package as {\"url\": ..., \"sha256\": ...}")
	}
	if err := checkURL(d.Artifact.URL); err != nil {
		return nil, err
	}
	if err := model.CheckSHA256(d.Artifact.SHA256); err != nil {
		return nil, fieldErr("artifact.sha256", "%v", err)
	}
	if err := checkHosts("hosts", d.Hosts, maxTargets); err != nil {
		return nil, err
	}
	return d.Strategy.proto("strategy.")
}

// TaskRequest is the body of POST /v1/tasks.
type TaskRequest struct {
	Hosts     []string          `json:"hosts"`
	Plugin    string            `json:"plugin"`
	Action    string            `json:"action,omitempty"`
	Arguments map[string]string `json:"arguments,omitempty"`
	Args      []string          `json:"args,omitempty"`
	Service   string            `json:"service,omitempty"`
	Strategy  *StrategyJSON     `json:"strategy,omitempty"`
}

func (t *TaskRequest) validate() (*controllerv1.Strategy, error) {
	if len(t.Hosts) == 0 {
		return nil, fieldErr("hosts", "missing: name at least one host")
	}
	if err := checkHosts("hosts", t.Hosts, maxTargets); err != nil {
		return nil, err
	}
	if err := model.CheckName("plugin", t.Plugin); err != nil {
		return nil, fieldErr("plugin", "%v", err)
	}
	if t.Action == "" {
		t.Action = "run"
	}
	if err := model.CheckName("action", t.Action); err != nil {
		return nil, fieldErr("action", "%v", err)
	}
	size := 0
	for k, v := range t.Arguments {
		if err := model.CheckLabelKey(k); err != nil || strings.Contains(k, "/") {
			return nil, fieldErr("arguments", "argument name %q: want letters, digits, '_', '.' and '-'", k)
		}
		size += len(k) + len(v)
	}
	for _, a := range t.Args {
		size += len(a)
	}
	if size > 64<<10 {
		return nil, fieldErr("arguments", "%d bytes of arguments, at most 64 KiB", size)
	}
	if t.Service != "" {
		if err := model.CheckService(t.Service); err != nil {
			return nil, fieldErr("service", "%v", err)
		}
	}
	return t.Strategy.proto("strategy.")
}

// PolicyJSON is a node's policy as the API takes it.
type PolicyJSON struct {
	Strategy *StrategyJSON `json:"strategy,omitempty"`
	Health   *struct {
		Interval *durationString `json:"interval,omitempty"`
		Timeout  *durationString `json:"timeout,omitempty"`
		Rise     *uint32         `json:"rise,omitempty"`
		Fall     *uint32         `json:"fall,omitempty"`
	} `json:"health,omitempty"`
	DNSTTL *durationString `json:"dns_ttl,omitempty"`
}

func (p *PolicyJSON) proto() (*controllerv1.Policy, error) {
	out := &controllerv1.Policy{}
	if p == nil {
		return out, nil
	}
	var err error
	if p.Strategy != nil {
		if out.Strategy, err = p.Strategy.proto("policy.strategy."); err != nil {
			return nil, err
		}
	}
	if h := p.Health; h != nil {
		out.Health = &controllerv1.HealthPolicy{Rise: h.Rise, Fall: h.Fall}
		if h.Interval != nil {
			if out.Health.Interval, err = h.Interval.parse("policy.health.interval"); err != nil {
				return nil, err
			}
		}
		if h.Timeout != nil {
			if out.Health.Timeout, err = h.Timeout.parse("policy.health.timeout"); err != nil {
				return nil, err
			}
		}
	}
	if p.DNSTTL != nil {
		if out.DnsTtl, err = p.DNSTTL.parse("policy.dns_ttl"); err != nil {
			return nil, err
		}
	}
	if err := strategy.ValidatePolicy(out); err != nil {
		return nil, err
	}
	return out, nil
}

// NodeRequest is the body of PUT and PATCH /v1/tree/<path>. PUT replaces the node with
// it; PATCH sets the fields given (creating the node when missing), merges the policy
// field by field, and clears the policy fields named in unset.
type NodeRequest struct {
	Owners      *[]string          `json:"owners,omitempty"`
	Labels      *map[string]string `json:"labels,omitempty"`
	Hosts       *[]string          `json:"hosts,omitempty"`
	Description *string            `json:"description,omitempty"`
	Policy      *PolicyJSON        `json:"policy,omitempty"`
	Unset       []string           `json:"unset,omitempty"`
}
