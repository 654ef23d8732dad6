package hostinfo

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestGatherFacts(t *testing.T) {
	dir := t.TempDir()
	started := time.Now()
	info := Gather(t.Context(), Options{HostID: "h1", DC: "dc1", Version: "1.2.3", DataDir: dir, DockerHost: "-",
		Plugins: []string{"package-deploy"}, StartedAt: started})
	if info.GetHostId() != "h1" || info.GetDc() != "dc1" || info.GetAgentVersion() != "1.2.3" || len(info.GetPlugins()) != 1 {
		t.Errorf("identity: got %v", info)
	}
	if info.GetCpuCount() != uint32(runtime.NumCPU()) {
		t.Errorf("cpu count: got %d, want %d", info.GetCpuCount(), runtime.NumCPU())
	}
	if info.GetMemoryBytes() < 64<<20 {
		t.Errorf("memory: got %d bytes, want the host's MemTotal", info.GetMemoryBytes())
	}
	if info.GetDiskBytes() == 0 || info.GetDiskFreeBytes() > info.GetDiskBytes() {
		t.Errorf("disk: got %d free of %d, want the data directory's file system", info.GetDiskFreeBytes(), info.GetDiskBytes())
	}
	if info.GetKernel() == "" || !strings.HasPrefix(info.GetOs(), runtime.GOOS) || info.GetArch() != runtime.GOARCH {
		t.Errorf("os: got %q %q %q", info.GetOs(), info.GetKernel(), info.GetArch())
	}
	if info.GetDockerReachable() {
		t.Errorf("docker: got reachable, want the check skipped")
	}
	if !info.GetStartedAt().AsTime().Equal(started.Truncate(time.Nanosecond)) {
		t.Errorf("started at: got %v, want %v", info.GetStartedAt().AsTime(), started)
	}
}

func TestDockerPing(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/version" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `{"Version":"28.2.2","ApiVersion":"1.50"}`)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	tests := []struct {
		host      string
		reachable bool
		version   string
	}{
		{"unix://" + sock, true, "28.2.2 (API 1.50)"},
		{"unix://" + filepath.Join(t.TempDir(), "none.sock"), false, ""},
		{"ftp://nowhere", false, ""},
	}
	for _, tc := range tests {
		info := Gather(t.Context(), Options{DockerHost: tc.host})
		if info.GetDockerReachable() != tc.reachable || info.GetDockerVersion() != tc.version {
			t.Errorf("docker %s: got %v %q, want %v %q", tc.host, info.GetDockerReachable(), info.GetDockerVersion(), tc.reachable, tc.version)
		}
	}
}
