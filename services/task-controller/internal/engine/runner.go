package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/services/task-controller/internal/model"
	"github.com/berthdev/berth/services/task-controller/internal/strategy"
)

// Step kinds.
const (
	KindDeploy   = "deploy"
	KindHealth   = "health"
	KindRollback = "rollback"
	KindRedeploy = "redeploy"
	KindRun      = "run"
)

// PackageDeployPlugin is the agent's built-in plugin deployments use.
const PackageDeployPlugin = "package-deploy"

// outputLines is how many output lines a target keeps.
const outputLines = 20

// errGone is a control node whose run record does not exist.
var errGone = errors.New("run record not found")

// Messages to a runner.
type (
	msgResult   struct{ res *agentv1.StepResult }
	msgProgress struct{ p *agentv1.StepProgress }
	msgControl  struct{ ctl *controllerv1.Control }
	msgWake     struct{}
	msgReply    struct {
		i       int
		stepID  string
		attempt uint32
		reply   *agentv1.StepReply
		err     error
	}
)

// mailbox is an unbounded queue of messages to a runner: senders never block.
type mailbox struct {
	mu   sync.Mutex
	msgs []any
	wake chan struct{}
}

func newMailbox() *mailbox { return &mailbox{wake: make(chan struct{}, 1)} }

func (m *mailbox) push(msg any) {
	m.mu.Lock()
	m.msgs = append(m.msgs, msg)
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *mailbox) drain() []any {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.msgs
	m.msgs = nil
	return out
}

// vol is what a runner knows of a target only in memory, for this leadership.
type vol struct {
	// sending is set while a step request is out.
	sending bool
	// lastSent is when the step was last sent in this leadership; zero: not yet.
	lastSent time.Time
	// newAttempt is set while a new attempt number is not yet recorded in coord; the
	// attempt is not sent before it is.
	newAttempt bool
	// lastOutput is when progress output last made the target dirty.
	lastOutput time.Time
	// instanceWait is set while the health gate waits for the target's instance to be
	// healthy in the name service (gate.go), until instanceDeadline; okMessage is the
	// message the target keeps when it is. A new leader does not know of the wait: it runs
	// the health step again, which leads back to it.
	instanceWait     bool
	instanceDeadline time.Time
	okMessage        string
}

// runner runs one deployment or task. Its state is owned by its goroutine (run).
type runner struct {
	e       *Engine
	id      string
	kind    string
	service string

	dep   *controllerv1.Deployment
	task  *controllerv1.Task
	st    *controllerv1.RunStatus
	strat *controllerv1.Strategy

	hosts   []string
	targets []*controllerv1.Target
	idx     map[string]int
	vols    []vol
	ctl     *controllerv1.Control
	mail    *mailbox
	// ctr is what a container deployment keeps in memory (container.go).
	ctr containerRun

	isQueued atomic.Bool
	// lockRev is the create revision of the service lock this deployment holds, 0 when it
	// holds none.
	lockRev      int64
	releaseLock  bool
	releases     map[string]*controllerv1.Release
	nextLockTry  time.Time
	budget       int
	stepTimeout  time.Duration
	progressTime time.Duration

	// dirtyHeader and dirty mark what changed since the last write; hard changes (terminal
	// states, attempts, state transitions of the run) are written at the end of the loop
	// iteration that made them, soft ones (a target running, its output, counts) at most
	// every softFlush, or with the next hard change.
	dirtyHeader bool
	hardHeader  bool
	dirty       map[int]bool
	hard        int
	lastFlush   time.Time
	again       bool
	extraOps    []coordclient.Op
	events      []natsbus.Event
	finishing   bool
	finished    bool

	// gate is the health gate's view of coord (gate.go).
	gate *gateView

	ctx context.Context
	wg  sync.WaitGroup
}

func (r *runner) queued() bool { return r.isQueued.Load() }

// loadRunner reads a run and its per-host records from coord.
func loadRunner(ctx context.Context, e *Engine, id string, ctl *controllerv1.Control) (*runner, error) {
	r := &runner{e: e, id: id, kind: model.KindOf(id), ctl: ctl, mail: newMailbox(), dirty: map[int]bool{}, idx: map[string]int{}}
	head := model.DeploymentPath(id)
	if r.kind == model.KindTask {
		head = model.TaskPath(id)
	}
	res, err := e.coord.List(ctx, head, coordclient.Recursive())
	if err != nil {
		return nil, fmt.Errorf("read run %s: %w", id, err)
	}
	if len(res.Nodes) == 0 || res.Nodes[0].Path != head || res.Nodes[0].Version == 0 {
		return nil, errGone
	}
	per := map[string]*controllerv1.Target{}
	for _, n := range res.Nodes[1:] {
		if n.Version == 0 {
			continue
		}
		host := n.Path[strings.LastIndexByte(n.Path, '/')+1:]
		t := &controllerv1.Target{}
		if r.kind == model.KindTask {
			s := &controllerv1.Step{}
			if err := model.Unmarshal(n.Value, s); err != nil {
				return nil, fmt.Errorf("read %s: %w", n.Path, err)
			}
			t = targetFromStep(s)
		} else if err := model.Unmarshal(n.Value, t); err != nil {
			return nil, fmt.Errorf("read %s: %w", n.Path, err)
		}
		per[host] = t
	}
	if r.kind == model.KindTask {
		r.task = &controllerv1.Task{}
		if err := model.Unmarshal(res.Nodes[0].Value, r.task); err != nil {
			return nil, fmt.Errorf("read %s: %w", head, err)
		}
		if r.task.Status == nil {
			r.task.Status = &controllerv1.RunStatus{State: model.StatePending}
		}
		r.st, r.strat, r.hosts, r.service = r.task.Status, r.task.GetStrategy(), r.task.GetHosts(), ""
	} else {
		r.dep = &controllerv1.Deployment{}
		if err := model.Unmarshal(res.Nodes[0].Value, r.dep); err != nil {
			return nil, fmt.Errorf("read %s: %w", head, err)
		}
		if r.dep.Status == nil {
			r.dep.Status = &controllerv1.RunStatus{State: model.StatePending}
		}
		r.st, r.strat, r.hosts, r.service = r.dep.Status, r.dep.GetStrategy(), model.TargetKeys(r.dep), r.dep.GetService()
		if r.st.GetState() != model.StateQueued && !model.TerminalRun(r.st.GetState()) {
			lock, err := e.coord.Get(ctx, model.LockPath(r.service))
			switch {
			case errors.Is(err, coordclient.ErrNotFound):
			case err != nil:
				return nil, fmt.Errorf("read lock of %s: %w", r.service, err)
			default:
				l := &controllerv1.ServiceLock{}
				if model.Unmarshal(lock.Value, l) == nil && l.GetDeploymentId() == id {
					r.lockRev = lock.CreateRev
				}
			}
		}
	}
	if r.strat == nil {
		r.strat = strategy.DefaultPolicy().GetStrategy()
	}
	r.stepTimeout = r.strat.GetStepTimeout().AsDuration()
	if r.stepTimeout <= 0 {
		r.stepTimeout = strategy.DefaultStepTimeout
	}
	r.progressTime = r.strat.GetProgressDeadline().AsDuration()
	r.budget = strategy.Budget(r.strat.GetMaxFailures(), r.rollN())
	r.targets = make([]*controllerv1.Target, len(r.hosts))
	r.vols = make([]vol, len(r.hosts))
	for i, h := range r.hosts {
		r.idx[h] = i
		if t := per[h]; t != nil {
			r.targets[i] = t
		} else {
			r.targets[i] = r.pendingTarget(h)
		}
	}
	r.isQueued.Store(r.st.GetState() == model.StateQueued)
	return r, nil
}

