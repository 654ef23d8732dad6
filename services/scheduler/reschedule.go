package scheduler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/constraint"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
	"github.com/berthdev/berth/services/scheduler/internal/index"
	"github.com/berthdev/berth/services/scheduler/internal/plugins"
)

// rescheduleLoop places again, every RescheduleInterval, the allocations of the hosts
// that berth-cmdb-sync has marked down (their agent gone for longer than the grace
// period). Every replica runs it; the transaction of a replacement compares the guard of
// the down host, so an allocation is replaced once however many replicas try.
func (s *Scheduler) rescheduleLoop(ctx context.Context) error {
	t := time.NewTicker(s.cfg.RescheduleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if !s.idx.Synced() {
			continue
		}
		s.RescheduleOnce(ctx)
	}
}

// RescheduleOnce places again the allocations of every down host, once.
func (s *Scheduler) RescheduleOnce(ctx context.Context) {
	s.rescheduleMu.Lock()
	defer s.rescheduleMu.Unlock()
	down := s.idx.DownAllocations()
	nodes := slices.SortedFunc(maps.Keys(down), func(a, b *framework.NodeInfo) int { return strings.Compare(a.ID, b.ID) })
	for _, n := range nodes {
		for _, a := range down[n] {
			if ctx.Err() != nil {
				return
			}
			if err := s.replace(ctx, n, a.ID); err != nil {
				s.log.Warn("allocation of a down host not placed again", "host", n.ID, "allocation", a.ID, "err", err)
			}
		}
	}
}

