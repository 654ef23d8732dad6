// Package health decides an instance's health from the results of its health checks
// (DESIGN §5): rise consecutive passes make it healthy, fall consecutive failures make it
// unhealthy, and an instance whose state changes more than a number of times within a
// window is flapping and held out of service until it has been stable for a whole window.
//
// A Tracker is a pure state machine: it is fed check results with the time they finished
// and says when the verdict changes. It does no I/O, starts nothing, and is not safe for
// concurrent use; its owner (one goroutine per instance) serializes the calls.
package health

import (
	"errors"
	"fmt"
	"time"
)

// ErrTimeout is wrapped by a check's error when the check was killed at its timeout; it
// counts as a failure.
var ErrTimeout = errors.New("health: check timed out")

// Verdict is what an instance's checks say about it.
type Verdict int

// Verdicts.
const (
	// Unknown: not enough checks yet (a new instance before rise passes or fall failures).
	Unknown Verdict = iota
	// Healthy: the last rise checks (or more) passed.
	Healthy
	// Unhealthy: the last fall checks (or more) failed.
	Unhealthy
	// Flapping: the state changed too often lately; held out until stable.
	Flapping
)

// String returns the verdict's name as events and metrics spell it.
func (v Verdict) String() string {
	switch v {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	case Flapping:
		return "flapping"
	}
	return "unknown"
}

// Defaults of Policy's flapping fields.
const (
	DefaultFlapChanges = 3
	DefaultFlapWindow  = 2 * time.Minute
)

// Policy configures a Tracker.
type Policy struct {
	// Rise is how many passes in a row make an instance healthy; at least 1.
	Rise int
	// Fall is how many failures in a row make it unhealthy; at least 1.
	Fall int
	// FlapChanges is how many changes between healthy and unhealthy an instance may make
	// within FlapWindow; one more makes it flapping. 0 means DefaultFlapChanges; negative
	// turns flapping detection off.
	FlapChanges int
	// FlapWindow is the window changes are counted in, and how long a flapping instance
	// must keep one state before it is trusted again. 0 means DefaultFlapWindow.
	FlapWindow time.Duration
}

// Validate checks the policy.
func (p Policy) Validate() error {
	switch {
	case p.Rise < 1:
		return fmt.Errorf("health rise %d: want at least 1", p.Rise)
	case p.Fall < 1:
		return fmt.Errorf("health fall %d: want at least 1", p.Fall)
	case p.FlapWindow < 0:
		return fmt.Errorf("flap window %s: want 0 (default) or more", p.FlapWindow)
	}
	return nil
}

// Tracker follows one instance's checks.
type Tracker struct {
	p Policy
	// state is the rise/fall state, without flapping.
	state Verdict
	// passes and fails count the current run of equal results.
	passes, fails int
	// changes are the times state changed between healthy and unhealthy, oldest first,
	// within the last window.
	changes []time.Time
	// flapping is set while the instance is held out.
	flapping bool
	// verdict is the last verdict reported.
	verdict Verdict
}

// NewTracker returns a tracker in the Unknown state. p must be valid.
func NewTracker(p Policy) *Tracker {
	if p.FlapChanges == 0 {
		p.FlapChanges = DefaultFlapChanges
	}
	if p.FlapWindow == 0 {
		p.FlapWindow = DefaultFlapWindow
	}
	return &Tracker{p: p}
}

// NewHealthyTracker returns a tracker that starts Healthy, for an instance whose rise
// passes were already seen (a package deploy waits for them before it registers).
func NewHealthyTracker(p Policy) *Tracker {
	t := NewTracker(p)
	t.state, t.verdict, t.passes = Healthy, Healthy, p.Rise
	return t
}

// Verdict returns the current verdict.
func (t *Tracker) Verdict() Verdict { return t.verdict }

// Observe records one check's result, finished at now, and returns the verdict and
// whether it changed.
func (t *Tracker) Observe(pass bool, now time.Time) (Verdict, bool) {
	if pass {
		t.passes++
		t.fails = 0
		if t.state != Healthy && t.passes >= t.p.Rise {
			t.transition(Healthy, now)
		}
	} else {
		t.fails++
		t.passes = 0
		if t.state != Unhealthy && t.fails >= t.p.Fall {
			t.transition(Unhealthy, now)
		}
	}
	// Forget changes older than the window.
	cut := now.Add(-t.p.FlapWindow)
	i := 0
	for i < len(t.changes) && !t.changes[i].After(cut) {
		i++
	}
	t.changes = t.changes[i:]
	if t.p.FlapChanges >= 0 {
		switch {
		case !t.flapping && len(t.changes) > t.p.FlapChanges:
			t.flapping = true
		case t.flapping && len(t.changes) == 0:
			// No change for a whole window: stable again.
			t.flapping = false
		}
	}
	v := t.state
	if t.flapping {
		v = Flapping
	}
	changed := v != t.verdict
	t.verdict = v
	return v, changed
}

func (t *Tracker) transition(to Verdict, now time.Time) {
	if t.state != Unknown {
		t.changes = append(t.changes, now)
	}
	t.state = to
}
