// Package engine is what the controller leader runs: one runner per active deployment or
// task, each a single goroutine that owns its run's state, plans the batches, dispatches
// steps to agents, records every transition in coord with transactions fenced by the
// leadership token, and publishes the transitions as events.
//
// An Engine lives for one leadership. It subscribes to step results and progress first,
// then reads every active run from coord (level-triggered: the records in coord are the
// whole truth) and carries each on; steps that were out at agents are sent again with the
// same (task, step, attempt), which agents answer from their journal. A step attempt
// number only grows after the failure of the previous attempt was recorded in coord, so no
// two leaders ever send different attempts of a step.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

// Config tunes an Engine.
type Config struct {
	// Source is the ce-source of the events (berth-controller/<replica>).
	Source string
	// RequestTimeout bounds one step request (the agent's immediate reply).
	RequestTimeout time.Duration
	// RetryBackoff is the first pause before an infrastructure failure is retried; it
	// doubles with every retry up to RetryBackoffMax.
	RetryBackoff time.Duration
	// RetryBackoffMax caps the pause between retries.
	RetryBackoffMax time.Duration
	// PollInterval is how often a step that is out at an agent is asked about again (the
	// agent answers from its journal), in case its result was lost.
	PollInterval time.Duration
	// ResultGrace is how long past a step's timeout the controller waits for its result
	// before the target is timed_out.
	ResultGrace time.Duration
	// Tick is how often runners check their timers.
	Tick time.Duration
}

// WithDefaults fills the zero fields.
func (c Config) WithDefaults() Config {
	if c.Source == "" {
		c.Source = "berth-controller"
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = time.Second
	}
	if c.RetryBackoffMax < c.RetryBackoff {
		c.RetryBackoffMax = max(30*time.Second, c.RetryBackoff)
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 5 * time.Second
	}
	if c.ResultGrace <= 0 {
		c.ResultGrace = 30 * time.Second
	}
	if c.Tick <= 0 {
		c.Tick = 100 * time.Millisecond
	}
	return c
}

// ErrLeadershipLost is returned by Run when the leadership ended (the fencing node is gone
// or a fenced write was refused).
var ErrLeadershipLost = errors.New("controller: leadership lost")

// Engine runs the active deployments and tasks for one leadership.
type Engine struct {
	cfg   Config
	bus   *natsbus.Bus
	coord *coordclient.Client
	lead  *coordclient.Leadership
	token uint64
	log   *slog.Logger
	m     *Metrics
	pub   *publisher
	won   time.Time

	firstDispatch sync.Once

	// lost is closed (once) when a runner finds the leadership gone.
	lost     chan struct{}
	lostOnce sync.Once

	mu   sync.Mutex
	runs map[string]*runner
	// retry holds the runs whose loading failed or whose runner stopped on an error; the
	// main loop loads them again every second.
	retry map[string]bool
	wg    sync.WaitGroup
	// runCtx is the context runners are started with; set by Run.
	runCtx context.Context
}

// New returns an Engine for a won leadership; won is when it was won.
func New(cfg Config, bus *natsbus.Bus, coord *coordclient.Client, lead *coordclient.Leadership, won time.Time, log *slog.Logger, m *Metrics) *Engine {
	cfg = cfg.WithDefaults()
	return &Engine{cfg: cfg, bus: bus, coord: coord, lead: lead, token: lead.Token(), log: log, m: m,
		pub: newPublisher(bus, log, m, 16), won: won, lost: make(chan struct{}), runs: map[string]*runner{}, retry: map[string]bool{}}
}

// markLost records that the leadership is gone.
func (e *Engine) markLost(err error) {
	e.lostOnce.Do(func() {
		e.log.Warn("leadership lost", "err", err)
		close(e.lost)
	})
}

// Run carries on every active run until ctx ends or the leadership is lost; it returns
// ErrLeadershipLost in the second case. Every goroutine it starts has ended when it
// returns.
func (e *Engine) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.m.IsLeader.Set(1)
	defer e.m.IsLeader.Set(0)
	e.m.LeaderChanges.Inc()

	var bg sync.WaitGroup
	defer bg.Wait()
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	bg.Add(1)
	go func() {
		defer bg.Done()
		e.pub.run(pubCtx)
	}()
	defer stopPub()

	e.mu.Lock()
	e.runCtx = ctx
	e.mu.Unlock()
	defer func() {
		cancel()
		e.wg.Wait()
	}()

	// Results and progress first, so that nothing an agent publishes from now on is missed;
	// what was published before is answered again when the steps are re-sent.
	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	if _, err := natsbus.SubscribeTyped(subCtx, e.bus, subjects.AgentResults, "", func(_ context.Context, res *agentv1.StepResult) error {
		e.deliver(res.GetTaskId(), msgResult{res: res})
		return nil
	}); err != nil {
		return fmt.Errorf("subscribe to step results: %w", err)
	}
	if _, err := natsbus.SubscribeTyped(subCtx, e.bus, subjects.AgentProgress, "", func(_ context.Context, p *agentv1.StepProgress) error {
		e.deliver(p.GetTaskId(), msgProgress{p: p})
		return nil
	}); err != nil {
		return fmt.Errorf("subscribe to step progress: %w", err)
	}
	// Rescheduled allocations get replacement runs (reschedule.go).
	bg.Add(1)
	go func() {
		defer bg.Done()
		e.watchReschedules(subCtx)
	}()

	list, err := e.coord.List(ctx, model.ActivePrefix)
	if err != nil {
		return fmt.Errorf("list active runs: %w", err)
	}
	for _, n := range list.Nodes {
		if n.Version == 0 {
			continue
		}
		e.startRun(ctx, n)
	}
	e.m.TakeoverSeconds.Observe(time.Since(e.won).Seconds())
	e.log.Info("leading", "token", e.token, "active_runs", len(list.Nodes), "took", time.Since(e.won).Round(time.Millisecond))

	events := e.coord.Watch(ctx, model.ActivePrefix, list.Revision+1, coordclient.Recursive(), coordclient.RelistOnCompaction())
	retryTick := time.NewTicker(time.Second)
	defer retryTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-retryTick.C:
			e.retryRuns(ctx)
		case <-e.lead.Lost():
			return ErrLeadershipLost
		case <-e.lost:
			return ErrLeadershipLost
		case r, ok := <-events:
			if !ok {
				return ctx.Err()
			}
			if r.Err != nil {
				return fmt.Errorf("watch active runs: %w", r.Err)
			}
			if r.Reset {
				for _, n := range r.Nodes {
					e.startOrControl(ctx, n)
				}
			}
			for _, ev := range r.Events {
				if ev.Type == coordclient.EventPut {
					e.startOrControl(ctx, ev.Node)
				}
			}
		}
	}
}

