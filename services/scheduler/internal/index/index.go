// Package index is the scheduler's in-memory view of the inventory: every host with its
// state, liveness, capacity, address pool and allocations, fed by a coord watch (Sync), and
// the decision procedure that places a request on it (Decide). A decision looks at a
// sample of the hosts that can take an allocation at all (kept in sets per datacenter, so
// that full, down or draining hosts cost nothing) instead of scanning the whole fleet, and
// scans everything only to explain a request it could not place.
//
// The index is optimistic (Omega): a decision is made against what the index has seen,
// committed by the caller in a coord transaction that compares the revisions of the hosts
// it touches, and applied to the index at once when the transaction succeeds (Commit) or
// forgotten when it fails (Abort), in which case the hosts that changed under it are left
// alone until the watch has delivered their new state.
package index

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/berthdev/berth/pkg/ippool"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
)

// Options tune an Index.
type Options struct {
	// SampleMin is the fewest feasible hosts a decision ranks before choosing (unless
	// fewer exist); default 64.
	SampleMin int
	// SampleFactor is how many feasible hosts per allocation asked for a decision ranks,
	// at least; default 2.
	SampleFactor int
	// Seed seeds the random start of the sampling; 0 picks one.
	Seed uint64
}

// Index is the in-memory inventory. It is safe for concurrent use; decisions are made
// one at a time.
type Index struct {
	fw   *framework.Framework
	opts Options

	mu sync.Mutex
	// hosts holds every host ever seen, by id; a NodeInfo is never replaced.
	hosts map[string]*framework.NodeInfo
	// all lists hosts in the order first seen.
	all []*framework.NodeInfo
	// avail lists the hosts that could take one more allocation of some request: known,
	// ready, alive, under their cap, with a free address. availDC splits it by datacenter.
	avail   []*framework.NodeInfo
	availDC map[string][]*framework.NodeInfo
	// svcDC and svcRack count allocations per service per datacenter and per
	// datacenter/rack, for spreading.
	svcDC, svcRack map[string]map[string]int
	// intern deduplicates service and deployment strings.
	intern map[string]string
	allocs int
	cycle  uint64
	rng    *rand.Rand
	// changed is closed (and replaced) whenever the watch applies something.
	changed chan struct{}
	// synced counts the prefixes that have been listed once.
	synced  int
	scratch framework.Scratch
}

// New returns an empty index deciding with fw.
func New(fw *framework.Framework, opts Options) *Index {
	if opts.SampleMin <= 0 {
		opts.SampleMin = 64
	}
	if opts.SampleFactor <= 0 {
		opts.SampleFactor = 2
	}
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Index{
		fw:      fw,
		opts:    opts,
		hosts:   map[string]*framework.NodeInfo{},
		availDC: map[string][]*framework.NodeInfo{},
		svcDC:   map[string]map[string]int{},
		svcRack: map[string]map[string]int{},
		intern:  map[string]string{},
		rng:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		changed: make(chan struct{}),
	}
}

// Stats are counts for metrics and logs.
type Stats struct {
	Hosts, Available, Allocations int
}

// Stats returns the current counts.
func (x *Index) Stats() Stats {
	x.mu.Lock()
	defer x.mu.Unlock()
	known := 0
	for _, n := range x.all {
		if n.Known {
			known++
		}
	}
	return Stats{Hosts: known, Available: len(x.avail), Allocations: x.allocs}
}

// Changed returns a channel closed the next time the index changes.
func (x *Index) Changed() <-chan struct{} {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.changed
}

func (x *Index) notifyLocked() {
	close(x.changed)
	x.changed = make(chan struct{})
}

func (x *Index) str(s string) string {
	if s == "" {
		return ""
	}
	if v, ok := x.intern[s]; ok {
		return v
	}
	x.intern[s] = s
	return s
}

func (x *Index) nodeLocked(id string) *framework.NodeInfo {
	n, ok := x.hosts[id]
	if !ok {
		n = framework.NewNodeInfo(id)
		x.hosts[id] = n
		x.all = append(x.all, n)
	}
	return n
}

// ApplyHost records host h, written at revision modRev.
func (x *Index) ApplyHost(h *inventoryv1.Host, modRev int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.setHostLocked(h, modRev)
	x.notifyLocked()
}

// ApplyHostDeleted records that host id left the inventory.
func (x *Index) ApplyHostDeleted(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.deleteHostLocked(id)
	x.notifyLocked()
}

// ApplyAlive records whether host id's agent is alive.
func (x *Index) ApplyAlive(id string, alive bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.setAliveLocked(id, alive)
	x.notifyLocked()
}

