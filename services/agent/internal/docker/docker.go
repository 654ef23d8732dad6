// Package docker is the agent's only user of the Docker Engine API client
// (github.com/moby/moby/client, whose API churns between releases): it offers the
// container-deploy plugin the few calls it needs — ping, image inspect and pull, network
// inspect, container create, start, stop, remove, inspect and list, exec, logs, and reading
// a file out of a container — and turns the engine's answers into the sentinels below, so
// that callers classify failures with errors.Is and never read the engine's messages.
//
// Create hardens every container it makes, whatever the caller asks: never privileged, no
// bind mounts or volumes, all capabilities dropped but the ones listed, no-new-privileges,
// its own network, PID, IPC and UTS namespaces, a PID limit. ContainerSpec has no field
// that could ask for anything else.
package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// Error classes. Every error of the package about the engine or a registry wraps one.
var (
	// ErrUnavailable is an engine that cannot be reached: the socket is missing, the
	// daemon is down or does not answer.
	ErrUnavailable = errors.New("docker: engine unreachable")
	// ErrNotFound is a container, image, network or path the engine does not have, or an
	// image its registry does not have (or will not admit having: pull access denied).
	ErrNotFound = errors.New("docker: not found")
	// ErrRegistryUnavailable is a registry the engine could not reach or that failed
	// while pulling.
	ErrRegistryUnavailable = errors.New("docker: registry unavailable")
	// ErrDenied is a registry that refused the credentials.
	ErrDenied = errors.New("docker: registry denied access")
	// ErrBadReference is an image reference that does not parse or is not pinned by
	// digest.
	ErrBadReference = errors.New("docker: bad image reference")
	// ErrConflict is a request the engine refused because of the object's state: a
	// container name in use, an IP address taken, an exec in a container that is not
	// running.
	ErrConflict = errors.New("docker: conflict")
	// ErrInvalid is a request the engine refused as invalid (an address outside the
	// network's subnet, a limit below its minimum).
	ErrInvalid = errors.New("docker: invalid request")
)

// DefaultHost is the engine's address when neither the caller nor $DOCKER_HOST give one.
const DefaultHost = "unix:///var/run/docker.sock"

// PidsLimit is the most processes a container made by Create may have: enough for any
// service, few enough that a fork bomb stays inside its container.
const PidsLimit = 4096

// Client is a client of one Docker engine. It is safe for concurrent use and starts no
// goroutines of its own but those of the HTTP transport, which Close ends.
type Client struct {
	c    *client.Client
	host string
}

// New makes a client of the engine at host (unix:///var/run/docker.sock,
// tcp://127.0.0.1:2375); empty means $DOCKER_HOST, else DefaultHost. It contacts nothing:
// Ping does. The API version is negotiated with the engine on the first call.
func New(host string) (*Client, error) {
	opts := []client.Opt{client.FromEnv}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	c, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker engine client %q: %w", host, err)
	}
	return &Client{c: c, host: c.DaemonHost()}, nil
}

// Host is the engine's address.
func (c *Client) Host() string { return c.host }

// Close releases the client's idle connections.
func (c *Client) Close() error { return c.c.Close() }

