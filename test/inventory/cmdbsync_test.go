package inventory_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	cmdbsync "github.com/berthdev/berth/services/cmdb-sync"
)

// writeInventory writes a YAML inventory and moves its modification time forward, so that
// a rewrite within the file system's time resolution is still seen.
func writeInventory(t *testing.T, path, body string) {
	t.Helper()
	old, _ := os.Stat(path)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if old != nil {
		mt := old.ModTime().Add(time.Second)
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
}

func hostYAML(id, pool string, extra string) string {
	return fmt.Sprintf("  - {id: %s, dc: dc1, cpu: 8, memory: 16GiB, ip_pool: %q%s}\n", id, pool, extra)
}

// agent keeps an alive node for a host in a session of its own, as berth-agent does.
type agent struct {
	sess *coordclient.Session
}

func (e *env) startAgent(host string, info *agentv1.AgentInfo) *agent {
	e.t.Helper()
	s, err := e.coord.NewSession(e.t.Context(), time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	if info == nil {
		info = &agentv1.AgentInfo{}
	}
	info.HostId = host
	if _, err := e.coord.Put(e.t.Context(), "/berth/alive/"+host, mustJSON(info), coordclient.Ephemeral(s.ID())); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = s.Close(e.t.Context()) })
	return &agent{sess: s}
}

