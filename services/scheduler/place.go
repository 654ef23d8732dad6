package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/scheduler/internal/constraint"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
	"github.com/berthdev/berth/services/scheduler/internal/index"
	"github.com/berthdev/berth/services/scheduler/internal/plugins"
)

// Coord paths (DESIGN §3).
const (
	hostsPrefix      = index.HostsPrefix
	allocPrefix      = index.AllocPrefix
	placementsPrefix = "/berth/placements"
)

func hostPath(h string) string           { return hostsPrefix + "/" + h }
func guardPath(h string) string          { return allocPrefix + "/" + h }
func allocPath(h, id string) string      { return allocPrefix + "/" + h + "/" + id }
func recordPath(requestID string) string { return placementsPrefix + "/" + requestID }

// invalid is an INVALID_ARGUMENT status naming the field.
func invalid(field, format string, args ...any) error {
	err := natsbus.Errorf(commonv1.Code_CODE_INVALID_ARGUMENT, "%s: %s", field, fmt.Sprintf(format, args...))
	var se *natsbus.StatusError
	if errors.As(err, &se) {
		se.Details = map[string]string{"field": field}
	}
	return err
}

// validID checks an id that becomes a path segment.
func validID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// validate turns a request into the framework's form or an INVALID_ARGUMENT naming the
// field at fault.
func (s *Scheduler) validate(pr *inventoryv1.PlacementRequest) (*framework.Request, error) {
	if pr.GetRequestId() != "" && !validID(pr.GetRequestId()) {
		return nil, invalid("request_id", "%q: want 1 to 128 characters of [A-Za-z0-9_-]", pr.GetRequestId())
	}
	if pr.GetService() == "" {
		return nil, invalid("service", "required")
	}
	if _, err := subjects.ServiceTokens(pr.GetService()); err != nil {
		return nil, invalid("service", "%v", err)
	}
	if d := pr.GetDeploymentId(); d != "" && !validID(d) {
		return nil, invalid("deployment_id", "%q: want 1 to 128 characters of [A-Za-z0-9_-]", d)
	}
	if c := int(pr.GetCount()); c < 1 || c > s.cfg.MaxCount {
		return nil, invalid("count", "%d: want 1 to %d", pr.GetCount(), s.cfg.MaxCount)
	}
	r := pr.GetResources()
	switch {
	case r == nil:
		return nil, invalid("resources", "required (cpu_millis and memory_bytes)")
	case r.GetCpuMillis() == 0:
		return nil, invalid("resources.cpu_millis", "must be > 0")
	case r.GetMemoryBytes() == 0:
		return nil, invalid("resources.memory_bytes", "must be > 0")
	case r.GetCpuMillis() > 1<<40 || r.GetMemoryBytes() > 1<<60 || r.GetDiskBytes() > 1<<60:
		return nil, invalid("resources", "absurdly large")
	}
	expr, err := constraint.Parse(pr.GetConstraints())
	if err != nil {
		return nil, invalid("constraints", "%v", err)
	}
	switch pr.GetSpread() {
	case "", "dc", "rack":
	default:
		return nil, invalid("spread", "%q: want dc, rack or empty", pr.GetSpread())
	}
	switch pr.GetScoring() {
	case "", plugins.PolicyBinPack, plugins.PolicyLeastAllocated:
	default:
		return nil, invalid("scoring", "%q: want %s or %s", pr.GetScoring(), plugins.PolicyBinPack, plugins.PolicyLeastAllocated)
	}
	for i, dc := range pr.GetPreferredDcs() {
		if err := subjects.DC(dc); err != nil {
			return nil, invalid(fmt.Sprintf("preferred_dcs[%d]", i), "%v", err)
		}
		if slices.Index(pr.GetPreferredDcs(), dc) != i {
			return nil, invalid(fmt.Sprintf("preferred_dcs[%d]", i), "%q is listed twice", dc)
		}
	}
	scoring := pr.GetScoring()
	if scoring == "" {
		scoring = plugins.PolicyBinPack
	}
	return &framework.Request{
		Service:      pr.GetService(),
		Deployment:   pr.GetDeploymentId(),
		Count:        int(pr.GetCount()),
		Resources:    framework.Resources{CPU: int64(r.GetCpuMillis()), Memory: int64(r.GetMemoryBytes()), Disk: int64(r.GetDiskBytes())},
		Constraints:  expr,
		Spread:       pr.GetSpread(),
		MaxPerHost:   int(pr.GetMaxPerHost()),
		PreferredDCs: pr.GetPreferredDcs(),
		Scoring:      scoring,
	}, nil
}

// newID returns a random id of 20 hex characters.
func newID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// waitReady waits until Run has connected.
func (s *Scheduler) waitReady(ctx context.Context) error {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if !s.idx.Synced() {
		return natsbus.Errorf(commonv1.Code_CODE_UNAVAILABLE, "the scheduler has not read the inventory from coord yet")
	}
	return nil
}