// wrap classifies an error of an API call and names the operation.
func (c *Client) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case client.IsErrConnectionFailed(err):
		return fmt.Errorf("%s: %w at %s: %w", op, ErrUnavailable, c.host, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", op, err)
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%s: %w: %w", op, ErrNotFound, err)
	case cerrdefs.IsConflict(err):
		return fmt.Errorf("%s: %w: %w", op, ErrConflict, err)
	case cerrdefs.IsInvalidArgument(err):
		return fmt.Errorf("%s: %w: %w", op, ErrInvalid, err)
	case cerrdefs.IsUnavailable(err):
		return fmt.Errorf("%s: %w at %s: %w", op, ErrUnavailable, c.host, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Ping checks that the engine answers; the error wraps ErrUnavailable when it does not.
func (c *Client) Ping(ctx context.Context) error {
	if _, err := c.c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		if client.IsErrConnectionFailed(err) || !cerrdefs.IsInvalidArgument(err) {
			return fmt.Errorf("ping docker engine: %w at %s: %w", ErrUnavailable, c.host, err)
		}
		return fmt.Errorf("ping docker engine at %s: %w", c.host, err)
	}
	return nil
}

// Image is an image reference pinned by digest.
type Image struct {
	// Name is the repository with its registry (127.0.0.1:5000/hotel/search); a reference
	// without a registry is on Docker Hub (docker.io/library/busybox).
	Name string
	// Tag is the tag the reference had besides its digest, if any; it is not used to pull.
	Tag string
	// Digest is the manifest digest (sha256:<64 hex>).
	Digest string
}

// Pinned is the reference by digest, name@digest: what is pulled and run.
func (i Image) Pinned() string { return i.Name + "@" + i.Digest }

// ParseImage parses a reference pinned by digest: <registry>/<path>@sha256:<64 hex>, or
// <registry>/<path>:<tag>@sha256:<64 hex>. A reference without a digest, or with another
// algorithm, is refused (wrapping ErrBadReference): a tag can move, a digest cannot.
func ParseImage(ref string) (Image, error) {
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return Image{}, fmt.Errorf("%w %q: %w", ErrBadReference, ref, err)
	}
	d, ok := n.(reference.Digested)
	if !ok {
		return Image{}, fmt.Errorf("%w %q: not pinned by digest (want <registry>/<path>@sha256:<64 hex>)", ErrBadReference, ref)
	}
	if d.Digest().Algorithm() != "sha256" {
		return Image{}, fmt.Errorf("%w %q: digest algorithm %s, want sha256", ErrBadReference, ref, d.Digest().Algorithm())
	}
	img := Image{Name: n.Name(), Digest: d.Digest().String()}
	if t, ok := n.(reference.Tagged); ok {
		img.Tag = t.Tag()
	}
	return img, nil
}

// ImageID returns the id of the image ref (a reference or an id) on the engine; the error
// wraps ErrNotFound when the engine does not have it.
func (c *Client) ImageID(ctx context.Context, ref string) (string, error) {
	res, err := c.c.ImageInspect(ctx, ref)
	if err != nil {
		return "", c.wrap("inspect image "+ref, err)
	}
	return res.ID, nil
}

