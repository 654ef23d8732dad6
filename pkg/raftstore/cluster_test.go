package raftstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// testLogger discards logs unless RAFTSTORE_TEST_LOG is set.
func testLogger(id uint64) *slog.Logger {
	if os.Getenv("RAFTSTORE_TEST_LOG") == "" {
		return discardLogger()
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", id)
}

// testCluster runs members in process over real gRPC on 127.0.0.1.
type testCluster struct {
	t         testing.TB
	clusterID uint64
	peers     []Peer
	configure func(*Config)
	mu        sync.Mutex
	members   map[uint64]*testMember
}

// testMember is one member, its own data dir and peer address kept across restarts.
type testMember struct {
	id      uint64
	dir     string
	addr    string
	node    *Node
	sm      *kvSM
	reg     *prometheus.Registry
	cancel  context.CancelFunc
	runErr  chan error
	srvDone chan error
}

// newTestCluster reserves addresses for size members (IDs 1..size) without starting them.
func newTestCluster(t testing.TB, size int, configure func(*Config)) *testCluster {
	c := &testCluster{t: t, clusterID: 0xbe27, configure: configure, members: map[uint64]*testMember{}}
	for i := 1; i <= size; i++ {
		c.addMember(uint64(i))
	}
	t.Cleanup(func() {
		c.mu.Lock()
		ids := make([]uint64, 0, len(c.members))
		for id := range c.members {
			ids = append(ids, id)
		}
		c.mu.Unlock()
		for _, id := range ids {
			c.stop(id)
		}
	})
	return c
}

// addMember reserves an address and a data dir for member id.
func (c *testCluster) addMember(id uint64) *testMember {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	m := &testMember{id: id, dir: filepath.Join(c.t.TempDir(), fmt.Sprintf("m%d", id)), addr: addr}
	c.mu.Lock()
	c.members[id] = m
	c.peers = append(c.peers, Peer{ID: id, Addr: addr})
	c.mu.Unlock()
	return m
}

func (c *testCluster) member(id uint64) *testMember {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.members[id]
	if !ok {
		c.t.Fatalf("no member %d", id)
	}
	return m
}

func (c *testCluster) config(m *testMember, join bool) Config {
	c.mu.Lock()
	peers := slices.Clone(c.peers)
	c.mu.Unlock()
	cfg := Config{
		ID:              m.id,
		Name:            fmt.Sprintf("m%d", m.id),
		DataDir:         m.dir,
		Peers:           peers,
		Join:            join,
		ClusterID:       c.clusterID,
		TickInterval:    10 * time.Millisecond,
		ElectionTicks:   10,
		HeartbeatTicks:  1,
		SnapshotEntries: 1000,
		Logger:          testLogger(m.id),
		Registerer:      m.reg,
	}
	if c.configure != nil {
		c.configure(&cfg)
	}
	return cfg
}

// listen binds the member's address again, retrying while the old socket goes away.
func (c *testCluster) listen(addr string) net.Listener {
	deadline := time.Now().Add(5 * time.Second)
	for {
		lis, err := net.Listen("tcp", addr)
		if err == nil {
			return lis
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("listen %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// start opens member id's node on its data dir (a restart when it has one) and runs it.
func (c *testCluster) start(id uint64, join bool) *testMember {
	c.t.Helper()
	m := c.member(id)
	if m.cancel != nil {
		c.t.Fatalf("member %d already running", id)
	}
	m.reg = prometheus.NewRegistry()
	m.sm = newKVSM()
	n, err := NewNode(c.config(m, join), m.sm)
	if err != nil {
		c.t.Fatalf("new node %d: %v", id, err)
	}
	m.node = n
	lis := c.listen(m.addr)
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.runErr = make(chan error, 1)
	m.srvDone = make(chan error, 1)
	go func() { m.srvDone <- n.ServePeers(ctx, lis) }()
	go func() { m.runErr <- n.Run(ctx) }()
	return m
}

// stop cancels member id's Run and waits for it; it returns Run's error.
func (c *testCluster) stop(id uint64) error {
	m := c.member(id)
	if m.cancel == nil {
		return nil
	}
	m.cancel()
	err := <-m.runErr
	<-m.srvDone
	m.cancel = nil
	return err
}

func (c *testCluster) running() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []uint64
	for id, m := range c.members {
		if m.cancel != nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// waitFor polls cond until it holds or the timeout ends.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last state: %s", timeout, what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLeader waits until every running member follows the same leader, and returns it.
func (c *testCluster) waitLeader() uint64 {
	c.t.Helper()
	var leader uint64
	waitFor(c.t, 10*time.Second, "one leader seen by every running member", func() (bool, string) {
		ids := c.running()
		leader = 0
		var state []string
		ok := true
		for _, id := range ids {
			s := c.member(id).node.Status()
			state = append(state, fmt.Sprintf("%d: leader %d term %d", id, s.Leader, s.Term))
			switch {
			case s.Leader == 0:
				ok = false
			case leader == 0:
				leader = s.Leader
			case leader != s.Leader:
				ok = false
			}
		}
		if ok && (!slices.Contains(ids, leader) || !c.member(leader).node.Status().IsLeader) {
			ok = false
		}
		return ok, fmt.Sprint(state)
	})
	return leader
}

// waitConverged waits until the running members have applied the same index and hold
// the same state.
func (c *testCluster) waitConverged() {
	c.t.Helper()
	waitFor(c.t, 15*time.Second, "running members to converge", func() (bool, string) {
		var state []string
		var hash string
		var applied uint64
		ok := true
		for i, id := range c.running() {
			m := c.member(id)
			h, a := m.sm.hash(), m.node.AppliedIndex()
			state = append(state, fmt.Sprintf("%d: applied %d hash %s", id, a, h))
			if i == 0 {
				hash, applied = h, a
			} else if h != hash || a != applied {
				ok = false
			}
		}
		return ok, fmt.Sprint(state)
	})
}

// put proposes key=value on member id and checks that Propose returns Apply's result.
func (c *testCluster) put(id uint64, key, value string) uint64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 10*time.Second)
	defer cancel()
	res, err := c.member(id).node.Propose(ctx, []byte(key+"="+value))
	if err != nil {
		c.t.Fatalf("propose %s=%s on member %d: %v", key, value, id, err)
	}
	idx, ok := res.(uint64)
	if !ok || idx == 0 {
		c.t.Fatalf("propose %s=%s on member %d: got result %v, want the applied index", key, value, id, res)
	}
	return idx
}

func (c *testCluster) follower(leader uint64) uint64 {
	for _, id := range c.running() {
		if id != leader {
			return id
		}
	}
	c.t.Fatal("no follower running")
	return 0
}

func TestClusterElectsLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	for id := uint64(1); id <= 3; id++ {
		c.start(id, false)
	}
	leader := c.waitLeader()
	leaders := 0
	for _, id := range c.running() {
		if c.member(id).node.Status().IsLeader {
			leaders++
		}
	}
	if leaders != 1 {
		t.Fatalf("members reporting IsLeader: got %d, want 1", leaders)
	}
	select {
	case lc := <-c.member(leader).node.Leadership():
		if lc.Leader != leader || !lc.IsLeader || lc.Term == 0 {
			t.Fatalf("leader's Leadership(): got %+v, want leader %d, IsLeader, a term", lc, leader)
		}
	default:
		t.Fatal("leader's Leadership() channel is empty")
	}
	// Proposals on every member, followers forwarding to the leader.
	var last uint64
	for i := range 30 {
		idx := c.put(uint64(i%3)+1, fmt.Sprintf("k%d", i), "v")
		if idx <= last {
			t.Fatalf("proposal %d applied at index %d, not after %d", i, idx, last)
		}
		last = idx
	}
	c.waitConverged()
	for _, id := range c.running() {
		m := c.member(id)
		if got := m.sm.len(); got != 30 {
			t.Errorf("member %d holds %d keys, want 30", id, got)
		}
		st := m.node.Status()
		if len(st.Members) != 3 || st.CommitIndex < last {
			t.Errorf("member %d status: %+v, want 3 members and commit >= %d", id, st, last)
		}
	}
	lm := c.member(leader)
	if got := testutil.ToFloat64(lm.node.metrics.isLeader); got != 1 {
		t.Errorf("leader's is_leader gauge: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(lm.node.metrics.walBytes); got <= 0 {
		t.Errorf("leader's wal bytes: got %v, want > 0", got)
	}
	if n, err := testutil.GatherAndCount(lm.reg, "berth_raft_wal_fsync_duration_seconds", "berth_raft_proposals_total"); err != nil || n != 2 {
		t.Errorf("gathered metrics: got %d (%v), want 2 families", n, err)
	}
}

func TestClusterLeaderRestart(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	for id := uint64(1); id <= 3; id++ {
		c.start(id, false)
	}
	old := c.waitLeader()
	for i := range 20 {
		c.put(old, fmt.Sprintf("a%d", i), "v")
	}
	if err := c.stop(old); err != nil {
		t.Fatalf("stop leader %d: got %v, want nil", old, err)
	}
	next := c.waitLeader()
	if next == old {
		t.Fatalf("new leader: got %d, the stopped member", next)
	}
	for i := range 20 {
		c.put(c.follower(0), fmt.Sprintf("b%d", i), "v")
	}
	c.start(old, false)
	c.waitLeader()
	for i := range 5 {
		c.put(old, fmt.Sprintf("c%d", i), "v")
	}
	c.waitConverged()
	if got := c.member(old).sm.len(); got != 45 {
		t.Fatalf("restarted member holds %d keys, want 45", got)
	}
}

func TestClusterSnapshotToLaggingFollower(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotEntries = 50
		cfg.SnapshotCatchUpEntries = 10
		cfg.WALSegmentBytes = 8 << 10
	})
	for id := uint64(1); id <= 3; id++ {
		c.start(id, false)
	}
	leader := c.waitLeader()
	lag := c.follower(leader)
	c.put(leader, "before", "v")
	c.waitConverged()
	if err := c.stop(lag); err != nil {
		t.Fatal(err)
	}
	lagLast := c.member(lag).node.AppliedIndex()
	for i := range 300 {
		c.put(leader, fmt.Sprintf("k%03d", i), "value-with-some-bytes")
	}
	ln := c.member(leader).node
	first, _ := ln.storage.FirstIndex()
	if first <= lagLast+1 {
		t.Fatalf("leader's log starts at %d; the stopped follower needs %d, so it would not need a snapshot", first, lagLast+1)
	}
	segs, err := listSegments(filepath.Join(c.member(leader).dir, "wal"))
	if err != nil || segs[0].firstIndex <= lagLast {
		t.Fatalf("leader's first WAL segment starts at %d (%v), want old segments removed", segs[0].firstIndex, err)
	}
	m := c.start(lag, false)
	c.waitConverged()
	if got := testutil.ToFloat64(m.node.metrics.snapshotsReceived); got < 1 {
		t.Fatalf("snapshots received by the lagging member: got %v, want >= 1", got)
	}
	if m.sm.restores < 1 || m.node.Status().SnapshotIndex < first-1 {
		t.Fatalf("lagging member: %d restores, snapshot index %d; want a restore at >= %d", m.sm.restores, m.node.Status().SnapshotIndex, first-1)
	}
	if got := m.sm.len(); got != 301 {
		t.Fatalf("lagging member holds %d keys, want 301", got)
	}
	if got, want := m.node.Members(), c.member(leader).node.Members(); !slices.Equal(got, want) || len(got) != 3 {
		t.Fatalf("lagging member's members after the snapshot: got %v, want %v", got, want)
	}
	// It keeps up with entries after the snapshot, and restarts from its own snapshot.
	c.put(leader, "after", "v")
	c.waitConverged()
	if err := c.stop(lag); err != nil {
		t.Fatal(err)
	}
	m = c.start(lag, false)
	if m.sm.restores != 1 {
		t.Fatalf("restarted member restored %d snapshots at open, want 1", m.sm.restores)
	}
	c.waitConverged()
}

func TestClusterMembershipAddRemove(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	for id := uint64(1); id <= 3; id++ {
		c.start(id, false)
	}
	leader := c.waitLeader()
	for i := range 10 {
		c.put(leader, fmt.Sprintf("a%d", i), "v")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// Add member 4 through a follower; the change is forwarded to the leader.
	m4 := c.addMember(4)
	via := c.follower(leader)
	if err := c.member(via).node.AddMember(ctx, Peer{ID: 4, Addr: m4.addr}); err != nil {
		t.Fatalf("add member 4 via %d: %v", via, err)
	}
	if err := c.member(via).node.AddMember(ctx, Peer{ID: 4, Addr: m4.addr}); !errors.Is(err, ErrMemberExists) {
		t.Fatalf("add member 4 again: got %v, want ErrMemberExists", err)
	}
	c.start(4, true)
	c.put(leader, "after-add", "v")
	c.waitConverged()
	for _, id := range c.running() {
		if got := len(c.member(id).node.Members()); got != 4 {
			t.Fatalf("member %d sees %d members, want 4", id, got)
		}
	}
	// Remove a running follower other than the new one: it applies its own removal and
	// stops with ErrRemoved.
	leader = c.waitLeader()
	var victim, offline uint64
	for _, id := range c.running() {
		switch {
		case id == leader || id == 4:
		case victim == 0:
			victim = id
		default:
			offline = id
		}
	}
	if err := c.member(leader).node.RemoveMember(ctx, victim); err != nil {
		t.Fatalf("remove member %d: %v", victim, err)
	}
	waitRemoved := func(id uint64) {
		t.Helper()
		m := c.member(id)
		select {
		case err := <-m.runErr:
			m.runErr <- err // for stop
			if !errors.Is(err, ErrRemoved) {
				t.Fatalf("removed member %d's Run: got %v, want ErrRemoved", id, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("removed member %d's Run did not return", id)
		}
		c.stop(id)
	}
	waitRemoved(victim)
	// Remove a member while it is down: when it comes back, the others refuse it and it
	// stops with ErrRemoved.
	if err := c.stop(offline); err != nil {
		t.Fatal(err)
	}
	leader = c.waitLeader()
	if err := c.member(leader).node.RemoveMember(ctx, offline); err != nil {
		t.Fatalf("remove offline member %d: %v", offline, err)
	}
	c.start(offline, false)
	waitRemoved(offline)
	for i := range 10 {
		c.put(4, fmt.Sprintf("b%d", i), "v")
	}
	c.waitConverged()
	for _, id := range c.running() {
		ms := c.member(id).node.Members()
		if len(ms) != 2 || slices.ContainsFunc(ms, func(p Peer) bool { return p.ID == victim || p.ID == offline }) {
			t.Fatalf("member %d sees members %v, want 2 without %d and %d", id, ms, victim, offline)
		}
	}
	if err := c.member(leader).node.AddMember(ctx, Peer{ID: victim, Addr: c.member(victim).addr}); !errors.Is(err, ErrMemberExists) {
		t.Fatalf("re-add removed member %d: got %v, want ErrMemberExists", victim, err)
	}
	if err := c.member(leader).node.RemoveMember(ctx, 77); !errors.Is(err, ErrMemberNotFound) {
		t.Fatalf("remove a stranger: got %v, want ErrMemberNotFound", err)
	}
	// Membership survives a restart of the whole cluster.
	survivors := c.running()
	for _, id := range survivors {
		c.stop(id)
	}
	for _, id := range survivors {
		c.start(id, false)
	}
	c.waitLeader()
	c.put(4, "after-restart", "v")
	c.waitConverged()
	if got := len(c.member(4).node.Members()); got != 2 {
		t.Fatalf("after restart member 4 sees %d members, want 2", got)
	}
}

func TestClusterReadIndexOnFollower(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	for id := uint64(1); id <= 3; id++ {
		c.start(id, false)
	}
	leader := c.waitLeader()
	for _, f := range c.running() {
		if f == leader {
			continue
		}
		fm := c.member(f)
		for i := range 25 {
			key := fmt.Sprintf("f%d-k%d", f, i)
			c.put(leader, key, "v")
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			err := fm.node.ReadIndex(ctx)
			cancel()
			if err != nil {
				t.Fatalf("read index on follower %d: %v", f, err)
			}
			if _, ok := fm.sm.get(key); !ok {
				t.Fatalf("follower %d after ReadIndex: key %s acknowledged on the leader is missing (applied %d)", f, key, fm.node.AppliedIndex())
			}
		}
	}
}

// TestClusterReadIndexOnCatchingUpFollower reads on a follower that restarts far behind,
// with small messages so that it catches up over many Readies: ReadIndex must wait until
// the follower has applied the leader's commit index, not just learned it.
func TestClusterReadIndexOnCatchingUpFollower(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.MaxSizePerMsg = 2048 })
	for id := uint64(1); id <= 3; id++ {
		c.start(id, false)
	}
	leader := c.waitLeader()
	f := c.follower(leader)
	if err := c.stop(f); err != nil {
		t.Fatal(err)
	}
	value := strings.Repeat("v", 1000)
	for i := range 200 {
		c.put(leader, fmt.Sprintf("k%03d", i), value)
	}
	m := c.start(f, false)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := m.node.ReadIndex(ctx); err != nil {
		t.Fatalf("read index on the catching-up follower: %v", err)
	}
	if got := m.sm.len(); got != 200 {
		t.Fatalf("follower after ReadIndex holds %d keys, want 200 (applied %d)", got, m.node.AppliedIndex())
	}
}

func TestClusterNoLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	m := c.start(1, false)
	tests := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"propose", func(ctx context.Context) error { _, err := m.node.Propose(ctx, []byte("k=v")); return err }},
		{"read index", m.node.ReadIndex},
		{"add member", func(ctx context.Context) error { return m.node.AddMember(ctx, Peer{ID: 9, Addr: "127.0.0.1:1"}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			err := tt.call(ctx)
			if !errors.Is(err, ErrNoLeader) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want ErrNoLeader and DeadlineExceeded", err)
			}
		})
	}
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	if _, err := m.node.Propose(t.Context(), []byte("k=v")); !errors.Is(err, ErrStopped) {
		t.Fatalf("propose after stop: got %v, want ErrStopped", err)
	}
}

