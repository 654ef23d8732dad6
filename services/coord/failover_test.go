package coord

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// relisten binds addr again, retrying while the old socket goes away.
func relisten(t *testing.T, addr string) net.Listener {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen %s again: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// restart starts a stopped member again on its data dir and addresses.
func (c *cluster) restart(m *member) {
	c.t.Helper()
	m.cfg.ClientListener = relisten(c.t, m.cfg.ClientListener.Addr().String())
	m.cfg.PeerListener = relisten(c.t, m.cfg.PeerListener.Addr().String())
	c.start(m)
}

// sessionKeeper keeps a session alive as a client library does: a keepalive every TTL/3
// on a stream to the leader, following a refusal's LeaderDetail, trying every member in
// turn otherwise, retrying every 20ms. It has connections of its own to the members'
// client addresses, which stay the same across restarts.
type sessionKeeper struct {
	apis     []coordv1.CoordServiceClient
	ids      []uint64
	id       int64
	interval time.Duration

	expired atomic.Bool
	// mu guards the fields below.
	mu       sync.Mutex
	lastSent time.Time // send time of the last keepalive answered
	servedBy int       // index of the member that answered it
}

func newSessionKeeper(t *testing.T, c *cluster, id int64, interval time.Duration) *sessionKeeper {
	k := &sessionKeeper{id: id, interval: interval, servedBy: -1}
	for _, m := range c.members {
		conn, err := grpc.NewClient(m.cfg.ClientListener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1, MaxDelay: 10 * time.Millisecond}}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		k.apis = append(k.apis, coordv1.NewCoordServiceClient(conn))
		k.ids = append(k.ids, MemberID(m.name))
	}
	return k
}

func (k *sessionKeeper) last() (time.Time, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastSent, k.servedBy
}

func (k *sessionKeeper) run(ctx context.Context) {
	next := 0
	for ctx.Err() == nil && !k.expired.Load() {
		if hint := k.stream(ctx, next); hint >= 0 {
			next = hint
			continue
		}
		next = (next + 1) % len(k.apis)
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stream runs one keepalive stream on member i until it breaks; it returns the index of
// the member a refusal named as leader, or -1.
func (k *sessionKeeper) stream(ctx context.Context, i int) int {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A stream silent for two intervals (a dead leader) is given up.
	watchdog := time.AfterFunc(2*k.interval, cancel)
	defer watchdog.Stop()
	s, err := k.apis[i].SessionKeepAlive(sctx)
	if err != nil {
		return -1
	}
	for {
		sent := time.Now()
		err := s.Send(&coordv1.SessionKeepAliveRequest{SessionId: k.id})
		var r *coordv1.SessionKeepAliveResponse
		if err == nil {
			r, err = s.Recv()
		}
		if err != nil {
			for _, d := range status.Convert(err).Details() {
				if ld, ok := d.(*coordv1.LeaderDetail); ok {
					for j, id := range k.ids {
						if id == ld.LeaderId && j != i {
							return j
						}
					}
				}
			}
			return -1
		}
		watchdog.Reset(2 * k.interval)
		if r.Expired {
			k.expired.Store(true)
			return -1
		}
		k.mu.Lock()
		k.lastSent, k.servedBy = sent, i
		k.mu.Unlock()
		select {
		case <-sctx.Done():
			return -1
		case <-time.After(k.interval - time.Since(sent)):
		}
	}
}

// TestHealthySessionSurvivesRapidFailovers crashes the leader every 0.5–0.7 s (election
// timeout 300 ms) while a client keeps its 2 s session alive and is answered by every new
// leader: the session must never expire. A renewal answered by a brand-new leader that is
// killed soon after must still count (before the fix, its checkpoint was often lost with
// that leader and the session expired between the fifth and the seventh failover).
func TestHealthySessionSurvivesRapidFailovers(t *testing.T) {
	const ttl = 2 * time.Second
	c := startCluster(t, 3, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.ElectionTimeout = 30*time.Millisecond, 300*time.Millisecond
		cfg.noHandover = true // crashes, not planned stops
	})
	ctx := t.Context()
	l := c.leader()
	open, err := l.api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: ttl.Milliseconds(), RequestId: "live"})
	if err != nil {
		t.Fatal(err)
	}
	eph, err := l.api.Put(ctx, &coordv1.PutRequest{Path: "/live/e", SessionId: open.SessionId})
	if err != nil {
		t.Fatal(err)
	}
	k := newSessionKeeper(t, c, open.SessionId, ttl/3)
	kctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); k.run(kctx) }()
	defer func() { stop(); wg.Wait() }()

	failovers := 10
	if testing.Short() {
		failovers = 5
	}
	for i := range failovers {
		start := time.Now()
		old := c.leader()
		c.stop(old)
		nl := c.leader()
		c.restart(old)
		for {
			sent, by := k.last()
			if by >= 0 && c.members[by] == nl && sent.After(start) {
				break
			}
			if k.expired.Load() {
				t.Fatalf("failover %d: the session was reported expired", i+1)
			}
			if time.Since(start) > 2*ttl {
				t.Fatalf("failover %d: no keepalive answered by the new leader %s within %v", i+1, nl.name, 2*ttl)
			}
			time.Sleep(5 * time.Millisecond)
		}
		renewed := time.Since(start)
		time.Sleep(time.Until(start.Add(500*time.Millisecond + rand.N(200*time.Millisecond))))
		t.Logf("failover %d: %s -> %s; renewed on the new leader after %v", i+1, old.name, nl.name, renewed.Round(time.Millisecond))
	}
	if k.expired.Load() {
		t.Fatal("the session was reported expired")
	}
	r, err := c.leader().api.Get(ctx, &coordv1.GetRequest{Path: "/live/e"})
	if err != nil || r.Node.CreateRev != eph.Node.CreateRev {
		t.Fatalf("ephemeral of the live session after %d failovers: got %v %v, want create_rev %d", failovers, r, err, eph.Node.CreateRev)
	}
}