// Pull pulls ref without credentials. A registry without the image (or refusing to say)
// is ErrNotFound; refused credentials ErrDenied; a registry that cannot be reached or
// fails ErrRegistryUnavailable; an engine that cannot be reached ErrUnavailable.
func (c *Client) Pull(ctx context.Context, ref string) error {
	resp, err := c.c.ImagePull(ctx, ref, client.ImagePullOptions{})
	if err == nil {
		err = resp.Wait(ctx)
	}
	if err == nil {
		return nil
	}
	op := "pull " + ref
	switch {
	case client.IsErrConnectionFailed(err):
		return c.wrap(op, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", op, err)
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%s: %w: %w", op, ErrNotFound, err)
	case cerrdefs.IsUnauthorized(err), cerrdefs.IsPermissionDenied(err):
		return fmt.Errorf("%s: %w: %w", op, ErrDenied, err)
	case cerrdefs.IsInvalidArgument(err):
		return fmt.Errorf("%s: %w: %w", op, ErrBadReference, err)
	}
	// The engine reports anything else the registry did (unreachable, a 5xx, a reset
	// connection, a digest mismatch while downloading) as a system error.
	return fmt.Errorf("%s: %w: %w", op, ErrRegistryUnavailable, err)
}

// Network is a network of the engine.
type Network struct {
	// ID, Name and Driver describe it.
	ID, Name, Driver string
	// Subnets are its IPAM subnets.
	Subnets []netip.Prefix
}

// Network returns the network name (or id); the error wraps ErrNotFound when the engine
// has none.
func (c *Client) Network(ctx context.Context, name string) (*Network, error) {
	res, err := c.c.NetworkInspect(ctx, name, client.NetworkInspectOptions{})
	if err != nil {
		return nil, c.wrap("inspect network "+name, err)
	}
	n := &Network{ID: res.Network.ID, Name: res.Network.Name, Driver: res.Network.Driver}
	for _, cfg := range res.Network.IPAM.Config {
		if cfg.Subnet.IsValid() {
			n.Subnets = append(n.Subnets, cfg.Subnet)
		}
	}
	return n, nil
}

// ContainerSpec is a container Create makes. Everything not here is fixed by Create (see
// the package comment).
type ContainerSpec struct {
	// Name is the container's name.
	Name string
	// Image is the image to run (a reference or an id).
	Image string
	// Cmd is the command, run through the image's entrypoint if it has one; Entrypoint,
	// when set, replaces the image's.
	Cmd, Entrypoint []string
	// Env are NAME=value variables besides the image's.
	Env []string
	// WorkDir is the working directory.
	WorkDir string
	// Labels are the container's labels.
	Labels map[string]string
	// Network is a user-defined network to attach to, or "" for none at all (the
	// container has only a loopback interface). "host", "bridge" and container:<x> are
	// refused.
	Network string
	// IP is the address on Network; the zero value lets the engine choose.
	IP netip.Addr
	// NanoCPUs (10⁻⁹ CPUs) and Memory (bytes) are the limits; 0 is none.
	NanoCPUs, Memory int64
	// CapAdd are the capabilities kept (CHOWN, NET_BIND_SERVICE); every other one is
	// dropped.
	CapAdd []string
	// Init runs the engine's init (docker-init) as PID 1, which reaps orphans and passes
	// signals on to the command.
	Init bool
	// RestartUnlessStopped restarts the container when it exits or the engine restarts,
	// unless it was stopped.
	RestartUnlessStopped bool
	// StopTimeout is how long a stop waits between SIGTERM and SIGKILL; 0 is the engine's
	// default (10 s).
	StopTimeout time.Duration
}

// Create creates (does not start) a container and returns its id. A name in use or an
// address taken wraps ErrConflict; a request the engine finds invalid ErrInvalid; a missing
// image or network ErrNotFound.
func (c *Client) Create(ctx context.Context, s ContainerSpec) (string, error) {
	if mode := container.NetworkMode(s.Network); s.Network != "" && !mode.IsUserDefined() {
		return "", fmt.Errorf("create container %s: %w: network %q: want a user-defined network", s.Name, ErrInvalid, s.Network)
	}
	no := false
	yes := true
	pids := int64(PidsLimit)
	hc := &container.HostConfig{
		// Everything below is fixed; see the package comment.
		Privileged:  false,
		CapDrop:     []string{"ALL"},
		CapAdd:      append([]string(nil), s.CapAdd...),
		SecurityOpt: []string{"no-new-privileges:true"},
		// The PID and UTS namespaces are the container's own when the modes are empty.
		IpcMode:     container.IPCModePrivate,
		NetworkMode: container.NetworkMode("none"),
		Init:        &no,
		Resources: container.Resources{
			NanoCPUs:  s.NanoCPUs,
			Memory:    s.Memory,
			PidsLimit: &pids,
		},
	}
	if s.Memory > 0 {
		// No swap beyond the memory limit: the limit is what the scheduler placed.
		hc.Resources.MemorySwap = s.Memory
	}
	if s.Init {
		hc.Init = &yes
	}
	if s.RestartUnlessStopped {
		hc.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}
	}
	cfg := &container.Config{
		Image: s.Image, Cmd: s.Cmd, Entrypoint: s.Entrypoint, Env: s.Env, WorkingDir: s.WorkDir, Labels: s.Labels,
	}
	if s.StopTimeout > 0 {
		secs := int(max(s.StopTimeout.Round(time.Second), time.Second) / time.Second)
		cfg.StopTimeout = &secs
	}
	var nc *network.NetworkingConfig
	if s.Network != "" {
		hc.NetworkMode = container.NetworkMode(s.Network)
		ep := &network.EndpointSettings{}
		if s.IP.IsValid() {
			ep.IPAMConfig = &network.EndpointIPAMConfig{}
			if s.IP.Is4() || s.IP.Is4In6() {
				ep.IPAMConfig.IPv4Address = s.IP.Unmap()
			} else {
				ep.IPAMConfig.IPv6Address = s.IP
			}
		}
		nc = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{s.Network: ep}}
	}
	res, err := c.c.ContainerCreate(ctx, client.ContainerCreateOptions{Name: s.Name, Config: cfg, HostConfig: hc, NetworkingConfig: nc})
	if err != nil {
		return "", c.wrap("create container "+s.Name, err)
	}
	return res.ID, nil
}

// Start starts a created or stopped container.
func (c *Client) Start(ctx context.Context, id string) error {
	_, err := c.c.ContainerStart(ctx, id, client.ContainerStartOptions{})
	return c.wrap("start container "+id, err)
}

// Stop stops a container: SIGTERM, then SIGKILL after timeout (0: the container's own
// stop timeout). A container that is not running is not an error; one that does not exist
// wraps ErrNotFound.
func (c *Client) Stop(ctx context.Context, id string, timeout time.Duration) error {
	opts := client.ContainerStopOptions{}
	if timeout > 0 {
		secs := int(max(timeout.Round(time.Second), time.Second) / time.Second)
		opts.Timeout = &secs
	}
	_, err := c.c.ContainerStop(ctx, id, opts)
	return c.wrap("stop container "+id, err)
}

