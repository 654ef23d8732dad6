// Package step is the agent's side of the step protocol (proto berth.agent.v1): it answers
// StepRequests on berth.v1.agent.<host>.step at once (accepted, already running, already
// done with the result, or rejected with a reason), runs accepted steps through the plugin
// runner, streams their output as StepProgress and publishes each StepResult on the task's
// subjects. Its journal makes a (task, step, attempt) run at most once across restarts and
// keeps the highest fencing token per task, so that a deposed controller cannot act.
package step

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent/internal/journal"
	"github.com/berthdev/berth/services/agent/internal/plugin"
	"github.com/berthdev/berth/services/agent/internal/proc"
)

// QueueGroup is the queue group of the step subscription: were two agents started for one
// host by mistake, each request would still reach only one of them.
const QueueGroup = "berth-agent"

// Limits of a request's fields.
const (
	maxIDLen       = 100 // so that task.step.attempt fits a ce-id
	maxArgKeyLen   = 128
	maxArgValueLen = 64 << 10
)

var argKeyRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// Config configures a Server.
type Config struct {
	// Host is this agent's host id; requests for another host are rejected.
	Host string
	// DC is the host's datacenter, passed to plugins.
	DC string
	// MaxConcurrent is how many steps run at once on the host.
	MaxConcurrent int
	// MaxQueued is how many accepted steps may wait for a slot; more are rejected as busy.
	MaxQueued int
	// DefaultTimeout is the timeout of a request that gives none.
	DefaultTimeout time.Duration
	// MaxTimeout is the longest timeout a request may ask for.
	MaxTimeout time.Duration
	// DrainTimeout is how long Run waits for running steps when it stops before it
	// cancels them (they are then reported interrupted).
	DrainTimeout time.Duration
	// MaxOutputBytes caps the output streamed per step.
	MaxOutputBytes int64
	// HandlerConcurrency is how many requests are answered at once.
	HandlerConcurrency int
	// Logger receives step starts and ends; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil does not export them.
	Registerer prometheus.Registerer
}

// Server answers step requests. Create it with New, then Run it.
type Server struct {
	cfg         Config
	j           *journal.Journal
	runner      *plugin.Runner
	bus         *natsbus.Bus
	log         *slog.Logger
	m           *metrics
	interrupted []*journal.Entry
	slots       chan struct{}
	subject     string

	// wg counts step goroutines; Add happens under mu while not draining.
	wg sync.WaitGroup

	mu       sync.Mutex
	running  bool
	draining bool
	pending  int // accepted and not ended
	stepCtx  context.Context
	pubCtx   context.Context
}

// New returns a server for the journal j (opened by the caller, with the entries Open
// reported interrupted, which Run publishes), running plugins with runner, talking over bus.
func New(cfg Config, j *journal.Journal, interrupted []*journal.Entry, runner *plugin.Runner, bus *natsbus.Bus) (*Server, error) {
	subject, err := subjects.AgentStep(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("step server: %w", err)
	}
	if cfg.MaxConcurrent <= 0 {
		return nil, fmt.Errorf("step server: max concurrent steps %d, want at least 1", cfg.MaxConcurrent)
	}
	if cfg.MaxQueued < 0 {
		return nil, fmt.Errorf("step server: max queued steps %d, want 0 or more", cfg.MaxQueued)
	}
	if cfg.DefaultTimeout <= 0 || cfg.MaxTimeout < cfg.DefaultTimeout {
		return nil, fmt.Errorf("step server: default timeout %s and max timeout %s: want 0 < default <= max", cfg.DefaultTimeout, cfg.MaxTimeout)
	}
	if cfg.HandlerConcurrency <= 0 {
		cfg.HandlerConcurrency = 8
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, j: j, runner: runner, bus: bus, log: cfg.Logger, m: m, interrupted: interrupted,
		slots: make(chan struct{}, cfg.MaxConcurrent), subject: subject}, nil
}

// Ready reports whether the server is taking requests.
func (s *Server) Ready(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.draining:
		return errors.New("draining")
	case !s.running:
		return errors.New("not subscribed yet")
	}
	return nil
}

