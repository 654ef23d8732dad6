package cmdbsync

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/cmdb-sync/internal/rows"
	"github.com/berthdev/berth/services/cmdb-sync/internal/source"
)

// Coord paths (DESIGN §3).
const (
	HostsPrefix = "/berth/hosts"
	AlivePrefix = "/berth/alive"
	AllocPrefix = "/berth/alloc"
)

// writeBatch is the most hosts one transaction writes (one compare and one op each, plus
// the leadership fence, within coord's 128).
const writeBatch = 60

var (
	unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
	marshal   = protojson.MarshalOptions{}
)

// cachedHost is a host node as the term last saw (or wrote) it.
type cachedHost struct {
	h      *inventoryv1.Host
	modRev int64
}

// term is one leadership: it follows the hosts and alive nodes, reads the CMDB and
// writes the inventory until the leadership ends.
type term struct {
	s    *Syncer
	lead *coordclient.Leadership

	mu sync.Mutex
	// hosts are the host nodes; alive the agents' fingerprints of the hosts whose alive
	// node exists; absentSince when each host without one was first seen without it.
	hosts       map[string]cachedHost
	alive       map[string]*agentv1.AgentInfo
	absentSince map[string]time.Time
	synced      int
	// poke asks the loop for a round (an agent came or went).
	poke chan struct{}

	// parsed caches the last parse of the CMDB, for recs and retained (the loop only).
	parsed    *rows.Result
	parsedKey string
	// pending are rejection events to publish once the lock is released.
	pending []natsbus.Event
}

func newTerm(s *Syncer, lead *coordclient.Leadership) *term {
	return &term{s: s, lead: lead, hosts: map[string]cachedHost{}, alive: map[string]*agentv1.AgentInfo{},
		absentSince: map[string]time.Time{}, poke: make(chan struct{}, 1)}
}

// run leads until ctx ends or a write is fenced (the leadership was lost).
func (t *term) run(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { t.follow(wctx, HostsPrefix) })
	wg.Go(func() { t.follow(wctx, AlivePrefix) })
	for !t.isSynced() {
		select {
		case <-ctx.Done():
			return nil
		case <-t.poke:
		case <-time.After(50 * time.Millisecond):
		}
	}
	poll := time.NewTicker(t.s.cfg.PollInterval)
	defer poll.Stop()
	live := time.NewTicker(min(t.s.cfg.GracePeriod/4, time.Second))
	defer live.Stop()
	t.s.fetch(ctx)
	for {
		if err := t.round(ctx, time.Now()); err != nil {
			if errors.Is(err, coordclient.ErrFenced) || ctx.Err() != nil {
				return err
			}
			t.s.log.Warn("inventory round", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-poll.C:
			t.s.fetch(ctx)
		case <-live.C:
		case <-t.poke:
		}
	}
}

func (t *term) isSynced() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.synced >= 2
}

func (t *term) pokeLoop() {
	select {
	case t.poke <- struct{}{}:
	default:
	}
}