func TestClusterTransferLeadership(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	for id := uint64(1); id <= 3; id++ {
		c.start(id, false)
	}
	leader := c.waitLeader()
	c.put(leader, "k", "v")
	to := c.follower(leader)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.member(leader).node.TransferLeadership(ctx, to); err != nil {
		t.Fatalf("transfer leadership %d -> %d: %v", leader, to, err)
	}
	if got := c.waitLeader(); got != to {
		t.Fatalf("leader after transfer: got %d, want %d", got, to)
	}
	waitFor(t, 5*time.Second, "the new leader's Leadership() event", func() (bool, string) {
		select {
		case lc := <-c.member(to).node.Leadership():
			return lc.Leader == to && lc.IsLeader, fmt.Sprintf("%+v", lc)
		default:
			return false, "no event"
		}
	})
	c.put(leader, "k2", "v")
	if err := c.member(leader).node.TransferLeadership(ctx, 42); !errors.Is(err, ErrMemberNotFound) {
		t.Fatalf("transfer to a stranger: got %v, want ErrMemberNotFound", err)
	}
}

func TestSingleMemberRestartKeepsState(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *Config) { cfg.SnapshotEntries = 20; cfg.SnapshotCatchUpEntries = 5 })
	c.start(1, false)
	c.waitLeader()
	for i := range 55 {
		c.put(1, fmt.Sprintf("k%d", i), "v")
	}
	want := c.member(1).sm.hash()
	// Snapshots are taken in the background: stop only once one is on disk.
	waitFor(t, 10*time.Second, "a snapshot", func() (bool, string) {
		st := c.member(1).node.Status()
		return st.SnapshotIndex >= 20, fmt.Sprintf("snapshot index %d", st.SnapshotIndex)
	})
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	m := c.start(1, false)
	c.waitLeader()
	waitFor(t, 5*time.Second, "replay after restart", func() (bool, string) {
		return m.sm.hash() == want, fmt.Sprintf("applied %d, %d keys", m.node.AppliedIndex(), m.sm.len())
	})
	if m.sm.restores != 1 {
		t.Fatalf("restores at open: got %d, want 1 (state from the snapshot, then the log)", m.sm.restores)
	}
	if got, want := m.node.Members(), []Peer{{ID: 1, Addr: m.addr}}; !slices.Equal(got, want) {
		t.Fatalf("members after restart from a snapshot: got %v, want %v", got, want)
	}
}

