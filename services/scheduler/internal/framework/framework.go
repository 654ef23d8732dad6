// Package framework is the scheduler's plugin framework, after the Kubernetes scheduler
// framework: a host is kept for a request when every Filter plugin returns Success, and
// the hosts kept are ranked by the weighted sum of the Score plugins' scores. Plugins are
// built from an explicit, ordered Registry (no registration by init side effects), and
// report why they rejected a host with a Status carrying a Code and a Reason, which the
// scheduler counts to explain a request it could not place.
package framework

import (
	"fmt"
	"net/netip"

	"github.com/berthdev/berth/pkg/ippool"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/constraint"
)

// Code classifies a plugin's verdict.
type Code uint8

// Codes.
const (
	// Success means the host passes.
	Success Code = iota
	// Unschedulable means the host cannot take this request now (full, down, ...).
	Unschedulable
	// Error means the plugin failed; the host is skipped and the error reported.
	Error
)

// Reason says why a filter rejected a host, in a word that the explanation of a failed
// request turns into a phrase (Phrase).
type Reason string

// Reasons of the in-tree filters.
const (
	ReasonDown        Reason = "down"
	ReasonDraining    Reason = "draining"
	ReasonNoAgent     Reason = "no_agent"
	ReasonBusy        Reason = "busy"
	ReasonCap         Reason = "cap"
	ReasonIP          Reason = "ip"
	ReasonCPU         Reason = "cpu"
	ReasonMemory      Reason = "memory"
	ReasonDisk        Reason = "disk"
	ReasonConstraints Reason = "constraints"
	ReasonPerHost     Reason = "per_host"
)

// Phrase is the reason as the end of "N hosts ...".
func (r Reason) Phrase(n int) string {
	switch r {
	case ReasonDown:
		return "are down"
	case ReasonDraining:
		return "are draining"
	case ReasonNoAgent:
		return "have no live agent"
	case ReasonBusy:
		return "are being updated by a concurrent placement"
	case ReasonCap:
		if n > 0 {
			return fmt.Sprintf("are at the %d-container cap", n)
		}
		return "are at their container cap"
	case ReasonIP:
		return "have no free IP"
	case ReasonCPU:
		return "lack CPU"
	case ReasonMemory:
		return "lack memory"
	case ReasonDisk:
		return "lack disk"
	case ReasonConstraints:
		return "do not match the constraints"
	case ReasonPerHost:
		return "already hold max_per_host allocations of the service"
	}
	return "are rejected by " + string(r)
}

// Status is a plugin's verdict. It is a value: returning it allocates nothing.
type Status struct {
	Code   Code
	Reason Reason
}

// OK is the Success status.
var OK = Status{}

// Reject returns an Unschedulable status with the reason.
func Reject(r Reason) Status { return Status{Code: Unschedulable, Reason: r} }

// IsSuccess reports whether s is Success.
func (s Status) IsSuccess() bool { return s.Code == Success }

// Plugin is what every plugin has: a name unique in the registry.
type Plugin interface {
	Name() string
}

// FilterPlugin decides whether a host can take one more allocation of the request.
type FilterPlugin interface {
	Plugin
	Filter(s *CycleState, n *NodeInfo) Status
}

// MaxScore is the highest score a ScorePlugin returns; scores are 0 to MaxScore.
const MaxScore = 100

// ScorePlugin ranks a host that passed every filter: 0 to MaxScore, higher is better.
type ScorePlugin interface {
	Plugin
	Score(s *CycleState, n *NodeInfo) int64
}

// Resources are amounts of CPU (millicores), memory and disk (bytes).
type Resources struct {
	CPU, Memory, Disk int64
}

// Add returns r + o.
func (r Resources) Add(o Resources) Resources {
	return Resources{CPU: r.CPU + o.CPU, Memory: r.Memory + o.Memory, Disk: r.Disk + o.Disk}
}

// Sub returns r - o.
func (r Resources) Sub(o Resources) Resources {
	return Resources{CPU: r.CPU - o.CPU, Memory: r.Memory - o.Memory, Disk: r.Disk - o.Disk}
}

// AllocInfo is what the scheduler keeps of one allocation in memory.
type AllocInfo struct {
	ID         string
	Service    string
	Deployment string
	Resources  Resources
	IP         netip.Addr
}

