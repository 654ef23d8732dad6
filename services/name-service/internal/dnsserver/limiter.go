package dnsserver

import (
	"net/netip"
	"sync"
	"time"
)

// limiter is per-source response rate limiting (in the spirit of BIND's RRL, simplified):
// a token bucket per client network (IPv4 /24, IPv6 /56) refilled at rate per second up to
// burst. Over the limit, every slip-th response is let through as an empty truncated reply
// and the rest are dropped.
type limiter struct {
	rate  float64
	burst float64
	slip  int
	now   func() time.Time

	mu      sync.Mutex
	buckets map[netip.Prefix]*bucket
	// sweepAt is when idle buckets are next removed.
	sweepAt time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
	over   int
}

// maxBuckets bounds the memory of the limiter; past it, idle buckets are swept at once.
const maxBuckets = 1 << 16

func newLimiter(rate float64, burst, slip int, now func() time.Time) *limiter {
	return &limiter{rate: rate, burst: float64(burst), slip: slip, now: now, buckets: map[netip.Prefix]*bucket{}}
}

// allow reports whether a response to src may be sent (ok), or else whether it should be
// sent as an empty truncated reply (slip).
func (l *limiter) allow(src netip.Addr) (ok, slip bool) {
	bits := 24
	if src.Is6() {
		bits = 56
	}
	key, _ := src.Prefix(bits)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.After(l.sweepAt) || len(l.buckets) > maxBuckets {
		l.sweepLocked(now)
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		b.over = 0
		return true, false
	}
	b.over++
	return false, l.slip > 0 && b.over%l.slip == 0
}

// sweepLocked forgets buckets that have refilled completely.
func (l *limiter) sweepLocked(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) > full {
			delete(l.buckets, k)
		}
	}
	l.sweepAt = now.Add(10 * time.Second)
}