// ApplyAlloc records allocation a of host (written with the host's guard at guardModRev;
// 0 leaves the guard's revision alone).
func (x *Index) ApplyAlloc(host string, a framework.AllocInfo, guardModRev int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.addAllocLocked(host, a)
	if guardModRev > 0 {
		x.setGuardLocked(host, guardModRev)
	}
	x.notifyLocked()
}

func (x *Index) setHostLocked(h *inventoryv1.Host, modRev int64) {
	n := x.nodeLocked(h.GetId())
	x.removeAvailLocked(n)
	oldDC, oldRack := n.DC, n.Rack
	n.Known = true
	n.DC, n.Rack, n.IP = x.str(h.GetDc()), x.str(h.GetRack()), h.GetIp()
	n.Labels = h.GetLabels()
	n.State = h.GetState()
	n.Capacity = framework.Resources{
		CPU: clampInt64(h.GetCpuMillis()), Memory: clampInt64(h.GetMemoryBytes()), Disk: clampInt64(h.GetDiskBytes()),
	}
	n.MaxContainers = int(h.GetMaxContainers())
	pool, err := ippool.Parse(h.GetIpPools())
	if err != nil {
		// cmdb-sync validates pools; a host whose pool does not parse takes nothing.
		pool = ippool.Pool{}
	}
	n.Pool, n.PoolSize = pool, pool.Size()
	n.HostModRev = modRev
	if (oldDC != n.DC || oldRack != n.Rack) && len(n.Allocs) > 0 {
		for _, a := range n.Allocs {
			x.countDomainLocked(a.Service, oldDC, oldRack, -1)
			x.countDomainLocked(a.Service, n.DC, n.Rack, +1)
		}
	}
	x.updateAvailLocked(n)
}

func (x *Index) deleteHostLocked(id string) {
	n, ok := x.hosts[id]
	if !ok {
		return
	}
	x.removeAvailLocked(n)
	n.Known = false
	n.State = inventoryv1.HostState_HOST_STATE_UNSPECIFIED
	n.HostModRev, n.WantHostModRev = 0, 0
}

func (x *Index) setAliveLocked(id string, alive bool) {
	n := x.nodeLocked(id)
	n.Alive = alive
	x.updateAvailLocked(n)
}

func (x *Index) setGuardLocked(id string, modRev int64) {
	n := x.nodeLocked(id)
	n.GuardModRev = max(n.GuardModRev, modRev)
}

func (x *Index) deleteGuardLocked(id string) {
	n := x.nodeLocked(id)
	n.GuardModRev, n.WantGuardModRev = 0, 0
}

func (x *Index) countDomainLocked(svc, dc, rack string, d int) {
	for _, m := range []struct {
		byS map[string]map[string]int
		key string
	}{{x.svcDC, dc}, {x.svcRack, dc + "/" + rack}} {
		c := m.byS[svc]
		if c == nil {
			c = map[string]int{}
			m.byS[svc] = c
		}
		c[m.key] += d
		if c[m.key] <= 0 {
			delete(c, m.key)
			if len(c) == 0 {
				delete(m.byS, svc)
			}
		}
	}
}

// addAllocLocked adds (or replaces) allocation a on host; it reports whether it was new.
func (x *Index) addAllocLocked(host string, a framework.AllocInfo) bool {
	n := x.nodeLocked(host)
	a.Service, a.Deployment = x.str(a.Service), x.str(a.Deployment)
	for i := range n.Allocs {
		if n.Allocs[i].ID == a.ID {
			x.dropAllocLocked(n, i)
			break
		}
	}
	n.Allocs = append(n.Allocs, a)
	n.Used = n.Used.Add(a.Resources)
	if a.IP.IsValid() {
		n.UsedIPs, _ = ippool.Insert(n.UsedIPs, a.IP)
	}
	x.countDomainLocked(a.Service, n.DC, n.Rack, +1)
	x.allocs++
	x.updateAvailLocked(n)
	return true
}

func (x *Index) removeAllocLocked(host, id string) bool {
	n, ok := x.hosts[host]
	if !ok {
		return false
	}
	for i := range n.Allocs {
		if n.Allocs[i].ID == id {
			x.dropAllocLocked(n, i)
			x.updateAvailLocked(n)
			return true
		}
	}
	return false
}

func (x *Index) dropAllocLocked(n *framework.NodeInfo, i int) {
	a := n.Allocs[i]
	n.Allocs = slices.Delete(n.Allocs, i, i+1)
	n.Used = n.Used.Sub(a.Resources)
	if a.IP.IsValid() {
		n.UsedIPs, _ = ippool.Remove(n.UsedIPs, a.IP)
	}
	x.countDomainLocked(a.Service, n.DC, n.Rack, -1)
	x.allocs--
}