// NodeInfo is one host as the scheduler sees it: its inventory record, its liveness and
// what its allocations use. The index owns every NodeInfo and changes it under its lock;
// plugins read it during a decision, which holds that lock.
type NodeInfo struct {
	ID, DC, Rack, IP string
	Labels           map[string]string
	State            inventoryv1.HostState
	// Alive is set while the host's agent has its alive node.
	Alive bool
	// Known is set while the host has an inventory record (an allocation or alive node may
	// exist for a host that has none).
	Known         bool
	Capacity      Resources
	MaxContainers int
	Pool          ippool.Pool
	PoolSize      uint64

	// Used sums the resources of Allocs.
	Used Resources
	// Allocs are the host's allocations.
	Allocs []AllocInfo
	// UsedIPs are the allocations' addresses, sorted.
	UsedIPs []netip.Addr

	// HostModRev is the mod_rev of /berth/hosts/<id> as last seen (0: none).
	HostModRev int64
	// GuardModRev is the mod_rev of the guard /berth/alloc/<id> as last seen (0: none).
	GuardModRev int64
	// WantHostModRev and WantGuardModRev are revisions the index knows the nodes have
	// reached (a lost transaction said so) but the watch has not delivered yet: the host is
	// not used until it has.
	WantHostModRev, WantGuardModRev int64
	// Busy counts the decisions of this replica that chose the host and are not committed
	// yet; a busy host is left to them.
	Busy int

	// pendCycle and pend hold what the decision in progress (cycle pendCycle) has put on
	// the host so far.
	pendCycle uint64
	pend      pending
	// seenCycle is the decision whose candidates already include the host.
	seenCycle uint64
	// availAll and availDC are the host's positions in the index's available sets.
	availAll, availDC int
}

// pending is what a decision has tentatively put on a host.
type pending struct {
	count int
	res   Resources
	ips   []netip.Addr
}

// Attr implements constraint.Attrs: dc, rack and id are the host's fields, other keys its
// labels.
func (n *NodeInfo) Attr(key string) (string, bool) {
	switch key {
	case "dc":
		return n.DC, n.DC != ""
	case "rack":
		return n.Rack, n.Rack != ""
	case "id":
		return n.ID, true
	}
	v, ok := n.Labels[key]
	return v, ok
}

// Stale reports whether the index knows the host changed in ways it has not seen yet.
func (n *NodeInfo) Stale() bool {
	return n.HostModRev < n.WantHostModRev || n.GuardModRev < n.WantGuardModRev
}

// Request is a validated placement request.
type Request struct {
	Service     string
	Deployment  string
	Count       int
	Resources   Resources
	Constraints constraint.Expr
	// Spread is "", "dc" or "rack".
	Spread       string
	MaxPerHost   int
	PreferredDCs []string
	// Scoring is "binpack" or "least_allocated".
	Scoring string
	// Avoid are hosts this request lost a transaction on: a retry leaves them to the
	// replica that won them (unless it cannot place without them), so that replicas that
	// agree on the best host (bin packing makes them) do not keep colliding.
	Avoid map[*NodeInfo]bool
}

// CycleState is the state of one decision: the request and what the decision has put on
// each host so far. A CycleState is used by one decision at a time.
type CycleState struct {
	Req   *Request
	cycle uint64
	// domains counts, per spread domain, the allocations of the service the decision
	// added.
	domains map[string]int
	// spreadBase counts, per spread domain, the service's allocations before the decision;
	// filled by the index.
	spreadBase map[string]int
	// spreadTotal is the service's allocations in every domain, decision included.
	spreadTotal int
}

// NewCycleState starts the state of a decision numbered cycle (unique per index).
func NewCycleState(req *Request, cycle uint64, spreadBase map[string]int) *CycleState {
	s := &CycleState{Req: req, cycle: cycle, spreadBase: spreadBase}
	for _, v := range spreadBase {
		s.spreadTotal += v
	}
	if req.Spread != "" {
		s.domains = map[string]int{}
	}
	return s
}

// Cycle is the decision's number.
func (s *CycleState) Cycle() uint64 { return s.cycle }

// Seen marks n as a candidate of this decision; it reports whether it already was.
func (s *CycleState) Seen(n *NodeInfo) bool {
	if n.seenCycle == s.cycle {
		return true
	}
	n.seenCycle = s.cycle
	return false
}

