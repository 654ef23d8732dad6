package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Result is the outcome of one closed-loop run: throughput and latency percentiles.
type Result struct {
	// Ops is the number of successful operations; Errors the failed ones.
	Ops, Errors int
	// Elapsed is the measured wall time.
	Elapsed time.Duration
	// P50 and P99 are latency percentiles of the successful operations.
	P50, P99 time.Duration
	// FirstErr is the first error seen, if any.
	FirstErr error
	// CPU is the CPU time the servers used during the measured time, when known.
	CPU time.Duration
}

// CPUPerOp returns the servers' CPU time per successful operation.
func (r Result) CPUPerOp() time.Duration {
	if r.Ops == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Ops)
}

// Rate returns operations per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// percentile returns the p-th percentile (0..100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// op is one operation of a load: worker is the worker's index, seq its sequence number.
type op func(ctx context.Context, worker, seq int) error

// closedLoop runs workers that each issue op back to back: first for warmup (not
// measured), then for dur. It returns when every worker has stopped. cpu, when not nil,
// reads the servers' CPU time at the start and the end of the measured time.
func closedLoop(ctx context.Context, workers int, warmup, dur time.Duration, cpu func() time.Duration, fn op) Result {
	type local struct {
		lat      []time.Duration
		errs     int
		firstErr error
	}
	locals := make([]local, workers)
	var wg sync.WaitGroup
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(dur)
	var cpuStart, cpuEnd time.Duration
	if cpu != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(measureFrom))
			cpuStart = cpu()
			time.Sleep(time.Until(end))
			cpuEnd = cpu()
		}()
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := &locals[w]
			l.lat = make([]time.Duration, 0, 1024)
			for seq := 0; ; seq++ {
				t0 := time.Now()
				if !t0.Before(end) || ctx.Err() != nil {
					return
				}
				// A call must not outlive the run by much: it gets the run's remaining time
				// plus a grace period.
				cctx, cancel := context.WithDeadline(ctx, end.Add(10*time.Second))
				err := fn(cctx, w, seq)
				cancel()
				t1 := time.Now()
				if t0.Before(measureFrom) || t1.After(end) {
					continue
				}
				if err != nil {
					l.errs++
					if l.firstErr == nil {
						l.firstErr = err
					}
					continue
				}
				l.lat = append(l.lat, t1.Sub(t0))
			}
		}()
	}
	wg.Wait()
	var all []time.Duration
	var r Result
	for _, l := range locals {
		all = append(all, l.lat...)
		r.Errors += l.errs
		if r.FirstErr == nil {
			r.FirstErr = l.firstErr
		}
	}
	slices.Sort(all)
	r.Ops = len(all)
	r.Elapsed = dur
	r.P50, r.P99 = percentile(all, 50), percentile(all, 99)
	r.CPU = cpuEnd - cpuStart
	return r
}

// fmtMicros prints a duration in µs.
func fmtMicros(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// fmtDur prints a latency in ms with a sensible precision.
func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 100:
		return fmt.Sprintf("%.0f ms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1f ms", ms)
	}
	return fmt.Sprintf("%.2f ms", ms)
}
