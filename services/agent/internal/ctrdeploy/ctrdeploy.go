// Package ctrdeploy is the built-in container-deploy plugin: it runs an allocation of a
// service (the scheduler's Allocation: an IP address and CPU and memory limits on this
// host) as one Docker container of an image the image builder made — a base image plus the
// package under /app, /app/berth.yaml its descriptor — and registers the container's
// instance in the name service once its health passes.
//
// An allocation has at most one container, named berth-<allocation> and labelled with the
// service, version, deployment, allocation and image (dev.berth.*, and
// dev.berth.managed=true). A deploy is idempotent per allocation: the allocation's container
// running the image already is only made sure of (health, registration); one running
// another image is replaced in place — its instance drained, the container stopped and
// removed, the new one created with the same address. That is also how a rollback works.
//
// Before touching anything that runs, a deploy pulls the image by digest (unless the
// engine has it) and reads /app/berth.yaml out of it (through a container that is created,
// read and removed, never started; descriptors are kept by image id). The container's
// main process is a small sh supervisor (see Supervisor) that runs the start script, keeps
// the container up when the script returns, and runs the stop script on SIGTERM. Health is
// the descriptor's health script run with docker exec from outside, every interval until it
// passed rise times in a row; the agent's instance manager keeps running the same check
// after registration.
//
// The plugin owns no goroutine: every call runs in its caller's (a step's, or Adopt's).
package ctrdeploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berthdev/berth/pkg/descriptor"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent/internal/docker"
	"github.com/berthdev/berth/services/agent/internal/health"
	"github.com/berthdev/berth/services/agent/internal/instances"
	"github.com/berthdev/berth/services/agent/internal/plugin"
)

// Name is the plugin's name in step requests.
const Name = "container-deploy"

// Actions.
const (
	ActionDeploy = "deploy"
	ActionStop   = "stop"
	ActionStatus = "status"
)

// Labels of the containers the plugin makes.
const (
	LabelService    = "dev.berth.service"
	LabelVersion    = "dev.berth.version"
	LabelDeployment = "dev.berth.deployment"
	LabelAllocation = "dev.berth.allocation"
	LabelImage      = "dev.berth.image"
	LabelManaged    = "dev.berth.managed"
	// LabelHost is the agent's host id: several agents may share one engine (berth dev,
	// tests), and each adopts and reports only its own containers.
	LabelHost = "dev.berth.host"
	// LabelReader marks the short-lived containers the descriptor is read through, with
	// the host id as value; one left by a crash is removed by Adopt.
	LabelReader = "dev.berth.descriptor-reader"
)

// Paths in the image (the image builder's layout).
const (
	AppDir         = "/app"
	DescriptorPath = AppDir + "/berth.yaml"
)

// Limits of the arguments.
const (
	// MinMemory is Docker's smallest memory limit.
	MinMemory = 6 << 20
	// MaxMemory and MaxCPUMillis only keep the arithmetic sane.
	MaxMemory    = 1 << 50
	MaxCPUMillis = 1_000_000
)

// Defaults of Config.
const (
	DefaultNetwork        = "berth"
	DefaultHealthDeadline = time.Minute
	DefaultStopTimeout    = 10 * time.Second
)

// firstRetry is the wait after the first failed health check of a new container. The first
// check runs as soon as the container started (an exec takes some tens of milliseconds to
// begin, by when a server launched by the start script usually listens); until a check
// passes, the wait doubles from firstRetry up to the health interval, so that a fast start
// is seen at once and a slow one costs few execs. Once a check passed, checks are an
// interval apart, as rise means.
const firstRetry = 25 * time.Millisecond

// Supervisor is the container's main process, run as
// /bin/sh -c Supervisor berth-start <start script> <stop script> in /app (under the
// engine's init, which reaps orphans). It runs the start script; when the script returns 0
// (a script that starts the app in the background) it keeps the container up by sleeping;
// when it returns an error the container exits with it (and the engine restarts it,
// policy unless-stopped); a start script that runs the app in the foreground simply never
// returns. On SIGTERM (docker stop) it runs the stop script, then sends SIGTERM to a start
// script still running, and exits 0.
const Supervisor = `cd /app || exit 1
stop=$2
pid=
trap 'trap - TERM INT; [ -n "$stop" ] && BERTH_SCRIPT=stop "./$stop"; [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; exit 0' TERM INT
BERTH_SCRIPT=start "./$1" &
pid=$!
wait "$pid"
rc=$?
pid=
[ "$rc" -eq 0 ] || exit "$rc"
while :; do sleep 86400 & wait $!; done`

// Engine is the Docker engine as the plugin uses it; *docker.Client implements it.
type Engine interface {
	ImageID(ctx context.Context, ref string) (string, error)
	Pull(ctx context.Context, ref string) error
	Network(ctx context.Context, name string) (*docker.Network, error)
	Create(ctx context.Context, s docker.ContainerSpec) (string, error)
	Start(ctx context.Context, id string) error
	Stop(ctx context.Context, id string, timeout time.Duration) error
	Remove(ctx context.Context, id string) error
	Inspect(ctx context.Context, name string) (*docker.Container, error)
	List(ctx context.Context, labels ...string) ([]docker.Container, error)
	Stat(ctx context.Context, id, path string) (docker.FileInfo, error)
	ReadFile(ctx context.Context, id, path string, max int64) ([]byte, error)
	Exec(ctx context.Context, id string, s docker.ExecSpec) (int, error)
	Logs(ctx context.Context, id string, tail int) (string, error)
}