func (s *CycleState) pend(n *NodeInfo) *pending {
	if n.pendCycle != s.cycle {
		n.pendCycle = s.cycle
		n.pend.count, n.pend.res, n.pend.ips = 0, Resources{}, n.pend.ips[:0]
	}
	return &n.pend
}

// Count is the host's allocations, the decision's included.
func (s *CycleState) Count(n *NodeInfo) int {
	if n.pendCycle != s.cycle {
		return len(n.Allocs)
	}
	return len(n.Allocs) + n.pend.count
}

// Used is what the host's allocations use, the decision's included.
func (s *CycleState) Used(n *NodeInfo) Resources {
	if n.pendCycle != s.cycle {
		return n.Used
	}
	return n.Used.Add(n.pend.res)
}

// ServiceCount is the host's allocations of the request's service, the decision's
// included.
func (s *CycleState) ServiceCount(n *NodeInfo) int {
	c := 0
	for i := range n.Allocs {
		if n.Allocs[i].Service == s.Req.Service {
			c++
		}
	}
	if n.pendCycle == s.cycle {
		c += n.pend.count
	}
	return c
}

// FreeIP returns the lowest free address of the host's pool, the decision's taken.
func (s *CycleState) FreeIP(n *NodeInfo) (netip.Addr, bool) {
	if n.pendCycle != s.cycle || len(n.pend.ips) == 0 {
		return n.Pool.FirstFree(n.UsedIPs)
	}
	used := append(append(make([]netip.Addr, 0, len(n.UsedIPs)+len(n.pend.ips)), n.UsedIPs...), n.pend.ips...)
	sortAddrs(used)
	return n.Pool.FirstFree(used)
}

// HasFreeIP reports whether the host's pool has an address left, the decision's taken.
func (s *CycleState) HasFreeIP(n *NodeInfo) bool {
	used := uint64(len(n.UsedIPs))
	if n.pendCycle == s.cycle {
		used += uint64(len(n.pend.ips))
	}
	// Every used address is in the pool (the index drops the others), so counting is
	// enough.
	return n.PoolSize > used
}

// Domain is the host's spread domain for the request ("" when the request has none).
func (s *CycleState) Domain(n *NodeInfo) string {
	switch s.Req.Spread {
	case "dc":
		return n.DC
	case "rack":
		return n.DC + "/" + n.Rack
	}
	return ""
}

// DomainCount is the service's allocations in the host's spread domain, the decision's
// included, and the total over every domain.
func (s *CycleState) DomainCount(n *NodeInfo) (inDomain, total int) {
	d := s.Domain(n)
	return s.spreadBase[d] + s.domains[d], s.spreadTotal
}

// Assume records that the decision puts one allocation of the request on n with address
// ip.
func (s *CycleState) Assume(n *NodeInfo, ip netip.Addr) {
	p := s.pend(n)
	p.count++
	p.res = p.res.Add(s.Req.Resources)
	p.ips = append(p.ips, ip)
	if s.domains != nil {
		s.domains[s.Domain(n)]++
		s.spreadTotal++
	}
}

// Pending returns how many allocations the decision put on n.
func (s *CycleState) Pending(n *NodeInfo) int {
	if n.pendCycle != s.cycle {
		return 0
	}
	return n.pend.count
}

func sortAddrs(a []netip.Addr) {
	// Insertion sort: the slices are short (a host's allocations) and nearly sorted.
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j].Less(a[j-1]); j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// WeightedScore is a score plugin and its weight.
type WeightedScore struct {
	Plugin ScorePlugin
	Weight int64
}

// Framework is the ordered filters and, per scoring policy, the weighted scores.
type Framework struct {
	Filters []FilterPlugin
	// Scores maps a scoring policy ("binpack", "least_allocated") to its score plugins.
	Scores map[string][]WeightedScore
}

// RunFilters runs every filter in order and returns the first rejection.
func (f *Framework) RunFilters(s *CycleState, n *NodeInfo) Status {
	for _, p := range f.Filters {
		if st := p.Filter(s, n); !st.IsSuccess() {
			return st
		}
	}
	return OK
}

// Normalizer is implemented by score plugins whose raw scores only make sense relative
// to the other candidates of the round (a spread plugin's counts): the framework hands it
// the raw scores of every candidate, to be mapped in place onto 0 to MaxScore.
type Normalizer interface {
	NormalizeScores(scores []int64)
}

// Factory builds a plugin.
type Factory func() (Plugin, error)

