// Package session is the leader's clock for berth-coord sessions. Keepalives are not Raft
// entries: the leader alone keeps every session's expiry deadline in memory, renews it on
// each keepalive, and proposes an expiry entry when a deadline passes. So that a failover
// neither expires healthy clients nor keeps a dead client's session alive forever (etcd
// issue #9888), the leader also proposes periodic TTL checkpoints: each session's remaining
// time and whether it was kept alive since the previous checkpoint. A new leader gives a
// session that was being kept alive its full TTL, and any other session only what its last
// checkpoint left it, less the election timeout that passed at least before this leader
// could be elected; it then checkpoints at once. Each failover therefore consumes a silent
// session's remaining time instead of refilling it.
package session

import (
	"errors"
	"slices"
	"sync"
	"time"
)

// ErrNotLeader is returned by KeepAlive on a member that is not the leader.
var ErrNotLeader = errors.New("coord: not leader")

// ErrUnknown is returned by KeepAlive for a session that does not exist (never opened,
// closed or expired).
var ErrUnknown = errors.New("coord: session not found")

// ErrNoQuorum is returned by KeepAlive on a leader that has not confirmed, within its
// lease window, that a quorum still follows it (Confirm). A leader cut off from the
// majority must stop renewing sessions before the majority can elect a successor, or a
// client on its side would believe in a session that the successor expires.
var ErrNoQuorum = errors.New("coord: leader cannot confirm a quorum")

// Clock tells the time; tests use a fake.
type Clock interface {
	Now() time.Time
}

// SystemClock is the wall clock (monotonic readings).
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// State is the replicated state of a session, as the state machine holds it.
type State struct {
	// ID is the session id.
	ID int64
	// TTL is its time to live.
	TTL time.Duration
	// Remaining is its remaining time at the last checkpoint (TTL at open).
	Remaining time.Duration
	// Renewed tells whether the last checkpoint saw a keepalive (true at open).
	Renewed bool
}

// Checkpoint is one session's entry in a TTL checkpoint.
type Checkpoint struct {
	// ID is the session id.
	ID int64
	// Remaining is the time it has left.
	Remaining time.Duration
	// Renewed tells whether it was kept alive since its previous checkpoint.
	Renewed bool
}

type lease struct {
	ttl      time.Duration
	deadline time.Time // zero while not leader
	lastKA   time.Time // the last keepalive (or the open) this leader saw; zero if none
	lastCP   time.Time
	expiring time.Time // when an expiry was last proposed; zero if none pending
	// replRenewed is what the replicated state says of the session (its last checkpoint).
	// A keepalive to a session recorded as not renewed makes its checkpoint urgent: without
	// that a healthy client whose keepalives all reach short-lived leaders would look dead.
	replRenewed bool
	urgent      bool
}

// keptAlive reports whether the session had a keepalive within the last TTL/2; a client
// that keeps it alive every TTL/3 always has.
func (ls *lease) keptAlive(now time.Time) bool {
	return !ls.lastKA.IsZero() && now.Sub(ls.lastKA) < ls.ttl/2
}

// Options configure a Lessor.
type Options struct {
	// Clock defaults to SystemClock.
	Clock Clock
	// ElectionTimeout is the shortest time between a leader's last contact and the election
	// of its successor; a new leader charges it to every silent session.
	ElectionTimeout time.Duration
	// CheckpointFraction sets the checkpoint period of a session that is being kept alive to
	// TTL/CheckpointFraction (default 2).
	CheckpointFraction int
	// SilentCheckpoint is the checkpoint period of a session that is not being kept alive
	// (default ElectionTimeout/2, at least 100 ms). It is shorter than any leader's term of
	// office can be (an election takes at least ElectionTimeout), so every failover consumes
	// at least ElectionTimeout/2 of a dead client's remaining time.
	SilentCheckpoint time.Duration
	// RetryExpiry is how long an expiry proposal may stay unapplied before it is proposed
	// again (default 5 s).
	RetryExpiry time.Duration
	// LeaseWindow is how long after the start of a round trip that confirmed a quorum
	// (Confirm) the leader keeps acknowledging keepalives. It must be shorter than the
	// earliest time the majority can elect another leader after hearing from this one
	// (the election timeout less one tick). 0 turns the check off.
	LeaseWindow time.Duration
}