// replace moves allocation id of down host n to another host in one transaction: the
// old allocation deleted, the new one put, both guards rewritten.
func (s *Scheduler) replace(ctx context.Context, n *framework.NodeInfo, id string) error {
	node, err := s.coord.Get(ctx, allocPath(n.ID, id))
	if errors.Is(err, coordclient.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	old, err := index.DecodeAllocation(node.Value)
	if err != nil {
		return fmt.Errorf("decode %s: %w", node.Path, err)
	}
	expr, err := constraint.Parse(old.GetConstraints())
	if err != nil {
		// The constraints parsed when the allocation was placed; a later grammar change
		// must not strand it.
		expr = constraint.Expr{}
	}
	r := old.GetResources()
	req := &framework.Request{
		Service: old.GetService(), Deployment: old.GetDeploymentId(), Count: 1,
		Resources:   framework.Resources{CPU: int64(r.GetCpuMillis()), Memory: int64(r.GetMemoryBytes()), Disk: int64(r.GetDiskBytes())},
		Constraints: expr, Spread: old.GetSpread(), MaxPerHost: int(old.GetMaxPerHost()),
		PreferredDCs: old.GetPreferredDcs(), Scoring: plugins.PolicyBinPack,
	}
	if req.Spread != "dc" && req.Spread != "rack" {
		req.Spread = ""
	}
	downNodes := []*framework.NodeInfo{n}
	s.idx.Reserve(downNodes, 1)
	defer s.idx.Reserve(downNodes, -1)
	for attempt := 1; ; attempt++ {
		d := s.idx.Decide(req, true)
		if len(d.Placements) == 0 {
			s.idx.Abort(d, nil)
			if d.Busy && attempt < s.cfg.MaxAttempts {
				s.waitChange(ctx, nil, 200*time.Millisecond)
				continue
			}
			s.m.reschedules.WithLabelValues("lost").Inc()
			if !s.lost[id] {
				s.lost[id] = true
				s.publish(ctx, EventLost, old.GetService(), natsbus.EventID(id, EventLost), &inventoryv1.AllocationEvent{
					Service: old.GetService(), DeploymentId: old.GetDeploymentId(), RequestId: old.GetRequestId(),
					Replaced: old, Host: n.ID, Requested: 1,
					Message: fmt.Sprintf("allocation %s of down host %s not placed again yet: %s", id, n.ID, d.Explanation()),
					At:      timestamppb.Now(),
				})
			}
			return nil
		}
		oldHostRev, oldGuardRev, oldCount := s.idx.Guard(n)
		if len(s.idx.Present(n, []string{id})) == 0 {
			s.idx.Abort(d, nil)
			return nil
		}
		p, t := d.Placements[0], d.Touched[0]
		na := &inventoryv1.Allocation{
			Id: newID(), Host: p.Node.ID, Dc: p.Node.DC, Rack: p.Node.Rack, Service: old.GetService(),
			DeploymentId: old.GetDeploymentId(), Version: old.GetVersion(), Resources: old.GetResources(),
			Ip: p.IP.String(), RequestId: old.GetRequestId(), Replaces: id, Constraints: old.GetConstraints(),
			Spread: old.GetSpread(), MaxPerHost: old.GetMaxPerHost(), PreferredDcs: old.GetPreferredDcs(),
			CreatedAt: timestamppb.Now(),
		}
		nb, _ := marshal.Marshal(na)
		og, _ := marshal.Marshal(&inventoryv1.AllocationGuard{Host: n.ID, Count: uint32(max(oldCount-1, 0))})
		ng, _ := marshal.Marshal(&inventoryv1.AllocationGuard{Host: p.Node.ID, Count: uint32(t.Count)})
		res, err := s.coord.Txn().
			If(coordclient.ModRev(hostPath(n.ID)).Equal(oldHostRev), coordclient.ModRev(guardPath(n.ID)).Equal(oldGuardRev),
				coordclient.ModRev(hostPath(p.Node.ID)).Equal(t.HostModRev), coordclient.ModRev(guardPath(p.Node.ID)).Equal(t.GuardModRev)).
			Then(coordclient.OpDelete(allocPath(n.ID, id)), coordclient.OpPut(guardPath(n.ID), og),
				coordclient.OpPut(allocPath(p.Node.ID, na.Id), nb), coordclient.OpPut(guardPath(p.Node.ID), ng)).
			Else(coordclient.OpGet(hostPath(n.ID), coordclient.KeysOnly()), coordclient.OpGet(guardPath(n.ID), coordclient.KeysOnly()),
				coordclient.OpGet(hostPath(p.Node.ID), coordclient.KeysOnly()), coordclient.OpGet(guardPath(p.Node.ID), coordclient.KeysOnly())).
			Commit(ctx)
		if err != nil {
			s.idx.Abort(d, nil)
			return err
		}
		if res.Succeeded {
			s.idx.Commit(d, []framework.AllocInfo{index.AllocInfoOf(na)}, res.Revision)
			s.idx.Removed(n, []string{id}, res.Revision)
			s.m.reschedules.WithLabelValues("rescheduled").Inc()
			delete(s.lost, id)
			s.log.Info("allocation of a down host placed again", "host", n.ID, "allocation", id, "new_host", na.Host, "new_allocation", na.Id)
			s.publish(ctx, EventRescheduled, old.GetService(), natsbus.EventID(id, EventRescheduled), &inventoryv1.AllocationEvent{
				Service: old.GetService(), DeploymentId: old.GetDeploymentId(), RequestId: old.GetRequestId(),
				Allocations: []*inventoryv1.Allocation{na}, Replaced: old, Host: n.ID, Requested: 1,
				Message: fmt.Sprintf("allocation %s of down host %s placed again as %s on %s", id, n.ID, na.Id, na.Host),
				At:      timestamppb.Now(),
			})
			return nil
		}
		s.m.conflicts.Inc()
		var stale []index.Stale
		var nodes []*framework.NodeInfo
		if len(res.Results) == 4 {
			for i, st := range []index.Stale{
				{Node: n, HostModRev: modRev(res.Results[0].Get), GuardModRev: modRev(res.Results[1].Get)},
				{Node: p.Node, HostModRev: modRev(res.Results[2].Get), GuardModRev: modRev(res.Results[3].Get)},
			} {
				wantHost, wantGuard := oldHostRev, oldGuardRev
				if i == 1 {
					wantHost, wantGuard = t.HostModRev, t.GuardModRev
				}
				if st.HostModRev != wantHost || st.GuardModRev != wantGuard {
					stale = append(stale, st)
					nodes = append(nodes, st.Node)
				}
			}
		}
		s.idx.Abort(d, stale)
		if attempt >= s.cfg.MaxAttempts {
			return fmt.Errorf("gave up after %d attempts", attempt)
		}
		s.waitChange(ctx, nodes, time.Second)
		backoff(ctx, attempt)
	}
}
