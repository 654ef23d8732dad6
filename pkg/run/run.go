// Package run runs a group of long-lived parts, each a Run(ctx) error function, and stops
// them in order with a deadline. It is the owner of every goroutine a service starts at the
// top level: parts start in the order they were added and stop in the reverse order, so a
// part may depend on the parts added before it.
package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// ErrStopTimeout is wrapped by the error Run returns when a part did not return within the
// stop deadline after its context was cancelled.
var ErrStopTimeout = errors.New("run: part did not stop in time")

// DefaultStopTimeout is how long Run waits for each part to return after cancelling it.
const DefaultStopTimeout = 10 * time.Second

// Group is an ordered set of parts. The zero value is ready to use.
type Group struct {
	// StopTimeout bounds how long each part may take to return once cancelled; zero means
	// DefaultStopTimeout.
	StopTimeout time.Duration
	// OnStop, when set, is called as each part returns, with how long its stop took and its
	// error. berth dev uses it to say what stopped.
	OnStop func(name string, took time.Duration, err error)

	parts []part
}

type part struct {
	name string
	fn   func(ctx context.Context) error
}

// Add appends a part. It must be called before Run.
func (g *Group) Add(name string, fn func(ctx context.Context) error) {
	g.parts = append(g.parts, part{name: name, fn: fn})
}

// Len reports how many parts were added.
func (g *Group) Len() int { return len(g.parts) }

// Run starts every part, each with its own context derived from ctx, and waits. When ctx is
// cancelled or any part returns (with or without an error), every part still running is
// cancelled in reverse order of addition, one at a time, each waited for up to StopTimeout.
// Run returns the first error of a part that ended on its own (nil when parts ended only
// because of cancellation), joined with an ErrStopTimeout error for each part that did not
// stop in time. Parts that do not stop are abandoned: their goroutines leak, and the error
// names them.
func (g *Group) Run(ctx context.Context) error {
	if len(g.parts) == 0 {
		<-ctx.Done()
		return nil
	}
	timeout := g.StopTimeout
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	type result struct {
		idx int
		err error
	}
	results := make(chan result, len(g.parts))
	cancels := make([]context.CancelFunc, len(g.parts))
	done := make([]bool, len(g.parts))
	for i, p := range g.parts {
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		cancels[i] = cancel
		go func() {
			results <- result{idx: i, err: p.fn(pctx)}
		}()
	}

	var first error
	select {
	case <-ctx.Done():
	case r := <-results:
		done[r.idx] = true
		cancels[r.idx]()
		if r.err != nil && !errors.Is(r.err, context.Canceled) {
			first = fmt.Errorf("%s: %w", g.parts[r.idx].name, r.err)
		} else {
			first = fmt.Errorf("%s: %w", g.parts[r.idx].name, errStoppedEarly)
		}
		if g.OnStop != nil {
			g.OnStop(g.parts[r.idx].name, 0, r.err)
		}
	}

	var errs []error
	if first != nil {
		errs = append(errs, first)
	}
	for i := len(g.parts) - 1; i >= 0; i-- {
		if done[i] {
			continue
		}
		start := time.Now()
		cancels[i]()
		timer := time.NewTimer(timeout)
	wait:
		for {
			select {
			case r := <-results:
				done[r.idx] = true
				if g.OnStop != nil {
					g.OnStop(g.parts[r.idx].name, time.Since(start), r.err)
				}
				if r.err != nil && !errors.Is(r.err, context.Canceled) {
					errs = append(errs, fmt.Errorf("%s: %w", g.parts[r.idx].name, r.err))
				}
				if r.idx == i {
					break wait
				}
			case <-timer.C:
				errs = append(errs, fmt.Errorf("%s: %w after %s", g.parts[i].name, ErrStopTimeout, timeout))
				break wait
			}
		}
		timer.Stop()
	}
	if len(errs) == 1 && errors.Is(errs[0], errStoppedEarly) {
		return errs[0]
	}
	return errors.Join(errs...)
}

// errStoppedEarly is reported when a part returned nil before the group was stopped: a
// long-lived part that ends on its own is a bug or a lost dependency either way.
var errStoppedEarly = errors.New("stopped before the group was cancelled")

// SignalContext returns a context cancelled on SIGINT or SIGTERM, and its stop function.
// A second signal after the first is not caught, so it kills the process: the operator who
// presses Ctrl-C twice gets what they asked for.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}