// run is the runner's loop: handle what arrived, decide, record, publish; until the run
// has ended (and every step out at an agent has reported) or ctx ends. It returns an
// error wrapping coordclient.ErrFenced when the leadership was lost.
func (r *runner) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		r.wg.Wait()
	}()
	r.ctx = ctx
	r.lastFlush = time.Now()
	tick := time.NewTicker(r.e.cfg.Tick)
	defer tick.Stop()
	r.republish()
	for {
		if err := r.reconcile(ctx, time.Now()); err != nil {
			return err
		}
		if err := r.persist(ctx); err != nil {
			return err
		}
		r.e.pub.enqueue(r.id, r.events...)
		r.events = nil
		if r.finished {
			return nil
		}
		if r.again {
			r.again = false
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.mail.wake:
			for _, msg := range r.mail.drain() {
				r.handle(msg)
			}
		case <-tick.C:
		}
	}
}

func (r *runner) handle(msg any) {
	switch m := msg.(type) {
	case msgReply:
		r.onReply(m)
	case msgResult:
		r.onResult(m.res)
	case msgProgress:
		r.onProgress(m.p)
	case msgControl:
		r.ctl = m.ctl
	case msgWake:
		r.nextLockTry = time.Time{}
	case msgOp:
		r.onOp(m)
	}
}

// now is the time as a timestamp.
func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// softFlush is the longest a soft change waits to be written.
const softFlush = 250 * time.Millisecond

// touchHeader marks a hard change of the run's header.
func (r *runner) touchHeader() { r.dirtyHeader, r.hardHeader = true, true }

// touch marks a soft change of a target.
func (r *runner) touch(i int) {
	if _, ok := r.dirty[i]; !ok {
		r.dirty[i] = false
	}
}

// touchHard marks a hard change of a target.
func (r *runner) touchHard(i int) {
	if !r.dirty[i] {
		r.dirty[i] = true
		r.hard++
	}
}

// reconcile decides what to do now from the run's state. It is level-triggered: it reads
// only the state (which is in coord or about to be) and the clock.
func (r *runner) reconcile(ctx context.Context, now time.Time) error {
	if r.finished || r.finishing {
		return nil
	}
	if model.TerminalRun(r.st.GetState()) {
		r.sweep(now)
		r.recordReleases(now)
		if r.inFlight() == 0 && r.st.GetReleasesRecorded() {
			r.finish()
		}
		return nil
	}
	if r.ctl.GetAbort() {
		r.terminate(now, model.StateAborted, "aborted on request", "")
		return nil
	}
	switch r.st.GetState() {
	case model.StateQueued:
		if err := r.tryLock(ctx, now); err != nil {
			return err
		}
		if r.st.GetState() == model.StateQueued {
			return nil
		}
	case "", model.StatePending:
	}
	if r.st.GetState() == model.StatePending || r.st.GetState() == "" {
		if err := r.start(ctx, now); err != nil {
			return err
		}
	}
	if r.kind == model.KindDeployment && r.ctl.GetRollback() &&
		(r.st.GetState() == model.StateRunning || r.st.GetState() == model.StatePaused) {
		r.beginRollback(now, "rollback requested")
	}
	switch r.st.GetState() {
	case model.StateRunning, model.StatePaused:
		r.rollout(now)
	case model.StateRollingBack:
		r.rollingBack(now)
	}
	r.sweep(now)
	r.updateCounts()
	return nil
}

// tryLock takes the service lock for a queued deployment that is first in its service's
// queue.
func (r *runner) tryLock(ctx context.Context, now time.Time) error {
	if now.Before(r.nextLockTry) || !r.e.firstInQueue(r.service, r.id) {
		return nil
	}
	r.nextLockTry = now.Add(2 * time.Second)
	lockPath := model.LockPath(r.service)
	r.st.State = model.StatePending
	r.st.Message = ""
	head, err := r.headerBytes()
	if err != nil {
		return err
	}
	res, err := r.write(ctx, r.e.lead.Txn().If(coordclient.Missing(lockPath)).
		Then(coordclient.OpPut(lockPath, model.MustMarshal(&controllerv1.ServiceLock{DeploymentId: r.id})),
			coordclient.OpPut(model.DeploymentPath(r.id), head)))
	if err != nil {
		r.st.State = model.StateQueued
		return err
	}
	if !res.Succeeded {
		r.st.State = model.StateQueued
		return nil
	}
	r.lockRev = res.Results[0].Put.CreateRev
	r.isQueued.Store(false)
	return nil
}

// Stages of a deployment's pipeline, in order. Package mode has only StageSteps; container
// mode runs StageImage (an image for the version, from the builder) and StagePlacement
// (allocations from the scheduler, which become the targets) before it (container.go).
// The registration of the new instances is part of each target (the health gate), and
// the retirement of old allocations part of each batch.
const (
	StageImage        = "image"
	StagePlacement    = "placement"
	StageSteps        = "steps"
	StageRegistration = "registration"
)

// supportedStages are the stages this controller runs in package mode.
var supportedStages = map[string]bool{StageSteps: true}

