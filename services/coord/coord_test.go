package coord

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type member struct {
	name   string
	cfg    Config
	srv    *Server
	cancel context.CancelFunc
	done   chan error
	conn   *grpc.ClientConn
	api    coordv1.CoordServiceClient
	// up is read by helper goroutines; cancel only by the test goroutine.
	up atomic.Bool
}

type cluster struct {
	t       *testing.T
	members []*member
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// startCluster runs n members in process on loopback ports chosen by the kernel.
func startCluster(t *testing.T, n int, tweak func(*Config)) *cluster {
	t.Helper()
	c := &cluster{t: t}
	var entries []string
	dir := t.TempDir()
	for i := range n {
		m := &member{name: fmt.Sprintf("n%d", i+1)}
		cl, pl := listen(t), listen(t)
		m.cfg = Config{
			Name: m.name, DataDir: filepath.Join(dir, m.name),
			ClientListener: cl, PeerListener: pl,
			HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
			RequestTimeout: 2 * time.Second,
		}
		entries = append(entries, m.name+"="+pl.Addr().String())
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.cfg.InitialCluster = strings.Join(entries, ",")
		if tweak != nil {
			tweak(&m.cfg)
		}
		c.start(m)
	}
	t.Cleanup(func() {
		for _, m := range c.members {
			c.stop(m)
		}
	})
	return c
}

func (c *cluster) start(m *member) {
	t := c.t
	srv, err := New(m.cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("new %s: %v", m.name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.srv, m.cancel, m.done = srv, cancel, make(chan error, 1)
	go func() { m.done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient(m.cfg.ClientListener.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)))
	if err != nil {
		t.Fatal(err)
	}
	m.conn, m.api = conn, coordv1.NewCoordServiceClient(conn)
	m.up.Store(true)
}

func (c *cluster) stop(m *member) {
	if m.cancel == nil {
		return
	}
	m.up.Store(false)
	m.conn.Close()
	m.cancel()
	if err := <-m.done; err != nil {
		c.t.Errorf("run %s: %v", m.name, err)
	}
	m.cancel = nil
}

// leader waits for a leader among the running members and returns it.
func (c *cluster) leader() *member {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range c.members {
			if m.cancel != nil && m.srv.leader.Load() == m.srv.id {
				if ok, _ := m.srv.lessor.IsLeader(); ok {
					return m
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatal("no leader within 10s")
	return nil
}

func (c *cluster) follower() *member {
	l := c.leader()
	for _, m := range c.members {
		if m != l && m.cancel != nil {
			return m
		}
	}
	c.t.Fatal("no follower")
	return nil
}

func code(err error) codes.Code { return status.Code(err) }

func TestClusterReadsWritesAndErrors(t *testing.T) {
	c := startCluster(t, 3, nil)
	ctx := t.Context()
	l, f := c.leader(), c.follower()
	put, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/berth/config/a", Value: []byte("v1"), RequestId: "p1"})
	if err != nil {
		t.Fatalf("put on follower: %v", err)
	}
	if put.Header.Revision != 1 || put.Header.LeaderId != l.srv.id || put.Header.MemberId != f.srv.id {
		t.Errorf("header: got %+v, want revision 1 leader %x member %x", put.Header, l.srv.id, f.srv.id)
	}
	for _, m := range c.members {
		got, err := m.api.Get(ctx, &coordv1.GetRequest{Path: "/berth/config/a"})
		if err != nil || string(got.Node.Value) != "v1" {
			t.Errorf("linearizable get on %s: got %v %v, want v1", m.name, got, err)
		}
	}
	// A retried write with the same request id is applied once.
	again, err := l.api.Put(ctx, &coordv1.PutRequest{Path: "/berth/config/a", Value: []byte("v1"), RequestId: "p1"})
	if err != nil || again.Node.Version != 1 || again.Header.Revision != 1 {
		t.Errorf("retried put: got %v %v, want version 1 at revision 1", again, err)
	}
	big := bytes.Repeat([]byte("a"), 5<<20)
	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"invalid path", func() error { _, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/a//b"}); return err }, codes.InvalidArgument},
		{"5 MiB value", func() error { _, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/big", Value: big}); return err }, codes.ResourceExhausted},
		{"missing node", func() error { _, err := f.api.Get(ctx, &coordv1.GetRequest{Path: "/nope"}); return err }, codes.NotFound},
		{"cas mismatch", func() error {
			v := int64(5)
			_, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/berth/config/a", ExpectedVersion: &v})
			return err
		}, codes.Aborted},
		{"unknown session", func() error {
			_, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/e", SessionId: 12345})
			return err
		}, codes.FailedPrecondition},
		{"request id reuse", func() error {
			_, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/other", RequestId: "p1"})
			return err
		}, codes.FailedPrecondition},
		{"bad ttl", func() error { _, err := f.api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: 5}); return err }, codes.InvalidArgument},
	}
	for _, tt := range tests {
		if got := code(tt.call()); got != tt.want {
			t.Errorf("%s: got code %v, want %v", tt.name, got, tt.want)
		}
	}
	// 1 MiB values are fine; nothing of the refused requests was applied.
	// (With a request id, so that a spurious election on a loaded machine is retried.)
	if _, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/mid", Value: big[:1<<20], RequestId: "mid"}); err != nil {
		t.Errorf("1 MiB put: %v", err)
	}
	st, err := l.api.Status(ctx, &coordv1.StatusRequest{})
	if err != nil || st.Header.Revision != 2 || st.Nodes != 2 {
		t.Errorf("status: got %v %v, want revision 2 and 2 nodes", st, err)
	}
	ms, err := f.api.Members(ctx, &coordv1.MembersRequest{})
	if err != nil || len(ms.Members) != 3 {
		t.Fatalf("members: got %v %v", ms, err)
	}
}

func TestClusterWatchAndCompaction(t *testing.T) {
	c := startCluster(t, 3, func(cfg *Config) { cfg.HistoryWindow = 10 })
	ctx := t.Context()
	f := c.follower()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws, err := f.api.Watch(wctx, &coordv1.WatchRequest{Path: "/w", Recursive: true, StartRevision: 1, PrevNode: true})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ws.Recv(); err != nil || !r.Created {
		t.Fatalf("first watch response: got %v %v, want created", r, err)
	}
	for i := range 5 {
		if _, err := c.leader().api.Put(ctx, &coordv1.PutRequest{Path: fmt.Sprintf("/w/k%d", i%2), Value: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	var revs []int64
	for len(revs) < 5 {
		r, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range r.Events {
			revs = append(revs, e.Revision)
			if e.Revision >= 3 && e.PrevNode == nil {
				t.Errorf("event at %d: no prev node", e.Revision)
			}
		}
	}
	if fmt.Sprint(revs) != "[1 2 3 4 5]" {
		t.Errorf("watched revisions: got %v, want [1 2 3 4 5]", revs)
	}
	for i := range 20 {
		if _, err := f.api.Put(ctx, &coordv1.PutRequest{Path: fmt.Sprintf("/x/%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	old, err := f.api.Watch(ctx, &coordv1.WatchRequest{Path: "/w", Recursive: true, StartRevision: 2})
	if err != nil {
		t.Fatal(err)
	}
	_, err = old.Recv()
	st := status.Convert(err)
	if st.Code() != codes.OutOfRange {
		t.Fatalf("watch from a compacted revision: got %v, want OutOfRange", err)
	}
	var detail *coordv1.CompactedDetail
	for _, d := range st.Details() {
		if cd, ok := d.(*coordv1.CompactedDetail); ok {
			detail = cd
		}
	}
	if detail == nil || detail.CompactRevision < 2 || detail.CurrentRevision != 25 {
		t.Errorf("compacted detail: got %v, want compact >= 2, current 25", detail)
	}
	if got := old.Trailer().Get(TrailerCompactRev); len(got) != 1 {
		t.Errorf("trailer %s: got %v", TrailerCompactRev, got)
	}
}

// keepAlive keeps a session alive against whichever member leads, until ctx ends.
func keepAlive(ctx context.Context, c *cluster, id int64, mu *sync.Mutex, expired *bool) {
	for ctx.Err() == nil {
		var l *member
		for _, m := range c.members {
			if m.up.Load() && m.srv.leader.Load() == m.srv.id {
				l = m
			}
		}
		if l == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		stream, err := l.api.SessionKeepAlive(ctx)
		if err != nil {
			continue
		}
		for ctx.Err() == nil {
			if err := stream.Send(&coordv1.SessionKeepAliveRequest{SessionId: id}); err != nil {
				break
			}
			r, err := stream.Recv()
			if err != nil {
				break
			}
			if r.Expired {
				mu.Lock()
				*expired = true
				mu.Unlock()
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
		stream.CloseSend()
	}
}

func TestClusterSessionsAcrossFailover(t *testing.T) {
	c := startCluster(t, 3, nil)
	ctx := t.Context()
	f := c.follower()
	healthy, err := f.api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: 1500, RequestId: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	dead, err := f.api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: 1500, RequestId: "s2"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := f.api.Put(ctx, &coordv1.PutRequest{Path: fmt.Sprintf("/alive/dead-%d", i), SessionId: dead.SessionId}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/alive/healthy", SessionId: healthy.SessionId}); err != nil {
		t.Fatal(err)
	}
	// A keepalive stream on a follower is refused with the leader's address.
	ks, err := f.api.SessionKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ks.Send(&coordv1.SessionKeepAliveRequest{SessionId: healthy.SessionId})
	_, err = ks.Recv()
	st := status.Convert(err)
	if st.Code() != codes.Unavailable {
		t.Fatalf("keepalive on follower: got %v, want Unavailable", err)
	}
	var ld *coordv1.LeaderDetail
	for _, d := range st.Details() {
		if x, ok := d.(*coordv1.LeaderDetail); ok {
			ld = x
		}
	}
	if ld == nil || ld.LeaderId != c.leader().srv.id {
		t.Errorf("leader detail: got %v, want leader %x", ld, c.leader().srv.id)
	}

	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	ws, err := f.api.Watch(wctx, &coordv1.WatchRequest{Path: "/alive", Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); err != nil {
		t.Fatal(err)
	}
	kctx, stopKA := context.WithCancel(ctx)
	var mu sync.Mutex
	expired := false
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); keepAlive(kctx, c, healthy.SessionId, &mu, &expired) }()
	defer func() { stopKA(); wg.Wait() }()

	// The dead session goes within TTL + 1 s, its three nodes in one revision.
	start := time.Now()
	r, err := ws.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("dead session's nodes removed after %v, want within TTL + 1s", d)
	}
	if len(r.Events) != 3 {
		t.Fatalf("expiry events: got %d in one response, want 3", len(r.Events))
	}
	for _, e := range r.Events {
		if e.Type != coordv1.EventType_EVENT_TYPE_DELETE || e.Revision != r.Events[0].Revision || !strings.Contains(e.Node.Path, "dead") {
			t.Errorf("expiry event: got %v, want deletes of dead-* at one revision", e)
		}
	}

	// Kill the leader: the healthy session survives the failover and writes go on.
	old := c.leader()
	c.stop(old)
	time.Sleep(3 * time.Second) // two TTLs
	nl := c.leader()
	if nl == old {
		t.Fatal("leader did not change")
	}
	if _, err := nl.api.Get(ctx, &coordv1.GetRequest{Path: "/alive/healthy"}); err != nil {
		t.Errorf("healthy ephemeral after failover: %v", err)
	}
	mu.Lock()
	if expired {
		t.Error("healthy session reported expired across failover")
	}
	mu.Unlock()
	if _, err := nl.api.Put(ctx, &coordv1.PutRequest{Path: "/after-failover"}); err != nil {
		t.Errorf("write after failover: %v", err)
	}
	// Close deletes the healthy session's node.
	stopKA()
	wg.Wait()
	cl, err := nl.api.SessionClose(ctx, &coordv1.SessionCloseRequest{SessionId: healthy.SessionId})
	if err != nil || cl.Deleted != 1 {
		t.Errorf("close: got %v %v, want 1 deleted", cl, err)
	}
	if _, err := nl.api.SessionClose(ctx, &coordv1.SessionCloseRequest{SessionId: healthy.SessionId}); code(err) != codes.FailedPrecondition {
		t.Errorf("second close: got %v, want FailedPrecondition", err)
	}
}

func TestClusterNoQuorumAndSnapshot(t *testing.T) {
	c := startCluster(t, 3, nil)
	ctx := t.Context()
	l := c.leader()
	if _, err := l.api.Put(ctx, &coordv1.PutRequest{Path: "/keep", Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// Snapshot through the API round-trips into a fresh data dir.
	ss, err := l.api.Snapshot(ctx, &coordv1.SnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	for {
		r, err := ss.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		snap.Write(r.Blob)
	}
	file := filepath.Join(t.TempDir(), "snap.db")
	if err := writeFile(file, snap.Bytes()); err != nil {
		t.Fatal(err)
	}
	seeded := filepath.Join(t.TempDir(), "seeded")
	if err := RestoreSnapshot(file, seeded); err != nil {
		t.Fatalf("restore: %v", err)
	}
	rc := startClusterFrom(t, seeded)
	if got, err := rc.api.Get(ctx, &coordv1.GetRequest{Path: "/keep"}); err != nil || string(got.Node.Value) != "x" {
		t.Errorf("get from restored member: got %v %v, want x", got, err)
	}
	// Two of three members down: writes fail with Unavailable, not a hang.
	for _, m := range c.members {
		if m != l {
			c.stop(m)
			break
		}
	}
	for _, m := range c.members {
		if m.cancel != nil && m != l {
			c.stop(m)
		}
	}
	start := time.Now()
	_, err = l.api.Put(ctx, &coordv1.PutRequest{Path: "/noquorum"})
	if code(err) != codes.Unavailable {
		t.Errorf("write without quorum: got %v, want Unavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("write without quorum took %v to fail", d)
	}
}

// startClusterFrom starts a single-member cluster on a seeded data dir.
func startClusterFrom(t *testing.T, dir string) *member {
	cl, pl := listen(t), listen(t)
	c := &cluster{t: t}
	m := &member{name: "r1", cfg: Config{Name: "r1", DataDir: dir, ClientListener: cl, PeerListener: pl,
		InitialCluster: "r1=" + pl.Addr().String(), HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond}}
	c.members = []*member{m}
	c.start(m)
	t.Cleanup(func() { c.stop(m) })
	c.leader()
	return m
}

func writeFile(name string, b []byte) error {
	return errors.Join(osWriteFile(name, b))
}