// follow lists a prefix, then watches it from the list's revision + 1, again after the
// watch ends, until ctx ends.
func (t *term) follow(ctx context.Context, prefix string) {
	first := true
	for ctx.Err() == nil {
		list, err := t.s.coord.List(ctx, prefix)
		if err != nil {
			if ctx.Err() == nil {
				t.s.log.Warn("list", "prefix", prefix, "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		t.snapshot(prefix, list.Nodes, first)
		first = false
		wctx, cancel := context.WithCancel(ctx)
		for resp := range t.s.coord.Watch(wctx, prefix, list.Revision+1, coordclient.Recursive(),
			coordclient.PrevNode(), coordclient.RelistOnCompaction()) {
			switch {
			case resp.Err != nil:
				t.s.log.Warn("watch ended, listing again", "prefix", prefix, "err", resp.Err)
			case resp.Reset:
				t.snapshot(prefix, resp.Nodes, false)
			default:
				t.events(ctx, prefix, resp.Events)
			}
		}
		cancel()
	}
}

// childOf returns the id of a direct child of prefix.
func childOf(prefix, path string) (string, bool) {
	id, ok := strings.CutPrefix(path, prefix+"/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", false
	}
	return id, true
}

func decodeHost(n coordclient.Node) (*inventoryv1.Host, error) {
	h := &inventoryv1.Host{}
	if err := unmarshal.Unmarshal(n.Value, h); err != nil {
		return nil, err
	}
	return h, nil
}

func decodeAgent(n coordclient.Node) *agentv1.AgentInfo {
	a := &agentv1.AgentInfo{}
	if err := unmarshal.Unmarshal(n.Value, a); err != nil {
		// An alive node says the agent lives whatever its value; the fingerprint is unknown.
		return &agentv1.AgentInfo{}
	}
	return a
}

func (t *term) snapshot(prefix string, nodes []coordclient.Node, first bool) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	switch prefix {
	case HostsPrefix:
		clear(t.hosts)
		for _, n := range nodes {
			id, ok := childOf(prefix, n.Path)
			if !ok || n.Version == 0 {
				continue
			}
			h, err := decodeHost(n)
			if err != nil || h.GetId() != id {
				t.s.log.Warn("host node ignored: not a Host of that id", "path", n.Path, "err", err)
				continue
			}
			t.hosts[id] = cachedHost{h: h, modRev: n.ModRev}
		}
	case AlivePrefix:
		old := t.alive
		t.alive = map[string]*agentv1.AgentInfo{}
		for _, n := range nodes {
			if id, ok := childOf(prefix, n.Path); ok && n.Version > 0 {
				t.alive[id] = decodeAgent(n)
				delete(t.absentSince, id)
			}
		}
		for id := range old {
			if _, ok := t.alive[id]; !ok {
				t.absentSince[id] = now
			}
		}
	}
	if first {
		t.synced++
	}
	t.pokeLoop()
}

// events applies watch events to the cache and publishes the host events they make.
func (t *term) events(ctx context.Context, prefix string, evs []coordclient.Event) {
	var out []natsbus.Event
	now := time.Now()
	t.mu.Lock()
	for _, ev := range evs {
		id, ok := childOf(prefix, ev.Node.Path)
		if !ok {
			continue
		}
		if prefix == AlivePrefix {
			if ev.Type == coordclient.EventPut {
				t.alive[id] = decodeAgent(ev.Node)
				delete(t.absentSince, id)
			} else {
				delete(t.alive, id)
				t.absentSince[id] = now
			}
			continue
		}
		var prev, cur *inventoryv1.Host
		if ev.PrevNode != nil {
			prev, _ = decodeHost(*ev.PrevNode)
		}
		if ev.Type == coordclient.EventPut {
			h, err := decodeHost(ev.Node)
			if err != nil || h.GetId() != id {
				t.s.log.Warn("host node ignored: not a Host of that id", "path", ev.Node.Path, "err", err)
				continue
			}
			cur = h
			if c, ok := t.hosts[id]; !ok || ev.Node.ModRev >= c.modRev {
				t.hosts[id] = cachedHost{h: h, modRev: ev.Node.ModRev}
			}
		} else if c, ok := t.hosts[id]; ok && ev.Revision > c.modRev {
			delete(t.hosts, id)
		}
		out = append(out, t.s.hostEvents(id, prev, cur, t.alive[id], ev.Revision)...)
	}
	t.mu.Unlock()
	t.pokeLoop()
	for _, e := range out {
		t.s.publish(ctx, e)
	}
}

// stateWord is a state as events and the CLI say it.
func stateWord(s inventoryv1.HostState) string {
	switch s {
	case inventoryv1.HostState_HOST_STATE_READY:
		return "ready"
	case inventoryv1.HostState_HOST_STATE_DRAINING:
		return "draining"
	case inventoryv1.HostState_HOST_STATE_DOWN:
		return "down"
	}
	return ""
}

// cmdbFields is the part of a host the CMDB owns.
func cmdbFields(h *inventoryv1.Host) *inventoryv1.Host {
	return &inventoryv1.Host{Id: h.GetId(), Dc: h.GetDc(), Rack: h.GetRack(), Ip: h.GetIp(), CpuMillis: h.GetCpuMillis(),
		MemoryBytes: h.GetMemoryBytes(), DiskBytes: h.GetDiskBytes(), Labels: h.GetLabels(),
		MaxContainers: h.GetMaxContainers(), IpPools: h.GetIpPools(), CmdbDraining: h.GetCmdbDraining()}
}

// drainReason says why a draining host drains.
func drainReason(h *inventoryv1.Host) string {
	var why []string
	if h.GetDrained() {
		r := "drained by an operator"
		if h.GetDrainReason() != "" {
			r += ": " + h.GetDrainReason()
		}
		why = append(why, r)
	}
	if h.GetCmdbDraining() {
		why = append(why, "the CMDB marks it in maintenance")
	}
	if !h.GetInCmdb() {
		why = append(why, "it left the CMDB and still holds allocations")
	}
	return strings.Join(why, "; ")
}

// hostEvents are the events of one change of a host node (cur nil: deleted), at
// revision rev.
func (s *Syncer) hostEvents(id string, prev, cur *inventoryv1.Host, agent *agentv1.AgentInfo, rev int64) []natsbus.Event {
	type ev struct {
		typ, reason string
		details     map[string]string
	}
	var evs []ev
	switch {
	case cur == nil:
		evs = append(evs, ev{typ: "removed", reason: "left the CMDB and holds no allocations"})
	case prev == nil:
		evs = append(evs, ev{typ: "added", reason: "in the CMDB (" + cur.GetSource() + ")"})
		switch cur.GetLiveness() {
		case inventoryv1.Liveness_LIVENESS_UP:
			evs = append(evs, ev{typ: "up", reason: "its agent is alive"})
		case inventoryv1.Liveness_LIVENESS_DOWN:
			evs = append(evs, ev{typ: "down", reason: "its agent has been gone longer than the grace period"})
		}
		if cur.GetState() == inventoryv1.HostState_HOST_STATE_DRAINING {
			evs = append(evs, ev{typ: "draining", reason: drainReason(cur)})
		}
	default:
		if prev.GetLiveness() != cur.GetLiveness() {
			switch cur.GetLiveness() {
			case inventoryv1.Liveness_LIVENESS_UP:
				evs = append(evs, ev{typ: "up", reason: "its agent is alive"})
			case inventoryv1.Liveness_LIVENESS_DOWN:
				evs = append(evs, ev{typ: "down", reason: "its agent has been gone longer than the grace period"})
			}
		}
		if prev.GetState() != cur.GetState() {
			switch {
			case cur.GetState() == inventoryv1.HostState_HOST_STATE_DRAINING:
				evs = append(evs, ev{typ: "draining", reason: drainReason(cur)})
			case cur.GetState() == inventoryv1.HostState_HOST_STATE_READY && prev.GetState() == inventoryv1.HostState_HOST_STATE_DRAINING:
				evs = append(evs, ev{typ: "ready", reason: "no longer draining"})
			}
		}
		if !proto.Equal(cmdbFields(prev), cmdbFields(cur)) {
			evs = append(evs, ev{typ: "updated", reason: "the CMDB row changed"})
		}
	}
	if cur != nil && cur.GetMismatch() != "" && (prev == nil || prev.GetMismatch() != cur.GetMismatch()) {
		d := map[string]string{
			"cmdb_cpu_millis":   strconv.FormatUint(cur.GetCpuMillis(), 10),
			"cmdb_memory_bytes": strconv.FormatUint(cur.GetMemoryBytes(), 10),
		}
		if agent != nil {
			d["agent_cpu_count"] = strconv.FormatUint(uint64(agent.GetCpuCount()), 10)
			d["agent_memory_bytes"] = strconv.FormatUint(agent.GetMemoryBytes(), 10)
		}
		evs = append(evs, ev{typ: "mismatch", reason: cur.GetMismatch(), details: d})
	}
	h := cur
	if h == nil {
		h = prev
	}
	var out []natsbus.Event
	for _, e := range evs {
		subj, err := subjects.HostEvent(e.typ, id)
		if err != nil {
			s.log.Warn("host event not published", "host", id, "type", e.typ, "err", err)
			continue
		}
		data := &eventsv1.HostEvent{Host: id, Dc: h.GetDc(), Reason: e.reason, Details: e.details, At: timestamppb.Now()}
		if cur != nil {
			data.State = stateWord(cur.GetState())
		} else {
			data.State = "removed"
		}
		if prev != nil {
			data.PreviousState = stateWord(prev.GetState())
		}
		out = append(out, natsbus.Event{Subject: subj, ID: natsbus.EventID(id, e.typ, strconv.FormatInt(rev, 10)),
			Type: subjects.EventType(subjects.DomainHost, e.typ), Source: s.source(), Data: data})
	}
	return out
}

// publish sends an event, retrying a little; failures are logged and counted (coord holds
// the truth).
func (s *Syncer) publish(ctx context.Context, e natsbus.Event) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = s.bus.PublishEvent(pctx, e)
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	typ := e.Type[strings.LastIndexByte(e.Type, '.')+1:]
	if err != nil {
		s.m.events.WithLabelValues(typ, "error").Inc()
		s.log.Warn("host event not published", "subject", e.Subject, "err", err)
		return
	}
	s.m.events.WithLabelValues(typ, "ok").Inc()
}

// fetch reads the CMDB and records the outcome; a failed read keeps the last records.
func (s *Syncer) fetch(ctx context.Context) {
	recs, changed, err := s.src.Fetch(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		if s.srcErr == nil {
			s.srcErrSince = time.Now()
			s.log.Warn("CMDB unreadable, keeping the last inventory", "source", s.src.Name(), "err", err)
		}
		s.srcErr = err
		s.m.fetches.WithLabelValues("error").Inc()
		s.m.sourceUp.Set(0)
		return
	}
	if s.srcErr != nil {
		s.log.Info("CMDB readable again", "source", s.src.Name())
	}
	s.srcErr = nil
	s.m.sourceUp.Set(1)
	s.m.lastRead.SetToCurrentTime()
	if !changed {
		s.m.fetches.WithLabelValues("not_modified").Inc()
		return
	}
	s.m.fetches.WithLabelValues("ok").Inc()
	s.lastRecs, s.srcRead = recs, true
	s.recsVersion++
}

// records returns the last good records, their version and whether there are any.
func (s *Syncer) records() ([]source.Record, int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastRecs, s.recsVersion, s.srcRead
}

// write is one host to put (h) if its node is still at modRev, or to delete if its node
// and its allocation guard are still at modRev and guardRev.
type write struct {
	id               string
	h                *inventoryv1.Host
	modRev, guardRev int64
}

// round computes the inventory the CMDB and the agents call for and writes what differs.
func (t *term) round(ctx context.Context, now time.Time) error {
	recs, version, read := t.s.records()
	t.mu.Lock()
	var res *rows.Result
	if read {
		res = t.parseLocked(recs, version)
	}
	var puts []write
	var leaving []string
	seen := map[string]bool{}
	consider := func(id string, d *inventoryv1.Host, cur cachedHost, exists bool) {
		t.liveLocked(d, now)
		d.State = deriveState(d)
		if exists {
			cmp := proto.Clone(d).(*inventoryv1.Host)
			cmp.UpdatedAt = cur.h.GetUpdatedAt()
			if proto.Equal(cmp, cur.h) {
				return
			}
		}
		d.UpdatedAt = timestamppb.New(now)
		puts = append(puts, write{id: id, h: d, modRev: cur.modRev})
	}
	if res != nil {
		for _, row := range res.Hosts {
			id := row.GetId()
			seen[id] = true
			cur, exists := t.hosts[id]
			d := proto.Clone(row).(*inventoryv1.Host)
			d.InCmdb = true
			if exists {
				d.Drained, d.DrainReason = cur.h.GetDrained(), cur.h.GetDrainReason()
				d.Liveness, d.LivenessSince, d.Mismatch = cur.h.GetLiveness(), cur.h.GetLivenessSince(), cur.h.GetMismatch()
			}
			consider(id, d, cur, exists)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(t.hosts)) {
		if seen[id] {
			continue
		}
		cur := t.hosts[id]
		d := proto.Clone(cur.h).(*inventoryv1.Host)
		if res != nil && !res.Claimed[id] {
			// The host left the CMDB: drained while it holds allocations, then removed.
			d.InCmdb = false
			if d.LeftCmdbAt == nil {
				d.LeftCmdbAt = timestamppb.New(now)
			}
			leaving = append(leaving, id)
		}
		consider(id, d, cur, true)
	}
	cached := maps.Clone(t.hosts)
	pending := t.pending
	t.pending = nil
	t.mu.Unlock()
	for _, e := range pending {
		t.s.publish(ctx, e)
	}

	var dels []write
	for _, id := range leaving {
		holds, guardRev, err := t.holdsAllocations(ctx, id)
		if err != nil {
			return err
		}
		if !holds {
			dels = append(dels, write{id: id, modRev: cached[id].modRev, guardRev: guardRev})
			puts = slices.DeleteFunc(puts, func(w write) bool { return w.id == id })
		}
	}
	if err := t.putAll(ctx, puts); err != nil {
		return err
	}
	for _, w := range dels {
		if err := t.remove(ctx, w.id, w.modRev, w.guardRev); err != nil {
			return err
		}
	}
	t.s.m.hostsObserve(t.snapshotHosts())
	return nil
}

func (t *term) snapshotHosts() map[string]*inventoryv1.Host {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]*inventoryv1.Host, len(t.hosts))
	for id, c := range t.hosts {
		out[id] = c.h
	}
	return out
}