// start plans the run: batches, releases, deadlines.
func (r *runner) start(ctx context.Context, now time.Time) error {
	if r.container() {
		r.startContainer(now)
		return nil
	}
	if r.kind == model.KindDeployment {
		for _, st := range r.dep.GetStages() {
			if !supportedStages[st] {
				r.terminate(now, model.StateFailed, fmt.Sprintf("stage %q of the pipeline is not supported by this controller (package mode runs %q only)", st, StageSteps), "")
				return nil
			}
		}
	}
	batches, err := strategy.Plan(r.strat.GetBatches(), len(r.hosts))
	if err != nil {
		r.terminate(now, model.StateFailed, fmt.Sprintf("cannot plan the batches: %v", err), "")
		return nil
	}
	r.st.Batches = batches
	r.st.CurrentBatch = 0
	prev := r.st.GetState()
	r.st.State = model.StateRunning
	r.st.StartedAt = ts(now)
	r.setProgressDeadline(now)
	r.touchHeader()
	if r.kind == model.KindDeployment {
		if err := r.loadReleases(ctx); err != nil {
			return err
		}
	}
	r.runEvent("started", prev, -1, "started", r.startedID()...)
	return nil
}

func (r *runner) startedID() []string { return []string{"started"} }

// loadReleases reads what the controller last deployed of the service on each host.
func (r *runner) loadReleases(ctx context.Context) error {
	r.releases = map[string]*controllerv1.Release{}
	res, err := r.e.coord.List(ctx, model.ReleasesPath(r.service))
	if err != nil {
		return fmt.Errorf("read releases of %s: %w", r.service, err)
	}
	for _, n := range res.Nodes {
		if n.Version == 0 {
			continue
		}
		rel := &controllerv1.Release{}
		if err := model.Unmarshal(n.Value, rel); err != nil {
			continue
		}
		r.releases[n.Path[strings.LastIndexByte(n.Path, '/')+1:]] = rel
	}
	return nil
}

func (r *runner) setProgressDeadline(now time.Time) {
	if r.progressTime > 0 {
		r.st.ProgressDeadlineAt = ts(now.Add(r.progressTime))
	} else {
		r.st.ProgressDeadlineAt = nil
	}
	r.touchHeader()
}

// counts of the targets.
type counts struct {
	pending, inflight, succeeded, failed, appFailed, timedOut, unreachable, skipped int
}

func (r *runner) count(from, to int) counts {
	var c counts
	for _, t := range r.targets[from:to] {
		switch t.GetState() {
		case model.TargetPending:
			c.pending++
		case model.TargetDispatched, model.TargetRunning:
			c.inflight++
		case model.TargetSucceeded:
			c.succeeded++
		case model.TargetFailed:
			c.failed++
			if t.GetFailureClass() == model.ClassApplication {
				c.appFailed++
			}
		case model.TargetTimedOut:
			c.timedOut++
			c.appFailed++
		case model.TargetUnreachable:
			c.unreachable++
		case model.TargetSkipped:
			c.skipped++
		}
	}
	return c
}

func (r *runner) updateCounts() {
	c := r.count(0, r.rollN())
	n := &controllerv1.TargetCounts{Total: int32(r.rollN()), Pending: int32(c.pending), Running: int32(c.inflight),
		Succeeded: int32(c.succeeded), Failed: int32(c.failed + c.timedOut), Unreachable: int32(c.unreachable), Skipped: int32(c.skipped)}
	if !proto.Equal(n, r.st.GetCounts()) {
		r.st.Counts = n
		r.dirtyHeader = true
	}
}

// inFlight counts the targets with a step out at an agent (any kind).
func (r *runner) inFlight() int {
	n := 0
	for _, t := range r.targets {
		if model.InFlightTarget(t.GetState()) || t.GetRollback() == model.TargetRunning {
			n++
		}
	}
	return n
}

// rollout moves a running or paused deployment or task on.
func (r *runner) rollout(now time.Time) {
	if r.container() && r.st.GetStage() != StageSteps {
		r.preSteps(now)
		return
	}
	all := r.count(0, r.rollN())
	failures := all.failed + all.timedOut + all.unreachable
	if failures > r.budget {
		msg := fmt.Sprintf("%d of %d targets failed, more than max_failures %s allows (%d)", failures, r.rollN(), r.strat.GetMaxFailures(), r.budget)
		r.stop(now, msg, all.appFailed > 0)
		return
	}
	if r.st.GetState() == model.StateRunning {
		if d := r.st.GetProgressDeadlineAt(); d != nil && now.After(d.AsTime()) {
			r.stop(now, fmt.Sprintf("progress deadline of %s exceeded: no target succeeded in that time", r.progressTime), true)
			return
		}
		if r.ctl.GetPauses() > r.st.GetPausesSeen() {
			r.st.PausesSeen = r.ctl.GetPauses()
			r.enterPause(now, model.PauseManual, 0)
		}
	}
	if r.st.GetState() == model.StatePaused {
		if r.ctl.GetPauses() > r.st.GetPausesSeen() {
			r.st.PausesSeen = r.ctl.GetPauses()
			r.st.PauseReason, r.st.PauseUntil = model.PauseManual, nil
			r.touchHeader()
		}
		until := r.st.GetPauseUntil()
		if r.ctl.GetResumes() > r.st.GetResumesSeen() || (until != nil && !now.Before(until.AsTime())) {
			r.resume(now)
		} else {
			return
		}
	}
	for r.st.GetState() == model.StateRunning {
		b := r.st.GetBatches()[r.st.GetCurrentBatch()]
		if b.GetStartedAt() == nil {
			b.StartedAt = ts(now)
			r.touchHeader()
			r.runEvent("batch_started", r.st.GetState(), b.GetIndex(), fmt.Sprintf("batch %d of %d started: targets %d to %d", b.GetIndex()+1, len(r.st.GetBatches()), b.GetStart()+1, b.GetEnd()),
				"batch_started", fmt.Sprint(b.GetIndex()))
		}
		window := int(r.strat.GetMaxParallel())
		if window <= 0 {
			window = int(b.GetEnd() - b.GetStart())
		}
		c := r.count(int(b.GetStart()), int(b.GetEnd()))
		for i := int(b.GetStart()); i < int(b.GetEnd()) && c.inflight < window; i++ {
			if r.targets[i].GetState() == model.TargetPending {
				r.startTarget(now, i, b.GetIndex())
				c.inflight++
				c.pending--
			}
		}
		if c.pending > 0 || c.inflight > 0 {
			return
		}
		if r.container() && !r.retireBatch(now, b) {
			return
		}
		b.CompletedAt = ts(now)
		r.touchHeader()
		r.runEvent("batch_completed", r.st.GetState(), b.GetIndex(), fmt.Sprintf("batch %d of %d completed", b.GetIndex()+1, len(r.st.GetBatches())),
			"batch_completed", fmt.Sprint(b.GetIndex()))
		if int(r.st.GetCurrentBatch()) == len(r.st.GetBatches())-1 {
			all := r.count(0, r.rollN())
			msg := fmt.Sprintf("%d of %d targets succeeded", all.succeeded, r.rollN())
			if n := all.failed + all.timedOut + all.unreachable; n > 0 {
				msg += fmt.Sprintf("; %d did not (within max_failures %s)", n, r.strat.GetMaxFailures())
			}
			if r.container() {
				msg += r.retiredSummary()
			}
			r.terminate(now, model.StateSucceeded, msg, "")
			return
		}
		r.st.CurrentBatch++
		r.touchHeader()
		d, manual, _ := strategy.ParsePause(r.strat.GetPause())
		switch {
		case manual:
			r.enterPause(now, model.PauseBatch, 0)
		case d > 0:
			r.enterPause(now, model.PauseBatch, d)
		}
	}
}

