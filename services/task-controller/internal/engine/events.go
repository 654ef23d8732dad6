package engine

import (
	"context"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/berthdev/berth/pkg/natsbus"
)

// publisher sends events to BERTH_EVENTS from queues, so that a runner never waits for
// JetStream. The events of one run go through one queue, in order; runs are spread over
// several queues. Events are notifications (coord is the truth): one that cannot be
// published after a few tries is logged and dropped. Every event id is deterministic, so
// the events a new leader publishes again are dropped by the stream's duplicate window.
type publisher struct {
	bus    *natsbus.Bus
	log    *slog.Logger
	m      *Metrics
	queues []*eventQueue
}

type eventQueue struct {
	mu    sync.Mutex
	queue []natsbus.Event
	wake  chan struct{}
}

func newPublisher(bus *natsbus.Bus, log *slog.Logger, m *Metrics, shards int) *publisher {
	p := &publisher{bus: bus, log: log, m: m}
	for range shards {
		p.queues = append(p.queues, &eventQueue{wake: make(chan struct{}, 1)})
	}
	return p
}

// enqueue adds the events of the run key to publish, in order; it never blocks.
func (p *publisher) enqueue(key string, evs ...natsbus.Event) {
	if len(evs) == 0 {
		return
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	q := p.queues[int(h.Sum32()%uint32(len(p.queues)))]
	q.mu.Lock()
	q.queue = append(q.queue, evs...)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) take() []natsbus.Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.queue
	q.queue = nil
	return out
}

// run publishes queued events until ctx ends, one goroutine per queue; then it tries what
// is left for a second.
func (p *publisher) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, q := range p.queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.drain(ctx, q)
		}()
	}
	wg.Wait()
}

func (p *publisher) drain(ctx context.Context, q *eventQueue) {
	flush := func(ctx context.Context) {
		for {
			evs := q.take()
			if len(evs) == 0 {
				return
			}
			for _, ev := range evs {
				if ctx.Err() != nil {
					return
				}
				p.publish(ctx, ev)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			flush(fctx)
			cancel()
			return
		case <-q.wake:
			flush(ctx)
		}
	}
}

func (p *publisher) publish(ctx context.Context, ev natsbus.Event) {
	var err error
	for try := range 3 {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = p.bus.PublishEvent(pctx, ev)
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(try+1) * 100 * time.Millisecond):
		}
	}
	if err != nil {
		p.m.Events.WithLabelValues("error").Inc()
		p.log.Warn("event not published", "subject", ev.Subject, "id", ev.ID, "err", err)
		return
	}
	p.m.Events.WithLabelValues("ok").Inc()
}