// parseLocked parses the records, with the hosts that no row claims as retained (their
// pools may still be in use), reusing the last parse when neither changed; new
// rejections are reported.
func (t *term) parseLocked(recs []source.Record, version int) *rows.Result {
	claimed := rows.IDs(recs, rows.Mapping(t.s.cfg.Source.Mapping))
	var unclaimed []*inventoryv1.Host
	keyIDs := []string{strconv.Itoa(version)}
	for _, id := range slices.Sorted(maps.Keys(t.hosts)) {
		if !claimed[id] {
			unclaimed = append(unclaimed, t.hosts[id].h)
			keyIDs = append(keyIDs, id)
		}
	}
	key := strings.Join(keyIDs, ",")
	if t.parsed != nil && key == t.parsedKey {
		return t.parsed
	}
	res := rows.Parse(recs, rows.Options{Mapping: rows.Mapping(t.s.cfg.Source.Mapping),
		DefaultMaxContainers: uint32(t.s.cfg.DefaultMaxContainers), Source: t.s.src.Kind()}, unclaimed)
	t.parsed, t.parsedKey = &res, key
	t.s.m.rows.Set(float64(len(res.Hosts)))
	t.s.m.rowsRejected.Set(float64(len(res.Rejected)))
	t.pending = append(t.pending, t.s.report(res.Rejected)...)
	return &res
}