// stop ends a rollout that cannot go on: it rolls back when auto_rollback is set and
// rollback is warranted, else it fails.
func (r *runner) stop(now time.Time, msg string, rollback bool) {
	if r.kind == model.KindDeployment && rollback && r.strat.GetAutoRollback() {
		r.beginRollback(now, msg)
		return
	}
	class := ""
	if c := r.count(0, r.rollN()); c.appFailed > 0 {
		class = model.ClassApplication
	} else if c.unreachable > 0 {
		class = model.ClassInfrastructure
	}
	r.terminate(now, model.StateFailed, msg, class)
}

func (r *runner) enterPause(now time.Time, reason string, d time.Duration) {
	prev := r.st.GetState()
	r.st.State = model.StatePaused
	r.st.PauseReason = reason
	r.st.PauseUntil = nil
	if d > 0 {
		r.st.PauseUntil = ts(now.Add(d))
	}
	r.st.ResumesSeen = r.ctl.GetResumes()
	r.st.ProgressDeadlineAt = nil
	r.st.PauseCount++
	r.touchHeader()
	msg := "paused on request"
	if reason == model.PauseBatch {
		msg = fmt.Sprintf("paused after batch %d", r.st.GetCurrentBatch())
		if d > 0 {
			msg += fmt.Sprintf(" for %s", d)
		} else {
			msg += " until resumed"
		}
	}
	r.st.Message = msg
	r.runEvent("paused", prev, r.st.GetCurrentBatch(), msg, "paused", fmt.Sprint(r.st.GetPauseCount()))
}

func (r *runner) resume(now time.Time) {
	prev := r.st.GetState()
	r.st.State = model.StateRunning
	r.st.ResumesSeen = r.ctl.GetResumes()
	r.st.PauseReason, r.st.PauseUntil, r.st.Message = "", nil, ""
	r.setProgressDeadline(now)
	r.runEvent("resumed", prev, r.st.GetCurrentBatch(), "resumed", "resumed", fmt.Sprint(r.st.GetPauseCount()))
}

// beginRollback stops the rollout and starts rolling every touched host back.
func (r *runner) beginRollback(now time.Time, why string) {
	r.st.State = model.StateRollingBack
	r.st.Message = "rolling back: " + why
	r.st.PauseReason, r.st.PauseUntil, r.st.ProgressDeadlineAt = "", nil, nil
	r.touchHeader()
	for i, t := range r.targets {
		if t.GetState() == model.TargetPending {
			r.endTarget(now, i, model.TargetSkipped, "", "not deployed: the deployment is rolling back")
		}
	}
}

// rollingBack dispatches rollback steps once no deploy step is out, and ends the
// deployment when they are done.
func (r *runner) rollingBack(now time.Time) {
	for _, t := range r.targets {
		if model.InFlightTarget(t.GetState()) {
			return
		}
	}
	window := int(r.strat.GetMaxParallel())
	if window <= 0 {
		window = len(r.targets)
	}
	running, pending, failed := 0, 0, 0
	for i, t := range r.targets {
		if t.GetRollback() == "" && t.GetTouched() && !t.GetRetire() {
			switch {
			case !r.container() && t.GetState() != model.TargetSucceeded && t.GetPreviousVersion() == "":
				t.Rollback = model.TargetSkipped
				t.RollbackMessage = "nothing to roll back: the agent removed the failed release and there is no previous version"
			case t.GetState() == model.TargetUnreachable:
				t.Rollback = model.TargetSkipped
				t.RollbackMessage = "nothing to roll back: the host was not reached"
			default:
				t.Rollback = model.TargetPending
			}
			r.touchHard(i)
		}
		switch t.GetRollback() {
		case model.TargetRunning:
			running++
		case model.TargetPending:
			pending++
		case model.TargetFailed:
			failed++
		}
	}
	for i, t := range r.targets {
		if running >= window {
			break
		}
		if t.GetRollback() == model.TargetPending {
			t.Rollback = model.TargetRunning
			r.startStep(now, i, KindRollback)
			running++
			pending--
		}
	}
	if running > 0 || pending > 0 {
		return
	}
	if failed > 0 {
		r.terminate(now, model.StateFailed, fmt.Sprintf("%s; the rollback failed on %d hosts", strings.TrimPrefix(r.st.GetMessage(), "rolling back: "), failed), model.ClassApplication)
		return
	}
	r.terminate(now, model.StateRolledBack, strings.TrimPrefix(r.st.GetMessage(), "rolling back: ")+"; every touched host is back on its previous version", model.ClassApplication)
}

// terminate puts the run in a terminal state; steps still out at agents are waited for
// (the run drains) before the run's control node is removed.
func (r *runner) terminate(now time.Time, state, msg, class string) {
	prev := r.st.GetState()
	r.st.State = state
	r.st.Message = msg
	r.st.FailureClass = class
	r.st.EndedAt = ts(now)
	r.st.PauseReason, r.st.PauseUntil, r.st.ProgressDeadlineAt = "", nil, nil
	r.touchHeader()
	for i, t := range r.targets {
		if t.GetState() == model.TargetPending {
			r.endTarget(now, i, model.TargetSkipped, "", "not dispatched: the run ended "+state)
		}
		if t.GetRollback() == model.TargetPending {
			t.Rollback = model.TargetSkipped
			r.touchHard(i)
		}
	}
	r.st.Draining = r.inFlight() > 0
	if r.lockRev != 0 {
		r.releaseLock = true
	}
	r.again = true
	r.isQueued.Store(false)
	typ := map[string]string{model.StateSucceeded: "completed", model.StateFailed: "failed", model.StateAborted: "aborted", model.StateRolledBack: "rolled_back"}[state]
	r.updateCounts()
	r.runEvent(typ, prev, r.st.GetCurrentBatch(), msg, typ)
	r.e.m.Runs.WithLabelValues(r.kind, state).Inc()
	r.e.log.Info("run ended", "id", r.id, "kind", r.kind, "state", state, "message", msg)
}