// Run publishes the results of the steps the journal found interrupted, subscribes to the
// host's step subject and answers requests until ctx ends. Then it rejects new requests,
// waits up to DrainTimeout for running steps, cancels those still running (their process
// groups get SIGTERM, then SIGKILL; they are reported interrupted), waits for them, and
// returns. Every goroutine it starts has ended when it returns.
func (s *Server) Run(ctx context.Context) error {
	pubCtx := context.WithoutCancel(ctx)
	stepCtx, cancelSteps := context.WithCancel(pubCtx)
	defer cancelSteps()
	s.mu.Lock()
	s.stepCtx, s.pubCtx = stepCtx, pubCtx
	s.mu.Unlock()

	for _, e := range s.interrupted {
		s.log.Warn("step interrupted by an agent restart", "task", e.Task, "step", e.Step, "attempt", e.Attempt, "plugin", e.Plugin, "started", e.Started)
		// What the plugin left running (its leader died with the agent) must not go on
		// doing the step's work while the controller decides about a new attempt.
		if killed, err := proc.KillOrphans(e.Group); err != nil {
			s.log.Warn("leftover processes of an interrupted step not killed", "task", e.Task, "step", e.Step, "pgid", e.Group.PGID, "err", err)
		} else if killed {
			s.log.Info("killed leftover processes of an interrupted step", "task", e.Task, "step", e.Step, "pgid", e.Group.PGID)
		}
		s.m.steps.WithLabelValues(e.Plugin, outcomeWord(e.Result.GetState())).Inc()
		s.publishResult(pubCtx, e.Result)
	}
	s.interrupted = nil

	subCtx, cancelSub := context.WithCancel(pubCtx)
	defer cancelSub()
	_, err := natsbus.HandleTyped(subCtx, s.bus, s.subject, QueueGroup, s.Handle, natsbus.WithConcurrency(s.cfg.HandlerConcurrency))
	if err != nil {
		return fmt.Errorf("serve steps: %w", err)
	}
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
	s.log.Info("taking steps", "subject", s.subject)

	<-ctx.Done()
	s.mu.Lock()
	s.draining = true
	pending := s.pending
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	if pending > 0 {
		s.log.Info("waiting for running steps", "steps", pending, "for", s.cfg.DrainTimeout)
	}
	timer := time.NewTimer(s.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.log.Warn("cancelling steps still running at shutdown; they will be reported interrupted")
		cancelSteps()
		<-done
	}
	return nil
}

// reply builds a reply of this host.
func (s *Server) reply(d agentv1.StepDisposition) *agentv1.StepReply {
	s.m.replies.WithLabelValues(dispositionWord(d)).Inc()
	return &agentv1.StepReply{Disposition: d, Host: s.cfg.Host}
}

func (s *Server) reject(reason agentv1.RejectReason, format string, args ...any) *agentv1.StepReply {
	s.m.rejected.WithLabelValues(rejectWord(reason)).Inc()
	r := s.reply(agentv1.StepDisposition_STEP_DISPOSITION_REJECTED)
	r.RejectReason = reason
	r.Reason = fmt.Sprintf(format, args...)
	return r
}