// Place decides where the request's allocations go and commits them. Errors are
// *natsbus.StatusError: INVALID_ARGUMENT naming the field, RESOURCE_EXHAUSTED with the
// explanation (details: placed, requested, hosts and one count per rejection reason) when
// fewer than count fit and allow_partial is not set, UNAVAILABLE when coord cannot be
// reached or concurrent schedulers kept winning.
func (s *Scheduler) Place(ctx context.Context, pr *inventoryv1.PlacementRequest) (*inventoryv1.PlacementReply, error) {
	req, err := s.validate(pr)
	if err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	rid := pr.GetRequestId()
	given := rid != ""
	if !given {
		rid = newID()
	}
	// conflicts counts lost transactions (bounded by MaxAttempts); waits counts decisions
	// that found hosts busy with this replica's other decisions, bounded too.
	conflicts, waits := 0, 0
	for attempt := 1; ; attempt++ {
		start := time.Now()
		d := s.idx.Decide(req, true)
		s.m.decision.Observe(time.Since(start).Seconds())
		if len(d.Placements) < req.Count {
			if d.Busy && waits < maxBusyWaits {
				waits++
				s.idx.Abort(d, nil)
				if len(req.Avoid) > 0 {
					// The hosts avoided may be needed after all.
					req.Avoid = nil
				} else {
					s.waitChange(ctx, nil, 200*time.Millisecond)
				}
				continue
			}
			if !pr.GetAllowPartial() || len(d.Placements) == 0 {
				s.idx.Abort(d, nil)
				if given {
					if rec, err := s.record(ctx, rid); err == nil && rec != nil {
						return rec, nil
					}
				}
				for r, n := range d.Rejections {
					s.m.rejections.WithLabelValues(string(r)).Add(float64(n))
				}
				return nil, unplaceable(d)
			}
		}
		reply, stale, err := s.commit(ctx, pr, rid, d, attempt)
		if err != nil || reply != nil {
			return reply, err
		}
		s.m.conflicts.Inc()
		conflicts++
		if conflicts >= s.cfg.MaxAttempts {
			return nil, natsbus.Errorf(commonv1.Code_CODE_UNAVAILABLE,
				"gave up after %d lost transactions: concurrent placements kept changing the chosen hosts", conflicts)
		}
		if req.Avoid == nil {
			req.Avoid = map[*framework.NodeInfo]bool{}
		}
		for _, n := range stale {
			req.Avoid[n] = true
		}
		s.waitChange(ctx, stale, time.Second)
		backoff(ctx, conflicts)
	}
}

// maxBusyWaits bounds how often a request waits for the other decisions of its replica
// (each wait lasts until the index changes, at most 200 ms).
const maxBusyWaits = 50