// Lessor tracks sessions. Every member has one and keeps the set of sessions in step with
// the state machine (SessionOpened, SessionRemoved, SessionsReset); only the leader's has
// deadlines.
type Lessor struct {
	opts Options

	// mu guards the fields below.
	mu     sync.Mutex
	leader bool
	term   uint64
	leases map[int64]*lease
	// confirmed is the start of the latest round trip that confirmed this leader's quorum.
	confirmed time.Time
}

// New returns a follower lessor with no sessions.
func New(opts Options) *Lessor {
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	if opts.CheckpointFraction <= 0 {
		opts.CheckpointFraction = 2
	}
	if opts.SilentCheckpoint <= 0 {
		opts.SilentCheckpoint = max(opts.ElectionTimeout/2, 100*time.Millisecond)
	}
	if opts.RetryExpiry <= 0 {
		opts.RetryExpiry = 5 * time.Second
	}
	return &Lessor{opts: opts, leases: map[int64]*lease{}}
}

// Promote makes the lessor the leader's for term, from the replicated session table. It
// returns the checkpoint to propose at once, which records the deadlines it granted as not
// renewed, so that another failover before any keepalive reaches this leader cannot grant
// the full TTL again.
func (l *Lessor) Promote(term uint64, sessions []State) []Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.opts.Clock.Now()
	l.leader, l.term = true, term
	l.leases = make(map[int64]*lease, len(sessions))
	cps := make([]Checkpoint, 0, len(sessions))
	for _, s := range sessions {
		grant := s.TTL
		if !s.Renewed {
			grant = max(0, min(s.Remaining, s.TTL)-l.opts.ElectionTimeout)
		}
		l.leases[s.ID] = &lease{ttl: s.TTL, deadline: now.Add(grant), lastCP: now}
		cps = append(cps, Checkpoint{ID: s.ID, Remaining: grant})
	}
	slices.SortFunc(cps, func(a, b Checkpoint) int { return cmp64(a.ID, b.ID) })
	return cps
}

func cmp64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Confirm records that a quorum acknowledged this leader in a round trip that started at
// at (a ReadIndex, whose heartbeats reach the followers after at). Later confirmations
// only move the lease forward.
func (l *Lessor) Confirm(at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if at.After(l.confirmed) {
		l.confirmed = at
	}
}

// LeaseValid reports whether the leader's quorum was confirmed within the lease window
// (always true when the window is 0, false on a follower).
func (l *Lessor) LeaseValid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leader && l.leaseValidLocked(l.opts.Clock.Now())
}

func (l *Lessor) leaseValidLocked(now time.Time) bool {
	return l.opts.LeaseWindow <= 0 || now.Before(l.confirmed.Add(l.opts.LeaseWindow))
}

// Demote makes the lessor a follower's: deadlines and the quorum lease are forgotten.
func (l *Lessor) Demote() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leader = false
	l.confirmed = time.Time{}
	for _, ls := range l.leases {
		ls.deadline, ls.expiring, ls.lastKA, ls.urgent = time.Time{}, time.Time{}, time.Time{}, false
	}
}

// IsLeader reports whether the lessor is the leader's, and for which term.
func (l *Lessor) IsLeader() (bool, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leader, l.term
}

// SessionOpened tracks a new session; on the leader its deadline starts now.
func (l *Lessor) SessionOpened(id, ttlMs int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := &lease{ttl: time.Duration(ttlMs) * time.Millisecond}
	if l.leader {
		now := l.opts.Clock.Now()
		ls.deadline, ls.lastCP, ls.lastKA = now.Add(ls.ttl), now, now
	}
	ls.replRenewed = true // the open entry records the session as renewed
	l.leases[id] = ls
}

// SessionRemoved forgets a closed or expired session.
func (l *Lessor) SessionRemoved(id int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.leases, id)
}