func TestNewNodeRefuses(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.start(1, false)
	c.waitLeader()
	c.put(1, "k", "v")
	m := c.member(1)
	cfg := c.config(m, false)
	if _, err := NewNode(cfg, newKVSM()); !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("second node on a data dir in use: got %v, want ErrDataDirLocked", err)
	}
	c.stop(1)
	cfg.Registerer = prometheus.NewRegistry()
	other := cfg
	other.ClusterID++
	if _, err := NewNode(other, newKVSM()); !errors.Is(err, ErrClusterMismatch) {
		t.Fatalf("data dir of another cluster: got %v, want ErrClusterMismatch", err)
	}
	n, err := NewNode(cfg, newKVSM())
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		c := Config{ID: 1, DataDir: "/tmp/x", ClusterID: 7, Peers: []Peer{{ID: 1, Addr: "127.0.0.1:1"}}}
		c.setDefaults()
		return c
	}
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"no id", func(c *Config) { c.ID = 0 }, "ID"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "DataDir"},
		{"no cluster", func(c *Config) { c.ClusterID = 0 }, "ClusterID"},
		{"election not above heartbeat", func(c *Config) { c.ElectionTicks = 1 }, "ElectionTicks"},
		{"bad address", func(c *Config) { c.Peers[0].Addr = "nohost" }, "Peers[0]"},
		{"duplicate peer", func(c *Config) { c.Peers = append(c.Peers, Peer{ID: 1, Addr: "127.0.0.1:2"}) }, "Peers[1]"},
		{"self missing", func(c *Config) { c.Peers = []Peer{{ID: 2, Addr: "127.0.0.1:2"}} }, "Peers"},
		{"catch-up above snapshot", func(c *Config) { c.SnapshotCatchUpEntries = c.SnapshotEntries + 1 }, "SnapshotCatchUpEntries"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.modify(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), "config: "+tt.want+":")):
				t.Fatalf("got %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

func TestStatusBeforeRunHasRecoveredCommitIndex(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.start(1, false)
	c.waitLeader()
	var last uint64
	for i := range 20 {
		last = c.put(1, fmt.Sprintf("k%d", i), "v")
	}
	if err := c.stop(1); err != nil {
		t.Fatal(err)
	}
	m := c.member(1)
	cfg := c.config(m, false)
	cfg.Registerer = nil
	n, err := NewNode(cfg, newKVSM())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	st := n.Status()
	if st.CommitIndex < last {
		t.Errorf("commit index before Run: got %d, want at least %d (the last applied put)", st.CommitIndex, last)
	}
	if st.AppliedIndex >= st.CommitIndex {
		t.Errorf("applied index before Run: got %d, want under the commit index %d (the log is not replayed yet)", st.AppliedIndex, st.CommitIndex)
	}
}

func TestQuorumContact(t *testing.T) {
	c := newTestCluster(t, 3, nil) // ticks of 10ms, election timeout 10 ticks
	for id := uint64(1); id <= 3; id++ {
		c.start(id, false)
	}
	leader := c.waitLeader()
	ln := c.member(leader).node
	if _, _, ok := c.member(c.follower(leader)).node.QuorumContact(); ok {
		t.Error("quorum contact on a follower: got ok, want none")
	}
	fresh := func(what string) {
		t.Helper()
		waitFor(t, time.Second, what, func() (bool, string) {
			at, ticks, ok := ln.QuorumContact()
			return ok && ticks <= 2 && time.Since(at) < 50*time.Millisecond, fmt.Sprintf("ok %v, %d ticks, %v ago", ok, ticks, time.Since(at))
		})
	}
	fresh("fresh quorum contact on the leader")
	// With one follower gone a majority (the leader and the other follower) still answers.
	c.stop(c.follower(leader))
	time.Sleep(200 * time.Millisecond)
	fresh("fresh quorum contact with 2 of 3 members")
	// With both followers gone the contact ages, in time and in ticks, until the leader
	// steps down.
	f2 := c.follower(leader)
	stopped := time.Now()
	c.stop(f2)
	waitFor(t, 2*time.Second, "the cut-off leader's contact to age past an election timeout, or the leader to step down", func() (bool, string) {
		at, ticks, ok := ln.QuorumContact()
		if ok && !at.Before(stopped.Add(10*time.Millisecond)) {
			t.Errorf("quorum contact at %v, after the last follower stopped at %v", at, stopped)
		}
		return !ok || ticks > 10 && time.Since(at) > 100*time.Millisecond, fmt.Sprintf("ok %v, %d ticks, %v ago", ok, ticks, time.Since(at))
	})
}

func TestAbandonedCalls(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	m := c.start(1, false) // alone: no leader, so the calls wait
	for _, tt := range []struct {
		name string
		call func(ctx context.Context, abandon <-chan struct{}) error
	}{
		{"propose", func(ctx context.Context, abandon <-chan struct{}) error {
			_, err := m.node.ProposeUnless(ctx, []byte("k=v"), abandon)
			return err
		}},
		{"read index", m.node.ReadIndexUnless},
	} {
		t.Run(tt.name, func(t *testing.T) {
			abandon := make(chan struct{})
			errc := make(chan error, 1)
			go func() { errc <- tt.call(t.Context(), abandon) }()
			time.Sleep(50 * time.Millisecond)
			close(abandon)
			select {
			case err := <-errc:
				if !errors.Is(err, ErrAbandoned) {
					t.Errorf("got %v, want ErrAbandoned", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("call still waiting 2s after it was abandoned")
			}
		})
	}
}