func (x *Index) clearAllocsLocked() {
	for _, n := range x.all {
		if len(n.Allocs) > 0 {
			n.Allocs, n.UsedIPs, n.Used = nil, nil, framework.Resources{}
			x.updateAvailLocked(n)
		}
		n.GuardModRev, n.WantGuardModRev = 0, 0
	}
	clear(x.svcDC)
	clear(x.svcRack)
	x.allocs = 0
}

// eligible reports whether n could take one more allocation of some request.
func eligible(n *framework.NodeInfo) bool {
	return n.Known && n.Alive && n.State == inventoryv1.HostState_HOST_STATE_READY &&
		len(n.Allocs) < n.MaxContainers && uint64(len(n.UsedIPs)) < n.PoolSize
}

func (x *Index) updateAvailLocked(n *framework.NodeInfo) {
	all, _ := n.AvailPos()
	in := all >= 0
	if in == eligible(n) {
		return
	}
	if in {
		x.removeAvailLocked(n)
		return
	}
	dcList := x.availDC[n.DC]
	n.SetAvailPos(len(x.avail), len(dcList))
	x.avail = append(x.avail, n)
	x.availDC[n.DC] = append(dcList, n)
}

func (x *Index) removeAvailLocked(n *framework.NodeInfo) {
	all, dc := n.AvailPos()
	if all < 0 {
		return
	}
	x.avail = swapRemove(x.avail, all, func(m *framework.NodeInfo, i int) { _, d := m.AvailPos(); m.SetAvailPos(i, d) })
	list := swapRemove(x.availDC[n.DC], dc, func(m *framework.NodeInfo, i int) { a, _ := m.AvailPos(); m.SetAvailPos(a, i) })
	if len(list) == 0 {
		delete(x.availDC, n.DC)
	} else {
		x.availDC[n.DC] = list
	}
	n.SetAvailPos(-1, -1)
}

// swapRemove removes element i by moving the last element into its place, telling moved
// its new position.
func swapRemove(s []*framework.NodeInfo, i int, moved func(*framework.NodeInfo, int)) []*framework.NodeInfo {
	last := len(s) - 1
	if i != last {
		s[i] = s[last]
		moved(s[i], i)
	}
	s[last] = nil
	return s[:last]
}

func clampInt64(v uint64) int64 {
	if v > 1<<62 {
		return 1 << 62
	}
	return int64(v)
}

// Placement is one allocation of a decision.
type Placement struct {
	Node *framework.NodeInfo
	IP   netip.Addr
}

// Touched is a host a decision puts allocations on, with the revisions the decision saw.
type Touched struct {
	Node        *framework.NodeInfo
	HostModRev  int64
	GuardModRev int64
	// Count is the host's allocation count once the decision is committed.
	Count int
}

// Decision is the outcome of Decide.
type Decision struct {
	Req        *framework.Request
	Placements []Placement
	Touched    []Touched
	// Hosts is the number of hosts in the inventory.
	Hosts int
	// Rejections counts the hosts each filter rejected, when fewer than Req.Count were
	// placed; CapValue is the container cap of the hosts at their cap when they share one.
	Rejections map[framework.Reason]int
	CapValue   int
	// Busy is set when hosts were left alone because other decisions of this replica were
	// committing to them or the index had not caught up with them: trying again later may
	// place more.
	Busy bool
	// reserved is set while the touched hosts carry a Busy mark of this decision.
	reserved bool
}

// Explanation is "placed 7 of 10: of 1200 hosts, 800 lack memory, ...", or "" when every
// allocation was placed.
func (d *Decision) Explanation() string {
	if len(d.Placements) >= d.Req.Count {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "placed %d of %d: ", len(d.Placements), d.Req.Count)
	if d.Hosts == 0 {
		b.WriteString("the inventory has no hosts")
		return b.String()
	}
	type rc struct {
		r framework.Reason
		n int
	}
	var rs []rc
	for r, n := range d.Rejections {
		rs = append(rs, rc{r, n})
	}
	slices.SortFunc(rs, func(a, b rc) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return strings.Compare(string(a.r), string(b.r))
	})
	fmt.Fprintf(&b, "of %d hosts", d.Hosts)
	if len(rs) == 0 {
		b.WriteString(", none can take more")
	}
	for _, r := range rs {
		fmt.Fprintf(&b, ", %d %s", r.n, r.r.Phrase(d.CapValue))
	}
	return b.String()
}

