package linearizability

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// keeper keeps one session alive as a client library would: a keepalive every interval
// on a stream to the leader, following the LeaderDetail of a follower's refusal, trying
// the members in turn otherwise.
type keeper struct {
	c        *Cluster
	id       int64
	interval time.Duration
	// limit, when positive, ends run after that many answered keepalives (the client dies).
	limit int

	expired atomic.Bool
	// mu guards the fields below.
	mu       sync.Mutex
	lastSent time.Time // send time of the last keepalive that was answered
	servedBy int       // member that answered it
	answers  int
}

func (k *keeper) last() (time.Time, int, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastSent, k.servedBy, k.answers
}

// run keeps the session alive until ctx ends or the session is reported expired.
func (k *keeper) run(ctx context.Context) {
	next := 0
	for ctx.Err() == nil && !k.expired.Load() {
		target := next
		next = k.stream(ctx, target)
		if next == -2 {
			return
		}
		if next < 0 {
			next = (target + 1) % len(k.c.Members)
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// stream runs one keepalive stream on member i until it breaks; it returns the member the
// refusal named as leader, -1, or -2 when the keeper reached its limit.
func (k *keeper) stream(ctx context.Context, i int) int {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A stream that stays silent for two intervals (a blackholed or dead leader) is given up.
	watchdog := time.AfterFunc(2*k.interval, cancel)
	defer watchdog.Stop()
	s, err := k.c.Members[i].API.SessionKeepAlive(sctx)
	if err != nil {
		return -1
	}
	for {
		sent := time.Now()
		if err := s.Send(&coordv1.SessionKeepAliveRequest{SessionId: k.id}); err != nil {
			return k.leaderHint(s.RecvMsg(new(coordv1.SessionKeepAliveResponse)))
		}
		r, err := s.Recv()
		if err != nil {
			return k.leaderHint(err)
		}
		watchdog.Reset(2 * k.interval)
		if r.Expired {
			k.expired.Store(true)
			return -1
		}
		k.mu.Lock()
		k.lastSent, k.servedBy = sent, i
		k.answers++
		done := k.limit > 0 && k.answers >= k.limit
		k.mu.Unlock()
		if done {
			return -2
		}
		select {
		case <-sctx.Done():
			return -1
		case <-time.After(k.interval - time.Since(sent)):
		}
	}
}

func (k *keeper) leaderHint(err error) int {
	for _, d := range status.Convert(err).Details() {
		if ld, ok := d.(*coordv1.LeaderDetail); ok {
			for j, m := range k.c.Members {
				if m.ID == ld.LeaderId && m.ID != 0 {
					return j
				}
			}
		}
	}
	return -1
}

// openSession opens a session with ttl on any member and puts n ephemerals under prefix.
func openSession(t *testing.T, c *Cluster, ttl time.Duration, prefix string, n int) (int64, []*coordv1.Node) {
	t.Helper()
	ctx := t.Context()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	api := c.Members[l].API
	s, err := api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: ttl.Milliseconds(), RequestId: "open-" + prefix})
	if err != nil {
		t.Fatalf("open session: %v", err)
	}
	var nodes []*coordv1.Node
	for i := range n {
		r, err := api.Put(ctx, &coordv1.PutRequest{Path: fmt.Sprintf("%s/e%d", prefix, i), Value: []byte("x"), SessionId: s.SessionId})
		if err != nil {
			t.Fatalf("put ephemeral: %v", err)
		}
		nodes = append(nodes, r.Node)
	}
	return s.SessionId, nodes
}

// failover kills the leader, waits for another member to lead, and restarts the old one
// in the background: restarted reports the restart's outcome. It returns the old and the
// new leader.
func failover(t *testing.T, c *Cluster) (old, nl int, restarted <-chan error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	old, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(old); err != nil {
		t.Fatal(err)
	}
	nl, err = c.WaitLeader(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	finished := make(chan struct{})
	// A test that fails before reading done still waits for the restart, before the
	// cluster is closed (cleanups run last in, first out).
	t.Cleanup(func() { <-finished })
	go func() {
		defer close(finished)
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		done <- c.Start(sctx, old)
	}()
	return old, nl, done
}

// TestLiveSessionSurvivesTenFailovers kills the leader ten times, one failover every TTL/2
// (the cadence of TestDeadSessionGoneDespiteFailovers), while a client keeps its session
// alive every TTL/3 and is answered by every new leader: the session must never expire and
// its ephemeral must stay.
func TestLiveSessionSurvivesTenFailovers(t *testing.T) {
	const ttl = 2 * time.Second
	// Shorter Raft timings than the other tests' make the ten failovers quick; the session
	// TTL stays at 2 s.
	c := startCluster(t, coordBinary(t, ""), func(cfg *ClusterConfig) {
		cfg.Heartbeat, cfg.Election = 30*time.Millisecond, 300*time.Millisecond
	})
	id, nodes := openSession(t, c, ttl, "/sess/live", 1)
	k := &keeper{c: c, id: id, interval: ttl / 3}
	kctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); k.run(kctx) }()
	defer func() { stop(); wg.Wait() }()

	for i := range 10 {
		start := time.Now()
		old, nl, restarted := failover(t, c)
		// Wait until the client has been answered by the new leader, so that every
		// failover is one the client lives through.
		for {
			sent, by, _ := k.last()
			if by == nl && sent.After(start) {
				break
			}
			if k.expired.Load() {
				t.Fatalf("failover %d: the session was reported expired", i+1)
			}
			if time.Since(start) > 4*ttl {
				t.Fatalf("failover %d: no keepalive answered by the new leader %s within %v", i+1, c.Members[nl].Name, 4*ttl)
			}
			time.Sleep(10 * time.Millisecond)
		}
		renewed := time.Since(start)
		if err := <-restarted; err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(start.Add(ttl / 2)))
		t.Logf("failover %d: %s -> %s; client renewed on the new leader after %v", i+1, c.Members[old].Name, c.Members[nl].Name, renewed.Round(time.Millisecond))
	}
	if k.expired.Load() {
		t.Fatal("the session was reported expired")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Members[l].API.Get(ctx, &coordv1.GetRequest{Path: nodes[0].Path})
	if err != nil {
		t.Fatalf("ephemeral of the live session after 10 failovers: %v", err)
	}
	if r.Node.Session != id || r.Node.CreateRev != nodes[0].CreateRev {
		t.Errorf("ephemeral after 10 failovers: got session %d create_rev %d, want %d and %d", r.Node.Session, r.Node.CreateRev, id, nodes[0].CreateRev)
	}
}

