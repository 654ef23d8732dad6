package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/task-controller/internal/model"
	"github.com/berthdev/berth/services/task-controller/internal/strategy"
)

// Rescheduled allocations (DESIGN §8, "dynamic failover"). When a host is down for longer
// than its grace period the scheduler places its allocations again elsewhere and announces
// each replacement as alloc.rescheduled. The leader answers with a replacement run: a
// container deployment of one target, the new allocation, with the image of the
// allocation's version (the builder's ImageRecord), visible in the API like any
// deployment. It takes the service's lock like any deployment, queued behind the one that
// holds it.
//
// Idempotence: the run is recorded together with /berth/controller/replacements/<new
// allocation>, in one fenced transaction that requires the record to be missing, so an
// event seen twice, or by two leaders one after the other, makes one run. Events are only
// a prompt: on winning, the leader also lists the allocations and makes the runs of the
// replacements that have none (level-triggered), which covers the events published while
// no controller led.

// RescheduledBy is the requested_by of replacement runs.
const RescheduledBy = "berth-controller (alloc.rescheduled)"

// watchReschedules follows alloc.rescheduled events from shortly before the leadership
// was won, and reads the allocations once to catch up with what happened before; it
// returns when ctx ends.
func (e *Engine) watchReschedules(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			err := e.scanReschedules(ctx)
			if err == nil || ctx.Err() != nil {
				return
			}
			e.log.Warn("read rescheduled allocations; again in 5s", "err", err)
			sleepCtx(ctx, 5*time.Second)
		}
	}()
	defer func() { <-done }()
	filter := strings.Replace(subjects.AllocEvents, "*", "rescheduled", 1)
	cfg := natsbus.EventConsumerConfig{FilterSubjects: []string{filter}, StartTime: e.won.Add(-time.Second)}
	for ctx.Err() == nil {
		err := e.bus.ConsumeEvents(ctx, cfg, func(ctx context.Context, d natsbus.EventDelivery) error {
			ev := &inventoryv1.AllocationEvent{}
			if err := natsbus.UnmarshalEventData(d.Event, ev); err != nil {
				e.log.Warn("bad alloc.rescheduled event", "id", d.Event.ID, "err", err)
				return nil
			}
			for _, a := range ev.GetAllocations() {
				if err := e.replace(ctx, a, ev.GetReplaced()); err != nil && ctx.Err() == nil {
					e.log.Warn("replacement run of a rescheduled allocation", "allocation", a.GetId(), "err", err)
				}
			}
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		e.log.Warn("follow alloc.rescheduled events; again in 5s", "err", err)
		sleepCtx(ctx, 5*time.Second)
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// scanReschedules makes the runs of the replacements that have none, and removes the
// records of allocations that are gone.
func (e *Engine) scanReschedules(ctx context.Context) error {
	res, err := e.coord.List(ctx, model.AllocPrefix, coordclient.Recursive())
	if err != nil && !errors.Is(err, coordclient.ErrNotFound) {
		return fmt.Errorf("list allocations: %w", err)
	}
	live := map[string]bool{}
	if res != nil {
		for _, n := range res.Nodes {
			rel := strings.TrimPrefix(n.Path, model.AllocPrefix+"/")
			if n.Version == 0 || !strings.Contains(rel, "/") {
				continue
			}
			a := &inventoryv1.Allocation{}
			if model.Unmarshal(n.Value, a) != nil {
				continue
			}
			live[a.GetId()] = true
			if a.GetReplaces() == "" {
				continue
			}
			if err := e.replace(ctx, a, &inventoryv1.Allocation{Id: a.GetReplaces()}); err != nil {
				return err
			}
		}
	}
	recs, err := e.coord.List(ctx, model.ReplacementsPrefix)
	if err != nil {
		if errors.Is(err, coordclient.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("list replacement records: %w", err)
	}
	for _, n := range recs.Nodes {
		id := n.Path[strings.LastIndexByte(n.Path, '/')+1:]
		if n.Version == 0 || live[id] {
			continue
		}
		rec := &controllerv1.Replacement{}
		if model.Unmarshal(n.Value, rec) == nil && rec.GetDeploymentId() != "" {
			// Kept while its run may still be active.
			if _, err := e.coord.Get(ctx, model.ActivePath(rec.GetDeploymentId())); err == nil {
				continue
			}
		}
		if _, err := e.lead.Txn().Then(coordclient.OpDelete(n.Path)).Commit(ctx); err != nil {
			return fmt.Errorf("remove replacement record %s: %w", n.Path, err)
		}
	}
	return nil
}

// replace records the replacement run of allocation a (which replaces old), unless it
// has one.
func (e *Engine) replace(ctx context.Context, a, old *inventoryv1.Allocation) error {
	if err := model.CheckAllocationID(a.GetId()); err != nil {
		return err
	}
	if err := model.CheckService(a.GetService()); err != nil {
		return fmt.Errorf("allocation %s: %w", a.GetId(), err)
	}
	if err := model.CheckHost(a.GetHost()); err != nil {
		return fmt.Errorf("allocation %s: %w", a.GetId(), err)
	}
	if err := model.CheckVersion(a.GetVersion()); err != nil {
		// Not placed by a deployment of this controller: nothing says what to run on it.
		e.log.Info("rescheduled allocation without a version; not deployed", "allocation", a.GetId(), "service", a.GetService())
		return nil
	}
	marker := model.ReplacementPath(a.GetId())
	if _, err := e.coord.Get(ctx, marker); err == nil {
		return nil
	} else if !errors.Is(err, coordclient.ErrNotFound) {
		return fmt.Errorf("read %s: %w", marker, err)
	}
	strat, err := e.effectiveStrategy(ctx, a.GetService())
	if err != nil {
		return err
	}
	now := time.Now()
	id := model.NewID("d", now)
	res := a.GetResources()
	rep := &controllerv1.Replacement{Allocation: a.GetId(), Replaces: old.GetId(), Host: old.GetHost(), DeploymentId: id}
	dep := &controllerv1.Deployment{Id: id, Service: a.GetService(), Version: a.GetVersion(), Mode: model.ModeContainer,
		Stages: []string{StageImage, StageSteps}, Strategy: strat, RequestedBy: RescheduledBy, Queue: true,
		Placement: &controllerv1.Placement{Replicas: 1, CpuMillis: res.GetCpuMillis(), MemoryBytes: res.GetMemoryBytes(),
			Spread: a.GetSpread(), Constraints: a.GetConstraints(), MaxPerHost: a.GetMaxPerHost()},
		Allocations: []*controllerv1.ContainerAllocation{containerAlloc(a)}, Replacement: rep,
		Status: &controllerv1.RunStatus{State: model.StatePending, CreatedAt: timestamppb.New(now),
			Message: fmt.Sprintf("deploying %s %s on allocation %s (%s, %s), which replaces %s of down host %s",
				a.GetService(), a.GetVersion(), a.GetId(), a.GetHost(), a.GetIp(), old.GetId(), old.GetHost())}}
	ctl := &controllerv1.Control{Kind: model.KindDeployment, Service: a.GetService(), CreatedAt: timestamppb.New(now)}
	lockPath := model.LockPath(a.GetService())
	head, err := model.Marshal(dep)
	if err != nil {
		return err
	}
	mark := model.MustMarshal(rep)
	res2, err := e.lead.Txn().If(coordclient.Missing(marker), coordclient.Missing(lockPath)).Then(
		coordclient.OpPut(model.DeploymentPath(id), head),
		coordclient.OpPut(model.ActivePath(id), model.MustMarshal(ctl)),
		coordclient.OpPut(lockPath, model.MustMarshal(&controllerv1.ServiceLock{DeploymentId: id})),
		coordclient.OpPut(marker, mark),
	).Commit(ctx)
	if err != nil {
		return fmt.Errorf("record the replacement run of %s: %w", a.GetId(), err)
	}
	if !res2.Succeeded {
		// The service is busy (or the record appeared): queue behind its deployment.
		dep.Status.State = model.StateQueued
		if head, err = model.Marshal(dep); err != nil {
			return err
		}
		res2, err = e.lead.Txn().If(coordclient.Missing(marker)).Then(
			coordclient.OpPut(model.DeploymentPath(id), head),
			coordclient.OpPut(model.ActivePath(id), model.MustMarshal(ctl)),
			coordclient.OpPut(marker, mark),
		).Commit(ctx)
		if err != nil {
			return fmt.Errorf("record the replacement run of %s: %w", a.GetId(), err)
		}
		if !res2.Succeeded {
			return nil
		}
	}
	e.m.Replacements.Inc()
	e.log.Info("replacement run of a rescheduled allocation", "id", id, "service", a.GetService(), "version", a.GetVersion(),
		"allocation", a.GetId(), "host", a.GetHost(), "replaces", old.GetId(), "state", dep.Status.State)
	return nil
}

// effectiveStrategy is the strategy the service tree gives service (the defaults, then
// every node from the root down).
func (e *Engine) effectiveStrategy(ctx context.Context, service string) (*controllerv1.Strategy, error) {
	var layers []strategy.Layer
	for _, p := range model.ServiceAncestors(service) {
		n, err := e.coord.Get(ctx, model.TreePath(p))
		if errors.Is(err, coordclient.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read tree node %s: %w", p, err)
		}
		node := &controllerv1.ServiceNode{}
		if err := model.Unmarshal(n.Value, node); err != nil {
			return nil, fmt.Errorf("read tree node %s: %w", p, err)
		}
		layers = append(layers, strategy.Layer{Source: p, Policy: node.GetPolicy()})
	}
	eff, _ := strategy.Effective(layers)
	st := eff.GetStrategy()
	if err := strategy.Validate("strategy.", st); err != nil {
		return strategy.DefaultPolicy().GetStrategy(), nil
	}
	return st, nil
}
