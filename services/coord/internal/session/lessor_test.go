package session

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock                   { return &fakeClock{t: time.Unix(1000, 0)} }

const skew = 100 * time.Millisecond

func newLessor(c Clock) *Lessor { return New(Options{Clock: c, ClockSkew: skew}) }

// renew renews a session the way the server does, with the record committed or not.
func renew(t *testing.T, l *Lessor, id int64, committed bool) error {
	t.Helper()
	_, d, _, err := l.Renew(id)
	if err != nil {
		return err
	}
	l.RenewDone(id, d, committed)
	return nil
}

func TestRenewAndExpiry(t *testing.T) {
	c := newClock()
	l := newLessor(c)
	if _, _, _, err := l.Renew(1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("renew on follower: got %v, want ErrNotLeader", err)
	}
	l.Promote(1, nil)
	l.SessionOpened(1, 3*time.Second, c.t.Add(3*time.Second))
	c.advance(2 * time.Second)
	term, d, ttl, err := l.Renew(1)
	if err != nil || term != 1 || ttl != 3*time.Second || !d.Equal(c.t.Add(3*time.Second)) {
		t.Fatalf("renew: got term %d deadline %v ttl %v err %v, want 1 %v 3s nil", term, d, ttl, err, c.t.Add(3*time.Second))
	}
	// While the record is being committed the session is not expired, even past its
	// deadline.
	c.advance(1500 * time.Millisecond)
	if _, ids := l.Expired(); len(ids) != 0 {
		t.Fatalf("expired with a renewal in flight: %v", ids)
	}
	l.RenewDone(1, d, true)
	if got, _ := l.Remaining(1); got != 1500*time.Millisecond {
		t.Errorf("remaining after a recorded renewal: got %v, want 1.5s", got)
	}
	// A renewal whose record did not commit does not count.
	c.advance(time.Second)
	if err := renew(t, l, 1, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Remaining(1); got != 500*time.Millisecond {
		t.Errorf("remaining after an unrecorded renewal: got %v, want 500ms", got)
	}
	c.advance(499 * time.Millisecond)
	if _, ids := l.Expired(); len(ids) != 0 {
		t.Fatalf("expired before deadline: %v", ids)
	}
	c.advance(time.Millisecond)
	term, ids := l.Expired()
	if term != 1 || len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("got term %d ids %v, want 1 [1]", term, ids)
	}
	if _, ids := l.Expired(); len(ids) != 0 {
		t.Errorf("expiry proposed twice within RetryExpiry: %v", ids)
	}
	if _, _, _, err := l.Renew(1); !errors.Is(err, ErrUnknown) {
		t.Errorf("renew after deadline: got %v, want ErrUnknown", err)
	}
	c.advance(6 * time.Second)
	if _, ids := l.Expired(); len(ids) != 1 {
		t.Errorf("unapplied expiry not re-proposed after RetryExpiry: %v", ids)
	}
	l.SessionRemoved(1)
	if _, _, _, err := l.Renew(1); !errors.Is(err, ErrUnknown) {
		t.Errorf("renew of removed session: got %v, want ErrUnknown", err)
	}
}

func TestPromoteGrants(t *testing.T) {
	c := newClock()
	now := c.t
	const ttl = 10 * time.Second
	tests := []struct {
		name     string
		deadline time.Time
		want     time.Duration // remaining on the new leader
		record   bool
	}{
		{"renewed just before the failover", now.Add(9 * time.Second), 9*time.Second + skew, false},
		{"silent: what is left of its last renewal, no refill", now.Add(2 * time.Second), 2*time.Second + skew, false},
		{"deadline passed within the clock skew", now.Add(-50 * time.Millisecond), 50 * time.Millisecond, false},
		{"deadline passed during the election", now.Add(-time.Second), 0, false},
		{"deadline beyond a TTL (a clock behind)", now.Add(time.Hour), ttl, false},
		{"no deadline recorded (older version)", time.Time{}, ttl, true},
	}
	var states []State
	for i, tt := range tests {
		states = append(states, State{ID: int64(i + 1), TTL: ttl, Deadline: tt.deadline})
	}
	l := newLessor(c)
	cps := l.Promote(4, states)
	var want []Checkpoint
	for i, tt := range tests {
		id := int64(i + 1)
		if got, _ := l.Remaining(id); got != tt.want {
			t.Errorf("%s: remaining: got %v, want %v", tt.name, got, tt.want)
		}
		if tt.record {
			want = append(want, Checkpoint{ID: id, Deadline: now.Add(ttl)})
		}
	}
	if fmt.Sprint(cps) != fmt.Sprint(want) {
		t.Errorf("checkpoints at promotion: got %v, want %v", cps, want)
	}
	if _, again := l.CheckpointsDue(); len(again) != 0 {
		t.Errorf("checkpoints due after promotion: got %v, want none (returned once)", again)
	}
	if _, ids := l.Expired(); fmt.Sprint(ids) != "[4]" {
		t.Errorf("expired at promotion: got %v, want [4]", ids)
	}
}

