// Package session is the leader's clock for berth-coord sessions. Keepalives are not
// acknowledged from memory alone: every renewal is recorded in the replicated state as the
// session's absolute deadline (the leader's wall clock at the renewal plus the TTL), and the
// keepalive is answered only once that record is committed. The leader keeps every
// session's deadline in memory (on the monotonic clock) and proposes an expiry entry when
// it passes.
//
// A new leader therefore knows, for every session, the deadline of the last renewal any
// leader acknowledged, and gives the session exactly that (plus Options.ClockSkew, for the
// members' clocks disagreeing), never more than a TTL from now. A failover neither
// expires a healthy client (the client itself counts its TTL from before the renewal it was
// answered, so the store never expires it earlier than the client gives up) nor keeps a
// dead client's session alive: no number of failovers moves the deadline (etcd issue #9888).
//
// Clock assumption: the members' wall clocks agree within ClockSkew. A new leader whose
// clock runs ahead of its predecessor's by more expires sessions that much early; one that
// runs behind expires them that much late. Deadlines on one leader are measured on the
// monotonic clock and are not affected by steps of the wall clock.
package session

import (
	"errors"
	"slices"
	"sync"
	"time"
)

// ErrNotLeader is returned by Renew on a member that is not the leader.
var ErrNotLeader = errors.New("coord: not leader")

// ErrUnknown is returned by Renew for a session that does not exist (never opened,
// closed or expired), or whose deadline has passed (its expiry is being proposed).
var ErrUnknown = errors.New("coord: session not found")

// Clock tells the time; tests use a fake.
type Clock interface {
	Now() time.Time
}

// SystemClock is the system clock (wall and monotonic readings).
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// State is the replicated state of a session, as the state machine holds it.
type State struct {
	// ID is the session id.
	ID int64
	// TTL is its time to live.
	TTL time.Duration
	// Deadline is its replicated deadline on the wall clock: the open, or the last renewal
	// any leader acknowledged, plus the TTL. Zero when the state records none (a session
	// opened or checkpointed by a version of berth-coord that recorded remaining times).
	Deadline time.Time
}

// Checkpoint records a session's deadline in the replicated state.
type Checkpoint struct {
	// ID is the session id.
	ID int64
	// Deadline is the absolute deadline on the proposing leader's wall clock.
	Deadline time.Time
}

type lease struct {
	ttl time.Duration
	// deadline is when this leader expires the session (monotonic); zero while not leader.
	deadline time.Time
	// expiring is when an expiry was last proposed; zero if none is pending.
	expiring time.Time
	// renewing counts renewals whose record is being committed: the session is not expired
	// meanwhile.
	renewing int
	// record is set when the replicated state has no deadline for the session: the leader
	// proposes one (CheckpointsDue).
	record bool
}

// Options configure a Lessor.
type Options struct {
	// Clock defaults to SystemClock.
	Clock Clock
	// ClockSkew is how far the members' wall clocks may disagree (default 100ms): a new
	// leader gives a session its replicated deadline plus ClockSkew.
	ClockSkew time.Duration
	// RetryExpiry is how long an expiry proposal may stay unapplied before it is proposed
	// again (default 5 s).
	RetryExpiry time.Duration
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
}

// New returns a follower lessor with no sessions.
func New(opts Options) *Lessor {
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	if opts.ClockSkew <= 0 {
		opts.ClockSkew = 100 * time.Millisecond
	}
	if opts.RetryExpiry <= 0 {
		opts.RetryExpiry = 5 * time.Second
	}
	return &Lessor{opts: opts, leases: map[int64]*lease{}}
}

// grantLocked sets a leader's deadline for a session whose replicated deadline is d (zero:
// none) and reports whether a deadline must be recorded for it. Only the last renewal
// counts, whichever leader acknowledged it: the session gets d plus the clock skew, at most
// a TTL from now, and a session already past that is expired at once. A session without a
// recorded deadline gets a TTL from now, which is then recorded, so that another failover
// cannot grant it again.
func (l *Lessor) grantLocked(ls *lease, now, d time.Time) {
	if d.IsZero() {
		ls.deadline, ls.record = now.Add(ls.ttl), true
		return
	}
	// now.Add keeps now's monotonic reading; d.Sub(now) compares wall clocks.
	ls.deadline = now.Add(min(ls.ttl, d.Sub(now)+l.opts.ClockSkew))
}