// Registry is the agent's instance manager as the plugin uses it; *instances.Manager
// implements it.
type Registry interface {
	Add(ctx context.Context, spec instances.Spec, healthy bool) (string, error)
	Lookup(service, id string) (instances.Status, bool)
	Remove(ctx context.Context, service, id string) (int64, error)
	Drain(ctx context.Context, service, id string) (int64, error)
}

// Drainer drains an instance with the agent's drain barrier (the service's DNS TTL and
// this host's template reloads); *apps.Apps implements it.
type Drainer interface {
	DrainID(ctx context.Context, service, id string) error
}

// Config configures the plugin.
type Config struct {
	// Host is this host's id (instance ids start with it); DC its datacenter.
	Host, DC string
	// Engine runs the containers.
	Engine Engine
	// Network is the user-defined network containers are attached to; "" means
	// DefaultNetwork.
	Network string
	// CapAdd are the capabilities containers keep (checked with CheckCaps); every other
	// one is dropped.
	CapAdd []string
	// HealthDeadline is how long a new container has to pass its health checks, unless
	// the step's health_deadline argument says otherwise; 0 means DefaultHealthDeadline.
	HealthDeadline time.Duration
	// StopTimeout is the time between SIGTERM and SIGKILL when a container stops; 0 means
	// DefaultStopTimeout.
	StopTimeout time.Duration
	// Instances registers and checks the containers' instances.
	Instances Registry
	// Drainer drains an instance before its container stops; nil drains through
	// Instances without a barrier.
	Drainer Drainer
	// Logger receives what Adopt finds; nil discards.
	Logger *slog.Logger
}

// Plugin is the container-deploy plugin. Create it with New.
type Plugin struct {
	cfg   Config
	log   *slog.Logger
	locks keyLocks

	// mu guards descs, the descriptors read so far by image id (an image id names its
	// content, so they never change).
	mu    sync.Mutex
	descs map[string]*descriptor.Descriptor
}

// maxCachedDescriptors bounds the descriptor cache; it is emptied when full.
const maxCachedDescriptors = 256

// New returns the plugin; it contacts nothing.
func New(cfg Config) (*Plugin, error) {
	if cfg.Engine == nil || cfg.Instances == nil {
		return nil, errors.New("container-deploy: engine and instances are required")
	}
	if cfg.Host == "" {
		return nil, errors.New("container-deploy: host: empty")
	}
	if cfg.Network == "" {
		cfg.Network = DefaultNetwork
	}
	if err := CheckNetworkName(cfg.Network); err != nil {
		return nil, fmt.Errorf("container-deploy: %w", err)
	}
	caps, err := CheckCaps(cfg.CapAdd)
	if err != nil {
		return nil, fmt.Errorf("container-deploy: %w", err)
	}
	cfg.CapAdd = caps
	if cfg.HealthDeadline <= 0 {
		cfg.HealthDeadline = DefaultHealthDeadline
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Plugin{cfg: cfg, log: cfg.Logger, locks: keyLocks{m: map[string]*keyLock{}}, descs: map[string]*descriptor.Descriptor{}}, nil
}

// Name implements plugin.Builtin.
func (p *Plugin) Name() string { return Name }

// Actions implements plugin.Builtin.
func (p *Plugin) Actions() []string { return []string{ActionDeploy, ActionStop, ActionStatus} }

// Run implements plugin.Builtin.
func (p *Plugin) Run(ctx context.Context, req plugin.Request, out plugin.Writers) error {
	a := &action{p: p, req: req, out: out}
	switch req.Action {
	case ActionDeploy:
		return a.deploy(ctx)
	case ActionStop:
		return a.stop(ctx)
	case ActionStatus:
		return a.status(ctx)
	}
	return bad("unknown action %q", req.Action)
}

// bad is a failure of the input (arguments, image, descriptor, health): not retryable,
// application.
func bad(format string, args ...any) error {
	return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf(format, args...))
}

// hostFailure is a failure of this host (the engine misbehaving, the network missing):
// not retryable, infrastructure.
func hostFailure(format string, args ...any) error {
	return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, fmt.Errorf(format, args...))
}

// engineErr classifies an engine error: an engine that cannot be reached, or a step that
// ran out of time talking to it, may pass on a later attempt; anything else is the host's.
func engineErr(err error) error {
	if errors.Is(err, docker.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return plugin.Retryable(err)
	}
	return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, err)
}

// pullErr classifies a pull error.
func pullErr(img string, err error) error {
	switch {
	case errors.Is(err, docker.ErrRegistryUnavailable):
		return plugin.Retryable(fmt.Errorf("registry of %s unreachable or failing, try again later: %w", img, err))
	case errors.Is(err, docker.ErrNotFound):
		return bad("image %s is not in its registry (or the registry will not say): %w", img, err)
	case errors.Is(err, docker.ErrDenied):
		return bad("the registry refused access to %s: %w", img, err)
	case errors.Is(err, docker.ErrBadReference):
		return bad("%w", err)
	}
	return engineErr(err)
}