// Remove removes a container, killing it if it runs, with its anonymous volumes. A
// container that does not exist (or is being removed already) is not an error.
func (c *Client) Remove(ctx context.Context, id string) error {
	_, err := c.c.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if err == nil || cerrdefs.IsNotFound(err) {
		return nil
	}
	if cerrdefs.IsConflict(err) && strings.Contains(err.Error(), "already in progress") {
		return nil
	}
	return c.wrap("remove container "+id, err)
}

// Container is a container as the engine reports it.
type Container struct {
	// ID and Name (without the leading slash) identify it.
	ID, Name string
	// Image is the image as it was given to Create; ImageID the image it runs.
	Image, ImageID string
	// Labels are its labels.
	Labels map[string]string
	// State is created, running, paused, restarting, removing, exited or dead.
	State string
	// Running is true while its process runs (also when paused or restarting).
	Running bool
	// StartedAt is when it last started (zero when never).
	StartedAt time.Time
	// ExitCode is the last exit code; RestartCount how often the engine restarted it.
	ExitCode, RestartCount int
	// IPs are its addresses by network name (IPv4, else IPv6).
	IPs map[string]netip.Addr
}

// Inspect returns the container name (or id); the error wraps ErrNotFound when the engine
// has none.
func (c *Client) Inspect(ctx context.Context, name string) (*Container, error) {
	res, err := c.c.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return nil, c.wrap("inspect container "+name, err)
	}
	r := res.Container
	out := &Container{ID: r.ID, Name: strings.TrimPrefix(r.Name, "/"), ImageID: r.Image, RestartCount: r.RestartCount, IPs: map[string]netip.Addr{}}
	if r.Config != nil {
		out.Image, out.Labels = r.Config.Image, r.Config.Labels
	}
	if r.State != nil {
		out.State, out.Running, out.ExitCode = string(r.State.Status), r.State.Running, r.State.ExitCode
		if t, err := time.Parse(time.RFC3339Nano, r.State.StartedAt); err == nil && t.Year() > 1 {
			out.StartedAt = t
		}
	}
	if r.NetworkSettings != nil {
		for name, ep := range r.NetworkSettings.Networks {
			if ep == nil {
				continue
			}
			if ep.IPAddress.IsValid() {
				out.IPs[name] = ep.IPAddress
			} else if ep.GlobalIPv6Address.IsValid() {
				out.IPs[name] = ep.GlobalIPv6Address
			}
		}
	}
	return out, nil
}

// List returns every container (running or not) carrying all the labels (key or
// key=value). StartedAt and RestartCount are not filled in: Inspect has them.
func (c *Client) List(ctx context.Context, labels ...string) ([]Container, error) {
	f := make(client.Filters)
	for _, l := range labels {
		f.Add("label", l)
	}
	res, err := c.c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, c.wrap("list containers "+strings.Join(labels, ","), err)
	}
	out := make([]Container, 0, len(res.Items))
	for _, s := range res.Items {
		ct := Container{ID: s.ID, Image: s.Image, ImageID: s.ImageID, Labels: s.Labels, State: string(s.State),
			Running: s.State == container.StateRunning || s.State == container.StatePaused || s.State == container.StateRestarting,
			IPs:     map[string]netip.Addr{}}
		if len(s.Names) > 0 {
			ct.Name = strings.TrimPrefix(s.Names[0], "/")
		}
		if s.NetworkSettings != nil {
			for name, ep := range s.NetworkSettings.Networks {
				if ep != nil && ep.IPAddress.IsValid() {
					ct.IPs[name] = ep.IPAddress
				} else if ep != nil && ep.GlobalIPv6Address.IsValid() {
					ct.IPs[name] = ep.GlobalIPv6Address
				}
			}
		}
		out = append(out, ct)
	}
	return out, nil
}

// FileInfo describes a path in a container.
type FileInfo struct {
	// Name is its base name; Size its size in bytes.
	Name string
	Size int64
	// Mode is its type and permissions.
	Mode fs.FileMode
	// LinkTarget is where it leads when it is a symbolic link.
	LinkTarget string
}

// Stat describes path in the container (created, running or stopped); the error wraps
// ErrNotFound when the path does not exist.
func (c *Client) Stat(ctx context.Context, id, path string) (FileInfo, error) {
	res, err := c.c.ContainerStatPath(ctx, id, client.ContainerStatPathOptions{Path: path})
	if err != nil {
		return FileInfo{}, c.wrap("stat "+path+" in container "+id, err)
	}
	return FileInfo{Name: res.Stat.Name, Size: res.Stat.Size, Mode: res.Stat.Mode, LinkTarget: res.Stat.LinkTarget}, nil
}

