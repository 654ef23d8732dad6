package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	coordsrv "github.com/berthdev/berth/services/coord"
)

// hostsCoord runs a one-member berth-coord for the test and returns its address and a
// client of it.
func hostsCoord(t *testing.T) (string, *coordclient.Client) {
	t.Helper()
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := coordsrv.New(coordsrv.Config{Name: "h", DataDir: filepath.Join(t.TempDir(), "coord"), ClientListener: cl, PeerListener: pl,
		InitialCluster: "h=" + pl.Addr().String(), HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
		RequestTimeout: 2 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	addr := cl.Addr().String()
	c, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{addr}, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("coord: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Put(t.Context(), "/probe", nil); err == nil {
			return addr, c
		} else if time.Now().After(deadline) {
			t.Fatalf("coord has no leader: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func putProto(t *testing.T, c *coordclient.Client, path string, b []byte, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(t.Context(), path, b); err != nil {
		t.Fatal(err)
	}
}

func hostsCLI(t *testing.T, addr string, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"hosts", "--coord", addr, "--timeout", "5s"}, args...))
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

func rowOf(out, host string) string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == host {
			return l
		}
	}
	return ""
}

func TestHostsCommands(t *testing.T) {
	addr, c := hostsCoord(t)
	for _, h := range []*inventoryv1.Host{
		{Id: "web-1", Dc: "dc1", Rack: "r1", Ip: "10.0.0.1", CpuMillis: 16000, MemoryBytes: 64 << 30, MaxContainers: 64,
			IpPools: []string{"172.30.0.0/24"}, State: inventoryv1.HostState_HOST_STATE_READY, InCmdb: true, Liveness: inventoryv1.Liveness_LIVENESS_UP},
		{Id: "web-2", Dc: "dc2", CpuMillis: 8000, MemoryBytes: 32 << 30, MaxContainers: 64,
			State: inventoryv1.HostState_HOST_STATE_DOWN, InCmdb: true, Liveness: inventoryv1.Liveness_LIVENESS_DOWN},
	} {
		b, err := protojson.Marshal(h)
		putProto(t, c, "/berth/hosts/"+h.GetId(), b, err)
	}
	b, err := protojson.Marshal(&agentv1.AgentInfo{HostId: "web-1", CpuCount: 16, MemoryBytes: 64 << 30, AgentVersion: "1.0"})
	putProto(t, c, "/berth/alive/web-1", b, err)
	b, err = protojson.Marshal(&inventoryv1.AllocationGuard{Host: "web-1", Count: 1})
	putProto(t, c, "/berth/alloc/web-1", b, err)
	b, err = protojson.Marshal(&inventoryv1.Allocation{Id: "a1", Host: "web-1", Service: "hotel/search", Ip: "172.30.0.1",
		Resources: &inventoryv1.Resources{CpuMillis: 500, MemoryBytes: 1 << 30}})
	putProto(t, c, "/berth/alloc/web-1/a1", b, err)

	out, err := hostsCLI(t, addr, "ls")
	if err != nil {
		t.Fatalf("ls: %v\n%s", err, out)
	}
	r1, r2 := rowOf(out, "web-1"), rowOf(out, "web-2")
	for _, want := range []string{"dc1", "ready", "up", "1/64", "16"} {
		if !strings.Contains(r1, want) {
			t.Errorf("ls: row of web-1 %q lacks %q", r1, want)
		}
	}
	if !strings.Contains(r2, "down") || strings.Contains(r2, " up ") {
		t.Errorf("ls: row of web-2 %q: want down, not up", r2)
	}

	out, err = hostsCLI(t, addr, "ls", "--json", "--dc", "dc1")
	if err != nil {
		t.Fatalf("ls --json: %v", err)
	}
	var js []struct {
		ID, State, Liveness string
		Allocations         int
		Host                struct {
			IPPools []string `json:"ipPools"`
		}
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, out)
	}
	if len(js) != 1 || js[0].ID != "web-1" || js[0].Liveness != "up" || js[0].Allocations != 1 || len(js[0].Host.IPPools) != 1 {
		t.Fatalf("ls --json --dc dc1: got %+v", js)
	}

	out, err = hostsCLI(t, addr, "show", "web-1")
	if err != nil || !strings.Contains(out, "hotel/search") || !strings.Contains(out, "172.30.0.1") || !strings.Contains(out, "1 of 64") {
		t.Fatalf("show: err %v\n%s", err, out)
	}

	if out, err = hostsCLI(t, addr, "drain", "web-1", "--reason", "disk swap"); err != nil || !strings.Contains(out, "draining") {
		t.Fatalf("drain: err %v\n%s", err, out)
	}
	out, _ = hostsCLI(t, addr, "ls", "--state", "draining")
	if r := rowOf(out, "web-1"); !strings.Contains(r, "drained: disk swap") {
		t.Fatalf("ls after drain: row %q lacks the drain reason\n%s", r, out)
	}
	n, _ := c.Get(t.Context(), "/berth/hosts/web-1")
	h := &inventoryv1.Host{}
	_ = protojson.Unmarshal(n.Value, h)
	if !h.GetDrained() || h.GetState() != inventoryv1.HostState_HOST_STATE_DRAINING || len(h.GetIpPools()) != 1 {
		t.Fatalf("stored after drain: got %v", h)
	}
	if out, err = hostsCLI(t, addr, "undrain", "web-1"); err != nil || !strings.Contains(out, "ready") {
		t.Fatalf("undrain: err %v\n%s", err, out)
	}
	// A down host stays down when undrained.
	if out, err = hostsCLI(t, addr, "undrain", "web-2"); err != nil || !strings.Contains(out, "down") {
		t.Fatalf("undrain web-2: err %v\n%s", err, out)
	}

	for _, args := range [][]string{{"show", "nope"}, {"drain", "nope"}, {"ls", "--state", "sleepy"}, {"show", "a/b"}} {
		if out, err := hostsCLI(t, addr, args...); err == nil {
			t.Errorf("%v: got no error\n%s", args, out)
		}
	}
}
