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

	parts    []*part
	finished chan struct{} // a part returned; buffered, coalescing
}

type part struct {
	name   string
	fn     func(ctx context.Context) error
	cancel context.CancelFunc
	done   chan struct{} // closed when fn returned
	err    error         // fn's result, valid once done is closed
}

// Add appends a part. Parts added before Run start with Run; parts added after a Start
// start with the next Start.
func (g *Group) Add(name string, fn func(ctx context.Context) error) {
	g.parts = append(g.parts, &part{name: name, fn: fn})
}

// Len reports how many parts were added.
func (g *Group) Len() int { return len(g.parts) }

// Start starts every part added since the last Start, each with its own context, and
// returns at once. It lets a caller start parts in stages (wait for a store to elect a
// leader before starting what uses it) and still stop everything in one Wait.
func (g *Group) Start() {
	if g.finished == nil {
		g.finished = make(chan struct{}, 1)
	}
	for _, p := range g.parts {
		if p.done != nil {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		p.cancel, p.done = cancel, make(chan struct{})
		go func() {
			p.err = p.fn(ctx)
			close(p.done)
			select {
			case g.finished <- struct{}{}:
			default:
			}
		}()
	}
}

// Run is Start followed by Wait.
func (g *Group) Run(ctx context.Context) error {
	g.Start()
	return g.Wait(ctx)
}

// Wait blocks until ctx is cancelled or any started part returns (with or without an
// error); then every part still running is cancelled in reverse order of addition, one at a
// time, each waited for up to StopTimeout. It returns the first error of a part that ended
// on its own (a part that returns nil before the group is stopped is an error too: a
// long-lived part that ends by itself is a bug or a lost dependency), joined with an
// ErrStopTimeout error for each part that did not stop in time. Parts that do not stop are
// abandoned: their goroutines leak, and the error names them.
func (g *Group) Wait(ctx context.Context) error {
	timeout := g.StopTimeout
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	g.Start() // parts added but never started are started so that they can be stopped alike
	var errs []error
	for early := false; !early; {
		for _, p := range g.parts {
			select {
			case <-p.done:
				early = true
				p.cancel()
				if p.err != nil && !errors.Is(p.err, context.Canceled) {
					errs = append(errs, fmt.Errorf("%s: %w", p.name, p.err))
				} else {
					errs = append(errs, fmt.Errorf("%s: %w", p.name, errStoppedEarly))
				}
				if g.OnStop != nil {
					g.OnStop(p.name, 0, p.err)
				}
			default:
				continue
			}
			break
		}
		if early {
			break
		}
		select {
		case <-ctx.Done():
			early = true
		case <-g.finished:
		}
	}
	for i := len(g.parts) - 1; i >= 0; i-- {
		p := g.parts[i]
		select {
		case <-p.done:
			continue // already reported, or ended while an earlier part was stopping
		default:
		}
		start := time.Now()
		p.cancel()
		timer := time.NewTimer(timeout)
		select {
		case <-p.done:
			if g.OnStop != nil {
				g.OnStop(p.name, time.Since(start), p.err)
			}
			if p.err != nil && !errors.Is(p.err, context.Canceled) {
				errs = append(errs, fmt.Errorf("%s: %w", p.name, p.err))
			}
		case <-timer.C:
			errs = append(errs, fmt.Errorf("%s: %w after %s", p.name, ErrStopTimeout, timeout))
		}
		timer.Stop()
	}
	if len(errs) > 0 && errors.Is(errs[0], errStoppedEarly) && ctx.Err() != nil {
		errs = errs[1:]
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