// ErrTooLarge is a file ReadFile will not read whole.
var ErrTooLarge = errors.New("docker: file too large")

// ReadFile returns the content of the regular file at path in the container (created,
// running or stopped), at most max bytes: a larger file wraps ErrTooLarge, a missing one
// ErrNotFound, anything but a regular file ErrInvalid.
func (c *Client) ReadFile(ctx context.Context, id, path string, max int64) ([]byte, error) {
	op := "read " + path + " from container " + id
	res, err := c.c.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: path})
	if err != nil {
		return nil, c.wrap(op, err)
	}
	defer res.Content.Close()
	if !res.Stat.Mode.IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file (%v)", op, ErrInvalid, res.Stat.Mode.Type())
	}
	if res.Stat.Size > max {
		return nil, fmt.Errorf("%s: %w: %d bytes, more than %d", op, ErrTooLarge, res.Stat.Size, max)
	}
	tr := tar.NewReader(res.Content)
	for {
		h, err := tr.Next()
		if err != nil {
			return nil, c.wrap(op, fmt.Errorf("read the archive: %w", err))
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if h.Size > max {
			return nil, fmt.Errorf("%s: %w: %d bytes, more than %d", op, ErrTooLarge, h.Size, max)
		}
		data, err := io.ReadAll(io.LimitReader(tr, max+1))
		if err != nil {
			return nil, c.wrap(op, fmt.Errorf("read the archive: %w", err))
		}
		return data, nil
	}
}

// ExecSpec is a command Exec runs in a running container.
type ExecSpec struct {
	// Cmd is the argv (no shell).
	Cmd []string
	// Env are NAME=value variables besides the container's.
	Env []string
	// WorkDir is the working directory; "" is the container's.
	WorkDir string
	// Stdout and Stderr receive its output; nil drops it.
	Stdout, Stderr io.Writer
}

// Exec runs a command in a running container and waits for it; it returns the command's
// exit status. A container that is not running wraps ErrConflict (or ErrNotFound when it
// does not exist). When ctx ends Exec returns at once; the engine API cannot kill an exec,
// so the command runs on inside the container until it ends by itself.
func (c *Client) Exec(ctx context.Context, id string, s ExecSpec) (int, error) {
	op := fmt.Sprintf("exec %v in container %s", s.Cmd, id)
	cr, err := c.c.ExecCreate(ctx, id, client.ExecCreateOptions{Cmd: s.Cmd, Env: s.Env, WorkingDir: s.WorkDir,
		AttachStdout: true, AttachStderr: true})
	if err != nil {
		return -1, c.wrap(op, err)
	}
	att, err := c.c.ExecAttach(ctx, cr.ID, client.ExecAttachOptions{})
	if err != nil {
		return -1, c.wrap(op, err)
	}
	stop := context.AfterFunc(ctx, att.Close)
	stdout, stderr := s.Stdout, s.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	_, cerr := stdcopy.StdCopy(stdout, stderr, att.Reader)
	stop()
	att.Close()
	if ctx.Err() != nil {
		return -1, fmt.Errorf("%s: %w", op, ctx.Err())
	}
	if cerr != nil {
		return -1, c.wrap(op, fmt.Errorf("read its output: %w", cerr))
	}
	// The stream ends when the command exits; the engine records the exit status just
	// after, so an inspect may see it still running for a moment.
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		res, err := c.c.ExecInspect(ctx, cr.ID, client.ExecInspectOptions{})
		if err != nil {
			return -1, c.wrap(op, err)
		}
		if !res.Running {
			return res.ExitCode, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return -1, fmt.Errorf("%s: %w", op, ctx.Err())
		case <-t.C:
		}
	}
}

// Logs returns the last lines of the container's output (stdout and stderr interleaved
// as the engine kept them), at most tail lines.
func (c *Client) Logs(ctx context.Context, id string, tail int) (string, error) {
	rc, err := c.c.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return "", c.wrap("logs of container "+id, err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	w := &limitWriter{w: &buf, n: 64 << 10}
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil {
		return buf.String(), c.wrap("logs of container "+id, err)
	}
	return buf.String(), nil
}

// limitWriter keeps the first n bytes and drops the rest without failing.
type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		_, _ = l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