// TestDeadSessionGoneDespiteFailovers lets a client die and fails the leader over every
// TTL/2 from then on: the dead client's ephemerals must be gone within TTL + election
// timeout + 1 s of its last keepalive, while a live client's session survives the same
// failovers. The first failover comes at a different point of the TTL/2 period in each
// subtest, since a failover just after the last checkpoint that saw the client alive is
// the worst case (the new leader then grants the session its full TTL).
func TestDeadSessionGoneDespiteFailovers(t *testing.T) {
	const ttl = 2 * time.Second
	phases := []float64{0.1, 0.5, 0.9}
	if testing.Short() {
		phases = []float64{0.9}
	}
	c := startCluster(t, coordBinary(t, ""), nil)
	bound := ttl + c.cfg.Election + time.Second
	liveID, liveNodes := openSession(t, c, ttl, "/sess/live", 1)
	live := &keeper{c: c, id: liveID, interval: ttl / 3}
	lctx, stopLive := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); live.run(lctx) }()
	defer func() { stopLive(); wg.Wait() }()

	for _, phase := range phases {
		t.Run(fmt.Sprintf("first failover at %.1f of TTL/2", phase), func(t *testing.T) {
			prefix := fmt.Sprintf("/sess/dead-%.1f", phase)
			gone, n := deadSessionTrial(t, c, ttl, prefix, time.Duration(phase*float64(ttl/2)))
			t.Logf("dead client's ephemerals gone %v after its last keepalive, with %d failovers every %v (bound %v)", gone.Round(time.Millisecond), n, ttl/2, bound)
			if gone > bound {
				t.Errorf("dead client's ephemerals gone after %v, want within TTL + election timeout + 1s = %v", gone.Round(time.Millisecond), bound)
			}
			if n == 0 {
				t.Error("no failover happened while the dead session was pending")
			}
		})
	}

	// The live client lived through the same failovers.
	if live.expired.Load() {
		t.Error("the live session was reported expired")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Members[l].API.Get(ctx, &coordv1.GetRequest{Path: liveNodes[0].Path}); err != nil {
		t.Errorf("live session's ephemeral: %v", err)
	}
}