// TestRestartedMemberServesNoStaleReads restarts a follower whose state comes from
// replaying its log, with readers already hammering it: no read may be answered from the
// state before the replay (NOT_FOUND, or an older revision than it had when it stopped).
func TestRestartedMemberServesNoStaleReads(t *testing.T) {
	c := startCluster(t, 3, nil)
	ctx := t.Context()
	l := c.leader()
	// 600 entries for the restarted member to replay.
	var wwg sync.WaitGroup
	for w := range 30 {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for i := range 20 {
				if _, err := l.api.Put(ctx, &coordv1.PutRequest{Path: fmt.Sprintf("/replay/k%d", (w+i)%50), Value: []byte("v")}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wwg.Wait()
	last := l.srv.machine.Revision()
	f := c.follower()
	// Wait until the follower has everything, then stop it.
	for f.srv.machine.Revision() < last {
		time.Sleep(5 * time.Millisecond)
	}
	stopStart := time.Now()
	c.stop(f)
	t.Logf("stopped %s in %v", f.name, time.Since(stopStart).Round(time.Millisecond))
	addr := f.cfg.ClientListener.Addr().String()
	// The readers' own connection: it connects as soon as the member listens again.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1, MaxDelay: 5 * time.Millisecond}}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := coordv1.NewCoordServiceClient(conn)
	rctx, stopReaders := context.WithCancel(ctx)
	var reads, answered atomic.Int64
	var mu sync.Mutex
	var stale []string
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rctx.Err() == nil {
				cctx, cancel := context.WithTimeout(rctx, 200*time.Millisecond)
				r, err := api.Get(cctx, &coordv1.GetRequest{Path: "/replay/k0", Serializable: true})
				cancel()
				reads.Add(1)
				switch {
				case err == nil && r.Header.Revision < last:
					mu.Lock()
					stale = append(stale, fmt.Sprintf("revision %d (had %d)", r.Header.Revision, last))
					mu.Unlock()
				case err == nil:
					answered.Add(1)
				case status.Code(err) == codes.NotFound:
					mu.Lock()
					stale = append(stale, "NOT_FOUND: "+status.Convert(err).Message())
					mu.Unlock()
				case status.Code(err) == codes.Unavailable:
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	restartStart := time.Now()
	c.restart(f)
	t.Logf("restarted %s in %v", f.name, time.Since(restartStart).Round(time.Millisecond))
	deadline := time.Now().Add(5 * time.Second)
	for answered.Load() < 100 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stopReaders()
	wg.Wait()
	t.Logf("%d reads of the restarted member at %s, %d answered", reads.Load(), addr, answered.Load())
	if len(stale) > 0 {
		t.Errorf("%d reads answered from the state before the replay; first: %s", len(stale), stale[0])
	}
	if answered.Load() < 100 {
		t.Errorf("only %d reads answered after the restart", answered.Load())
	}
}