// finish removes the run's control node with the next write; the runner then exits.
func (r *runner) finish() {
	r.finishing = true
	if r.st.GetDraining() {
		r.st.Draining = false
		r.touchHeader()
	}
}

// startTarget dispatches a pending target's first step.
func (r *runner) startTarget(now time.Time, i int, batch int32) {
	if r.container() {
		r.startContainerTarget(now, i, batch)
		return
	}
	t := r.targets[i]
	t.Batch = batch
	t.StartedAt = ts(now)
	if r.kind == model.KindDeployment {
		if rel := r.releases[t.GetHost()]; rel != nil {
			if rel.GetVersion() != r.dep.GetVersion() {
				t.PreviousVersion, t.PreviousArtifact = rel.GetVersion(), rel.GetArtifact()
			} else {
				t.PreviousVersion, t.PreviousArtifact = rel.GetPreviousVersion(), rel.GetPreviousArtifact()
			}
		}
		r.setTargetState(now, i, model.TargetDispatched)
		r.startStep(now, i, KindDeploy)
		return
	}
	r.setTargetState(now, i, model.TargetDispatched)
	r.startStep(now, i, KindRun)
}

// startStep makes kind the target's current step, attempt 1; the sweep sends it.
func (r *runner) startStep(now time.Time, i int, kind string) {
	t := r.targets[i]
	t.Step = &controllerv1.StepRecord{Id: kind + "-" + model.TargetKey(t), Kind: kind, Attempt: 1}
	t.Attempts++
	r.vols[i] = vol{}
	r.touch(i)
	_ = now
}

func (r *runner) setTargetState(now time.Time, i int, state string) {
	t := r.targets[i]
	if t.GetState() == state {
		return
	}
	prev := t.GetState()
	t.State = state
	r.touch(i)
	r.targetEvent(now, i, prev)
}

// endTarget puts a target in a terminal state.
func (r *runner) endTarget(now time.Time, i int, state, class, msg string) {
	t := r.targets[i]
	t.FailureClass = class
	t.Message = msg
	t.EndedAt = ts(now)
	if s := t.GetStep(); s != nil {
		s.NextRetryAt = nil
	}
	t.HealthCheckAt = nil
	r.setTargetState(now, i, state)
	r.e.m.Targets.WithLabelValues(state).Inc()
	r.touchHard(i)
	if state == model.TargetSucceeded && r.st.GetState() == model.StateRunning {
		r.setProgressDeadline(now)
	}
}

// recordReleases writes, once a deployment has ended and its terminal state is recorded,
// what each host runs now (Release records, which the service's next deployment reads
// for its rollback targets); the service lock is released after them. A new leader that
// finds them unwritten writes them again from the same target records.
func (r *runner) recordReleases(now time.Time) {
	if r.container() {
		r.cleanup(now)
		return
	}
	if r.kind != model.KindDeployment || r.st.GetReleasesRecorded() || r.hardHeader || r.inFlight() > 0 {
		if r.kind != model.KindDeployment && !r.st.GetReleasesRecorded() {
			r.st.ReleasesRecorded = true
		}
		return
	}
	for _, t := range r.targets {
		path := model.ReleasePath(r.service, t.GetHost())
		switch {
		case t.GetRollback() == model.TargetSucceeded && t.GetPreviousVersion() != "":
			r.extraOps = append(r.extraOps, coordclient.OpPut(path, model.MustMarshal(&controllerv1.Release{
				Version: t.GetPreviousVersion(), Artifact: t.GetPreviousArtifact(), DeploymentId: r.id, At: ts(now)})))
		case t.GetRollback() == model.TargetSucceeded:
			r.extraOps = append(r.extraOps, coordclient.OpDelete(path))
		case t.GetState() == model.TargetSucceeded && t.GetRollback() == "":
			r.extraOps = append(r.extraOps, coordclient.OpPut(path, model.MustMarshal(&controllerv1.Release{
				Version: r.dep.GetVersion(), Artifact: r.dep.GetArtifact(), PreviousVersion: t.GetPreviousVersion(),
				PreviousArtifact: t.GetPreviousArtifact(), DeploymentId: r.id, At: ts(now)})))
		}
	}
	r.st.ReleasesRecorded = true
	r.touchHeader()
}

// sweep sends the steps that are due (first sends, re-sends after a failover, polls of
// steps whose result may have been lost, retries), starts due health checks, and times
// out steps that outlived their timeout.
func (r *runner) sweep(now time.Time) {
	for i, t := range r.targets {
		if !model.InFlightTarget(t.GetState()) && t.GetRollback() != model.TargetRunning {
			continue
		}
		s := t.GetStep()
		v := &r.vols[i]
		if s == nil || v.sending {
			continue
		}
		if hc := t.GetHealthCheckAt(); hc != nil {
			if now.Before(hc.AsTime()) {
				continue
			}
			t.HealthCheckAt = nil
			if v.instanceWait {
				r.checkInstance(now, i)
				continue
			}
			if r.container() {
				// Container mode has no health step: the instance in the name service is
				// the health (the agent probes the container and keeps it up to date).
				r.gateInstance(now, i, "healthy after min_healthy_time")
				continue
			}
			r.startStep(now, i, KindHealth)
			s = t.GetStep()
		}
		if nr := s.GetNextRetryAt(); nr != nil {
			if now.Before(nr.AsTime()) || v.newAttempt {
				continue
			}
			s.NextRetryAt = nil
			s.DispatchedAt = nil
			v.lastSent = time.Time{}
			r.touch(i)
		}
		if v.newAttempt {
			continue
		}
		if d := s.GetDispatchedAt(); d != nil && now.After(d.AsTime().Add(r.stepTimeout+r.e.cfg.ResultGrace)) {
			r.stepTimedOut(now, i)
			continue
		}
		if v.lastSent.IsZero() || now.Sub(v.lastSent) >= r.e.cfg.PollInterval {
			r.send(now, i)
		}
	}
}