// report logs and counts rejections not reported before, and returns their events.
func (s *Syncer) report(rej []rows.Rejection) []natsbus.Event {
	var out []natsbus.Event
	for _, r := range rej {
		key := r.Pos + "\x00" + r.ID + "\x00" + r.Err.Error()
		s.mu.Lock()
		done := s.reported[key]
		s.reported[key] = true
		s.mu.Unlock()
		if done {
			continue
		}
		s.m.rejected.WithLabelValues(r.Reason).Inc()
		s.log.Warn("CMDB row rejected", "source", s.src.Name(), "at", r.Pos, "id", r.ID, "reason", r.Reason, "err", r.Err)
		subj, err := subjects.HostEvent("rejected", r.ID)
		if err != nil {
			continue
		}
		e := natsbus.Event{Subject: subj, ID: natsbus.EventID(r.ID, "rejected", r.Pos, r.Err.Error()),
			Type: subjects.EventType(subjects.DomainHost, "rejected"), Source: s.source(),
			Data: &eventsv1.HostEvent{Host: r.ID, Reason: fmt.Sprintf("%s: %v", r.Pos, r.Err),
				Details: map[string]string{"reason": r.Reason, "at": r.Pos, "source": s.src.Name()}, At: timestamppb.Now()}}
		out = append(out, e)
	}
	return out
}