// Entry is one plugin of a Registry.
type Entry struct {
	Name string
	New  Factory
}

// Registry lists the plugins a scheduler can use, in the order filters run.
type Registry []Entry

// Profile chooses plugins from a registry: the filters (every filter of the registry, in
// registry order, when nil) and the weighted scores of each scoring policy.
type Profile struct {
	Filters []string
	Scores  map[string][]ProfileScore
}

// ProfileScore names a score plugin and its weight.
type ProfileScore struct {
	Name   string
	Weight int64
}

// New builds the framework of profile p from reg. Filters run in registry order; a name
// that is not in the registry, or a plugin of the wrong kind, is an error naming it.
func New(reg Registry, p Profile) (*Framework, error) {
	built := map[string]Plugin{}
	get := func(name string) (Plugin, error) {
		if pl, ok := built[name]; ok {
			return pl, nil
		}
		for _, e := range reg {
			if e.Name == name {
				pl, err := e.New()
				if err != nil {
					return nil, fmt.Errorf("plugin %s: %w", name, err)
				}
				built[name] = pl
				return pl, nil
			}
		}
		return nil, fmt.Errorf("plugin %s: not in the registry", name)
	}
	f := &Framework{Scores: map[string][]WeightedScore{}}
	want := map[string]bool{}
	for _, n := range p.Filters {
		want[n] = true
	}
	for _, e := range reg {
		if p.Filters != nil && !want[e.Name] {
			continue
		}
		pl, err := get(e.Name)
		if err != nil {
			return nil, err
		}
		fp, ok := pl.(FilterPlugin)
		if !ok {
			if p.Filters != nil {
				return nil, fmt.Errorf("plugin %s: not a filter", e.Name)
			}
			continue
		}
		f.Filters = append(f.Filters, fp)
		delete(want, e.Name)
	}
	for n := range want {
		return nil, fmt.Errorf("filter %s: not in the registry", n)
	}
	for policy, scores := range p.Scores {
		for _, s := range scores {
			pl, err := get(s.Name)
			if err != nil {
				return nil, fmt.Errorf("scoring %s: %w", policy, err)
			}
			sp, ok := pl.(ScorePlugin)
			if !ok {
				return nil, fmt.Errorf("scoring %s: plugin %s is not a score plugin", policy, s.Name)
			}
			if s.Weight <= 0 {
				return nil, fmt.Errorf("scoring %s: plugin %s: weight %d, want > 0", policy, s.Name, s.Weight)
			}
			f.Scores[policy] = append(f.Scores[policy], WeightedScore{Plugin: sp, Weight: s.Weight})
		}
	}
	return f, nil
}

// Scratch is reusable memory for Best.
type Scratch struct {
	total, raw []int64
}

// Best ranks the candidates (every one has passed the filters) with the policy's
// weighted scores and returns the index of the best, -1 when there is none. Ties go to the
// earlier candidate.
func (f *Framework) Best(s *CycleState, cands []*NodeInfo, policy string, sc *Scratch) int {
	if len(cands) == 0 {
		return -1
	}
	scores := f.Scores[policy]
	sc.total = resize(sc.total, len(cands))
	clear(sc.total)
	for _, w := range scores {
		sc.raw = resize(sc.raw, len(cands))
		for i, n := range cands {
			sc.raw[i] = w.Plugin.Score(s, n)
		}
		if nz, ok := w.Plugin.(Normalizer); ok {
			nz.NormalizeScores(sc.raw)
		}
		for i, v := range sc.raw {
			sc.total[i] += w.Weight * v
		}
	}
	best := 0
	for i := 1; i < len(cands); i++ {
		if sc.total[i] > sc.total[best] {
			best = i
		}
	}
	return best
}

func resize(b []int64, n int) []int64 {
	if cap(b) < n {
		return make([]int64, n)
	}
	return b[:n]
}

// SetAvailPos and AvailPos record the host's positions in the index's sets of available
// hosts (-1: not in it); only the index uses them.
func (n *NodeInfo) SetAvailPos(all, dc int) { n.availAll, n.availDC = all, dc }

// AvailPos returns the positions set by SetAvailPos.
func (n *NodeInfo) AvailPos() (all, dc int) { return n.availAll, n.availDC }

// NewNodeInfo returns an empty host record, in no available set.
func NewNodeInfo(id string) *NodeInfo {
	return &NodeInfo{ID: id, availAll: -1, availDC: -1}
}
