// Package hostinfo gathers the facts an agent reports about its host (its fingerprint):
// CPUs, memory, the disk holding the data directory, the operating system and kernel, and
// whether the Docker engine answers.
package hostinfo

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
)

// DefaultDockerHost is where the Docker engine is looked for when none is configured.
const DefaultDockerHost = "unix:///var/run/docker.sock"

// Options say where to look.
type Options struct {
	// HostID, DC and Version are copied into the info.
	HostID, DC, Version string
	// DataDir is the directory whose file system is measured.
	DataDir string
	// DockerHost is the engine's address (unix:///path or tcp://host:port); empty means
	// DefaultDockerHost, "-" skips the check.
	DockerHost string
	// Plugins are the plugins the agent can run.
	Plugins []string
	// StartedAt is when the agent started.
	StartedAt time.Time
}

// Gather returns the host's fingerprint. Facts that cannot be read are left zero; only
// the Docker check touches the network, bounded by ctx and one second.
func Gather(ctx context.Context, o Options) *agentv1.AgentInfo {
	info := &agentv1.AgentInfo{
		HostId:       o.HostID,
		Dc:           o.DC,
		AgentVersion: o.Version,
		CpuCount:     uint32(runtime.NumCPU()),
		Os:           osName(),
		Arch:         runtime.GOARCH,
		Plugins:      o.Plugins,
	}
	if !o.StartedAt.IsZero() {
		info.StartedAt = timestamppb.New(o.StartedAt)
	}
	info.MemoryBytes = memTotal()
	var st syscall.Statfs_t
	if o.DataDir != "" && syscall.Statfs(o.DataDir, &st) == nil {
		info.DiskBytes = st.Blocks * uint64(st.Bsize)
		info.DiskFreeBytes = st.Bavail * uint64(st.Bsize)
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		info.Kernel = cstr(u.Release[:])
	}
	if o.DockerHost != "-" {
		info.DockerVersion, info.DockerReachable = dockerPing(ctx, o.DockerHost)
	}
	return info
}

func cstr(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// osName is runtime.GOOS and, when /etc/os-release says, the distribution.
func osName() string {
	name := runtime.GOOS
	f, err := os.Open("/etc/os-release")
	if err != nil {
		return name
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "PRETTY_NAME="); ok {
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			return name + " (" + v + ")"
		}
	}
	return name
}

// memTotal reads MemTotal from /proc/meminfo.
func memTotal() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}

// dockerPing asks the engine for /version (its API version) with a one-second budget.
func dockerPing(ctx context.Context, host string) (string, bool) {
	if host == "" {
		host = DefaultDockerHost
	}
	u, err := url.Parse(host)
	if err != nil {
		return "", false
	}
	var dial func(ctx context.Context, _, _ string) (net.Conn, error)
	base := "http://docker"
	switch u.Scheme {
	case "unix":
		path := u.Path
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	case "tcp", "http":
		base = "http://" + u.Host
	default:
		return "", false
	}
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Second}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/version", nil)
	if err != nil {
		return "", false
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", false
	}
	var v struct {
		APIVersion string `json:"ApiVersion"`
		Version    string `json:"Version"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&v); err != nil {
		return "", true
	}
	return fmt.Sprintf("%s (API %s)", v.Version, v.APIVersion), true
}
