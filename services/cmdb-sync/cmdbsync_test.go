package cmdbsync

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/cmdb-sync/internal/rows"
	"github.com/berthdev/berth/services/cmdb-sync/internal/source"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLocalHostRoundTrip(t *testing.T) {
	row, err := LocalHost(LocalHostOptions{ID: "devbox"})
	if err != nil {
		t.Fatal(err)
	}
	if row.CPU != float64(runtime.NumCPU()) || row.Memory == 0 || row.DC != "dev" || row.IP != "127.0.0.1" {
		t.Fatalf("got %+v", row)
	}
	p := filepath.Join(t.TempDir(), "hosts.yaml")
	if err := WriteInventoryFile(p, []InventoryRow{row}); err != nil {
		t.Fatal(err)
	}
	f, err := source.NewFile(p, "", "")
	if err != nil {
		t.Fatal(err)
	}
	recs, _, err := f.Fetch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	res := rows.Parse(recs, rows.Options{DefaultMaxContainers: 64}, nil)
	if len(res.Hosts) != 1 || len(res.Rejected) != 0 {
		t.Fatalf("parse: got %d hosts, rejected %v", len(res.Hosts), res.Rejected)
	}
	h := res.Hosts[0]
	if h.GetId() != "devbox" || h.GetMemoryBytes() != row.Memory || h.GetCpuMillis() != uint64(runtime.NumCPU())*1000 {
		t.Fatalf("parsed: got %v", h)
	}
	// The agent's own fingerprint of this machine agrees with the row.
	agent := &agentv1.AgentInfo{CpuCount: uint32(runtime.NumCPU()), MemoryBytes: row.Memory}
	if m := mismatch(h, agent, 0.1); m != "" {
		t.Fatalf("mismatch with the local agent: %s", m)
	}
	if _, err := LocalHost(LocalHostOptions{ID: "has.dots"}); err == nil {
		t.Fatal("id with dots: got no error")
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("write left %d files, want 1", len(entries))
	}
}

func TestMismatch(t *testing.T) {
	h := &inventoryv1.Host{CpuMillis: 16000, MemoryBytes: 64 << 30}
	tests := []struct {
		agent *agentv1.AgentInfo
		want  string
	}{
		{&agentv1.AgentInfo{CpuCount: 16, MemoryBytes: 62 << 30}, ""},
		{&agentv1.AgentInfo{}, ""},
		{&agentv1.AgentInfo{CpuCount: 8, MemoryBytes: 64 << 30}, "cpu: CMDB 16 cores, agent 8"},
		{&agentv1.AgentInfo{CpuCount: 16, MemoryBytes: 32 << 30}, "memory: CMDB 64.0 GiB, agent 32.0 GiB"},
	}
	for _, tt := range tests {
		if got := mismatch(h, tt.agent, 0.1); got != tt.want {
			t.Errorf("mismatch(%v): got %q, want %q", tt.agent, got, tt.want)
		}
	}
}

func TestDeriveState(t *testing.T) {
	tests := []struct {
		h    *inventoryv1.Host
		want inventoryv1.HostState
	}{
		{&inventoryv1.Host{InCmdb: true}, inventoryv1.HostState_HOST_STATE_READY},
		{&inventoryv1.Host{InCmdb: true, Liveness: inventoryv1.Liveness_LIVENESS_UP}, inventoryv1.HostState_HOST_STATE_READY},
		{&inventoryv1.Host{InCmdb: true, Drained: true}, inventoryv1.HostState_HOST_STATE_DRAINING},
		{&inventoryv1.Host{InCmdb: true, CmdbDraining: true}, inventoryv1.HostState_HOST_STATE_DRAINING},
		{&inventoryv1.Host{InCmdb: false}, inventoryv1.HostState_HOST_STATE_DRAINING},
		{&inventoryv1.Host{InCmdb: true, Drained: true, Liveness: inventoryv1.Liveness_LIVENESS_DOWN}, inventoryv1.HostState_HOST_STATE_DOWN},
	}
	for _, tt := range tests {
		if got := deriveState(tt.h); got != tt.want {
			t.Errorf("deriveState(%v): got %v, want %v", tt.h, got, tt.want)
		}
	}
}

func TestHostEvents(t *testing.T) {
	s := &Syncer{cfg: Config{Name: "t"}}
	ready := &inventoryv1.Host{Id: "h1", Dc: "dc1", InCmdb: true, State: inventoryv1.HostState_HOST_STATE_READY, Liveness: inventoryv1.Liveness_LIVENESS_UP}
	with := func(f func(h *inventoryv1.Host)) *inventoryv1.Host {
		h := &inventoryv1.Host{Id: "h1", Dc: "dc1", InCmdb: true, State: inventoryv1.HostState_HOST_STATE_READY, Liveness: inventoryv1.Liveness_LIVENESS_UP}
		f(h)
		return h
	}
	down := with(func(h *inventoryv1.Host) {
		h.Liveness, h.State = inventoryv1.Liveness_LIVENESS_DOWN, inventoryv1.HostState_HOST_STATE_DOWN
	})
	drained := with(func(h *inventoryv1.Host) { h.Drained, h.State = true, inventoryv1.HostState_HOST_STATE_DRAINING })
	tests := []struct {
		name      string
		prev, cur *inventoryv1.Host
		want      []string
	}{
		{"added", nil, ready, []string{"added", "up"}},
		{"added draining", nil, drained, []string{"added", "up", "draining"}},
		{"removed", ready, nil, []string{"removed"}},
		{"down", ready, down, []string{"down"}},
		{"up", down, ready, []string{"up"}},
		{"drain", ready, drained, []string{"draining"}},
		{"undrain", drained, ready, []string{"ready"}},
		{"cmdb change", ready, with(func(h *inventoryv1.Host) { h.CpuMillis = 1 }), []string{"updated"}},
		{"mismatch", ready, with(func(h *inventoryv1.Host) { h.Mismatch = "cpu: ..." }), []string{"mismatch"}},
		{"nothing", ready, with(func(h *inventoryv1.Host) {}), nil},
	}
	for _, tt := range tests {
		var got []string
		for _, e := range s.hostEvents("h1", tt.prev, tt.cur, nil, 42) {
			got = append(got, e.Subject[strings.LastIndexByte(e.Subject[:len(e.Subject)-3], '.')+1:len(e.Subject)-3])
			if !strings.HasSuffix(e.Subject, ".h1") || e.ID == "" {
				t.Errorf("%s: bad event %+v", tt.name, e)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