// send sends the target's current step to its agent; the reply comes back as msgReply.
func (r *runner) send(now time.Time, i int) {
	t := r.targets[i]
	s := t.GetStep()
	v := &r.vols[i]
	v.sending = true
	v.lastSent = now
	if s.GetDispatchedAt() == nil {
		s.DispatchedAt = ts(now)
		r.touch(i)
	}
	req := r.stepRequest(i)
	subject := "berth.v1.agent." + t.GetHost() + ".step"
	kind := s.GetKind()
	stepID, attempt := s.GetId(), s.GetAttempt()
	opts := []natsbus.CallOption{natsbus.WithID(fmt.Sprintf("%s.%s.%d", r.id, stepID, attempt))}
	if r.service != "" {
		opts = append(opts, natsbus.WithServicePath(r.service))
	}
	r.e.noteDispatch()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ctx, cancel := context.WithTimeout(r.ctx, r.e.cfg.RequestTimeout)
		defer cancel()
		reply := &agentv1.StepReply{}
		err := r.e.bus.Request(ctx, subject, req, reply, opts...)
		outcome := "ok"
		if err != nil {
			outcome = "error"
			switch {
			case errors.Is(err, natsbus.ErrNoResponders):
				outcome = "no_responders"
			case errors.Is(err, natsbus.ErrTimeout):
				outcome = "timeout"
			}
		} else {
			outcome = strings.ToLower(strings.TrimPrefix(reply.GetDisposition().String(), "STEP_DISPOSITION_"))
		}
		r.e.m.StepsSent.WithLabelValues(kind, outcome).Inc()
		if r.ctx.Err() != nil {
			return
		}
		r.mail.push(msgReply{i: i, stepID: stepID, attempt: attempt, reply: reply, err: err})
	}()
}

// stepRequest builds the request of the target's current step. It depends only on records
// kept in coord, so that every leader sends the same request for a (step, attempt).
func (r *runner) stepRequest(i int) *agentv1.StepRequest {
	t := r.targets[i]
	s := t.GetStep()
	req := &agentv1.StepRequest{TaskId: r.id, StepId: s.GetId(), Attempt: s.GetAttempt(), FencingToken: r.e.token,
		Host: t.GetHost(), Service: r.service}
	req.Timeout = durationOf(r.stepTimeout)
	health := r.strat.GetHealthGate().GetDeadline().AsDuration()
	if health <= 0 {
		health = strategy.DefaultHealthDeadline
	}
	if r.container() {
		r.containerStep(req, t, s, health)
		return req
	}
	switch s.GetKind() {
	case KindDeploy:
		req.Plugin, req.Action = PackageDeployPlugin, "deploy"
		req.Arguments = map[string]string{"url": r.dep.GetArtifact().GetUrl(), "sha256": r.dep.GetArtifact().GetSha256(),
			"version": r.dep.GetVersion(), "service": r.service, "health_deadline": health.String()}
	case KindHealth:
		req.Plugin, req.Action = PackageDeployPlugin, "status"
		req.Arguments = map[string]string{"service": r.service}
	case KindRollback:
		req.Plugin = PackageDeployPlugin
		if v := t.GetPreviousVersion(); v != "" {
			req.Action = "rollback"
			req.Arguments = map[string]string{"service": r.service, "version": v, "health_deadline": health.String()}
		} else {
			req.Action = "stop"
			req.Arguments = map[string]string{"service": r.service}
		}
	case KindRedeploy:
		req.Plugin, req.Action = PackageDeployPlugin, "deploy"
		req.Arguments = map[string]string{"url": t.GetPreviousArtifact().GetUrl(), "sha256": t.GetPreviousArtifact().GetSha256(),
			"version": t.GetPreviousVersion(), "service": r.service, "health_deadline": health.String()}
	case KindRun:
		req.Plugin, req.Action = r.task.GetPlugin(), r.task.GetAction()
		req.Arguments = r.task.GetArguments()
		req.Service = r.task.GetService()
		if len(r.task.GetArgs()) > 0 {
			b, _ := json.Marshal(map[string][]string{"args": r.task.GetArgs()})
			req.Payload = b
		}
	}
	return req
}

// current returns the target index and step a message is about, when it is about the
// step in flight now.
func (r *runner) current(host, stepID string, attempt uint32) (int, *controllerv1.StepRecord, bool) {
	i, ok := r.lookup(host, stepID)
	if !ok {
		return 0, nil, false
	}
	s := r.targets[i].GetStep()
	if s == nil || s.GetId() != stepID || s.GetAttempt() != attempt {
		return 0, nil, false
	}
	return i, s, true
}

func (r *runner) stepActive(i int) bool {
	t := r.targets[i]
	if t.GetStep() == nil || t.GetHealthCheckAt() != nil {
		return false
	}
	if t.GetStep().GetKind() == KindRollback || t.GetStep().GetKind() == KindRedeploy {
		return t.GetRollback() == model.TargetRunning
	}
	return model.InFlightTarget(t.GetState())
}

func (r *runner) onReply(m msgReply) {
	r.vols[m.i].sending = false
	t := r.targets[m.i]
	s := t.GetStep()
	if s == nil || s.GetId() != m.stepID || s.GetAttempt() != m.attempt || !r.stepActive(m.i) || s.GetNextRetryAt() != nil {
		return
	}
	now := time.Now()
	if m.err != nil {
		r.infraFailure(now, m.i, false, fmt.Sprintf("agent %s: %v", t.GetHost(), m.err))
		return
	}
	switch m.reply.GetDisposition() {
	case agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED, agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_RUNNING:
		r.markRunning(now, m.i)
	case agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE:
		r.onResult(m.reply.GetResult())
	case agentv1.StepDisposition_STEP_DISPOSITION_REJECTED:
		reason := m.reply.GetReason()
		switch m.reply.GetRejectReason() {
		case agentv1.RejectReason_REJECT_REASON_BUSY, agentv1.RejectReason_REJECT_REASON_SHUTTING_DOWN:
			r.infraFailure(now, m.i, false, reason)
		case agentv1.RejectReason_REJECT_REASON_STALE_TOKEN:
			r.e.markLost(fmt.Errorf("agent %s: %s", t.GetHost(), reason))
		default:
			r.stepFailed(now, m.i, model.ClassApplication, fmt.Sprintf("agent %s rejected the step: %s", t.GetHost(), reason), nil)
		}
	default:
		r.infraFailure(now, m.i, false, fmt.Sprintf("agent %s: unknown disposition %v", t.GetHost(), m.reply.GetDisposition()))
	}
}

func (r *runner) markRunning(now time.Time, i int) {
	t := r.targets[i]
	s := t.GetStep()
	if !t.GetTouched() && s.GetKind() != KindHealth {
		t.Touched = true
		r.touch(i)
	}
	if s.GetState() != "running" {
		s.State = "running"
		r.touch(i)
	}
	if t.GetState() == model.TargetDispatched {
		r.setTargetState(now, i, model.TargetRunning)
	}
}

