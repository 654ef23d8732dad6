package engine

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

func durationOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// eventCounts summarises the targets for an event: the counts as of the run's last
// decision (counting every target for every target event would cost O(targets²)).
func (r *runner) eventCounts() *eventsv1.TargetCounts {
	c := r.st.GetCounts()
	return &eventsv1.TargetCounts{Total: int32(r.rollN()), Pending: c.GetPending(), Running: c.GetRunning(),
		Succeeded: c.GetSucceeded(), Failed: c.GetFailed() + c.GetUnreachable(), Skipped: c.GetSkipped()}
}

// runEvent queues an event about the run itself. Its id is the run id, the type and
// idParts (which say which occurrence it is), so a new leader publishing it again is
// dropped as a duplicate.
func (r *runner) runEvent(typ, prev string, batch int32, msg string, idParts ...string) {
	now := time.Now()
	id := natsbus.EventID(append([]string{r.id}, idParts...)...)
	if r.kind == model.KindTask {
		switch typ {
		case "completed", "failed", "aborted":
		default:
			return
		}
		subject, err := subjects.TaskEvent(typ, r.id)
		if err != nil {
			return
		}
		r.events = append(r.events, natsbus.Event{Subject: subject, ID: id, Type: subjects.EventType(subjects.DomainTask, typ),
			Source: r.e.cfg.Source, Time: now, Data: &eventsv1.TaskEvent{TaskId: r.id, Plugin: r.task.GetPlugin(),
				Action: r.task.GetAction(), State: r.st.GetState(), Message: msg, At: timestamppb.New(now)}})
		return
	}
	subject, err := subjects.DeployEvent(typ, r.service)
	if err != nil {
		return
	}
	r.events = append(r.events, natsbus.Event{Subject: subject, ID: id, Type: subjects.EventType(subjects.DomainDeploy, typ),
		Source: r.e.cfg.Source, ServicePath: r.service, Time: now, Data: &eventsv1.DeployEvent{
			DeploymentId: r.id, Service: r.service, Version: r.dep.GetVersion(), Mode: r.dep.GetMode(), State: r.st.GetState(),
			PreviousState: prev, Batch: batch, Message: msg, Counts: r.eventCounts(), RequestedBy: r.dep.GetRequestedBy(),
			At: timestamppb.New(now)}})
}

// targetEvent queues an event about a target's transition (deployments: target_changed;
// tasks: step_changed).
func (r *runner) targetEvent(now time.Time, i int, prev string) {
	t := r.targets[i]
	s := t.GetStep()
	id := natsbus.EventID(r.id, "target", model.TargetKey(t), t.GetState(), s.GetKind(), fmt.Sprint(s.GetAttempt()), t.GetRollback())
	if r.kind == model.KindTask {
		subject, err := subjects.TaskEvent("step_changed", r.id)
		if err != nil {
			return
		}
		r.events = append(r.events, natsbus.Event{Subject: subject, ID: id, Type: subjects.EventType(subjects.DomainTask, "step_changed"),
			Source: r.e.cfg.Source, Time: now, Data: &eventsv1.TaskEvent{TaskId: r.id, Plugin: r.task.GetPlugin(),
				Action: r.task.GetAction(), State: r.st.GetState(), Message: t.GetMessage(), At: timestamppb.New(now),
				Step: &eventsv1.StepChange{StepId: s.GetId(), Host: t.GetHost(), State: t.GetState(), Attempt: int32(s.GetAttempt()),
					ExitCode: s.GetExitCode(), Output: t.GetOutput()}}})
		return
	}
	subject, err := subjects.DeployEvent("target_changed", r.service)
	if err != nil {
		return
	}
	state := t.GetState()
	if t.GetRollback() != "" {
		state = t.GetState() + "; rollback " + t.GetRollback()
	}
	r.events = append(r.events, natsbus.Event{Subject: subject, ID: id, Type: subjects.EventType(subjects.DomainDeploy, "target_changed"),
		Source: r.e.cfg.Source, ServicePath: r.service, Time: now, Data: &eventsv1.DeployEvent{
			DeploymentId: r.id, Service: r.service, Version: r.dep.GetVersion(), Mode: r.dep.GetMode(), State: r.st.GetState(),
			PreviousState: r.st.GetState(), Batch: t.GetBatch(), Message: t.GetMessage(), Counts: r.eventCounts(),
			RequestedBy: r.dep.GetRequestedBy(), At: timestamppb.New(now),
			Target: &eventsv1.TargetChange{Host: t.GetHost(), Allocation: t.GetAllocation(), State: state, PreviousState: prev, Attempt: int32(s.GetAttempt()),
				FailureClass: t.GetFailureClass(), Output: t.GetOutput()}}})
}

// republish queues again the events of the transitions already recorded, for a new
// leader: the ones its predecessor published are dropped by the stream as duplicates, the
// ones it recorded and died before publishing go out now.
func (r *runner) republish() {
	st := r.st.GetState()
	if st == model.StatePending || st == model.StateQueued || st == "" {
		return
	}
	r.runEvent("started", "", -1, "started", r.startedID()...)
	if r.container() && len(r.dep.GetAllocations()) > 0 {
		r.placedEvent(time.Now())
	}
	for _, b := range r.st.GetBatches() {
		if b.GetStartedAt() != nil {
			r.runEvent("batch_started", st, b.GetIndex(), fmt.Sprintf("batch %d started", b.GetIndex()+1), "batch_started", fmt.Sprint(b.GetIndex()))
		}
		if b.GetCompletedAt() != nil {
			r.runEvent("batch_completed", st, b.GetIndex(), fmt.Sprintf("batch %d completed", b.GetIndex()+1), "batch_completed", fmt.Sprint(b.GetIndex()))
		}
	}
	now := time.Now()
	for i, t := range r.targets {
		if t.GetState() != model.TargetPending {
			r.targetEvent(now, i, "")
		}
	}
	if st == model.StatePaused {
		r.runEvent("paused", st, r.st.GetCurrentBatch(), r.st.GetMessage(), "paused", fmt.Sprint(r.st.GetPauseCount()))
	}
	if model.TerminalRun(st) {
		typ := map[string]string{model.StateSucceeded: "completed", model.StateFailed: "failed", model.StateAborted: "aborted", model.StateRolledBack: "rolled_back"}[st]
		r.runEvent(typ, "", r.st.GetCurrentBatch(), r.st.GetMessage(), typ)
	}
}