var (
	versionRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$`)
	deploymentRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	labelRE      = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	networkRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
)

// checkService checks a service path: 1..8 DNS labels separated by "/".
func checkService(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	parts := strings.Split(s, "/")
	if len(parts) > descriptor.MaxSegments {
		return fmt.Errorf("%q: more than %d segments", s, descriptor.MaxSegments)
	}
	for _, c := range parts {
		if !labelRE.MatchString(c) {
			return fmt.Errorf("%q: segment %q: want a DNS label (lowercase letters, digits and '-')", s, c)
		}
	}
	return nil
}

// CheckNetworkName checks the name of the containers' network.
func CheckNetworkName(n string) error {
	if !networkRE.MatchString(n) {
		return fmt.Errorf("network %q: want a network name ([A-Za-z0-9][A-Za-z0-9_.-]*)", n)
	}
	switch n {
	case "host", "bridge", "none", "default":
		return fmt.Errorf("network %q: want a user-defined network (containers never share the host's network or the default bridge)", n)
	}
	return nil
}

// grantable are the capabilities a container may keep: Docker's default set, which
// grants nothing beyond the container itself. Others (SYS_ADMIN, NET_ADMIN, SYS_PTRACE,
// SYS_MODULE, ...) reach the host and are refused.
var grantable = []string{"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
	"NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}

// CheckCaps checks an allow-list of capabilities (CHOWN or CAP_CHOWN, any case) and
// returns it upper-case without the CAP_ prefix, sorted and without repeats; a capability
// outside the grantable set is an error naming it.
func CheckCaps(caps []string) ([]string, error) {
	var out []string
	for _, c := range caps {
		n := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(c)), "CAP_")
		if !slices.Contains(grantable, n) {
			return nil, fmt.Errorf("capability %q: not one a container may keep (allowed: %s)", c, strings.Join(grantable, ", "))
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ContainerName is the name of an allocation's container.
func ContainerName(allocation string) string { return "berth-" + allocation }

// InstanceID is the id of the instance of an allocation on host: the host id made a DNS
// label, then "-<allocation>" (the host part shortened to fit 63 bytes).
func InstanceID(host, allocation string) string { return instances.InstanceIDWith(host, allocation) }

// action is one run of the plugin.
type action struct {
	p   *Plugin
	req plugin.Request
	out plugin.Writers
}

func (a *action) say(format string, args ...any) { a.out.Stdout.Printf(format, args...) }

func (a *action) arg(name string) string { return a.req.Arguments[name] }

// knownArgs refuses arguments the action does not take, so that a typo is not ignored.
func (a *action) knownArgs(names ...string) error {
	if unknown := a.req.UnknownArgs(names...); len(unknown) > 0 {
		return bad("%s %s: unknown argument(s) %s; it takes %s", Name, a.req.Action, strings.Join(unknown, ", "), strings.Join(names, ", "))
	}
	return nil
}

// required returns the argument, or an error naming it when it is missing.
func (a *action) required(name, what string) (string, error) {
	v := a.arg(name)
	if v == "" {
		return "", bad("%s %s: argument %s is required (%s)", Name, a.req.Action, name, what)
	}
	return v, nil
}

// serviceArg reads and checks the service argument.
func (a *action) serviceArg(required bool) (string, error) {
	svc := strings.Trim(a.arg("service"), "/")
	if svc == "" && required {
		return "", bad("%s %s: argument service is required (the service path, hotel/search)", Name, a.req.Action)
	}
	if svc == "" {
		return "", nil
	}
	if err := checkService(svc); err != nil {
		return "", bad("argument service %v", err)
	}
	if rs := strings.Trim(a.req.Service, "/"); rs != "" && rs != svc {
		return "", bad("argument service %q differs from the step's service %q", svc, rs)
	}
	return svc, nil
}

// allocationArg reads and checks the allocation argument.
func (a *action) allocationArg() (string, error) {
	alloc, err := a.required("allocation", "the scheduler's allocation id")
	if err != nil {
		return "", err
	}
	if !labelRE.MatchString(alloc) {
		return "", bad("argument allocation %q: want an allocation id (a DNS label: lowercase letters, digits and '-', at most 63)", alloc)
	}
	return alloc, nil
}

// deployArgs are a deploy's checked arguments.
type deployArgs struct {
	service, version, deployment, allocation string
	image                                    docker.Image
	imageArg                                 string
	ip                                       netip.Addr
	nanoCPUs, memory                         int64
	deadline                                 time.Duration
}

func (a *action) deployArgs() (*deployArgs, error) {
	if err := a.knownArgs("service", "version", "deployment", "allocation", "image", "ip", "cpu_millis", "memory_bytes", "health_deadline"); err != nil {
		return nil, err
	}
	d := &deployArgs{deadline: a.p.cfg.HealthDeadline}
	var err error
	if d.service, err = a.serviceArg(true); err != nil {
		return nil, err
	}
	if d.version, err = a.required("version", "the version deployed"); err != nil {
		return nil, err
	}
	if !versionRE.MatchString(d.version) {
		return nil, bad("argument version %q: want letters, digits, '.', '_', '+' and '-', starting with a letter or digit, at most 128 bytes", d.version)
	}
	if d.deployment, err = a.required("deployment", "the deployment id"); err != nil {
		return nil, err
	}
	if !deploymentRE.MatchString(d.deployment) {
		return nil, bad("argument deployment %q: want letters, digits, '.', '_' and '-', at most 128 bytes", d.deployment)
	}
	if d.allocation, err = a.allocationArg(); err != nil {
		return nil, err
	}
	if d.imageArg, err = a.required("image", "<registry>/<path>@sha256:<64 hex>"); err != nil {
		return nil, err
	}
	if d.image, err = docker.ParseImage(d.imageArg); err != nil {
		return nil, bad("argument image: %v", err)
	}
	ipArg, err := a.required("ip", "the allocation's address on the container network")
	if err != nil {
		return nil, err
	}
	if d.ip, err = netip.ParseAddr(ipArg); err != nil || d.ip.Zone() != "" {
		return nil, bad("argument ip %q: want an IPv4 or IPv6 address", ipArg)
	}
	d.ip = d.ip.Unmap()
	if d.ip.IsUnspecified() || d.ip.IsLoopback() || d.ip.IsMulticast() || d.ip.IsLinkLocalUnicast() {
		return nil, bad("argument ip %s: want a unicast address on the container network", d.ip)
	}
	cpu, err := a.required("cpu_millis", "thousandths of a CPU, an integer > 0")
	if err != nil {
		return nil, err
	}
	millis, err := strconv.ParseInt(cpu, 10, 64)
	if err != nil || millis <= 0 || millis > MaxCPUMillis {
		return nil, bad("argument cpu_millis %q: want an integer from 1 to %d (thousandths of a CPU)", cpu, MaxCPUMillis)
	}
	d.nanoCPUs = millis * 1_000_000
	mem, err := a.required("memory_bytes", "an integer ≥ 6 MiB")
	if err != nil {
		return nil, err
	}
	if d.memory, err = strconv.ParseInt(mem, 10, 64); err != nil || d.memory < MinMemory || d.memory > MaxMemory {
		return nil, bad("argument memory_bytes %q: want an integer from %d (6 MiB, Docker's minimum) to %d", mem, MinMemory, int64(MaxMemory))
	}
	if s := a.arg("health_deadline"); s != "" {
		if d.deadline, err = time.ParseDuration(s); err != nil || d.deadline <= 0 {
			return nil, bad("argument health_deadline %q: want a positive duration (30s, 2m)", s)
		}
	}
	return d, nil
}

func (a *action) deploy(ctx context.Context) error {
	d, err := a.deployArgs()
	if err != nil {
		return err
	}
	unlock, err := a.p.locks.lock(ctx, d.allocation)
	if err != nil {
		return plugin.Retryable(fmt.Errorf("wait for another step on allocation %s: %w", d.allocation, err))
	}
	defer unlock()
	eng := a.p.cfg.Engine
	net, err := eng.Network(ctx, a.p.cfg.Network)
	if errors.Is(err, docker.ErrNotFound) {
		return hostFailure("container network %q does not exist on this host (create it, or set containers.network): %v", a.p.cfg.Network, err)
	}
	if err != nil {
		return engineErr(err)
	}
	if !slices.ContainsFunc(net.Subnets, func(p netip.Prefix) bool { return p.Contains(d.ip) }) {
		return bad("argument ip %s is not on the container network %s (subnets %v)", d.ip, net.Name, net.Subnets)
	}
	name := ContainerName(d.allocation)
	instID := InstanceID(a.p.cfg.Host, d.allocation)

	old, err := eng.Inspect(ctx, name)
	switch {
	case errors.Is(err, docker.ErrNotFound):
		old = nil
	case err != nil:
		return engineErr(err)
	}
	if old != nil && old.Labels[LabelImage] == d.imageArg && old.Running && old.IPs[a.p.cfg.Network] == d.ip {
		return a.ensure(ctx, d, old, instID)
	}

	// The new image is pulled and its descriptor read before anything that runs is
	// touched: a bad image leaves the allocation as it was.
	imageID, err := a.ensureImage(ctx, d.image)
	if err != nil {
		return err
	}
	desc, err := a.p.descriptor(ctx, imageID, "")
	if err != nil {
		return err
	}
	if desc.Service != d.service {
		return bad("image %s is of service %q (its berth.yaml), not %q as the step says", d.imageArg, desc.Service, d.service)
	}
	if old != nil {
		svc := old.Labels[LabelService]
		if svc == "" {
			svc = d.service
		}
		if old.Labels[LabelImage] == d.imageArg {
			a.say("container %s has the image but is %s; replacing it", name, old.State)
		} else {
			a.say("replacing container %s (%s %s) with %s", name, svc, old.Labels[LabelVersion], d.version)
		}
		if err := a.retire(ctx, old, svc, instID); err != nil {
			return err
		}
	}
	if len(desc.Templates) > 0 {
		a.say("note: berth.yaml has %d template(s); templates are not rendered for containers", len(desc.Templates))
	}

	spec := a.p.containerSpec(d, desc, name)
	id, err := eng.Create(ctx, spec)
	switch {
	case errors.Is(err, docker.ErrConflict):
		return hostFailure("create container %s at %s: the name or the address is in use on this host: %v", name, d.ip, err)
	case errors.Is(err, docker.ErrInvalid):
		return bad("create container %s: the engine refused it: %v", name, err)
	case err != nil:
		return engineErr(err)
	}
	a.say("created container %s (%s) at %s, %d millicpu, %d bytes", name, shortID(id), d.ip, d.nanoCPUs/1_000_000, d.memory)
	if err := eng.Start(ctx, id); err != nil {
		a.removeFailed(id, name)
		if errors.Is(err, docker.ErrConflict) || errors.Is(err, docker.ErrInvalid) {
			return hostFailure("start container %s: %v", name, err)
		}
		return engineErr(err)
	}
	if err := a.waitHealthy(ctx, id, desc, d.deadline, d.service, d.version); err != nil {
		if ctx.Err() != nil {
			// The step was cancelled (the agent stops, the step timed out): the container
			// stays; a new attempt finds it and makes sure of it.
			return plugin.Retryable(fmt.Errorf("container %s of %s %s: %w", name, d.service, d.version, err))
		}
		detail := a.describe(id)
		a.removeFailed(id, name)
		return bad("container %s of %s %s: %v%s; the container was removed and the allocation is empty", name, d.service, d.version, err, detail)
	}
	if err := a.register(ctx, d.service, d.version, instID, id, d.ip, desc); err != nil {
		return err
	}
	a.say("deployed %s %s in container %s at %s", d.service, d.version, name, netip.AddrPortFrom(d.ip, uint16(desc.Port)))
	return nil
}

// ensure makes sure the allocation's container, which runs the image asked for, is
// healthy and its instance registered; a retried deploy ends here doing nothing twice.
func (a *action) ensure(ctx context.Context, d *deployArgs, c *docker.Container, instID string) error {
	if st, ok := a.p.cfg.Instances.Lookup(d.service, instID); ok && st.Registered && !st.Draining {
		a.say("container %s already runs %s %s and its instance is registered", c.Name, d.service, d.version)
		return nil
	}
	desc, err := a.p.descriptor(ctx, c.ImageID, c.ID)
	if err != nil {
		return err
	}
	if desc.Service != d.service {
		return bad("container %s runs an image of service %q (its berth.yaml), not %q as the step says", c.Name, desc.Service, d.service)
	}
	a.say("container %s already runs %s %s; checking its health", c.Name, d.service, d.version)
	if err := a.waitHealthy(ctx, c.ID, desc, d.deadline, d.service, d.version); err != nil {
		if ctx.Err() != nil {
			return plugin.Retryable(fmt.Errorf("container %s: %w", c.Name, err))
		}
		// It ran before this step; it is not this step's to remove.
		return bad("container %s of %s %s: %v%s", c.Name, d.service, d.version, err, a.describe(c.ID))
	}
	return a.register(ctx, d.service, c.Labels[LabelVersion], instID, c.ID, d.ip, desc)
}

// ensureImage makes the image present on the engine, pulling it by digest, and returns
// its id.
func (a *action) ensureImage(ctx context.Context, img docker.Image) (string, error) {
	eng := a.p.cfg.Engine
	id, err := eng.ImageID(ctx, img.Pinned())
	if err == nil {
		return id, nil
	}
	if !errors.Is(err, docker.ErrNotFound) {
		return "", engineErr(err)
	}
	start := time.Now()
	a.say("pulling %s", img.Pinned())
	if err := eng.Pull(ctx, img.Pinned()); err != nil {
		return "", pullErr(img.Pinned(), err)
	}
	id, err = eng.ImageID(ctx, img.Pinned())
	if err != nil {
		return "", engineErr(fmt.Errorf("find the pulled image: %w", err))
	}
	a.say("pulled %s in %s", img.Pinned(), time.Since(start).Round(time.Millisecond))
	return id, nil
}

// containerSpec is the container of a deploy.
func (p *Plugin) containerSpec(d *deployArgs, desc *descriptor.Descriptor, name string) docker.ContainerSpec {
	env := []string{
		"BERTH_HOST_ID=" + p.cfg.Host,
		"BERTH_SERVICE=" + d.service,
		"BERTH_VERSION=" + d.version,
		"BERTH_DEPLOYMENT=" + d.deployment,
		"BERTH_ALLOCATION=" + d.allocation,
		"BERTH_IP=" + d.ip.String(),
		"BERTH_PORT=" + strconv.Itoa(desc.Port),
		"BERTH_RELEASE_DIR=" + AppDir,
	}
	if p.cfg.DC != "" {
		env = append(env, "BERTH_DC="+p.cfg.DC)
	}
	return docker.ContainerSpec{
		Name:       name,
		Image:      d.image.Pinned(),
		Entrypoint: []string{"/bin/sh", "-c", Supervisor, "berth-start"},
		Cmd:        []string{desc.Scripts.Start, desc.Scripts.Stop},
		Env:        env,
		WorkDir:    AppDir,
		Labels: map[string]string{
			LabelService: d.service, LabelVersion: d.version, LabelDeployment: d.deployment,
			LabelAllocation: d.allocation, LabelImage: d.imageArg, LabelManaged: "true", LabelHost: p.cfg.Host,
		},
		Network:              p.cfg.Network,
		IP:                   d.ip,
		NanoCPUs:             d.nanoCPUs,
		Memory:               d.memory,
		CapAdd:               p.cfg.CapAdd,
		Init:                 true,
		RestartUnlessStopped: true,
		StopTimeout:          p.cfg.StopTimeout,
	}
}

// retire takes a container out: its instance drained, the container stopped and removed.
func (a *action) retire(ctx context.Context, c *docker.Container, service, instID string) error {
	if err := a.p.drain(ctx, service, instID); err != nil {
		a.say("draining %s: %v (stopping it anyway)", c.Name, err)
	}
	eng := a.p.cfg.Engine
	if err := eng.Stop(ctx, c.ID, a.p.cfg.StopTimeout); err != nil && !errors.Is(err, docker.ErrNotFound) {
		return engineErr(err)
	}
	if err := eng.Remove(ctx, c.ID); err != nil {
		return engineErr(err)
	}
	a.say("stopped and removed container %s", c.Name)
	return nil
}

// drain drains an instance the manager has (through the Drainer's barrier when there is
// one); an unknown instance is not an error.
func (p *Plugin) drain(ctx context.Context, service, id string) error {
	if _, ok := p.cfg.Instances.Lookup(service, id); !ok {
		return nil
	}
	if p.cfg.Drainer != nil {
		return p.cfg.Drainer.DrainID(ctx, service, id)
	}
	_, err := p.cfg.Instances.Drain(ctx, service, id)
	return err
}

// removeFailed removes a container this step created and gave up on, even when the
// step's context ended.
func (a *action) removeFailed(id, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.p.cfg.Engine.Remove(ctx, id); err != nil {
		a.say("could not remove container %s: %v", name, err)
	}
}

// describe says how a container is doing, for a failure's message: its state and its last
// output lines.
func (a *action) describe(id string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eng := a.p.cfg.Engine
	c, err := eng.Inspect(ctx, id)
	if err != nil {
		return ""
	}
	s := fmt.Sprintf(" (container %s", c.State)
	if !c.Running {
		s += fmt.Sprintf(", exit code %d", c.ExitCode)
	}
	if c.RestartCount > 0 {
		s += fmt.Sprintf(", restarted %d time(s)", c.RestartCount)
	}
	s += ")"
	if logs, err := eng.Logs(ctx, id, 20); err == nil && strings.TrimSpace(logs) != "" {
		a.say("last output of the container:")
		for _, l := range strings.Split(strings.TrimRight(logs, "\n"), "\n") {
			a.say("  %s", l)
		}
		lines := strings.Split(strings.TrimSpace(logs), "\n")
		s += "; its last output: " + lines[len(lines)-1]
	}
	return s
}

// register registers the container's instance (its rise passes were seen) with a probe
// that is the same docker exec of the health script.
func (a *action) register(ctx context.Context, service, version, instID, ctrID string, ip netip.Addr, desc *descriptor.Descriptor) error {
	if err := a.p.register(ctx, service, version, instID, ctrID, ip, desc, true); err != nil {
		return hostFailure("register the instance %s of %s: %v", instID, service, err)
	}
	a.say("instance %s of %s registered at %s", instID, service, netip.AddrPortFrom(ip, uint16(desc.Port)))
	return nil
}

func (p *Plugin) register(ctx context.Context, service, version, instID, ctrID string, ip netip.Addr, desc *descriptor.Descriptor, healthy bool) error {
	spec := instances.Spec{
		Service: service, Version: version, Port: desc.Port, Tags: desc.Tags, Weight: desc.Weight,
		Interval: desc.Health.Interval, Timeout: desc.Health.Timeout, Rise: desc.Health.Rise, Fall: desc.Health.Fall,
		Origin: "container", ID: instID, IP: ip.String(),
	}
	if desc.Scripts.Health != "" {
		spec.Probe = func(ctx context.Context) error { return p.probe(ctx, ctrID, desc) }
	}
	_, err := p.cfg.Instances.Add(ctx, spec, healthy)
	return err
}

// probe runs the health script once in the container with docker exec.
func (p *Plugin) probe(ctx context.Context, ctrID string, desc *descriptor.Descriptor) error {
	rel := desc.Scripts.Health
	if rel == "" {
		return nil
	}
	var out lastLine
	code, err := p.cfg.Engine.Exec(ctx, ctrID, docker.ExecSpec{
		Cmd: []string{path.Join(AppDir, rel)}, Env: []string{"BERTH_SCRIPT=health"}, WorkDir: AppDir, Stdout: &out, Stderr: &out,
	})
	switch {
	case err != nil && ctx.Err() == context.DeadlineExceeded:
		return fmt.Errorf("%w: health script %s did not end within %s", health.ErrTimeout, rel, desc.Health.Timeout)
	case errors.Is(err, docker.ErrConflict):
		return fmt.Errorf("health script %s: the container is not running", rel)
	case err != nil:
		return fmt.Errorf("health script %s: %w", rel, err)
	case code != 0:
		msg := fmt.Sprintf("health script %s: exit status %d", rel, code)
		if l := out.String(); l != "" {
			msg += ": " + l
		}
		return errors.New(msg)
	}
	return nil
}

// waitHealthy runs the health check every interval until it passed rise times in a row,
// or fails when deadline passes (or ctx ends).
func (a *action) waitHealthy(ctx context.Context, id string, desc *descriptor.Descriptor, deadline time.Duration, service, version string) error {
	if desc.Scripts.Health == "" {
		a.say("berth.yaml has no health script; taking %s %s as healthy once it runs", service, version)
		c, err := a.p.cfg.Engine.Inspect(ctx, id)
		if err != nil {
			return err
		}
		if !c.Running {
			return fmt.Errorf("the container is %s (exit code %d)", c.State, c.ExitCode)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	start := time.Now()
	rise := max(desc.Health.Rise, 1)
	interval := desc.Health.Interval
	passes, checks := 0, 0
	var last error
	wait, retry := time.Duration(0), firstRetry
	passed := false
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if last == nil {
				last = errors.New("no check finished")
			}
			return fmt.Errorf("health did not pass %d time(s) in a row within %s (%d checks; last: %v)", rise, deadline, checks, last)
		case <-t.C:
		}
		checkStart := time.Now()
		checks++
		cctx, ccancel := context.WithTimeout(ctx, desc.Health.Timeout)
		err := a.p.probe(cctx, id, desc)
		ccancel()
		if err != nil {
			if ctx.Err() != nil && last != nil {
				continue
			}
			passes, last = 0, err
		} else {
			passes++
			if passes >= rise {
				a.say("%s %s is healthy (%d check(s) in a row, %s)", service, version, passes, time.Since(start).Round(time.Millisecond))
				return nil
			}
		}
		if passes > 0 {
			passed = true
		}
		if !passed {
			// No check passed yet: back off from firstRetry towards the interval.
			wait, retry = min(retry, interval), min(2*retry, interval)
			continue
		}
		wait = max(interval-time.Since(checkStart), 0)
	}
}

// lastLine keeps the last non-empty line written to it (at most 512 bytes of it).
type lastLine struct {
	mu   sync.Mutex
	buf  []byte
	last string
}

func (l *lastLine) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := slices.Index(l.buf, '\n')
		if i < 0 {
			break
		}
		if s := strings.TrimSpace(string(l.buf[:i])); s != "" {
			l.last = s
		}
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 4096 {
		l.buf = l.buf[len(l.buf)-4096:]
	}
	return len(p), nil
}

func (l *lastLine) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.last
	if rest := strings.TrimSpace(string(l.buf)); rest != "" {
		s = rest
	}
	if len(s) > 512 {
		s = s[:512]
	}
	return s
}

func (a *action) stop(ctx context.Context) error {
	if err := a.knownArgs("service", "allocation"); err != nil {
		return err
	}
	svc, err := a.serviceArg(true)
	if err != nil {
		return err
	}
	alloc, err := a.allocationArg()
	if err != nil {
		return err
	}
	unlock, err := a.p.locks.lock(ctx, alloc)
	if err != nil {
		return plugin.Retryable(fmt.Errorf("wait for another step on allocation %s: %w", alloc, err))
	}
	defer unlock()
	name := ContainerName(alloc)
	instID := InstanceID(a.p.cfg.Host, alloc)
	c, err := a.p.cfg.Engine.Inspect(ctx, name)
	if errors.Is(err, docker.ErrNotFound) {
		if err := a.p.drain(ctx, svc, instID); err != nil {
			a.say("draining %s: %v", instID, err)
		}
		a.say("allocation %s has no container on this host; nothing to stop", alloc)
		return nil
	}
	if err != nil {
		return engineErr(err)
	}
	if got := c.Labels[LabelService]; got != svc {
		return bad("container %s of allocation %s runs service %q, not %q as the step says; not stopping it", name, alloc, got, svc)
	}
	if err := a.retire(ctx, c, svc, instID); err != nil {
		return err
	}
	a.say("stopped %s %s (allocation %s)", svc, c.Labels[LabelVersion], alloc)
	return nil
}

// ContainerStatus is one container in the status action's output.
type ContainerStatus struct {
	Allocation string `json:"allocation"`
	Service    string `json:"service"`
	Version    string `json:"version"`
	Deployment string `json:"deployment,omitempty"`
	Image      string `json:"image"`
	Container  string `json:"container"`
	IP         string `json:"ip,omitempty"`
	State      string `json:"state"`
	Healthy    bool   `json:"healthy"`
	Instance   string `json:"instance,omitempty"`
	Health     string `json:"health,omitempty"`
}

func (a *action) status(ctx context.Context) error {
	if err := a.knownArgs("service"); err != nil {
		return err
	}
	svc, err := a.serviceArg(false)
	if err != nil {
		return err
	}
	labels := []string{LabelManaged + "=true", LabelHost + "=" + a.p.cfg.Host}
	if svc != "" {
		labels = append(labels, LabelService+"="+svc)
	}
	cs, err := a.p.cfg.Engine.List(ctx, labels...)
	if err != nil {
		return engineErr(err)
	}
	out := make([]ContainerStatus, 0, len(cs))
	for _, c := range cs {
		st := ContainerStatus{Allocation: c.Labels[LabelAllocation], Service: c.Labels[LabelService], Version: c.Labels[LabelVersion],
			Deployment: c.Labels[LabelDeployment], Image: c.Labels[LabelImage], Container: c.Name, State: c.State}
		if ip, ok := c.IPs[a.p.cfg.Network]; ok {
			st.IP = ip.String()
		}
		if st.Allocation != "" {
			st.Instance = InstanceID(a.p.cfg.Host, st.Allocation)
			if is, ok := a.p.cfg.Instances.Lookup(st.Service, st.Instance); ok {
				st.Health = is.Verdict.String()
				st.Healthy = is.Verdict == health.Healthy && !is.Draining
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Service+"/"+out[i].Allocation < out[j].Service+"/"+out[j].Allocation
	})
	b, err := json.Marshal(out)
	if err != nil {
		return hostFailure("encode the status: %v", err)
	}
	a.say("%s", b)
	return nil
}

// Adopt takes over the containers the plugin made for this host before the agent
// (re)started: each
// running one gets its instance registered again once its health passes rise times (it is
// never restarted); a stopped one is left as it is. Descriptor readers left by a crash are
// removed. It returns the first engine error; a container that cannot be adopted is
// logged and skipped.
func (p *Plugin) Adopt(ctx context.Context) error {
	eng := p.cfg.Engine
	readers, err := eng.List(ctx, LabelReader+"="+p.cfg.Host)
	if err != nil {
		return fmt.Errorf("adopt containers: %w", err)
	}
	for _, r := range readers {
		if err := eng.Remove(ctx, r.ID); err != nil {
			p.log.Warn("remove a left-over descriptor reader", "container", r.Name, "err", err)
		}
	}
	cs, err := eng.List(ctx, LabelManaged+"=true", LabelHost+"="+p.cfg.Host)
	if err != nil {
		return fmt.Errorf("adopt containers: %w", err)
	}
	for _, c := range cs {
		svc, alloc, version := c.Labels[LabelService], c.Labels[LabelAllocation], c.Labels[LabelVersion]
		log := p.log.With("container", c.Name, "service", svc, "allocation", alloc, "version", version)
		if checkService(svc) != nil || !labelRE.MatchString(alloc) || c.Name != ContainerName(alloc) {
			log.Warn("a managed container without valid labels; left alone")
			continue
		}
		if !c.Running {
			log.Info("a managed container is not running; left as it is", "state", c.State)
			continue
		}
		ip, ok := c.IPs[p.cfg.Network]
		if !ok {
			log.Warn("a managed container is not on the container network; not registered", "network", p.cfg.Network)
			continue
		}
		instID := InstanceID(p.cfg.Host, alloc)
		if _, ok := p.cfg.Instances.Lookup(svc, instID); ok {
			continue
		}
		desc, err := p.descriptor(ctx, c.ImageID, c.ID)
		if err != nil {
			log.Error("cannot read the descriptor of a running container; not registered", "err", err)
			continue
		}
		if err := p.register(ctx, svc, version, instID, c.ID, ip, desc, false); err != nil {
			log.Error("instance of a running container refused", "err", err)
			continue
		}
		log.Info("running container found; registering it once healthy", "instance", instID, "ip", ip.String())
	}
	return nil
}

// descriptor returns the berth.yaml of an image, read from the container from (when
// given: it runs the image) or through a reader container made for it, and checks that
// its scripts are in the image. Descriptors are kept by image id.
func (p *Plugin) descriptor(ctx context.Context, imageID, from string) (*descriptor.Descriptor, error) {
	p.mu.Lock()
	d := p.descs[imageID]
	p.mu.Unlock()
	if d != nil {
		return d, nil
	}
	eng := p.cfg.Engine
	id := from
	if id == "" {
		var err error
		id, err = eng.Create(ctx, docker.ContainerSpec{
			Image: imageID, Entrypoint: []string{DescriptorPath}, Labels: map[string]string{LabelReader: p.cfg.Host},
		})
		if err != nil {
			return nil, engineErr(fmt.Errorf("create a container to read %s: %w", DescriptorPath, err))
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = eng.Remove(rctx, id)
		}()
	}
	data, err := eng.ReadFile(ctx, id, DescriptorPath, descriptor.MaxSize)
	switch {
	case errors.Is(err, docker.ErrNotFound):
		return nil, bad("the image has no %s: not a Berth package image (the package goes under %s)", DescriptorPath, AppDir)
	case errors.Is(err, docker.ErrTooLarge), errors.Is(err, docker.ErrInvalid):
		return nil, bad("%v", err)
	case err != nil:
		return nil, engineErr(err)
	}
	d, err = descriptor.Parse("berth.yaml", data)
	if err != nil {
		return nil, bad("bad descriptor in the image: %v", err)
	}
	if err := d.CheckFiles(containerFS{ctx: ctx, eng: eng, id: id}); err != nil {
		var errs descriptor.Errors
		if !errors.As(err, &errs) {
			return nil, engineErr(err)
		}
		return nil, bad("bad package in the image: %v", err)
	}
	p.mu.Lock()
	if len(p.descs) >= maxCachedDescriptors {
		clear(p.descs)
	}
	p.descs[imageID] = d
	p.mu.Unlock()
	return d, nil
}

// containerFS is the package under /app of a container, for descriptor.CheckFiles: it
// only answers Stat.
type containerFS struct {
	ctx context.Context
	eng Engine
	id  string
}

var _ fs.StatFS = containerFS{}

func (f containerFS) Open(name string) (fs.File, error) {
	return nil, &fs.PathError{Op: "open", Path: name, Err: errors.ErrUnsupported}
}

func (f containerFS) Stat(name string) (fs.FileInfo, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrInvalid}
	}
	p := path.Join(AppDir, name)
	fi, err := f.eng.Stat(f.ctx, f.id, p)
	// A link is followed once (package scripts may be links to a binary).
	if err == nil && fi.Mode&fs.ModeSymlink != 0 && fi.LinkTarget != "" {
		target := fi.LinkTarget
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(p), target)
		}
		fi, err = f.eng.Stat(f.ctx, f.id, target)
	}
	if errors.Is(err, docker.ErrNotFound) {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return fileInfo{fi}, nil
}

// fileInfo is a docker.FileInfo as an fs.FileInfo.
type fileInfo struct{ fi docker.FileInfo }

func (f fileInfo) Name() string       { return f.fi.Name }
func (f fileInfo) Size() int64        { return f.fi.Size }
func (f fileInfo) Mode() fs.FileMode  { return f.fi.Mode }
func (f fileInfo) ModTime() time.Time { return time.Time{} }
func (f fileInfo) IsDir() bool        { return f.fi.Mode.IsDir() }
func (f fileInfo) Sys() any           { return nil }

func shortID(id string) string { return id[:min(len(id), 12)] }

// keyLocks serializes the steps on one allocation.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

// lock takes the lock of key, waiting for it or for ctx to end, and returns its release.
func (k *keyLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	l := k.m[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

var _ io.Writer = (*lastLine)(nil)