// source is a list of hosts a decision samples from, starting at a random offset.
type source struct {
	list        []*framework.NodeInfo
	start, done int
}

// Decide places req on the index as it is. With reserve, the hosts it touches are marked
// busy for the other decisions of this replica until Commit or Abort; without, the
// decision is only advice (a dry run, or a caller that applies it with Commit at once).
func (x *Index) Decide(req *framework.Request, reserve bool) *Decision {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.cycle++
	var base map[string]int
	switch req.Spread {
	case "dc":
		base = x.svcDC[req.Service]
	case "rack":
		base = x.svcRack[req.Service]
	}
	s := framework.NewCycleState(req, x.cycle, base)
	d := &Decision{Req: req}
	policy := req.Scoring
	if policy == "" {
		policy = "binpack"
	}

	srcs := x.sourcesLocked(req)
	limit := max(x.opts.SampleMin, x.opts.SampleFactor*req.Count)
	var cands []*framework.NodeInfo
	exhausted := false
	cands, exhausted = x.collectLocked(s, srcs, limit, cands, d)
	for len(d.Placements) < req.Count {
		if len(cands) == 0 {
			if exhausted {
				break
			}
			cands, exhausted = x.collectLocked(s, srcs, limit, cands, d)
			continue
		}
		b := x.fw.Best(s, cands, policy, &x.scratch)
		n := cands[b]
		ip, ok := s.FreeIP(n)
		if !ok {
			cands = slices.Delete(cands, b, b+1)
			continue
		}
		s.Assume(n, ip)
		d.Placements = append(d.Placements, Placement{Node: n, IP: ip})
		if !x.fw.RunFilters(s, n).IsSuccess() {
			cands = slices.Delete(cands, b, b+1)
		}
	}
	for _, p := range d.Placements {
		if s.Pending(p.Node) > 0 && !slices.ContainsFunc(d.Touched, func(t Touched) bool { return t.Node == p.Node }) {
			d.Touched = append(d.Touched, Touched{
				Node: p.Node, HostModRev: p.Node.HostModRev, GuardModRev: p.Node.GuardModRev, Count: s.Count(p.Node),
			})
		}
	}
	if len(d.Placements) < req.Count {
		x.explainLocked(s, d)
	}
	if reserve {
		for _, t := range d.Touched {
			t.Node.Busy++
		}
		d.reserved = true
	}
	return d
}

// sourcesLocked returns the host lists a decision samples, in order: the datacenters the
// constraints allow, else the preferred datacenters and then every available host.
func (x *Index) sourcesLocked(req *framework.Request) []*source {
	var srcs []*source
	add := func(list []*framework.NodeInfo) {
		if len(list) > 0 {
			srcs = append(srcs, &source{list: list, start: x.rng.IntN(len(list))})
		}
	}
	if dcs, ok := req.Constraints.Only("dc"); ok {
		for _, dc := range dcs {
			add(x.availDC[dc])
		}
		return srcs
	}
	for _, dc := range req.PreferredDCs {
		add(x.availDC[dc])
	}
	add(x.avail)
	return srcs
}

// collectLocked appends to cands up to limit more feasible hosts from srcs (skipping
// those already looked at) and reports whether the sources are exhausted.
func (x *Index) collectLocked(s *framework.CycleState, srcs []*source, limit int, cands []*framework.NodeInfo, d *Decision) ([]*framework.NodeInfo, bool) {
	want := len(cands) + limit
	for _, src := range srcs {
		for src.done < len(src.list) {
			if len(cands) >= want {
				return cands, false
			}
			n := src.list[(src.start+src.done)%len(src.list)]
			src.done++
			if s.Seen(n) {
				continue
			}
			st := x.fw.RunFilters(s, n)
			if st.IsSuccess() {
				cands = append(cands, n)
			} else if st.Reason == framework.ReasonBusy {
				d.Busy = true
			}
		}
	}
	return cands, true
}

// explainLocked counts, over every host of the inventory, the first filter that rejects
// it now (the decision's placements included).
func (x *Index) explainLocked(s *framework.CycleState, d *Decision) {
	d.Rejections = map[framework.Reason]int{}
	capValue := -1
	for _, n := range x.all {
		if !n.Known {
			continue
		}
		d.Hosts++
		st := x.fw.RunFilters(s, n)
		if st.IsSuccess() {
			continue
		}
		d.Rejections[st.Reason]++
		switch {
		case st.Reason == framework.ReasonBusy:
			d.Busy = true
		case st.Reason == framework.ReasonCap && capValue == -1:
			capValue = n.MaxContainers
		case st.Reason == framework.ReasonCap && capValue != n.MaxContainers:
			capValue = 0
		}
	}
	d.CapValue = max(capValue, 0)
}