// liveLocked sets d's liveness from its agent's alive node and its mismatch from the
// agent's fingerprint.
func (t *term) liveLocked(d *inventoryv1.Host, now time.Time) {
	id := d.GetId()
	if agent, ok := t.alive[id]; ok {
		if d.GetLiveness() != inventoryv1.Liveness_LIVENESS_UP {
			d.Liveness, d.LivenessSince = inventoryv1.Liveness_LIVENESS_UP, timestamppb.New(now)
		}
		d.Mismatch = mismatch(d, agent, t.s.cfg.MismatchTolerance)
		return
	}
	since, ok := t.absentSince[id]
	if !ok {
		since = now
		t.absentSince[id] = now
	}
	if now.Sub(since) >= t.s.cfg.GracePeriod && d.GetLiveness() != inventoryv1.Liveness_LIVENESS_DOWN {
		d.Liveness, d.LivenessSince = inventoryv1.Liveness_LIVENESS_DOWN, timestamppb.New(now)
	}
}

// deriveState is a host's state from its liveness and drain flags.
func deriveState(h *inventoryv1.Host) inventoryv1.HostState {
	switch {
	case h.GetLiveness() == inventoryv1.Liveness_LIVENESS_DOWN:
		return inventoryv1.HostState_HOST_STATE_DOWN
	case h.GetDrained() || h.GetCmdbDraining() || !h.GetInCmdb():
		return inventoryv1.HostState_HOST_STATE_DRAINING
	}
	return inventoryv1.HostState_HOST_STATE_READY
}