// Handle answers one step request. It returns an error (sent as a Status) only when the
// agent itself failed (its journal could not be written); every bad request is a rejected
// reply.
func (s *Server) Handle(_ context.Context, req *agentv1.StepRequest) (*agentv1.StepReply, error) {
	timeout, err := s.validate(req)
	if err != nil {
		return s.reject(agentv1.RejectReason_REJECT_REASON_INVALID_REQUEST, "invalid step request: %v", err), nil
	}
	if req.GetHost() != s.cfg.Host {
		return s.reject(agentv1.RejectReason_REJECT_REASON_WRONG_HOST,
			"step %s/%s is for host %q but this agent is %q", req.GetTaskId(), req.GetStepId(), req.GetHost(), s.cfg.Host), nil
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining || !s.running {
		return s.reject(agentv1.RejectReason_REJECT_REASON_SHUTTING_DOWN, "agent %s is shutting down; retry on its restart", s.cfg.Host), nil
	}
	k := journal.Key{Task: req.GetTaskId(), Step: req.GetStepId()}
	if hi := s.j.Token(k.Task); req.GetFencingToken() < hi {
		return s.reject(agentv1.RejectReason_REJECT_REASON_STALE_TOKEN,
			"fencing token %d of task %s is lower than %d, the highest this agent has seen for it: the sender is no longer the task's leader",
			req.GetFencingToken(), k.Task, hi), nil
	}
	hash := requestHash(req)
	if e, ok := s.j.Get(k); ok {
		switch {
		case e.Attempt > req.GetAttempt():
			return s.reject(agentv1.RejectReason_REJECT_REASON_STALE_ATTEMPT,
				"step %s attempt %d: attempt %d was already received", k, req.GetAttempt(), e.Attempt), nil
		case e.Attempt == req.GetAttempt() && e.Hash != hash:
			return s.reject(agentv1.RejectReason_REJECT_REASON_CONFLICT,
				"step %s attempt %d was already received with a different plugin, action, arguments or payload (%s %s)",
				k, e.Attempt, e.Plugin, e.Action), nil
		case !e.Done():
			if err := s.j.RaiseToken(k.Task, req.GetFencingToken()); err != nil {
				return nil, natsbus.Errorf(commonv1.Code_CODE_UNAVAILABLE, "agent %s: %w", s.cfg.Host, err)
			}
			r := s.reply(agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_RUNNING)
			r.RunningAttempt = e.Attempt
			return r, nil
		case e.Attempt == req.GetAttempt() || e.Result.GetState() == agentv1.StepState_STEP_STATE_OK:
			// The same attempt again, or a new attempt of a step that already succeeded:
			// answer with the result, and publish it again for a sender that missed it.
			if err := s.j.RaiseToken(k.Task, req.GetFencingToken()); err != nil {
				return nil, natsbus.Errorf(commonv1.Code_CODE_UNAVAILABLE, "agent %s: %w", s.cfg.Host, err)
			}
			r := s.reply(agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE)
			r.Result = e.Result
			s.publishResult(s.pubCtx, e.Result)
			return r, nil
		}
		// A new attempt after one that did not succeed: run it.
	}
	p, err := s.runner.Lookup(req.GetPlugin(), req.GetAction())
	if err != nil {
		return s.reject(agentv1.RejectReason_REJECT_REASON_UNKNOWN_PLUGIN, "host %s: %v", s.cfg.Host, err), nil
	}
	if s.pending >= s.cfg.MaxConcurrent+s.cfg.MaxQueued {
		return s.reject(agentv1.RejectReason_REJECT_REASON_BUSY,
			"host %s is busy: %d steps running or queued (limit %d running, %d queued); retry later",
			s.cfg.Host, s.pending, s.cfg.MaxConcurrent, s.cfg.MaxQueued), nil
	}
	startNow := false
	select {
	case s.slots <- struct{}{}:
		startNow = true
	default:
	}
	now := time.Now()
	err = s.j.Accept(journal.Entry{Key: k, Attempt: req.GetAttempt(), Token: req.GetFencingToken(), Hash: hash,
		Plugin: p.Name, Action: req.GetAction(), Started: startNow, AcceptedAt: now})
	if err != nil {
		if startNow {
			<-s.slots
		}
		return nil, natsbus.Errorf(commonv1.Code_CODE_UNAVAILABLE, "agent %s: %w", s.cfg.Host, err)
	}
	s.pending++
	s.wg.Add(1)
	go s.run(k, req, p, timeout, startNow, now)
	return s.reply(agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED), nil
}

// validate checks a request's fields and returns its timeout.
func (s *Server) validate(req *agentv1.StepRequest) (time.Duration, error) {
	for _, f := range []struct{ name, v string }{{"task_id", req.GetTaskId()}, {"step_id", req.GetStepId()}} {
		if err := subjects.Token(f.v); err != nil {
			return 0, fmt.Errorf("%s: %w", f.name, err)
		}
		if len(f.v) > maxIDLen {
			return 0, fmt.Errorf("%s: longer than %d bytes", f.name, maxIDLen)
		}
	}
	if req.GetAttempt() == 0 {
		return 0, errors.New("attempt: 0, want 1 or more")
	}
	if req.GetHost() == "" {
		return 0, errors.New("host: empty")
	}
	if err := plugin.ValidName("plugin", req.GetPlugin()); err != nil {
		return 0, err
	}
	if err := plugin.ValidName("action", req.GetAction()); err != nil {
		return 0, err
	}
	for k, v := range req.GetArguments() {
		if len(k) > maxArgKeyLen || !argKeyRE.MatchString(k) {
			return 0, fmt.Errorf("argument name %q: want letters, digits, '_', '.' and '-', at most %d bytes", k, maxArgKeyLen)
		}
		if len(v) > maxArgValueLen {
			return 0, fmt.Errorf("argument %s: longer than %d bytes", k, maxArgValueLen)
		}
		if !utf8.ValidString(v) {
			return 0, fmt.Errorf("argument %s: not UTF-8", k)
		}
	}
	if p := req.GetPayload(); len(p) > 0 && !json.Valid(p) {
		return 0, errors.New("payload: not a JSON document")
	}
	timeout := s.cfg.DefaultTimeout
	if d := req.GetTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return 0, fmt.Errorf("timeout: %w", err)
		}
		switch t := d.AsDuration(); {
		case t < 0:
			return 0, fmt.Errorf("timeout %s: negative", t)
		case t > s.cfg.MaxTimeout:
			return 0, fmt.Errorf("timeout %s: longer than this agent's limit %s", t, s.cfg.MaxTimeout)
		case t > 0:
			timeout = t
		}
	}
	return timeout, nil
}