// deadSessionTrial opens a session with 5 ephemerals under prefix, keeps it alive four
// times, lets it die, and fails the leader over every TTL/2 starting firstAt after its last
// keepalive until the ephemerals are gone. It returns how long after the last keepalive
// they went, and the number of failovers.
func deadSessionTrial(t *testing.T, c *Cluster, ttl time.Duration, prefix string, firstAt time.Duration) (time.Duration, int) {
	ctx := t.Context()
	id, nodes := openSession(t, c, ttl, prefix, 5)
	created := nodes[len(nodes)-1].ModRev
	dead := &keeper{c: c, id: id, interval: ttl / 3, limit: 4}
	dead.run(ctx)
	died, _, answers := dead.last()
	if answers != 4 || dead.expired.Load() {
		t.Fatalf("the doomed client's keepalives: %d answered, expired %t; want 4 answered", answers, dead.expired.Load())
	}

	fctx, stopFailovers := context.WithCancel(ctx)
	defer stopFailovers()
	failovers := make(chan int, 1)
	go func() {
		n := 0
		defer func() { failovers <- n }()
		next := died.Add(firstAt)
		for {
			select {
			case <-fctx.Done():
				return
			case <-time.After(time.Until(next)):
			}
			next = next.Add(ttl / 2)
			octx, cancel := context.WithTimeout(fctx, ttl/2)
			l, err := c.WaitLeader(octx)
			cancel()
			if err != nil {
				continue // no leader yet: the last failover is still under way
			}
			c.Kill(l)
			n++
			if err := c.Start(context.Background(), l); err != nil {
				t.Errorf("restart %s: %v", c.Members[l].Name, err)
				return
			}
		}
	}()
	limit := 3 * (ttl + c.cfg.Election + time.Second)
	var gone time.Duration
	for gone == 0 && time.Since(died) < limit {
		for i, m := range c.Members {
			if !c.Running(i) {
				continue
			}
			// A serializable read shows what the member has applied, and it applies only
			// committed entries: the first member without the nodes dates the expiry. A
			// member that has just restarted answers from the state it has replayed so far,
			// so only a state at least as new as the nodes' creation counts.
			rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			r, err := m.API.List(rctx, &coordv1.ListRequest{Path: prefix, Recursive: true, Serializable: true})
			cancel()
			if err == nil && len(r.Nodes) == 0 && r.Header.Revision >= created {
				gone = time.Since(died)
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopFailovers()
	n := <-failovers
	if gone == 0 {
		t.Fatalf("the dead client's ephemerals were still there %v after its last keepalive (%d failovers)", limit, n)
	}
	// The session is gone for good: writes with it are refused.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Members[l].API.Put(wctx, &coordv1.PutRequest{Path: prefix + "/late", SessionId: id}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("put with the dead session: got %v, want FailedPrecondition", err)
	}
	return gone, n
}