// cluster simulates the replicated session table under a sequence of leaders. Renewal
// records take commit to commit; a leader that fails before then loses them.
type cluster struct {
	clock  *fakeClock
	state  map[int64]State
	leader *Lessor
	term   uint64
	commit time.Duration
	// inflight are renewals proposed by the leader, not committed yet.
	inflight []pendingRenewal
}

type pendingRenewal struct {
	id       int64
	deadline time.Time
	at       time.Time // commit time
	onCommit func()
}

func (c *cluster) record(cps []Checkpoint) {
	for _, cp := range cps {
		if s, ok := c.state[cp.ID]; ok && cp.Deadline.After(s.Deadline) {
			s.Deadline = cp.Deadline
			c.state[cp.ID] = s
		}
	}
}

func (c *cluster) elect() {
	c.term++
	c.leader = newLessor(c.clock)
	var ss []State
	for _, s := range c.state {
		ss = append(ss, s)
	}
	c.record(c.leader.Promote(c.term, ss))
}

func (c *cluster) fail() {
	c.leader.Demote()
	c.leader = nil
	c.inflight = nil // lost with the leader
}

// step commits what is due and runs the leader's duties; it returns the sessions expired.
func (c *cluster) step() []int64 {
	if c.leader == nil {
		return nil
	}
	keep := c.inflight[:0]
	for _, p := range c.inflight {
		if c.clock.t.Before(p.at) {
			keep = append(keep, p)
			continue
		}
		c.record([]Checkpoint{{ID: p.id, Deadline: p.deadline}})
		c.leader.RenewDone(p.id, p.deadline, true)
		p.onCommit()
	}
	c.inflight = keep
	_, cps := c.leader.CheckpointsDue()
	c.record(cps)
	_, ids := c.leader.Expired()
	for _, id := range ids {
		delete(c.state, id)
		c.leader.SessionRemoved(id)
	}
	return ids
}

// scenario is a session of ttl whose client keeps it alive every ttl/3 (retrying every
// 50 ms while no leader answers) until deadAt, under a leader that fails every failEvery
// (0: never), after which an election takes gap.
type scenario struct {
	ttl, failEvery, gap, commit, deadAt, limit time.Duration
}

