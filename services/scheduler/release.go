package scheduler

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
	"github.com/berthdev/berth/services/scheduler/internal/index"
)

// releaseChunk is the most allocations one release transaction deletes (plus the guard's
// put, within coord's 128 ops).
const releaseChunk = 100

// Release frees the allocations the request selects, host by host, each host's in one
// transaction guarded by its guard node. Allocations already gone are not an error:
// named ids no host holds are listed in not_found.
func (s *Scheduler) Release(ctx context.Context, rr *inventoryv1.ReleaseRequest) (*inventoryv1.ReleaseReply, error) {
	if len(rr.GetAllocationIds()) == 0 && rr.GetDeploymentId() == "" && rr.GetService() == "" {
		return nil, invalid("allocation_ids", "give allocation_ids, deployment_id or service")
	}
	for i, id := range rr.GetAllocationIds() {
		if !validID(id) {
			return nil, invalid(fmt.Sprintf("allocation_ids[%d]", i), "%q: want 1 to 128 characters of [A-Za-z0-9_-]", id)
		}
	}
	if d := rr.GetDeploymentId(); d != "" && !validID(d) {
		return nil, invalid("deployment_id", "%q: want 1 to 128 characters of [A-Za-z0-9_-]", d)
	}
	if svc := rr.GetService(); svc != "" {
		if _, err := subjects.ServiceTokens(svc); err != nil {
			return nil, invalid("service", "%v", err)
		}
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	found, missing := s.idx.Find(rr.GetAllocationIds(), rr.GetDeploymentId(), rr.GetService())
	byNode := map[*framework.NodeInfo][]framework.AllocInfo{}
	for _, f := range found {
		byNode[f.Node] = append(byNode[f.Node], f.Alloc)
	}
	nodes := slices.SortedFunc(maps.Keys(byNode), func(a, b *framework.NodeInfo) int { return strings.Compare(a.ID, b.ID) })
	reply := &inventoryv1.ReleaseReply{NotFound: missing}
	released := map[string][]*inventoryv1.Allocation{}
	for _, n := range nodes {
		allocs := byNode[n]
		for len(allocs) > 0 {
			chunk := allocs[:min(len(allocs), releaseChunk)]
			allocs = allocs[len(chunk):]
			ids := make([]string, len(chunk))
			for i, a := range chunk {
				ids[i] = a.ID
			}
			done, err := s.releaseOnHost(ctx, n, ids)
			if err != nil {
				return nil, err
			}
			for _, a := range chunk {
				if slices.Contains(done, a.ID) {
					reply.Released = append(reply.Released, a.ID)
					released[a.Service] = append(released[a.Service], &inventoryv1.Allocation{
						Id: a.ID, Host: n.ID, Service: a.Service, DeploymentId: a.Deployment, Ip: a.IP.String(),
					})
				}
			}
		}
	}
	s.m.released.Add(float64(len(reply.Released)))
	for svc, allocs := range released {
		ids := make([]string, len(allocs))
		for i, a := range allocs {
			ids[i] = a.GetId()
		}
		slices.Sort(ids)
		s.publish(ctx, EventReleased, svc, natsbus.EventID(append([]string{svc, EventReleased}, ids...)...), &inventoryv1.AllocationEvent{
			Service: svc, DeploymentId: rr.GetDeploymentId(), Allocations: allocs,
			Message: fmt.Sprintf("released %d allocations", len(allocs)), At: timestamppb.Now(),
		})
	}
	return reply, nil
}

// releaseOnHost deletes the allocations ids of n that still exist and returns those it
// deleted.
func (s *Scheduler) releaseOnHost(ctx context.Context, n *framework.NodeInfo, ids []string) ([]string, error) {
	nodes := []*framework.NodeInfo{n}
	s.idx.Reserve(nodes, 1)
	defer s.idx.Reserve(nodes, -1)
	for attempt := 1; ; attempt++ {
		present := s.idx.Present(n, ids)
		if len(present) == 0 {
			return nil, nil
		}
		hostRev, guardRev, count := s.idx.Guard(n)
		g, _ := marshal.Marshal(&inventoryv1.AllocationGuard{Host: n.ID, Count: uint32(max(count-len(present), 0))})
		ops := []coordclient.Op{coordclient.OpPut(guardPath(n.ID), g)}
		for _, id := range present {
			ops = append(ops, coordclient.OpDelete(allocPath(n.ID, id)))
		}
		res, err := s.coord.Txn().If(coordclient.ModRev(guardPath(n.ID)).Equal(guardRev)).Then(ops...).
			Else(coordclient.OpGet(guardPath(n.ID), coordclient.KeysOnly())).Commit(ctx)
		if err != nil {
			return nil, natsbus.Errorf(commonv1.Code_CODE_UNAVAILABLE, "release allocations of %s: %w", n.ID, err)
		}
		if res.Succeeded {
			s.idx.Removed(n, present, res.Revision)
			return present, nil
		}
		s.m.conflicts.Inc()
		if attempt >= s.cfg.MaxAttempts {
			return nil, natsbus.Errorf(commonv1.Code_CODE_UNAVAILABLE, "release allocations of %s: gave up after %d attempts", n.ID, attempt)
		}
		var cur int64
		if len(res.Results) > 0 {
			cur = modRev(res.Results[0].Get)
		}
		s.idx.MarkStale([]index.Stale{{Node: n, HostModRev: hostRev, GuardModRev: cur}})
		s.waitChange(ctx, nodes, time.Second)
		backoff(ctx, attempt)
	}
}

// publish sends an allocation event, retrying a few times; a failure is logged (coord
// holds the truth; consumers reconcile from it).
func (s *Scheduler) publish(ctx context.Context, typ, service, id string, data *inventoryv1.AllocationEvent) {
	subj, err := AllocEvent(typ, service)
	if err != nil {
		s.log.Warn("allocation event not published", "type", typ, "service", service, "err", err)
		return
	}
	e := natsbus.Event{Subject: subj, ID: id, Type: subjects.EventType(DomainAlloc, typ),
		Source: "berth-scheduler/" + s.cfg.Name, ServicePath: service, Data: data}
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = s.bus.PublishEvent(pctx, e)
		cancel()
		if err == nil || attempt == 3 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	if err != nil {
		s.log.Warn("allocation event not published", "subject", subj, "err", err)
	}
}
