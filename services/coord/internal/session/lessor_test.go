package session

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock                   { return &fakeClock{t: time.Unix(1000, 0)} }
func opts(c Clock, et time.Duration) Options { return Options{Clock: c, ElectionTimeout: et} }

func TestKeepAliveAndExpiry(t *testing.T) {
	c := newClock()
	l := New(opts(c, time.Second))
	if _, err := l.KeepAlive(1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("keepalive on follower: got %v, want ErrNotLeader", err)
	}
	l.Promote(1, nil)
	l.SessionOpened(1, 3000)
	c.advance(2 * time.Second)
	if ttl, err := l.KeepAlive(1); err != nil || ttl != 3*time.Second {
		t.Fatalf("keepalive: got %v %v, want 3s nil", ttl, err)
	}
	c.advance(2900 * time.Millisecond)
	if _, ids := l.Expired(); len(ids) != 0 {
		t.Fatalf("expired before deadline: %v", ids)
	}
	c.advance(200 * time.Millisecond)
	term, ids := l.Expired()
	if term != 1 || len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("got term %d ids %v, want 1 [1]", term, ids)
	}
	if _, ids := l.Expired(); len(ids) != 0 {
		t.Errorf("expiry proposed twice within RetryExpiry: %v", ids)
	}
	if _, err := l.KeepAlive(1); !errors.Is(err, ErrUnknown) {
		t.Errorf("keepalive after deadline: got %v, want ErrUnknown", err)
	}
	c.advance(6 * time.Second)
	if _, ids := l.Expired(); len(ids) != 1 {
		t.Errorf("unapplied expiry not re-proposed after RetryExpiry: %v", ids)
	}
	l.SessionRemoved(1)
	if _, err := l.KeepAlive(1); !errors.Is(err, ErrUnknown) {
		t.Errorf("keepalive of removed session: got %v, want ErrUnknown", err)
	}
}

// cluster simulates the replicated session table under a sequence of leaders.
type cluster struct {
	t      *testing.T
	clock  *fakeClock
	et     time.Duration
	state  map[int64]State
	leader *Lessor
	term   uint64
}

func (c *cluster) applyCheckpoints(cps []Checkpoint) {
	for _, cp := range cps {
		if s, ok := c.state[cp.ID]; ok {
			s.Remaining, s.Renewed = cp.Remaining, cp.Renewed
			c.state[cp.ID] = s
		}
	}
}

func (c *cluster) elect() {
	c.term++
	c.leader = New(opts(c.clock, c.et))
	var ss []State
	for _, s := range c.state {
		ss = append(ss, s)
	}
	c.applyCheckpoints(c.leader.Promote(c.term, ss))
}

// step runs the leader's duties; it returns the sessions expired.
func (c *cluster) step() []int64 {
	if c.leader == nil {
		return nil
	}
	_, cps := c.leader.CheckpointsDue()
	c.applyCheckpoints(cps)
	_, ids := c.leader.Expired()
	for _, id := range ids {
		delete(c.state, id)
		c.leader.SessionRemoved(id)
	}
	return ids
}

// run simulates a session of ttl from its open until it expires or limit passes. The client
// keeps it alive every ttl/3 until deadAt; the leader fails every failEvery (an election
// then takes et, during which there is no leader). It returns how long after the client
// died the session expired, or -1.
func run(t *testing.T, ttl, et, failEvery, deadAt, limit time.Duration) time.Duration {
	c := &cluster{t: t, clock: newClock(), et: et, state: map[int64]State{}}
	start := c.clock.Now()
	c.elect()
	c.state[1] = State{ID: 1, TTL: ttl, Remaining: ttl, Renewed: true}
	c.leader.SessionOpened(1, ttl.Milliseconds())
	const tick = 50 * time.Millisecond
	var lastKA, lastFail, electAt time.Duration
	for now := time.Duration(0); now < limit; now += tick {
		c.clock.t = start.Add(now)
		if c.leader == nil && now >= electAt {
			c.elect()
		}
		if c.leader != nil && failEvery > 0 && now-lastFail >= failEvery {
			c.leader.Demote()
			c.leader, lastFail, electAt = nil, now, now+et
		}
		if now < deadAt && now-lastKA >= ttl/3 && c.leader != nil {
			if _, err := c.leader.KeepAlive(1); err == nil {
				lastKA = now
			}
		}
		for _, id := range c.step() {
			if id == 1 {
				if now < deadAt {
					t.Fatalf("healthy session expired at %v (client alive until %v)", now, deadAt)
				}
				return now - deadAt
			}
		}
	}
	return -1
}

