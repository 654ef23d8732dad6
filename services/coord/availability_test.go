package coord

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// reasonOf returns the ErrorInfo reason of a status error, "" when there is none.
func reasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// stopAsync starts stopping m without closing the test's connection to it (so that
// streams on it can be watched while it stops); the returned channel yields Run's error.
func stopAsync(m *member) <-chan error {
	m.up.Store(false)
	m.cancel()
	m.cancel = nil
	out := make(chan error, 1)
	go func() { out <- <-m.done; m.conn.Close() }()
	return out
}

// sessionLeader returns the member whose lessor leads, nil when none does.
func (c *cluster) sessionLeader() *member {
	for _, m := range c.members {
		if m.up.Load() {
			if ok, _ := m.srv.lessor.IsLeader(); ok {
				return m
			}
		}
	}
	return nil
}

func TestPlannedStopHandsOverLeadership(t *testing.T) {
	// A long election timeout: without the hand-over the cluster would need at least an
	// election timeout to replace the stopping leader.
	c := startCluster(t, 3, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.ElectionTimeout = 50*time.Millisecond, time.Second
	})
	ctx := t.Context()
	l := c.leader()
	open, err := l.api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: 3000, RequestId: "s"})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := l.api.SessionKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Send(&coordv1.SessionKeepAliveRequest{SessionId: open.SessionId}); err != nil {
		t.Fatal(err)
	}
	if r, err := ks.Recv(); err != nil || r.Expired {
		t.Fatalf("keepalive before the stop: got %v %v", r, err)
	}

	stopped := time.Now()
	done := stopAsync(l)
	// The stopping leader must not renew the session any more: keepalives sent after the
	// stop began are refused.
	var lateAcks int
	var streamErr error
	for time.Since(stopped) < 3*time.Second {
		sent := time.Now()
		if err := ks.Send(&coordv1.SessionKeepAliveRequest{SessionId: open.SessionId}); err != nil {
			_, streamErr = ks.Recv()
			break
		}
		if _, err := ks.Recv(); err != nil {
			streamErr = err
			break
		}
		if sent.Sub(stopped) > 50*time.Millisecond {
			lateAcks++
		}
		time.Sleep(10 * time.Millisecond)
	}
	if lateAcks > 0 {
		t.Errorf("the stopping leader acknowledged %d keepalives sent more than 50ms after its stop began, want 0", lateAcks)
	}
	if code(streamErr) != codes.Unavailable {
		t.Errorf("keepalive stream on the stopping leader: got %v, want Unavailable", streamErr)
	}
	if r := reasonOf(streamErr); r != coordv1.ErrorReason_ERROR_REASON_STOPPING.String() {
		t.Errorf("keepalive stream on the stopping leader: got reason %q, want %s", r, coordv1.ErrorReason_ERROR_REASON_STOPPING)
	}

	// Leadership moves without waiting for an election timeout.
	var next *member
	for next == nil && time.Since(stopped) < 5*time.Second {
		if m := c.sessionLeader(); m != nil && m != l {
			next = m
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(stopped)
	if next == nil {
		t.Fatal("no new leader within 5s of the stop")
	}
	t.Logf("new leader's lessor took over %v after the stop began (election timeout 1s)", took.Round(time.Millisecond))
	if took > 500*time.Millisecond {
		t.Errorf("new leader after %v, want within 500ms (a hand-over, not an election timeout)", took)
	}
	if err := <-done; err != nil {
		t.Errorf("run of the stopped member: %v", err)
	}
	// The session lives on with the new leader.
	ks2, err := next.api.SessionKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks2.Send(&coordv1.SessionKeepAliveRequest{SessionId: open.SessionId}); err != nil {
		t.Fatal(err)
	}
	if r, err := ks2.Recv(); err != nil || r.Expired || r.TtlMs != 3000 {
		t.Errorf("keepalive on the new leader: got %v %v, want ttl 3000", r, err)
	}
	ks2.CloseSend()
}

func TestLeaderWithoutQuorumStopsRenewingAndFailsFast(t *testing.T) {
	const hb, et = 100 * time.Millisecond, time.Second
	c := startCluster(t, 3, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.ElectionTimeout, cfg.RequestTimeout = hb, et, 5*time.Second
	})
	ctx := t.Context()
	l := c.leader()
	open, err := l.api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: 10000, RequestId: "s"})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := l.api.SessionKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var followers []*member
	for _, m := range c.members {
		if m != l {
			followers = append(followers, m)
		}
	}
	c.stop(followers[0])
	cut := time.Now()
	c.stop(followers[1])
	// A write in flight when the quorum goes fails when raft's CheckQuorum steps the leader
	// down (within two election timeouts), not after the request timeout.
	inflight := make(chan error, 1)
	go func() {
		_, err := l.api.Put(ctx, &coordv1.PutRequest{Path: "/cut-off", RequestId: "in-flight"})
		inflight <- err
	}()
	// Keep the session alive on the old leader until it refuses.
	var lastAck time.Time
	var streamErr error
	for time.Since(cut) < 5*time.Second {
		sent := time.Now()
		if err := ks.Send(&coordv1.SessionKeepAliveRequest{SessionId: open.SessionId}); err != nil {
			_, streamErr = ks.Recv()
			break
		}
		if _, err := ks.Recv(); err != nil {
			streamErr = err
			break
		}
		lastAck = sent
		time.Sleep(20 * time.Millisecond)
	}
	renewedFor := lastAck.Sub(cut)
	if lastAck.IsZero() {
		t.Logf("the leader cut off from its quorum acknowledged no keepalive after the cut (election timeout %v)", et)
	} else {
		t.Logf("the leader cut off from its quorum renewed sessions for %v (election timeout %v)", renewedFor.Round(time.Millisecond), et)
	}
	// The majority can elect a successor an election timeout (less a tick) after it last
	// heard from this leader; the leader must have stopped renewing by then.
	if renewedFor >= et-hb {
		t.Errorf("keepalives acknowledged %v after the quorum was lost, want under %v", renewedFor, et-hb)
	}
	if code(streamErr) != codes.Unavailable {
		t.Errorf("keepalive stream after quorum loss: got %v, want Unavailable", streamErr)
	}
	select {
	case err := <-inflight:
		took := time.Since(cut)
		t.Logf("write in flight at the cut: %s after %v", reasonOf(err), took.Round(time.Millisecond))
		if r := reasonOf(err); code(err) != codes.Unavailable || (r != coordv1.ErrorReason_ERROR_REASON_NO_QUORUM.String() && r != coordv1.ErrorReason_ERROR_REASON_NO_LEADER.String()) {
			t.Errorf("write in flight at the cut: got %v, want UNAVAILABLE with NO_QUORUM or NO_LEADER", err)
		}
		if took > 2*et+500*time.Millisecond {
			t.Errorf("write in flight at the cut failed after %v, want within about two election timeouts", took)
		}
	case <-time.After(5 * time.Second):
		t.Error("write in flight at the cut still pending after 5s")
	}

	// Writes fail fast with UNAVAILABLE and say why, rather than waiting out the request
	// timeout; once the leader has stepped down they say there is no leader.
	sawNoLeader := false
	for i := 0; !sawNoLeader && time.Since(cut) < 8*time.Second; i++ {
		start := time.Now()
		_, err := l.api.Put(ctx, &coordv1.PutRequest{Path: "/cut-off", RequestId: fmt.Sprintf("w%d", i)})
		took := time.Since(start)
		if code(err) != codes.Unavailable {
			t.Fatalf("write without quorum: got %v, want Unavailable", err)
		}
		msg := status.Convert(err).Message()
		reason := reasonOf(err)
		switch reason {
		case coordv1.ErrorReason_ERROR_REASON_NO_LEADER.String():
			sawNoLeader = true
			if !strings.Contains(msg, "no leader") {
				t.Errorf("no-leader message %q does not say so", msg)
			}
		case coordv1.ErrorReason_ERROR_REASON_NO_QUORUM.String():
			if !strings.Contains(msg, "quorum") {
				t.Errorf("no-quorum message %q does not say so", msg)
			}
		default:
			t.Errorf("write without quorum: got reason %q (%s), want NO_QUORUM or NO_LEADER", reason, msg)
		}
		t.Logf("write %d without quorum at +%v: %s after %v", i, start.Sub(cut).Round(time.Millisecond), reason, took.Round(time.Millisecond))
		if took > et+500*time.Millisecond {
			t.Errorf("write without quorum took %v to fail, want within about an election timeout", took)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !sawNoLeader {
		t.Error("the member cut off from its quorum never said there is no leader")
	}
	ks.CloseSend()
}

// writer writes to one member in a loop until ctx ends, retrying each write (with its
// request id) until it succeeds, and records the longest time between two successes.
type writer struct {
	m        *member
	withID   bool
	mu       sync.Mutex
	last     time.Time
	gap      time.Duration
	failures map[string]int
}

func (w *writer) run(ctx context.Context, name string) {
	for i := 0; ctx.Err() == nil; i++ {
		req := &coordv1.PutRequest{Path: "/gap/" + name}
		if w.withID {
			req.RequestId = fmt.Sprintf("%s-%d", name, i)
		}
		for ctx.Err() == nil {
			start := time.Now()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := w.m.api.Put(cctx, req)
			cancel()
			w.mu.Lock()
			if err == nil {
				now := time.Now()
				if !w.last.IsZero() && now.Sub(w.last) > w.gap {
					w.gap = now.Sub(w.last)
				}
				w.last = now
				w.mu.Unlock()
				break
			}
			if ctx.Err() == nil {
				w.failures[fmt.Sprintf("%s %s after %.1fs", code(err), reasonOf(err), time.Since(start).Seconds())]++
			}
			w.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestWriteGapAfterLeaderCrash(t *testing.T) {
	// Production timing: heartbeat 100ms, election timeout 1s, request timeout 5s.
	c := startCluster(t, 3, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.ElectionTimeout, cfg.RequestTimeout = 100*time.Millisecond, time.Second, 5*time.Second
		cfg.noHandover = true
	})
	l := c.leader()
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var writers []*writer
	for _, m := range c.members {
		if m == l {
			continue
		}
		for i := range 2 {
			w := &writer{m: m, withID: true, failures: map[string]int{}}
			writers = append(writers, w)
			wg.Add(1)
			go func() { defer wg.Done(); w.run(ctx, fmt.Sprintf("%s-%d", m.name, i)) }()
		}
	}
	time.Sleep(time.Second)
	crash := time.Now()
	c.stop(l)
	time.Sleep(6 * time.Second)
	cancel()
	wg.Wait()
	var worst time.Duration
	for i, w := range writers {
		t.Logf("writer %d on %s: longest gap between writes %v; failures %v", i, w.m.name, w.gap.Round(time.Millisecond), w.failures)
		worst = max(worst, w.gap)
		if w.last.Before(crash) {
			t.Errorf("writer %d on %s: no write succeeded after the crash", i, w.m.name)
		}
	}
	t.Logf("write-availability gap after a leader crash: %v (heartbeat 100ms, election timeout 1s)", worst.Round(time.Millisecond))
	// An election takes one to two election timeouts; a write must not wait for the 5s
	// request timeout because its proposal was forwarded to the dead leader.
	if worst > 3*time.Second {
		t.Errorf("write-availability gap %v, want under 3s", worst)
	}
}

// TestBusyLeaderNeverSaysNoQuorum saturates the CPU with writes on the leader (the race
// detector makes every member slower still): a leader whose followers answer must never
// refuse a write for want of a quorum, however late its own work runs.
func TestBusyLeaderNeverSaysNoQuorum(t *testing.T) {
	c := startCluster(t, 3, nil) // heartbeat 20ms, election timeout 200ms
	l := c.leader()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var mu sync.Mutex
	var ok int
	failures := map[string]int{}
	var wg sync.WaitGroup
	value := make([]byte, 256)
	for w := range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				_, err := l.api.Put(ctx, &coordv1.PutRequest{Path: fmt.Sprintf("/busy/%d", w%50), Value: value, RequestId: fmt.Sprintf("w%d-%d", w, i)})
				mu.Lock()
				switch {
				case err == nil:
					ok++
				case ctx.Err() == nil && code(err) != codes.DeadlineExceeded:
					// (A call in flight at the end may fail with the deadline on the server a
					// moment before the client's context ends.)
					failures[reasonOf(err)]++
				}
				mu.Unlock()
			}
		}()
	}
	var worst time.Duration
	var worstTicks uint64
	term0 := l.srv.node.Status().Term
	for ctx.Err() == nil {
		if at, ticks, ok := l.srv.node.QuorumContact(); ok {
			worst, worstTicks = max(worst, time.Since(at)), max(worstTicks, ticks)
		}
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	t.Logf("raft terms %d -> %d; longest silence of a majority %v, %d ticks (election timeout 200ms, 10 ticks)", term0, l.srv.node.Status().Term, worst.Round(time.Millisecond), worstTicks)
	t.Logf("%d writes acknowledged in 3s by a saturated leader; failures by reason: %v", ok, failures)
	if n := failures[coordv1.ErrorReason_ERROR_REASON_NO_QUORUM.String()]; n > 0 {
		t.Errorf("%d writes refused with NO_QUORUM while both followers were up", n)
	}
	if ok < 100 {
		t.Errorf("only %d writes acknowledged, want the cluster to make progress", ok)
	}
}