func (r *runner) onProgress(p *agentv1.StepProgress) {
	i, _, ok := r.current(p.GetHost(), p.GetStepId(), p.GetAttempt())
	if !ok {
		return
	}
	t := r.targets[i]
	t.Output = append(t.Output, p.GetLines()...)
	if n := len(t.Output); n > outputLines {
		t.Output = append([]string(nil), t.Output[n-outputLines:]...)
	}
	if now := time.Now(); now.Sub(r.vols[i].lastOutput) > time.Second {
		r.vols[i].lastOutput = now
		r.touch(i)
	}
}

func (r *runner) onResult(res *agentv1.StepResult) {
	if res == nil {
		return
	}
	i, s, ok := r.current(res.GetHost(), res.GetStepId(), res.GetAttempt())
	if !ok || !r.stepActive(i) {
		return
	}
	switch s.GetState() {
	case "ok", "failed", "retryable", "interrupted", "rejected":
		return
	}
	now := time.Now()
	t := r.targets[i]
	r.e.m.StepResults.WithLabelValues(s.GetKind(), strings.ToLower(strings.TrimPrefix(res.GetState().String(), "STEP_STATE_"))).Inc()
	s.ExitCode = res.GetExitCode()
	s.State = strings.ToLower(strings.TrimPrefix(res.GetState().String(), "STEP_STATE_"))
	if out := res.GetOutput(); len(out) > 0 {
		if len(out) > outputLines {
			out = out[len(out)-outputLines:]
		}
		t.Output = append([]string(nil), out...)
	}
	if s.GetKind() != KindHealth {
		t.Touched = true
	}
	r.touch(i)
	msg := res.GetMessage()
	switch res.GetState() {
	case agentv1.StepState_STEP_STATE_OK:
		r.stepOK(now, i, res)
	case agentv1.StepState_STEP_STATE_RETRYABLE, agentv1.StepState_STEP_STATE_INTERRUPTED, agentv1.StepState_STEP_STATE_REJECTED:
		r.infraFailure(now, i, true, msg)
	default:
		class := model.ClassApplication
		if res.GetFailureClass() == agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE {
			class = model.ClassInfrastructure
		}
		r.stepFailed(now, i, class, msg, res)
	}
}

func (r *runner) stepOK(now time.Time, i int, res *agentv1.StepResult) {
	t := r.targets[i]
	s := t.GetStep()
	switch s.GetKind() {
	case KindDeploy:
		if mht := r.strat.GetHealthGate().GetMinHealthyTime().AsDuration(); mht > 0 {
			t.HealthCheckAt = ts(now.Add(mht))
			t.Message = fmt.Sprintf("deployed; checking health again after %s", mht)
			r.touchHard(i)
			return
		}
		r.gateInstance(now, i, res.GetMessage())
	case KindHealth:
		healthy, why := parseStatus(res.GetOutput())
		if healthy {
			r.gateInstance(now, i, "healthy after min_healthy_time")
			return
		}
		r.endTarget(now, i, model.TargetFailed, model.ClassApplication, "not healthy after min_healthy_time: "+why)
	case KindRollback, KindRedeploy:
		t.Rollback = model.TargetSucceeded
		t.RollbackMessage = res.GetMessage()
		r.touchHard(i)
		r.targetEvent(now, i, t.GetState())
	default:
		r.endTarget(now, i, model.TargetSucceeded, "", res.GetMessage())
	}
}

// parseStatus reads the package-deploy status action's JSON line.
func parseStatus(out []string) (bool, string) {
	for j := len(out) - 1; j >= 0; j-- {
		line := strings.TrimSpace(out[j])
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var st struct {
			Healthy bool   `json:"healthy"`
			Health  string `json:"health"`
			Current string `json:"current"`
		}
		if json.Unmarshal([]byte(line), &st) == nil {
			if st.Health == "" {
				st.Health = "current release " + st.Current
			}
			return st.Healthy, st.Health
		}
	}
	return false, "the status action printed no status"
}

func (r *runner) stepFailed(now time.Time, i int, class, msg string, res *agentv1.StepResult) {
	t := r.targets[i]
	s := t.GetStep()
	switch s.GetKind() {
	case KindRollback:
		if t.GetPreviousArtifact().GetUrl() != "" {
			t.RollbackMessage = "rollback failed (" + msg + "); deploying the previous package again"
			r.startStep(now, i, KindRedeploy)
			return
		}
		fallthrough
	case KindRedeploy:
		t.Rollback = model.TargetFailed
		t.RollbackMessage = msg
		r.touchHard(i)
		r.targetEvent(now, i, t.GetState())
	default:
		r.endTarget(now, i, model.TargetFailed, class, msg)
	}
	_ = res
}

func (r *runner) stepTimedOut(now time.Time, i int) {
	t := r.targets[i]
	msg := fmt.Sprintf("no result within the step timeout of %s (and %s of grace)", r.stepTimeout, r.e.cfg.ResultGrace)
	switch t.GetStep().GetKind() {
	case KindRollback, KindRedeploy:
		t.Rollback = model.TargetFailed
		t.RollbackMessage = msg
		r.touchHard(i)
	default:
		r.endTarget(now, i, model.TargetTimedOut, model.ClassApplication, msg)
	}
}

// infraFailure handles a failure of the infrastructure: the step is sent again after a
// backoff (a new attempt when the agent reported the attempt ended), until the retries are
// used up; the target is then unreachable.
func (r *runner) infraFailure(now time.Time, i int, newAttempt bool, msg string) {
	t := r.targets[i]
	s := t.GetStep()
	s.Retries++
	r.touchHard(i)
	if s.GetRetries() > r.strat.GetInfraRetries() {
		switch s.GetKind() {
		case KindRollback, KindRedeploy:
			t.Rollback = model.TargetFailed
			t.RollbackMessage = "unreachable: " + msg
			r.targetEvent(now, i, t.GetState())
		default:
			r.endTarget(now, i, model.TargetUnreachable, model.ClassInfrastructure,
				fmt.Sprintf("gave up after %d retries: %s", s.GetRetries()-1, msg))
		}
		return
	}
	if newAttempt {
		s.Attempt++
		r.vols[i].newAttempt = true
	}
	s.State = "retry"
	s.NextRetryAt = ts(now.Add(r.backoff(s.GetRetries())))
	t.Message = fmt.Sprintf("retry %d of %d: %s", s.GetRetries(), r.strat.GetInfraRetries(), msg)
	if t.GetState() == model.TargetRunning {
		r.setTargetState(now, i, model.TargetDispatched)
	}
}