// kill ends the agent's session: its alive node goes at once.
func (a *agent) kill(t *testing.T) {
	if err := a.sess.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func hostEvent(t *testing.T, wait func(string, time.Duration) *nats.Msg, typ, host string) *eventsv1.HostEvent {
	t.Helper()
	m := wait("berth.v1.events.host."+typ+"."+host, 10*time.Second)
	ce, err := natsbus.DecodeEvent(m)
	if err != nil {
		t.Fatal(err)
	}
	ev := &eventsv1.HostEvent{}
	if err := natsbus.UnmarshalEventData(ce, ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestCMDBSyncFromFile(t *testing.T) {
	e := newEnv(t)
	wait := e.events("berth.v1.events.host.>")
	path := filepath.Join(t.TempDir(), "hosts.yaml")
	writeInventory(t, path, "hosts:\n"+
		hostYAML("h1", "10.1.0.0/24", ", labels: {ssd: \"true\"}")+
		hostYAML("h2", "10.2.0.0/24", "")+
		hostYAML("h3", "10.3.0.0/24", "")+
		hostYAML("h1", "10.9.0.0/24", "")+ // duplicate id
		hostYAML("h4", "10.3.0.128/25", "")+ // overlaps h3
		hostYAML("h5", "10.5.0.0/33", "")) // bad CIDR
	e.startAgent("h1", &agentv1.AgentInfo{CpuCount: 8, MemoryBytes: 16 << 30})
	e.startAgent("h3", &agentv1.AgentInfo{CpuCount: 2, MemoryBytes: 16 << 30}) // disagrees with the CMDB
	s, _ := e.startSync("sync0", func(c *cmdbsync.Config) {
		c.Source = cmdbsync.SourceConfig{Kind: "file", Path: path, Timeout: time.Second}
	})

	for _, id := range []string{"h1", "h2", "h3"} {
		hostEvent(t, wait, "added", id)
	}
	rej := hostEvent(t, wait, "rejected", "h4")
	if !strings.Contains(rej.GetReason(), "overlaps") || rej.GetDetails()["reason"] != "overlapping_pool" {
		t.Fatalf("rejected h4: got %v", rej)
	}
	hostEvent(t, wait, "rejected", "h5")
	if rej := hostEvent(t, wait, "rejected", "h1"); rej.GetDetails()["reason"] != "duplicate_id" {
		t.Fatalf("rejected h1: got %v", rej)
	}
	if e.getHost("h4") != nil || e.getHost("h5") != nil {
		t.Fatal("rejected rows were applied")
	}
	if h := e.getHost("h1"); h.GetLabels()["ssd"] != "true" || h.GetMaxContainers() != 64 || h.GetCpuMillis() != 8000 {
		t.Fatalf("h1: got %v", h)
	}
	hostEvent(t, wait, "up", "h1")
	mis := hostEvent(t, wait, "mismatch", "h3")
	if mis.GetDetails()["agent_cpu_count"] != "2" || !strings.Contains(e.getHost("h3").GetMismatch(), "cpu") {
		t.Fatalf("mismatch h3: got %v / %q", mis, e.getHost("h3").GetMismatch())
	}
	// h2 has no agent: down once the grace period is over.
	down := hostEvent(t, wait, "down", "h2")
	if down.GetState() != "down" || e.getHost("h2").GetState() != inventoryv1.HostState_HOST_STATE_DOWN {
		t.Fatalf("h2: got event %v, state %v", down, e.getHost("h2").GetState())
	}
	if e.getHost("h1").GetState() != inventoryv1.HostState_HOST_STATE_READY {
		t.Fatalf("h1: got %v, want ready", e.getHost("h1").GetState())
	}

	// An operator drain survives the next CMDB change.
	h1 := e.getHost("h1")
	h1.Drained, h1.DrainReason, h1.State = true, "test", inventoryv1.HostState_HOST_STATE_DRAINING
	if _, err := e.coord.Put(t.Context(), "/berth/hosts/h1", mustJSON(h1)); err != nil {
		t.Fatal(err)
	}
	hostEvent(t, wait, "draining", "h1")

	// h3 holds an allocation; h2 none. Both leave the CMDB; h1's row changes.
	if _, err := e.coord.Txn().Then(
		coordclient.OpPut("/berth/alloc/h3", mustJSON(&inventoryv1.AllocationGuard{Host: "h3", Count: 1})),
		coordclient.OpPut("/berth/alloc/h3/a1", mustJSON(&inventoryv1.Allocation{Id: "a1", Host: "h3", Service: "s", Ip: "10.3.0.1"})),
	).Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	writeInventory(t, path, "hosts:\n"+hostYAML("h1", "10.1.0.0/24", ", labels: {ssd: \"false\"}")+
		hostYAML("h6", "10.3.0.0/25", "")) // overlaps h3, which still holds an allocation
	hostEvent(t, wait, "removed", "h2")
	hostEvent(t, wait, "updated", "h1")
	if rej := hostEvent(t, wait, "rejected", "h6"); !strings.Contains(rej.GetReason(), "h3") {
		t.Fatalf("rejected h6: got %v, want it to name h3", rej)
	}
	eventually(t, 5*time.Second, "h3 draining", func() bool {
		h := e.getHost("h3")
		return h != nil && !h.GetInCmdb() && h.GetState() == inventoryv1.HostState_HOST_STATE_DRAINING
	})
	if h := e.getHost("h1"); !h.GetDrained() || h.GetLabels()["ssd"] != "false" || h.GetState() != inventoryv1.HostState_HOST_STATE_DRAINING {
		t.Fatalf("h1 after a CMDB change: got %v, want still drained with the new label", h)
	}
	// Its last allocation released, h3 goes.
	if _, err := e.coord.Txn().Then(
		coordclient.OpPut("/berth/alloc/h3", mustJSON(&inventoryv1.AllocationGuard{Host: "h3"})),
		coordclient.OpDelete("/berth/alloc/h3/a1"),
	).Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	hostEvent(t, wait, "removed", "h3")
	eventually(t, 5*time.Second, "h6 applied once h3's pool is free", func() bool { return e.getHost("h6") != nil })

	// A CMDB that cannot be read keeps the inventory and makes the replica unready.
	if err := s.SourceHealthy(t.Context()); err != nil {
		t.Fatalf("healthy source: got %v", err)
	}
	writeInventory(t, path, "hosts: [unclosed")
	eventually(t, 5*time.Second, "source unhealthy", func() bool { return s.SourceHealthy(t.Context()) != nil })
	time.Sleep(500 * time.Millisecond)
	if e.getHost("h1") == nil || e.getHost("h6") == nil {
		t.Fatal("hosts removed while the CMDB was unreadable")
	}
	writeInventory(t, path, "hosts:\n"+hostYAML("h1", "10.1.0.0/24", ", labels: {ssd: \"false\"}")+hostYAML("h6", "10.3.0.0/25", ""))
	eventually(t, 5*time.Second, "source healthy again", func() bool { return s.SourceHealthy(t.Context()) == nil })
}

// TestOnlyTheLeaderWrites runs two replicas: one leads; when it stops, the other takes
// over and applies the next change of the CMDB.
func TestOnlyTheLeaderWrites(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(t.TempDir(), "hosts.yaml")
	writeInventory(t, path, "hosts:\n"+hostYAML("h1", "10.1.0.0/24", ""))
	src := func(c *cmdbsync.Config) {
		c.Source = cmdbsync.SourceConfig{Kind: "file", Path: path, Timeout: time.Second}
	}
	a, stopA := e.startSync("a", src)
	b, stopB := e.startSync("b", src)
	eventually(t, 5*time.Second, "one leader", func() bool { return a.Leading() != b.Leading() })
	eventually(t, 5*time.Second, "h1 written", func() bool { return e.getHost("h1") != nil })
	stop, other := stopA, b
	if b.Leading() {
		stop, other = stopB, a
	}
	stop()
	eventually(t, 10*time.Second, "the other replica takes over", other.Leading)
	writeInventory(t, path, "hosts:\n"+hostYAML("h1", "10.1.0.0/24", "")+hostYAML("h2", "10.2.0.0/24", ""))
	eventually(t, 5*time.Second, "h2 written by the new leader", func() bool { return e.getHost("h2") != nil })
}