// run simulates the scenario. It returns how long after the client's last acknowledged
// keepalive the session expired (-1: it never did), and whether the client itself saw its
// TTL run out without an acknowledgement while it was alive (it would have given up). It
// fails the test when the session expires while its client is alive and has not given up.
func (sc scenario) run(t *testing.T) (expiredAfter time.Duration, clientGaveUp bool) {
	c := &cluster{clock: newClock(), state: map[int64]State{}, commit: sc.commit}
	start := c.clock.Now()
	c.elect()
	c.state[1] = State{ID: 1, TTL: sc.ttl, Deadline: start.Add(sc.ttl)}
	c.leader.SessionOpened(1, sc.ttl, start.Add(sc.ttl))
	const tick = 10 * time.Millisecond
	var lastAck, nextKA, lastFail, electAt time.Duration
	pending := false
	for now := time.Duration(0); now < sc.limit; now += tick {
		c.clock.t = start.Add(now)
		if c.leader == nil && now >= electAt {
			c.elect()
		}
		if c.leader != nil && sc.failEvery > 0 && now-lastFail >= sc.failEvery {
			c.fail()
			pending = false
			lastFail, electAt = now, now+sc.gap
		}
		if now < sc.deadAt && now-lastAck >= sc.ttl {
			clientGaveUp = true
		}
		if now < sc.deadAt && now >= nextKA && !pending {
			nextKA = now + 50*time.Millisecond // retry unless answered
			if c.leader != nil {
				if _, d, _, err := c.leader.Renew(1); err == nil {
					pending = true
					sent := now
					c.inflight = append(c.inflight, pendingRenewal{id: 1, deadline: d, at: c.clock.t.Add(sc.commit), onCommit: func() {
						pending = false
						lastAck, nextKA = sent, sent+sc.ttl/3
					}})
				}
			}
		}
		for _, id := range c.step() {
			if id == 1 {
				if now < sc.deadAt && now-lastAck < sc.ttl {
					t.Fatalf("%+v: session expired at %v, before its client gave up (client alive until %v, last acknowledged keepalive at %v)", sc, now, sc.deadAt, lastAck)
				}
				return now - lastAck, clientGaveUp
			}
		}
	}
	return -1, clientGaveUp
}

func TestRepeatedFailoversCannotKeepDeadSessionAlive(t *testing.T) {
	const ttl = 2 * time.Second
	for _, gap := range []time.Duration{300 * time.Millisecond, 650 * time.Millisecond, 930 * time.Millisecond} {
		for _, every := range []time.Duration{0, 500 * time.Millisecond, time.Second, 1300 * time.Millisecond} {
			for _, deadAt := range []time.Duration{10 * time.Second, 10*time.Second + 333*time.Millisecond, 10*time.Second + 777*time.Millisecond} {
				sc := scenario{ttl: ttl, failEvery: every, gap: gap, commit: 20 * time.Millisecond, deadAt: deadAt, limit: time.Minute}
				if every > 0 && every <= gap {
					continue // never a leader
				}
				t.Run(fmt.Sprintf("gap %v failover every %v dead at %v", gap, every, deadAt), func(t *testing.T) {
					got, _ := sc.run(t)
					if got < 0 {
						t.Fatal("dead session never expired")
					}
					// Expiry needs a leader: at worst the deadline falls at the start of an
					// election.
					if bound := ttl + skew + gap + 20*time.Millisecond; got > bound {
						t.Errorf("dead session expired %v after its last acknowledged keepalive, want at most TTL + clock skew + election = %v", got, bound)
					}
					if got < ttl {
						t.Errorf("session expired %v after its last acknowledged keepalive, want at least its TTL %v", got, ttl)
					}
				})
			}
		}
	}
}

func TestFailoversDoNotExpireHealthySession(t *testing.T) {
	for _, sc := range []scenario{
		// The cadences of test/linearizability: a failover every TTL/2, and one every
		// 0.5–0.7 s with a short election (a renewal on a brand-new leader is often lost
		// with it).
		{ttl: 2 * time.Second, failEvery: time.Second, gap: 650 * time.Millisecond},
		{ttl: 2 * time.Second, failEvery: time.Second, gap: 930 * time.Millisecond},
		{ttl: 2 * time.Second, failEvery: 550 * time.Millisecond, gap: 400 * time.Millisecond},
		{ttl: 2 * time.Second, failEvery: 650 * time.Millisecond, gap: 300 * time.Millisecond},
		{ttl: 3 * time.Second, failEvery: 1500 * time.Millisecond, gap: time.Second},
		{ttl: 10 * time.Second, failEvery: 5 * time.Second, gap: 2 * time.Second},
		{ttl: time.Minute, failEvery: 5 * time.Second, gap: 2 * time.Second},
	} {
		sc.commit, sc.deadAt, sc.limit = 10*time.Millisecond, 5*time.Minute, 5*time.Minute
		t.Run(fmt.Sprintf("ttl %v failover every %v gap %v", sc.ttl, sc.failEvery, sc.gap), func(t *testing.T) {
			// run fails the test if the session expires before the client gives up.
			if got, gaveUp := sc.run(t); got >= 0 || gaveUp {
				t.Errorf("the client went a TTL without an answer (session expired %v after its last answer)", got)
			}
		})
	}
}