func TestRepeatedFailoversCannotKeepDeadSessionAlive(t *testing.T) {
	ttl, et := 10*time.Second, time.Second
	tests := []struct {
		name      string
		failEvery time.Duration
	}{
		{"no failover", 0},
		{"failover every 2s", 2 * time.Second},
		{"failover every 4s", 4 * time.Second},
		{"failover every 7s", 7 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The client dies at 30 s; with a full-TTL grant on every promotion (etcd #9888)
			// the session would never expire while failovers come faster than the TTL.
			got := run(t, ttl, et, tt.failEvery, 30*time.Second, 10*time.Minute)
			if got < 0 {
				t.Fatalf("dead session never expired under failovers every %v", tt.failEvery)
			}
			if bound := 2*ttl + 2*et; got > bound {
				t.Errorf("dead session expired %v after the client died, want at most %v", got, bound)
			}
			if got < ttl-ttl/3-et {
				t.Errorf("session expired %v after the client died, want at least TTL - TTL/3 (its last keepalive) - election (%v)", got, ttl-ttl/3-et)
			}
		})
	}
}

func TestFailoverDoesNotExpireHealthySession(t *testing.T) {
	for _, ttl := range []time.Duration{3 * time.Second, 10 * time.Second, 60 * time.Second} {
		for _, every := range []time.Duration{1500 * time.Millisecond, 5 * time.Second} {
			// run fails the test if the session expires while the client is alive.
			run(t, ttl, time.Second, every, 5*time.Minute, 5*time.Minute)
		}
	}
}

func TestPromoteGrants(t *testing.T) {
	c := newClock()
	l := New(opts(c, time.Second))
	cps := l.Promote(4, []State{
		{ID: 1, TTL: 10 * time.Second, Remaining: 2 * time.Second, Renewed: true},
		{ID: 2, TTL: 10 * time.Second, Remaining: 4 * time.Second, Renewed: false},
		{ID: 3, TTL: 10 * time.Second, Remaining: 500 * time.Millisecond, Renewed: false},
	})
	want := []Checkpoint{{ID: 1, Remaining: 10 * time.Second}, {ID: 2, Remaining: 3 * time.Second}, {ID: 3, Remaining: 0}}
	if len(cps) != len(want) {
		t.Fatalf("got %v, want %v", cps, want)
	}
	for i := range want {
		if cps[i] != want[i] {
			t.Errorf("checkpoint %d: got %+v, want %+v", i, cps[i], want[i])
		}
	}
	for id, want := range map[int64]time.Duration{1: 10 * time.Second, 2: 3 * time.Second, 3: 0} {
		if got, _ := l.Remaining(id); got != want {
			t.Errorf("session %d remaining: got %v, want %v", id, got, want)
		}
	}
}

func TestKeepAliveNeedsQuorumLease(t *testing.T) {
	c := newClock()
	l := New(Options{Clock: c, ElectionTimeout: time.Second, LeaseWindow: 800 * time.Millisecond})
	l.Promote(1, nil)
	l.SessionOpened(7, 3000)
	if _, err := l.KeepAlive(7); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("keepalive before any quorum confirmation: got %v, want ErrNoQuorum", err)
	}
	l.Confirm(c.t)
	tests := []struct {
		name    string
		advance time.Duration
		confirm bool // confirm a round trip that started before advancing
		want    error
	}{
		{"fresh lease", 100 * time.Millisecond, false, nil},
		{"still within the window", 699 * time.Millisecond, false, nil},
		{"window passed", 1 * time.Millisecond, false, ErrNoQuorum},
		{"renewed by a new round trip", 100 * time.Millisecond, true, nil},
	}
	for _, tt := range tests {
		start := c.t
		c.advance(tt.advance)
		if tt.confirm {
			l.Confirm(start)
		}
		_, err := l.KeepAlive(7)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
		if got, want := l.LeaseValid(), tt.want == nil; got != want {
			t.Errorf("%s: LeaseValid got %v, want %v", tt.name, got, want)
		}
	}
	// An older confirmation does not move the lease back; demotion forgets it.
	l.Confirm(c.t.Add(-time.Hour))
	if !l.LeaseValid() {
		t.Error("an older confirmation shortened the lease")
	}
	l.Demote()
	l.Promote(2, nil)
	if l.LeaseValid() {
		t.Error("lease survived a demotion")
	}
}