// Promote makes the lessor the leader's for term, from the replicated session table (which
// must hold every entry committed before the term). It returns the checkpoints to propose
// at once: deadlines for the sessions that have none recorded.
func (l *Lessor) Promote(term uint64, sessions []State) []Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.opts.Clock.Now()
	l.leader, l.term = true, term
	l.leases = make(map[int64]*lease, len(sessions))
	for _, s := range sessions {
		ls := &lease{ttl: s.TTL}
		l.grantLocked(ls, now, s.Deadline)
		l.leases[s.ID] = ls
	}
	return l.dueLocked(now)
}

// dueLocked returns the deadlines to record, sorted by session, and clears their marks.
func (l *Lessor) dueLocked(now time.Time) []Checkpoint {
	var cps []Checkpoint
	for id, ls := range l.leases {
		if ls.record && ls.expiring.IsZero() {
			ls.record = false
			cps = append(cps, Checkpoint{ID: id, Deadline: wall(now.Add(ls.deadline.Sub(now)))})
		}
	}
	slices.SortFunc(cps, func(a, b Checkpoint) int { return cmp64(a.ID, b.ID) })
	return cps
}

// wall strips the monotonic reading: a deadline to record is a wall-clock time.
func wall(t time.Time) time.Time { return t.Round(0) }

func cmp64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Demote makes the lessor a follower's: deadlines are forgotten.
func (l *Lessor) Demote() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leader = false
	for _, ls := range l.leases {
		ls.deadline, ls.expiring, ls.record = time.Time{}, time.Time{}, false
	}
}

// IsLeader reports whether the lessor is the leader's, and for which term.
func (l *Lessor) IsLeader() (bool, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leader, l.term
}

// SessionOpened tracks a new session whose replicated deadline is deadline (zero: none).
func (l *Lessor) SessionOpened(id int64, ttl time.Duration, deadline time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := &lease{ttl: ttl}
	if l.leader {
		l.grantLocked(ls, l.opts.Clock.Now(), deadline)
	}
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
		ls := &lease{ttl: s.TTL}
		if l.leader {
			l.grantLocked(ls, now, s.Deadline)
		}
		next[s.ID] = ls
	}
	l.leases = next
}

// Renew starts the renewal of a session by a keepalive: it returns the term to record the
// renewal in and the deadline to record (now on the wall clock plus the TTL), and the TTL.
// The caller must record the deadline through the log and then call RenewDone, whatever
// the outcome; the keepalive may be acknowledged only once the record is committed. Until
// RenewDone the session is not expired. Renew fails with ErrNotLeader on a follower, and
// ErrUnknown for a session that does not exist or whose deadline has passed.
func (l *Lessor) Renew(id int64) (term uint64, deadline time.Time, ttl time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return 0, time.Time{}, 0, ErrNotLeader
	}
	now := l.opts.Clock.Now()
	ls := l.leases[id]
	if ls == nil || !ls.expiring.IsZero() || !now.Before(ls.deadline) {
		return 0, time.Time{}, 0, ErrUnknown
	}
	ls.renewing++
	return l.term, wall(now.Add(ls.ttl)), ls.ttl, nil
}

// RenewDone ends a renewal that Renew started. With recorded (the deadline is committed in
// the term Renew returned) the leader's deadline moves to it.
func (l *Lessor) RenewDone(id int64, deadline time.Time, recorded bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := l.leases[id]
	if ls == nil {
		return
	}
	if ls.renewing > 0 {
		ls.renewing--
	}
	if recorded && l.leader {
		now := l.opts.Clock.Now()
		if d := now.Add(deadline.Sub(now)); d.After(ls.deadline) {
			ls.deadline = d
		}
	}
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

// Expired returns the sessions whose deadline has passed, with no renewal in flight, and
// whose expiry is not already pending (or was proposed longer than RetryExpiry ago), with
// the term to propose in. It marks them pending. Nothing on a follower.
func (l *Lessor) Expired() (uint64, []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return 0, nil
	}
	now := l.opts.Clock.Now()
	var ids []int64
	for id, ls := range l.leases {
		if now.Before(ls.deadline) || ls.renewing > 0 {
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

// CheckpointsDue returns the deadlines to record for sessions that have none in the
// replicated state (sessions opened by an older version while this member leads), with the
// term to propose in. Each is returned once.
func (l *Lessor) CheckpointsDue() (uint64, []Checkpoint) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return 0, nil
	}
	return l.term, l.dueLocked(l.opts.Clock.Now())
}

// NextWake returns how long until the next deadline is due (at most maxWait).
func (l *Lessor) NextWake(maxWait time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leader {
		return maxWait
	}
	now := l.opts.Clock.Now()
	wait := maxWait
	for _, ls := range l.leases {
		switch {
		case ls.record:
			return 0
		case ls.expiring.IsZero():
			wait = min(wait, ls.deadline.Sub(now))
		default:
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