// startOrControl hands a changed control node to its runner, or starts the run.
func (e *Engine) startOrControl(ctx context.Context, n coordclient.Node) {
	id := strings.TrimPrefix(n.Path, model.ActivePrefix+"/")
	e.mu.Lock()
	r := e.runs[id]
	e.mu.Unlock()
	if r == nil {
		e.startRun(ctx, n)
		return
	}
	ctl := &controllerv1.Control{}
	if err := model.Unmarshal(n.Value, ctl); err != nil {
		e.log.Warn("bad control node", "path", n.Path, "err", err)
		return
	}
	r.mail.push(msgControl{ctl: ctl})
}

// startRun loads a run from coord and starts its runner.
func (e *Engine) startRun(ctx context.Context, n coordclient.Node) {
	id := strings.TrimPrefix(n.Path, model.ActivePrefix+"/")
	if err := model.CheckID(id); err != nil {
		e.log.Warn("ignoring a control node that names no run", "path", n.Path)
		return
	}
	ctl := &controllerv1.Control{}
	if err := model.Unmarshal(n.Value, ctl); err != nil {
		e.log.Warn("bad control node", "path", n.Path, "err", err)
		return
	}
	r, err := loadRunner(ctx, e, id, ctl)
	if err != nil {
		if errors.Is(err, errGone) {
			e.log.Warn("control node without its run; removing it", "id", id)
			if _, err := e.lead.Delete(ctx, n.Path); err != nil && !errors.Is(err, coordclient.ErrNotFound) {
				e.log.Warn("remove control node", "id", id, "err", err)
			}
			return
		}
		e.log.Error("load run; trying again in a second", "id", id, "err", err)
		e.mu.Lock()
		e.retry[id] = true
		e.mu.Unlock()
		return
	}
	e.mu.Lock()
	if e.runs[id] != nil {
		e.mu.Unlock()
		return
	}
	e.runs[id] = r
	e.m.ActiveRuns.Set(float64(len(e.runs)))
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		err := r.run(ctx)
		e.mu.Lock()
		delete(e.runs, id)
		e.m.ActiveRuns.Set(float64(len(e.runs)))
		e.mu.Unlock()
		switch {
		case errors.Is(err, coordclient.ErrFenced), errors.Is(err, ErrLeadershipLost):
			e.markLost(err)
		case err != nil && ctx.Err() == nil:
			e.log.Error("run stopped; loading it again in a second", "id", id, "err", err)
			e.mu.Lock()
			e.retry[id] = true
			e.mu.Unlock()
		}
		if r.service != "" {
			e.wakeService(r.service)
		}
	}()
}

// retryRuns loads again the runs that failed to load or stopped on an error.
func (e *Engine) retryRuns(ctx context.Context) {
	e.mu.Lock()
	ids := make([]string, 0, len(e.retry))
	for id := range e.retry {
		ids = append(ids, id)
	}
	clear(e.retry)
	e.mu.Unlock()
	for _, id := range ids {
		n, err := e.coord.Get(ctx, model.ActivePath(id))
		switch {
		case errors.Is(err, coordclient.ErrNotFound):
		case err != nil:
			e.mu.Lock()
			e.retry[id] = true
			e.mu.Unlock()
		default:
			e.startRun(ctx, *n)
		}
	}
}

// deliver hands a message about a task to its runner, when this leader runs it.
func (e *Engine) deliver(taskID string, msg any) {
	e.mu.Lock()
	r := e.runs[taskID]
	e.mu.Unlock()
	if r != nil {
		r.mail.push(msg)
	}
}

// wakeService tells the queued deployments of a service that its lock may be free.
func (e *Engine) wakeService(service string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.runs {
		if r.service == service && r.queued() {
			r.mail.push(msgWake{})
		}
	}
}

// firstInQueue reports whether id is the oldest queued deployment of service.
func (e *Engine) firstInQueue(service, id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for oid, r := range e.runs {
		if oid != id && r.service == service && r.queued() && oid < id {
			return false
		}
	}
	return true
}

// noteDispatch records the first step sent in this leadership.
func (e *Engine) noteDispatch() {
	e.firstDispatch.Do(func() {
		d := time.Since(e.won)
		e.m.FirstDispatch.Observe(d.Seconds())
		e.log.Info("first step sent since winning", "after", d.Round(time.Millisecond))
	})
}