// mismatch describes how the agent's fingerprint disagrees with the CMDB, "" when it
// agrees (or says nothing).
func mismatch(h *inventoryv1.Host, a *agentv1.AgentInfo, tol float64) string {
	var parts []string
	off := func(cmdb, agent float64) bool { return cmdb > 0 && agent > 0 && math.Abs(agent-cmdb) > tol*cmdb }
	if cpu := float64(a.GetCpuCount()) * 1000; off(float64(h.GetCpuMillis()), cpu) {
		parts = append(parts, fmt.Sprintf("cpu: CMDB %g cores, agent %d", float64(h.GetCpuMillis())/1000, a.GetCpuCount()))
	}
	if off(float64(h.GetMemoryBytes()), float64(a.GetMemoryBytes())) {
		parts = append(parts, fmt.Sprintf("memory: CMDB %.1f GiB, agent %.1f GiB",
			float64(h.GetMemoryBytes())/(1<<30), float64(a.GetMemoryBytes())/(1<<30)))
	}
	return strings.Join(parts, "; ")
}

// holdsAllocations reads the host's allocation subtree: whether any allocation is there,
// and the guard's mod_rev (0 when there is none).
func (t *term) holdsAllocations(ctx context.Context, id string) (bool, int64, error) {
	list, err := t.s.coord.List(ctx, AllocPrefix+"/"+id, coordclient.Recursive(), coordclient.KeysOnly())
	if err != nil {
		return false, 0, fmt.Errorf("read allocations of %s: %w", id, err)
	}
	var guard int64
	holds := false
	for _, n := range list.Nodes {
		if n.Path == AllocPrefix+"/"+id {
			guard = n.ModRev
		} else if n.Version > 0 {
			holds = true
		}
	}
	return holds, guard, nil
}

// putAll writes hosts in fenced transactions of writeBatch, each guarded by the
// mod_revs the round saw; a batch that loses is written host by host, and a host that
// loses is left to the next round (the watch brings the new state).
func (t *term) putAll(ctx context.Context, puts []write) error {
	for len(puts) > 0 {
		batch := puts[:min(len(puts), writeBatch)]
		puts = puts[len(batch):]
		ok, err := t.commit(ctx, batch)
		if err != nil {
			return err
		}
		if ok || len(batch) == 1 {
			continue
		}
		for _, w := range batch {
			if _, err := t.commit(ctx, []write{w}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *term) commit(ctx context.Context, ws []write) (bool, error) {
	txn := t.lead.Txn()
	for _, w := range ws {
		b, err := marshal.Marshal(w.h)
		if err != nil {
			return false, fmt.Errorf("encode host %s: %w", w.id, err)
		}
		txn.If(coordclient.ModRev(HostsPrefix + "/" + w.id).Equal(w.modRev)).Then(coordclient.OpPut(HostsPrefix+"/"+w.id, b))
	}
	res, err := txn.Commit(ctx)
	if err != nil {
		t.s.m.writes.WithLabelValues("put", "error").Add(float64(len(ws)))
		return false, fmt.Errorf("write %d hosts: %w", len(ws), err)
	}
	if !res.Succeeded {
		t.s.m.writes.WithLabelValues("put", "conflict").Add(float64(len(ws)))
		return false, nil
	}
	t.s.m.writes.WithLabelValues("put", "ok").Add(float64(len(ws)))
	t.mu.Lock()
	for _, w := range ws {
		if c, ok := t.hosts[w.id]; !ok || c.modRev <= res.Revision {
			t.hosts[w.id] = cachedHost{h: w.h, modRev: res.Revision}
		}
	}
	t.mu.Unlock()
	return true, nil
}

// remove deletes a host that left the CMDB and holds no allocations, with its allocation
// guard, if neither changed since they were read.
func (t *term) remove(ctx context.Context, id string, modRev, guardRev int64) error {
	guard := AllocPrefix + "/" + id
	res, err := t.lead.Txn().
		If(coordclient.ModRev(HostsPrefix+"/"+id).Equal(modRev), coordclient.ModRev(guard).Equal(guardRev)).
		Then(coordclient.OpDelete(HostsPrefix+"/"+id), coordclient.OpDelete(guard)).Commit(ctx)
	if err != nil {
		t.s.m.writes.WithLabelValues("delete", "error").Inc()
		return fmt.Errorf("remove host %s: %w", id, err)
	}
	if !res.Succeeded {
		t.s.m.writes.WithLabelValues("delete", "conflict").Inc()
		return nil
	}
	t.s.m.writes.WithLabelValues("delete", "ok").Inc()
	t.s.log.Info("host removed: it left the CMDB and holds no allocations", "host", id)
	t.mu.Lock()
	if c, ok := t.hosts[id]; ok && c.modRev == modRev {
		delete(t.hosts, id)
	}
	t.mu.Unlock()
	return nil
}