// backoff pauses a random while that grows with the attempts, so that replicas that keep
// choosing the same hosts (bin packing makes them agree) spread out in time.
func backoff(ctx context.Context, attempt int) {
	d := time.Duration(mrand.Int64N(int64(time.Millisecond) << min(attempt, 6)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// unplaceable is the RESOURCE_EXHAUSTED status of a decision that placed too few.
func unplaceable(d *index.Decision) error {
	err := natsbus.Errorf(commonv1.Code_CODE_RESOURCE_EXHAUSTED, "%s", d.Explanation())
	var se *natsbus.StatusError
	if errors.As(err, &se) {
		se.Details = map[string]string{
			"placed":    strconv.Itoa(len(d.Placements)),
			"requested": strconv.Itoa(d.Req.Count),
			"hosts":     strconv.Itoa(d.Hosts),
		}
		for r, n := range d.Rejections {
			se.Details["rejected_"+string(r)] = strconv.Itoa(n)
		}
	}
	return err
}

// waitChange waits until the nodes are fresh (or, with none, until the index changes),
// at most d.
func (s *Scheduler) waitChange(ctx context.Context, nodes []*framework.NodeInfo, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		ch := s.idx.Changed()
		if len(nodes) > 0 && s.idx.Fresh(nodes) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case <-ch:
			if len(nodes) == 0 {
				return
			}
		}
	}
}

// record returns the stored reply of a committed request, nil when there is none.
func (s *Scheduler) record(ctx context.Context, rid string) (*inventoryv1.PlacementReply, error) {
	n, err := s.coord.Get(ctx, recordPath(rid))
	if errors.Is(err, coordclient.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	rec := &inventoryv1.PlacementRecord{}
	if err := protojson.Unmarshal(n.Value, rec); err != nil {
		return nil, fmt.Errorf("decode %s: %w", n.Path, err)
	}
	return rec.GetReply(), nil
}

var marshal = protojson.MarshalOptions{}

// commit writes a decision in one transaction. It returns the reply when it committed
// (or the request had been committed before), an error when coord failed, and otherwise
// the hosts that changed under the decision (the transaction was lost).
func (s *Scheduler) commit(ctx context.Context, pr *inventoryv1.PlacementRequest, rid string, d *index.Decision, attempt int) (*inventoryv1.PlacementReply, []*framework.NodeInfo, error) {
	now := timestamppb.Now()
	reply := &inventoryv1.PlacementReply{
		RequestId: rid, Requested: pr.GetCount(), Placed: uint32(len(d.Placements)),
		Hosts: uint32(d.Hosts), Attempts: uint32(attempt), Explanation: d.Explanation(),
	}
	if len(d.Rejections) > 0 {
		reply.Rejections = map[string]uint32{}
		for r, n := range d.Rejections {
			reply.Rejections[string(r)] = uint32(n)
		}
	}
	infos := make([]framework.AllocInfo, len(d.Placements))
	txn := s.coord.Txn()
	var ops []coordclient.Op
	for i, p := range d.Placements {
		a := &inventoryv1.Allocation{
			Id: newID(), Host: p.Node.ID, Dc: p.Node.DC, Rack: p.Node.Rack,
			Service: pr.GetService(), DeploymentId: pr.GetDeploymentId(), Version: pr.GetVersion(),
			Resources: pr.GetResources(), Ip: p.IP.String(), RequestId: rid,
			Constraints: pr.GetConstraints(), Spread: pr.GetSpread(), MaxPerHost: pr.GetMaxPerHost(),
			PreferredDcs: pr.GetPreferredDcs(), CreatedAt: now,
		}
		b, err := marshal.Marshal(a)
		if err != nil {
			s.idx.Abort(d, nil)
			return nil, nil, fmt.Errorf("encode allocation: %w", err)
		}
		ops = append(ops, coordclient.OpPut(allocPath(a.Host, a.Id), b))
		reply.Allocations = append(reply.Allocations, a)
		infos[i] = index.AllocInfoOf(a)
	}
	var elses []coordclient.Op
	for _, t := range d.Touched {
		txn.If(coordclient.ModRev(hostPath(t.Node.ID)).Equal(t.HostModRev), coordclient.ModRev(guardPath(t.Node.ID)).Equal(t.GuardModRev))
		g, _ := marshal.Marshal(&inventoryv1.AllocationGuard{Host: t.Node.ID, Count: uint32(t.Count)})
		ops = append(ops, coordclient.OpPut(guardPath(t.Node.ID), g))
		elses = append(elses, coordclient.OpGet(hostPath(t.Node.ID), coordclient.KeysOnly()), coordclient.OpGet(guardPath(t.Node.ID), coordclient.KeysOnly()))
	}
	rec, err := marshal.Marshal(&inventoryv1.PlacementRecord{Reply: reply, CreatedAt: now})
	if err != nil {
		s.idx.Abort(d, nil)
		return nil, nil, fmt.Errorf("encode placement record: %w", err)
	}
	txn.If(coordclient.Missing(recordPath(rid)))
	ops = append(ops, coordclient.OpPut(recordPath(rid), rec))
	elses = append(elses, coordclient.OpGet(recordPath(rid)))
	res, err := txn.Then(ops...).Else(elses...).Commit(ctx)
	if err != nil {
		s.idx.Abort(d, nil)
		return nil, nil, natsbus.Errorf(commonv1.Code_CODE_UNAVAILABLE, "commit placement: %w", err)
	}
	if res.Succeeded {
		s.idx.Commit(d, infos, res.Revision)
		s.m.placed.Add(float64(len(d.Placements)))
		return reply, nil, nil
	}
	if len(res.Results) != len(elses) {
		s.idx.Abort(d, nil)
		return nil, nil, natsbus.Errorf(commonv1.Code_CODE_INTERNAL, "commit placement: %d failure results, want %d", len(res.Results), len(elses))
	}
	if got := res.Results[len(res.Results)-1].Get; got != nil {
		s.idx.Abort(d, nil)
		old := &inventoryv1.PlacementRecord{}
		if err := protojson.Unmarshal(got.Value, old); err != nil {
			return nil, nil, natsbus.Errorf(commonv1.Code_CODE_INTERNAL, "decode %s: %w", got.Path, err)
		}
		return old.GetReply(), nil, nil
	}
	var stale []index.Stale
	var nodes []*framework.NodeInfo
	for i, t := range d.Touched {
		st := index.Stale{Node: t.Node, HostModRev: modRev(res.Results[2*i].Get), GuardModRev: modRev(res.Results[2*i+1].Get)}
		if st.HostModRev != t.HostModRev || st.GuardModRev != t.GuardModRev {
			stale = append(stale, st)
			nodes = append(nodes, t.Node)
		}
	}
	s.idx.Abort(d, stale)
	return nil, nodes, nil
}

func modRev(n *coordclient.Node) int64 {
	if n == nil {
		return 0
	}
	return n.ModRev
}