// SessionsReset replaces the tracked set after a snapshot was installed. A leader keeps the
// deadlines of sessions it already tracks and grants new ones as Promote does.
func (l *Lessor) SessionsReset(sessions []State) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.opts.Clock.Now()
	next := make(map[int64]*lease, len(sessions))
	for _, s := range sessions {
		if old := l.leases[s.ID]; old != nil {
			next[s.ID] = old
			continue
		}
		ls := &lease{ttl: s.TTL, replRenewed: s.Renewed}
		if l.leader {
			grant := s.TTL
			if !s.Renewed {
				grant = max(0, min(s.Remaining, s.TTL)-l.opts.ElectionTimeout)
			}
			ls.deadline, ls.lastCP, ls.replRenewed = now.Add(grant), now, false
		}
		next[s.ID] = ls
	}
	l.leases = next
}

// KeepAlive renews a session to its full TTL and returns the TTL. It fails with
// ErrNotLeader on a follower, ErrNoQuorum on a leader whose quorum lease has run out, and
// ErrUnknown for a session that does not exist or whose deadline has passed (its expiry is
// being proposed).
func (l *Lessor) KeepAlive(id int64) (time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return 0, ErrNotLeader
	}
	now := l.opts.Clock.Now()
	if !l.leaseValidLocked(now) {
		return 0, ErrNoQuorum
	}
	ls := l.leases[id]
	if ls == nil {
		return 0, ErrUnknown
	}
	if !ls.expiring.IsZero() || !now.Before(ls.deadline) {
		return 0, ErrUnknown
	}
	ls.deadline, ls.lastKA = now.Add(ls.ttl), now
	if !ls.replRenewed {
		ls.urgent = true
	}
	return ls.ttl, nil
}

// Remaining returns the time a session has left on the leader, false when unknown.
func (l *Lessor) Remaining(id int64) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := l.leases[id]
	if ls == nil || !l.leader {
		return 0, false
	}
	return max(0, ls.deadline.Sub(l.opts.Clock.Now())), true
}

// Expired returns the sessions whose deadline has passed and whose expiry is not already
// pending (or was proposed longer than RetryExpiry ago), with the term to propose in. It
// marks them pending. Nothing on a follower.
func (l *Lessor) Expired() (uint64, []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return 0, nil
	}
	now := l.opts.Clock.Now()
	var ids []int64
	for id, ls := range l.leases {
		if now.Before(ls.deadline) {
			continue
		}
		if !ls.expiring.IsZero() && now.Sub(ls.expiring) < l.opts.RetryExpiry {
			continue
		}
		ls.expiring = now
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return l.term, ids
}

// CheckpointsDue returns the checkpoints that are due, with the term to propose in: every
// TTL/CheckpointFraction for a session kept alive within the last TTL/2, every
// SilentCheckpoint for any other, and at once for a session kept alive while the
// replicated state records it as not renewed.
func (l *Lessor) CheckpointsDue() (uint64, []Checkpoint) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return 0, nil
	}
	now := l.opts.Clock.Now()
	var cps []Checkpoint
	for id, ls := range l.leases {
		if !ls.expiring.IsZero() {
			continue
		}
		renewed := ls.keptAlive(now)
		if !ls.urgent && now.Sub(ls.lastCP) < l.period(ls, renewed) {
			continue
		}
		cps = append(cps, Checkpoint{ID: id, Remaining: max(0, ls.deadline.Sub(now)), Renewed: renewed})
		ls.lastCP, ls.replRenewed, ls.urgent = now, renewed, false
	}
	slices.SortFunc(cps, func(a, b Checkpoint) int { return cmp64(a.ID, b.ID) })
	return l.term, cps
}

func (l *Lessor) period(ls *lease, renewed bool) time.Duration {
	if renewed {
		return ls.ttl / time.Duration(l.opts.CheckpointFraction)
	}
	return l.opts.SilentCheckpoint
}

// NextWake returns how long until the next deadline or checkpoint is due (at most max).
func (l *Lessor) NextWake(maxWait time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return maxWait
	}
	now := l.opts.Clock.Now()
	wait := maxWait
	for _, ls := range l.leases {
		if ls.urgent {
			return 0
		}
		if ls.expiring.IsZero() {
			wait = min(wait, ls.deadline.Sub(now))
			wait = min(wait, ls.lastCP.Add(l.period(ls, ls.keptAlive(now))).Sub(now))
		} else {
			wait = min(wait, ls.expiring.Add(l.opts.RetryExpiry).Sub(now))
		}
	}
	return max(wait, 0)
}

// Len returns the number of sessions tracked.
func (l *Lessor) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leases)
}