// requestHash identifies what a request asks to run, leaving out who sent it (token) and
// how long it may take (timeout), which may change between resends.
func requestHash(req *agentv1.StepRequest) string {
	id := &agentv1.StepRequest{Host: req.GetHost(), Plugin: req.GetPlugin(), Action: req.GetAction(),
		Arguments: req.GetArguments(), Payload: req.GetPayload(), Service: req.GetService()}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(id)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// run runs one accepted step to its end and reports it.
func (s *Server) run(k journal.Key, req *agentv1.StepRequest, p plugin.Plugin, timeout time.Duration, started bool, accepted time.Time) {
	defer s.wg.Done()
	s.mu.Lock()
	stepCtx, pubCtx := s.stepCtx, s.pubCtx
	s.mu.Unlock()
	attempt := req.GetAttempt()
	res := &agentv1.StepResult{TaskId: k.Task, StepId: k.Step, Attempt: attempt, Host: s.cfg.Host,
		Plugin: p.Name, Action: req.GetAction(), FencingToken: req.GetFencingToken()}

	if !started {
		s.m.queued.Inc()
		select {
		case s.slots <- struct{}{}:
		case <-stepCtx.Done():
		}
		s.m.queued.Dec()
		if stepCtx.Err() == nil {
			if err := s.j.Start(k, attempt); err != nil {
				<-s.slots
				s.finish(k, res, accepted, plugin.Outcome{State: agentv1.StepState_STEP_STATE_RETRYABLE, Class: agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, ExitCode: -1,
					Message: fmt.Sprintf("agent %s could not record the step's start, so it did not run it: %v", s.cfg.Host, err)}, nil)
				return
			}
			started = true
		}
	}
	if !started {
		s.finish(k, res, accepted, plugin.Outcome{State: agentv1.StepState_STEP_STATE_INTERRUPTED, Class: agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, ExitCode: -1,
			Message: "the agent stopped before the step started; it did not run"}, nil)
		return
	}
	defer func() { <-s.slots }()

	progressSubject, _ := subjects.AgentProgressFor(k.Task)
	var seq uint64
	out := plugin.NewOutput(func(stream agentv1.Stream, lines []string) {
		seq++
		msg := &agentv1.StepProgress{TaskId: k.Task, StepId: k.Step, Attempt: attempt, Sequence: seq,
			Stream: stream, Lines: lines, Host: s.cfg.Host, At: timestamppb.Now()}
		if err := s.bus.Publish(pubCtx, progressSubject, msg); err != nil {
			s.log.Debug("progress not published", "task", k.Task, "step", k.Step, "err", err)
		}
	}, s.cfg.MaxOutputBytes)

	startedAt := time.Now()
	res.StartedAt = timestamppb.New(startedAt)
	s.m.running.Inc()
	s.log.Info("step started", "task", k.Task, "step", k.Step, "attempt", attempt, "plugin", p.Name, "action", req.GetAction())
	preq := plugin.Request{TaskID: k.Task, StepID: k.Step, Attempt: attempt, Host: s.cfg.Host, DC: s.cfg.DC,
		Plugin: p.Name, Action: req.GetAction(), Service: req.GetService(), Arguments: req.GetArguments(),
		Payload: json.RawMessage(req.GetPayload()), Deadline: startedAt.Add(timeout).UTC()}
	if preq.Arguments == nil {
		preq.Arguments = map[string]string{}
	}
	o := s.runner.Run(stepCtx, p, preq, timeout, out, func(pgid int) {
		g, err := proc.Identify(pgid)
		if err == nil {
			err = s.j.SetGroup(k, attempt, g)
		}
		if err != nil {
			s.log.Debug("process group of step not recorded", "task", k.Task, "step", k.Step, "err", err)
		}
	})
	s.m.running.Dec()
	s.m.duration.WithLabelValues(p.Name).Observe(time.Since(startedAt).Seconds())
	res.OutputTruncated = out.Truncated()
	if stepCtx.Err() != nil && o.State != agentv1.StepState_STEP_STATE_OK {
		o.State, o.Class = agentv1.StepState_STEP_STATE_INTERRUPTED, agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE
		o.Message = "the agent stopped while the step was running; it was cancelled: " + o.Message
	}
	s.finish(k, res, startedAt, o, out.Tail())
}

// finish records the result in the journal, then publishes it.
func (s *Server) finish(k journal.Key, res *agentv1.StepResult, startedAt time.Time, o plugin.Outcome, tail []string) {
	state := o.State
	res.State, res.FailureClass, res.ExitCode, res.Message, res.Output = state, o.Class, int32(o.ExitCode), o.Message, tail
	if state == agentv1.StepState_STEP_STATE_OK {
		res.FailureClass = agentv1.FailureClass_FAILURE_CLASS_UNSPECIFIED
	}
	if res.StartedAt == nil {
		res.StartedAt = timestamppb.New(startedAt)
	}
	res.EndedAt = timestamppb.Now()
	if err := s.j.End(k, res.GetAttempt(), res); err != nil {
		// The result still goes out; after a restart the step will read as interrupted.
		s.log.Error("step result not recorded", "task", k.Task, "step", k.Step, "err", err)
	}
	s.mu.Lock()
	s.pending--
	s.mu.Unlock()
	s.m.steps.WithLabelValues(res.GetPlugin(), outcomeWord(state)).Inc()
	s.log.Info("step ended", "task", k.Task, "step", k.Step, "attempt", res.GetAttempt(), "plugin", res.GetPlugin(),
		"state", outcomeWord(state), "exit", o.ExitCode, "message", o.Message)
	s.mu.Lock()
	ctx := s.pubCtx
	s.mu.Unlock()
	s.publishResult(ctx, res)
}

// publishResult publishes a result; ctx must not be cancelled before the agent stops
// (the server's pubCtx).
func (s *Server) publishResult(ctx context.Context, res *agentv1.StepResult) {
	subject, err := subjects.AgentResultFor(res.GetTaskId())
	if err == nil {
		err = s.bus.Publish(ctx, subject, res, natsbus.WithID(fmt.Sprintf("%s.%s.%d", res.GetTaskId(), res.GetStepId(), res.GetAttempt())))
	}
	if err != nil {
		s.log.Warn("step result not published", "task", res.GetTaskId(), "step", res.GetStepId(), "err", err)
	}
}

func outcomeWord(st agentv1.StepState) string {
	return strings.ToLower(strings.TrimPrefix(st.String(), "STEP_STATE_"))
}

func dispositionWord(d agentv1.StepDisposition) string {
	return strings.ToLower(strings.TrimPrefix(d.String(), "STEP_DISPOSITION_"))
}

func rejectWord(r agentv1.RejectReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "REJECT_REASON_"))
}