func (r *runner) backoff(retry uint32) time.Duration {
	d := r.e.cfg.RetryBackoff << min(retry-1, 10)
	d = min(d, r.e.cfg.RetryBackoffMax)
	return d*3/4 + rand.N(d/4+1)
}

// headerBytes encodes the run's header.
func (r *runner) headerBytes() ([]byte, error) {
	r.st.LeaderToken = r.e.token
	if r.kind == model.KindTask {
		return model.Marshal(r.task)
	}
	return model.Marshal(r.dep)
}

func (r *runner) headerPath() string {
	if r.kind == model.KindTask {
		return model.TaskPath(r.id)
	}
	return model.DeploymentPath(r.id)
}

func (r *runner) targetOp(i int) coordclient.Op {
	t := r.targets[i]
	if r.kind == model.KindTask {
		return coordclient.OpPut(model.StepPath(r.id, t.GetHost()), model.MustMarshal(stepFromTarget(t)))
	}
	return coordclient.OpPut(model.TargetPath(r.id, model.TargetKey(t)), model.MustMarshal(t))
}

// write commits a fenced transaction, retrying while coord is unavailable; it returns
// ErrFenced (wrapped) when the leadership is gone.
func (r *runner) write(ctx context.Context, txn *coordclient.Txn) (*coordclient.TxnResult, error) {
	for try := 0; ; try++ {
		start := time.Now()
		res, err := txn.Commit(ctx)
		r.e.m.CoordWriteTime.Observe(time.Since(start).Seconds())
		switch {
		case err == nil:
			r.e.m.CoordWrites.WithLabelValues("ok").Inc()
			return res, nil
		case errors.Is(err, coordclient.ErrFenced):
			r.e.m.CoordWrites.WithLabelValues("fenced").Inc()
			return nil, fmt.Errorf("write run %s: %w", r.id, err)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		r.e.m.CoordWrites.WithLabelValues("error").Inc()
		if errors.Is(err, coordclient.ErrInvalidArgument) || errors.Is(err, coordclient.ErrTooLarge) {
			return nil, fmt.Errorf("write run %s: %w", r.id, err)
		}
		r.e.log.Warn("coord write failed; retrying", "id", r.id, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(time.Duration(try+1)*100*time.Millisecond, 2*time.Second)):
		}
	}
}

// maxOps is how many ops go in one transaction.
const maxOps = coordclient.MaxTxnOps - 1

// persist writes every change since the last write: targets first (in parallel
// transactions when there are many), then the header (with the release of the control
// node when the run is finished), each fenced by the leadership.
func (r *runner) persist(ctx context.Context) error {
	soft := len(r.dirty) > 0 || r.dirtyHeader
	due := soft && (time.Since(r.lastFlush) >= softFlush || r.finishing)
	if r.hard == 0 && !r.hardHeader && len(r.extraOps) == 0 && !r.finishing && !r.releaseLock && !due {
		return nil
	}
	var ops []coordclient.Op
	persisted := make([]int, 0, len(r.dirty))
	for i, hard := range r.dirty {
		if hard || due {
			persisted = append(persisted, i)
			ops = append(ops, r.targetOp(i))
		}
	}
	ops = append(ops, r.extraOps...)
	var last []coordclient.Op
	if r.hardHeader || r.finishing || (r.dirtyHeader && due) {
		b, err := r.headerBytes()
		if err != nil {
			return err
		}
		last = append(last, coordclient.OpPut(r.headerPath(), b))
	}
	if r.finishing {
		last = append(last, coordclient.OpDelete(model.ActivePath(r.id)))
	}
	// Chunks of targets go first, several at once; the header goes last, alone or with
	// the last chunk, so that it never claims what is not recorded.
	var chunks [][]coordclient.Op
	for len(ops) > maxOps {
		chunks = append(chunks, ops[:maxOps])
		ops = ops[maxOps:]
	}
	if len(ops)+len(last) <= maxOps {
		last = append(ops, last...)
	} else {
		chunks = append(chunks, ops)
	}
	if err := r.writeParallel(ctx, chunks); err != nil {
		return err
	}
	if len(last) > 0 {
		if _, err := r.write(ctx, r.e.lead.Txn().Then(last...)); err != nil {
			return err
		}
	}
	for _, i := range persisted {
		r.vols[i].newAttempt = false
		delete(r.dirty, i)
	}
	r.hard = 0
	r.extraOps = nil
	if len(last) > 0 {
		r.dirtyHeader, r.hardHeader = false, false
	}
	if due {
		r.lastFlush = time.Now()
	}
	if r.releaseLock && r.st.GetReleasesRecorded() {
		lockPath := model.LockPath(r.service)
		if _, err := r.write(ctx, r.e.lead.Txn().If(coordclient.CreateRev(lockPath).Equal(r.lockRev)).Then(coordclient.OpDelete(lockPath))); err != nil {
			return err
		}
		r.releaseLock, r.lockRev = false, 0
		r.e.wakeService(r.service)
	}
	if r.finishing {
		r.finished = true
	}
	return nil
}

func (r *runner) writeParallel(ctx context.Context, chunks [][]coordclient.Op) error {
	if len(chunks) == 0 {
		return nil
	}
	errs := make([]error, len(chunks))
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for j, ch := range chunks {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, errs[j] = r.write(ctx, r.e.lead.Txn().Then(ch...))
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// targetFromStep and stepFromTarget convert between a task's step record and the target
// record runners work on.
func targetFromStep(s *controllerv1.Step) *controllerv1.Target {
	return &controllerv1.Target{Host: s.GetHost(), State: s.GetState(), Batch: s.GetBatch(), Attempts: s.GetAttempts(),
		Step: s.GetStep(), FailureClass: s.GetFailureClass(), Message: s.GetMessage(), Output: s.GetOutput(),
		StartedAt: s.GetStartedAt(), EndedAt: s.GetEndedAt()}
}

func stepFromTarget(t *controllerv1.Target) *controllerv1.Step {
	return &controllerv1.Step{Host: t.GetHost(), State: t.GetState(), Batch: t.GetBatch(), Attempts: t.GetAttempts(),
		Step: t.GetStep(), FailureClass: t.GetFailureClass(), Message: t.GetMessage(), Output: t.GetOutput(),
		StartedAt: t.GetStartedAt(), EndedAt: t.GetEndedAt()}
}