// Commit applies a committed decision: allocs[i] is the allocation of d.Placements[i],
// and rev the revision of the transaction that wrote them.
func (x *Index) Commit(d *Decision, allocs []framework.AllocInfo, rev int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for i, p := range d.Placements {
		x.addAllocLocked(p.Node.ID, allocs[i])
	}
	for _, t := range d.Touched {
		t.Node.GuardModRev = max(t.Node.GuardModRev, rev)
	}
	x.unreserveLocked(d)
	x.notifyLocked()
}

// Stale is what a lost transaction learned of a host: the revisions its host node and
// guard are at now.
type Stale struct {
	Node                    *framework.NodeInfo
	HostModRev, GuardModRev int64
}

// Abort forgets an uncommitted decision; stale marks hosts that changed under it, which
// decisions leave alone until the watch has caught up with them.
func (x *Index) Abort(d *Decision, stale []Stale) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, st := range stale {
		n := st.Node
		if st.HostModRev > n.HostModRev {
			n.WantHostModRev = max(n.WantHostModRev, st.HostModRev)
		}
		if st.GuardModRev > n.GuardModRev {
			n.WantGuardModRev = max(n.WantGuardModRev, st.GuardModRev)
		}
	}
	x.unreserveLocked(d)
	x.notifyLocked()
}

func (x *Index) unreserveLocked(d *Decision) {
	if !d.reserved {
		return
	}
	for _, t := range d.Touched {
		t.Node.Busy--
	}
	d.reserved = false
}

// Fresh reports whether none of the nodes is stale.
func (x *Index) Fresh(nodes []*framework.NodeInfo) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, n := range nodes {
		if n.Stale() {
			return false
		}
	}
	return true
}

// Found is an allocation found by Find.
type Found struct {
	Node  *framework.NodeInfo
	Alloc framework.AllocInfo
}

// Find returns the allocations named in ids, of deployment, or of service (selectors
// combine with OR; empty ones select nothing), and the ids no host holds. It scans every
// allocation: releasing is rare next to placing.
func (x *Index) Find(ids []string, deployment, service string) (found []Found, missing []string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	seen := map[string]bool{}
	for _, n := range x.all {
		for _, a := range n.Allocs {
			if want[a.ID] || (deployment != "" && a.Deployment == deployment) || (service != "" && a.Service == service) {
				found = append(found, Found{Node: n, Alloc: a})
				seen[a.ID] = true
			}
		}
	}
	for _, id := range ids {
		if !seen[id] {
			missing = append(missing, id)
		}
	}
	return found, missing
}

// DownAllocations returns the allocations of the hosts that are down, by host, with each
// host's guard revision.
func (x *Index) DownAllocations() map[*framework.NodeInfo][]framework.AllocInfo {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := map[*framework.NodeInfo][]framework.AllocInfo{}
	for _, n := range x.all {
		if n.Known && n.State == inventoryv1.HostState_HOST_STATE_DOWN && len(n.Allocs) > 0 && !n.Stale() {
			out[n] = slices.Clone(n.Allocs)
		}
	}
	return out
}

// Guard returns the revisions a transaction on n's allocations compares, and its
// allocation count.
func (x *Index) Guard(n *framework.NodeInfo) (hostModRev, guardModRev int64, count int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return n.HostModRev, n.GuardModRev, len(n.Allocs)
}

// Reserve marks nodes busy for this replica's decisions (delta 1) or clears the mark
// (delta -1).
func (x *Index) Reserve(nodes []*framework.NodeInfo, delta int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, n := range nodes {
		n.Busy += delta
	}
	if delta < 0 {
		x.notifyLocked()
	}
}

// Removed applies a committed transaction that deleted allocations ids of node n at
// revision rev.
func (x *Index) Removed(n *framework.NodeInfo, ids []string, rev int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, id := range ids {
		x.removeAllocLocked(n.ID, id)
	}
	n.GuardModRev = max(n.GuardModRev, rev)
	x.notifyLocked()
}

// MarkStale records what a lost transaction learned of hosts (see Abort) without a
// decision to forget.
func (x *Index) MarkStale(stale []Stale) {
	x.Abort(&Decision{}, stale)
}

// Present returns the ids among ids that n holds now.
func (x *Index) Present(n *framework.NodeInfo, ids []string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for _, id := range ids {
		if slices.ContainsFunc(n.Allocs, func(a framework.AllocInfo) bool { return a.ID == id }) {
			out = append(out, id)
		}
	}
	return out
}
