package dnsview

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// DefaultWeight is the weight of an instance that gives none.
const DefaultWeight = 100

// Family restricts a selection to one address family.
type Family uint8

// Families.
const (
	// AnyFamily selects IPv4 and IPv6 instances (SRV, HTTP).
	AnyFamily Family = iota
	// IPv4 selects instances with an IPv4 address (A queries).
	IPv4
	// IPv6 selects instances with an IPv6 address (AAAA queries).
	IPv6
	numFamilies
)

// String returns "any", "ipv4" or "ipv6".
func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return "any"
}

// Rule names a step of the policy that shaped an answer.
type Rule string

// Rules, in the order they apply.
const (
	// RulePanic: too few instances were healthy; the last known good set was answered.
	RulePanic Rule = "panic"
	// RuleExclude: the policy excluded instances.
	RuleExclude Rule = "exclude"
	// RulePin: the policy pinned the answer to instances.
	RulePin Rule = "pin"
	// RuleOverride: the policy sent the client's datacenter to another.
	RuleOverride Rule = "dc-override"
	// RuleSameDC: the client's datacenter had enough instances and was answered alone.
	RuleSameDC Rule = "same-dc"
	// RuleFailover: the client's datacenter had too few; every datacenter was answered.
	RuleFailover Rule = "failover"
	// RuleAnyDC: the client's datacenter is unknown or same-DC priority is off.
	RuleAnyDC Rule = "any-dc"
	// RuleVersionWeights: the policy split traffic between versions.
	RuleVersionWeights Rule = "version-weights"
	// RuleInstanceWeights: the policy overrode instances' weights.
	RuleInstanceWeights Rule = "instance-weights"
	// RuleSingle, RuleLimit, RuleAll: the answer mode.
	RuleSingle Rule = "single"
	RuleLimit  Rule = "limit"
	RuleAll    Rule = "all"
)

// Selectable reports whether an instance may be answered outside panic: active (or state
// unspecified) and healthy (or health unspecified), with a valid address.
func Selectable(in *namesv1.Instance) bool {
	return active(in) && healthy(in)
}

func active(in *namesv1.Instance) bool {
	return in.GetState() != namesv1.InstanceState_INSTANCE_STATE_DRAINING
}

func healthy(in *namesv1.Instance) bool {
	h := in.GetHealth()
	return h == namesv1.Health_HEALTH_HEALTHY || h == namesv1.Health_HEALTH_UNSPECIFIED
}

// PanicState is the outcome of UpdatePanic.
type PanicState struct {
	// Panic is true when the healthy share is below the threshold.
	Panic bool
	// LastGood is the next view's last_good: the selectable instances' ids when not in
	// panic, the previous set when in panic.
	LastGood []string
	// Healthy and Active count the active instances that are healthy, and all active
	// (not draining) instances.
	Healthy, Active int
	// Threshold is the policy's panic threshold in percent.
	Threshold float64
}

// Reason says in one line why the state is what it is.
func (s PanicState) Reason() string {
	pct := 100.0
	if s.Active > 0 {
		pct = 100 * float64(s.Healthy) / float64(s.Active)
	}
	if s.Panic {
		return fmt.Sprintf("%d of %d active instances healthy (%.0f%%), below the panic threshold %g%%", s.Healthy, s.Active, pct, s.Threshold)
	}
	return fmt.Sprintf("%d of %d active instances healthy (%.0f%%), panic threshold %g%%", s.Healthy, s.Active, pct, s.Threshold)
}

// UpdatePanic decides whether a service with these instances and policy is in panic:
// fewer than policy.panic_threshold percent of its active (not draining) instances are
// healthy. prevLastGood is the previous view's last_good. A threshold of 0, or no active
// instance, is never panic.
func UpdatePanic(instances []*namesv1.Instance, policy *namesv1.TrafficPolicy, prevLastGood []string) PanicState {
	st := PanicState{Threshold: policy.GetPanicThreshold()}
	var good []string
	for _, in := range instances {
		if !active(in) {
			continue
		}
		st.Active++
		if healthy(in) {
			st.Healthy++
			good = append(good, in.GetId())
		}
	}
	st.Panic = st.Threshold > 0 && st.Active > 0 && float64(st.Healthy)*100 < st.Threshold*float64(st.Active)
	if st.Panic {
		st.LastGood = slices.Clone(prevLastGood)
	} else {
		slices.Sort(good)
		st.LastGood = good
	}
	return st
}

// Endpoint is one instance in a Table: its record, its parsed address and its position in
// Table.Instances (so callers can keep per-instance data, like pre-packed records, in a
// parallel slice).
type Endpoint struct {
	Instance *namesv1.Instance
	Addr     netip.Addr
	Index    int
}

// Query is what a client asks.
type Query struct {
	// ClientDC is the client's datacenter; empty when unknown.
	ClientDC string
	// Family restricts the answer to one address family.
	Family Family
	// Explain fills Answer.Explain.
	Explain bool
}

// Answer is the outcome of Select.
type Answer struct {
	// Endpoints are the answered instances, in answer order.
	Endpoints []Endpoint
	// Rules are the policy steps that shaped the answer, in the order they applied. The
	// slice may be shared with the Table: callers must not modify it.
	Rules []Rule
	// TargetDC is the datacenter whose instances were preferred (the client's, or its
	// override); empty when none was.
	TargetDC string
	// Panic is true when the answer is the last known good set.
	Panic bool
	// Explain says, step by step, how the answer was chosen (only with Query.Explain).
	Explain []string
}

// group is the precomputed candidate set for one target datacenter and family.
type group struct {
	idx     []int     // endpoint indexes
	cum     []float64 // cumulative effective weights, parallel to idx
	weights []float64 // effective weights, parallel to idx
	rules   []Rule
	explain []string
}

type groupKey struct {
	dc     string
	family Family
}

// Table answers for one service. Build it with Compile; it is immutable and safe for
// concurrent use.
type Table struct {
	view      *namesv1.ServiceView
	eps       []Endpoint
	byID      map[string]int
	groups    map[groupKey]*group
	elsewhere [numFamilies]*group // for a known client DC without instances
	anyDC     [numFamilies]*group
	mode      namesv1.AnswerMode
	limit     int
	// overrides and ttl are copies of the view's, kept here so that a query touches as few
	// cache lines as possible.
	overrides map[string]string
	ttl       uint32
}

// Compile prepares a view for answering: it parses addresses and precomputes, for every
// datacenter of the view and every family, the candidates and their effective weights under
// the view's policy and panic state. Instances with an unparsable address are kept in
// Instances but never answered.
func Compile(view *namesv1.ServiceView) *Table {
	t := &Table{view: view, byID: map[string]int{}, groups: map[groupKey]*group{}}
	pol := view.GetPolicy()
	t.mode = pol.GetMode()
	if t.mode == namesv1.AnswerMode_ANSWER_MODE_UNSPECIFIED {
		t.mode = namesv1.AnswerMode_ANSWER_MODE_ALL
	}
	t.limit = int(pol.GetLimit())
	t.overrides = pol.GetDcOverrides()
	t.ttl = view.GetTtlSeconds()
	dcs := map[string]bool{}
	for i, in := range view.GetInstances() {
		a, err := netip.ParseAddr(in.GetIp())
		if err == nil {
			a = a.Unmap()
		}
		t.eps = append(t.eps, Endpoint{Instance: in, Addr: a, Index: i})
		t.byID[strings.ToLower(in.GetId())] = i
		if in.GetDc() != "" {
			dcs[in.GetDc()] = true
		}
	}
	for _, to := range pol.GetDcOverrides() {
		dcs[to] = true
	}
	base := t.baseCandidates()
	for f := range numFamilies {
		fam := filterFamily(t.eps, base.idx, f)
		for dc := range dcs {
			t.groups[groupKey{dc, f}] = t.locality(base, fam, dc, f)
		}
		t.elsewhere[f] = t.locality(base, fam, "\x00", f)
		t.anyDC[f] = t.locality(base, fam, "", f)
	}
	return t
}

// candidates is the result of the steps before locality.
type candidates struct {
	idx     []int
	rules   []Rule
	explain []string
}

func (t *Table) baseCandidates() candidates {
	view, pol := t.view, t.view.GetPolicy()
	var c candidates
	n := len(t.eps)
	valid := func(i int) bool { return t.eps[i].Addr.IsValid() }
	if view.GetPanic() {
		good := map[string]bool{}
		for _, id := range view.GetLastGood() {
			good[id] = true
		}
		for i, ep := range t.eps {
			if good[ep.Instance.GetId()] && active(ep.Instance) && valid(i) {
				c.idx = append(c.idx, i)
			}
		}
		st := UpdatePanic(view.GetInstances(), pol, nil)
		what := fmt.Sprintf("the last known good set: %d of its %d instances are still registered", len(c.idx), len(view.GetLastGood()))
		if len(c.idx) == 0 {
			for i, ep := range t.eps {
				if active(ep.Instance) && valid(i) {
					c.idx = append(c.idx, i)
				}
			}
			what = fmt.Sprintf("every active instance, healthy or not (%d), as no instance of the last known good set is registered", len(c.idx))
		}
		c.rules = append(c.rules, RulePanic)
		c.explain = append(c.explain, fmt.Sprintf("panic: %s; answering %s", st.Reason(), what))
	} else {
		for i, ep := range t.eps {
			if Selectable(ep.Instance) && valid(i) {
				c.idx = append(c.idx, i)
			}
		}
		c.explain = append(c.explain, fmt.Sprintf("%d registered, %d selectable (active, healthy, valid address)", n, len(c.idx)))
	}
	if ex := pol.GetExclude(); len(ex) > 0 {
		drop := map[string]bool{}
		for _, id := range ex {
			drop[id] = true
		}
		var kept, gone []int
		for _, i := range c.idx {
			if drop[t.eps[i].Instance.GetId()] {
				gone = append(gone, i)
			} else {
				kept = append(kept, i)
			}
		}
		if len(gone) > 0 {
			c.idx = kept
			c.rules = append(c.rules, RuleExclude)
			c.explain = append(c.explain, fmt.Sprintf("exclude: removed %s", t.ids(gone)))
		}
	}
	if pin := pol.GetPin(); len(pin) > 0 {
		keep := map[string]bool{}
		for _, id := range pin {
			keep[id] = true
		}
		var kept []int
		for _, i := range c.idx {
			if keep[t.eps[i].Instance.GetId()] {
				kept = append(kept, i)
			}
		}
		if len(kept) > 0 {
			c.idx = kept
			c.rules = append(c.rules, RulePin)
			c.explain = append(c.explain, fmt.Sprintf("pin: answering only %s", t.ids(kept)))
		} else {
			c.explain = append(c.explain, fmt.Sprintf("pin ignored: none of %s is selectable", strings.Join(pin, ", ")))
		}
	}
	return c
}

func filterFamily(eps []Endpoint, idx []int, f Family) []int {
	out := make([]int, 0, len(idx))
	for _, i := range idx {
		a := eps[i].Addr
		if f == AnyFamily || f == IPv4 && a.Is4() || f == IPv6 && a.Is6() {
			out = append(out, i)
		}
	}
	return out
}

// locality builds the group for target dc ("" = unknown client DC, "\x00" = a known DC
// that has no instance) from the family's candidates.
func (t *Table) locality(base candidates, fam []int, dc string, f Family) *group {
	pol := t.view.GetPolicy()
	g := &group{rules: slices.Clone(base.rules), explain: slices.Clone(base.explain)}
	if f != AnyFamily {
		g.explain = append(g.explain, fmt.Sprintf("family %s: %d candidates", f, len(fam)))
	}
	minHealthy := max(int(pol.GetMinHealthy()), 1)
	idx := fam
	switch {
	case pol.GetDisableSameDc():
		g.rules = append(g.rules, RuleAnyDC)
		g.explain = append(g.explain, "same-dc priority is disabled by the policy: answering every datacenter")
	case dc == "":
		g.rules = append(g.rules, RuleAnyDC)
		g.explain = append(g.explain, "client datacenter unknown: answering every datacenter")
	default:
		var local []int
		for _, i := range fam {
			if t.eps[i].Instance.GetDc() == dc {
				local = append(local, i)
			}
		}
		name := dc
		if dc == "\x00" {
			name = "the client's datacenter"
		}
		if len(local) >= minHealthy {
			idx = local
			g.rules = append(g.rules, RuleSameDC)
			g.explain = append(g.explain, fmt.Sprintf("same-dc: %s has %d candidates, at least min_healthy %d: answering it alone", name, len(local), minHealthy))
		} else {
			g.rules = append(g.rules, RuleFailover)
			g.explain = append(g.explain, fmt.Sprintf("failover: %s has %d candidates, fewer than min_healthy %d: answering every datacenter", name, len(local), minHealthy))
		}
	}
	t.weigh(g, idx)
	switch t.mode {
	case namesv1.AnswerMode_ANSWER_MODE_SINGLE:
		g.rules = append(g.rules, RuleSingle)
		g.explain = append(g.explain, fmt.Sprintf("mode single: one of %d instances picked by weight", len(g.idx)))
	case namesv1.AnswerMode_ANSWER_MODE_LIMIT:
		g.rules = append(g.rules, RuleLimit)
		g.explain = append(g.explain, fmt.Sprintf("mode limit %d: the first %d of %d instances in weighted random order", t.limit, min(t.limit, len(g.idx)), len(g.idx)))
	default:
		g.rules = append(g.rules, RuleAll)
		g.explain = append(g.explain, fmt.Sprintf("mode all: %d instances in weighted random order", len(g.idx)))
	}
	return g
}

// weigh sets the group's members and effective weights: an instance's weight (the policy's
// instance_weights, else its own, else DefaultWeight) scaled so that each version gets its
// share of version_weights. Zero-weight instances are dropped unless every weight is zero.
func (t *Table) weigh(g *group, idx []int) {
	pol := t.view.GetPolicy()
	iw := pol.GetInstanceWeights()
	vw := pol.GetVersionWeights()
	w := make([]float64, len(idx))
	overridden := false
	for k, i := range idx {
		in := t.eps[i].Instance
		if v, ok := iw[in.GetId()]; ok {
			w[k] = float64(v)
			overridden = true
		} else if in.GetWeight() > 0 {
			w[k] = float64(in.GetWeight())
		} else {
			w[k] = DefaultWeight
		}
	}
	if overridden {
		g.rules = append(g.rules, RuleInstanceWeights)
		g.explain = append(g.explain, "instance weights from the policy: "+FormatWeights(iw))
	}
	if len(vw) > 0 {
		perVersion := map[string]float64{}
		listedTotal := 0.0
		for k, i := range idx {
			v := t.eps[i].Instance.GetVersion()
			perVersion[v] += w[k]
		}
		for v, share := range vw {
			if perVersion[v] > 0 {
				listedTotal += float64(share)
			}
		}
		if listedTotal > 0 {
			for k, i := range idx {
				v := t.eps[i].Instance.GetVersion()
				share, listed := vw[v]
				if !listed || perVersion[v] == 0 {
					w[k] = 0
					continue
				}
				w[k] = float64(share) / listedTotal * w[k] / perVersion[v]
			}
			g.rules = append(g.rules, RuleVersionWeights)
			g.explain = append(g.explain, "version weights: "+t.versionShares(vw, perVersion, listedTotal))
		} else {
			g.explain = append(g.explain, "version weights ignored: no listed version has a candidate ("+FormatWeights(vw)+")")
		}
	}
	total := 0.0
	for _, x := range w {
		total += x
	}
	if total == 0 && len(idx) > 0 {
		for k := range w {
			w[k] = 1
		}
		g.explain = append(g.explain, "every candidate has weight 0: weighing them equally")
	}
	g.idx = make([]int, 0, len(idx))
	g.weights = make([]float64, 0, len(idx))
	g.cum = make([]float64, 0, len(idx))
	sum := 0.0
	for k, i := range idx {
		if w[k] <= 0 {
			continue
		}
		sum += w[k]
		g.idx = append(g.idx, i)
		g.weights = append(g.weights, w[k])
		g.cum = append(g.cum, sum)
	}
}

func (t *Table) versionShares(vw map[string]uint32, present map[string]float64, total float64) string {
	var parts []string
	for _, v := range sortedKeys(vw) {
		if present[v] > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1f%%", v, 100*float64(vw[v])/total))
		} else {
			parts = append(parts, fmt.Sprintf("%s (no candidate)", v))
		}
	}
	var unlisted []string
	for _, v := range sortedKeys(present) {
		if _, ok := vw[v]; !ok {
			unlisted = append(unlisted, v)
		}
	}
	s := strings.Join(parts, ", ")
	if len(unlisted) > 0 {
		s += "; unlisted versions get nothing: " + strings.Join(unlisted, ", ")
	}
	return s
}

func (t *Table) ids(idx []int) string {
	ids := make([]string, len(idx))
	for k, i := range idx {
		ids[k] = t.eps[i].Instance.GetId()
	}
	return strings.Join(ids, ", ")
}

// TTL returns the view's ttl_seconds.
func (t *Table) TTL() uint32 { return t.ttl }

// View returns the view the table was compiled from. Callers must not modify it.
func (t *Table) View() *namesv1.ServiceView { return t.view }

// Instances returns every registered instance with its parsed address, in view order.
// Callers must not modify it.
func (t *Table) Instances() []Endpoint { return t.eps }

// Instance returns the instance with id, compared without case (ids are DNS labels); ok
// is false when there is none.
func (t *Table) Instance(id string) (Endpoint, bool) {
	i, ok := t.byID[id]
	if !ok {
		i, ok = t.byID[strings.ToLower(id)]
	}
	if !ok {
		return Endpoint{}, false
	}
	return t.eps[i], true
}

// Select answers q: it applies the view's panic state, the policy's exclusions and pins,
// the datacenter override for the client's datacenter, same-datacenter priority with
// failover, version and instance weights, then the answer mode, drawing randomness from r.
// The endpoints are appended to dst[:0] (pass nil to allocate).
func (t *Table) Select(dst []Endpoint, q Query, r *rand.Rand) Answer {
	var a Answer
	g, target := t.groupFor(q)
	var overrideNote string
	if target != q.ClientDC && q.Explain {
		overrideNote = fmt.Sprintf("dc-override: clients of %s are sent to %s", q.ClientDC, target)
	}
	a.TargetDC = target
	a.Panic = t.view.GetPanic()
	if target != q.ClientDC {
		a.Rules = append(append(make([]Rule, 0, len(g.rules)+1), RuleOverride), g.rules...)
	} else {
		a.Rules = g.rules // shared: callers must not modify Answer.Rules
	}
	if q.Explain {
		if q.ClientDC != "" {
			a.Explain = append(a.Explain, "client datacenter: "+q.ClientDC)
		}
		if overrideNote != "" {
			a.Explain = append(a.Explain, overrideNote)
		}
		for _, e := range g.explain {
			a.Explain = append(a.Explain, strings.ReplaceAll(e, "the client's datacenter", target))
		}
	}
	a.Endpoints = t.pick(dst[:0], g, r)
	return a
}

func (t *Table) pick(dst []Endpoint, g *group, r *rand.Rand) []Endpoint {
	n := len(g.idx)
	if n == 0 {
		return dst
	}
	switch t.mode {
	case namesv1.AnswerMode_ANSWER_MODE_SINGLE:
		return append(dst, t.eps[g.idx[pickWeighted(g.cum, r)]])
	case namesv1.AnswerMode_ANSWER_MODE_LIMIT:
		return t.shuffle(dst, g, r, min(t.limit, n))
	}
	return t.shuffle(dst, g, r, n)
}

// pickWeighted returns the index of a member chosen with probability proportional to its
// weight, from the cumulative weights.
func pickWeighted(cum []float64, r *rand.Rand) int {
	x := r.Float64() * cum[len(cum)-1]
	i, _ := slices.BinarySearchFunc(cum, x, func(c, x float64) int {
		if c <= x {
			return -1
		}
		return 1
	})
	return min(i, len(cum)-1)
}

// shuffle appends the first k members of a weighted random order (Efraimidis–Spirakis:
// each member gets the key Exp(1)/weight and members come in increasing key order, so the
// first is member i with probability w_i/Σw, the second likewise among the rest, ...).
func (t *Table) shuffle(dst []Endpoint, g *group, r *rand.Rand, k int) []Endpoint {
	n := len(g.idx)
	if n == 1 {
		return append(dst, t.eps[g.idx[0]])
	}
	if k == 1 {
		return append(dst, t.eps[g.idx[pickWeighted(g.cum, r)]])
	}
	type keyed struct {
		key float64
		i   int
	}
	var small [16]keyed
	keys := small[:0]
	if n > len(small) {
		keys = make([]keyed, 0, n)
	}
	for m, i := range g.idx {
		keys = append(keys, keyed{key: r.ExpFloat64() / g.weights[m], i: i})
	}
	slices.SortFunc(keys, func(a, b keyed) int {
		switch {
		case a.key < b.key:
			return -1
		case a.key > b.key:
			return 1
		}
		return a.i - b.i
	})
	for _, kk := range keys[:k] {
		dst = append(dst, t.eps[kk.i])
	}
	return dst
}

// Probabilities returns each candidate's chance to be answered first (or alone, in single
// mode) for q, by instance id: what Select's statistics converge to.
func (t *Table) Probabilities(q Query) map[string]float64 {
	g, _ := t.groupFor(q)
	out := map[string]float64{}
	if len(g.cum) == 0 {
		return out
	}
	total := g.cum[len(g.cum)-1]
	for m, i := range g.idx {
		out[t.eps[i].Instance.GetId()] = g.weights[m] / total
	}
	return out
}

// groupFor returns the group answering q and the target datacenter after overrides.
func (t *Table) groupFor(q Query) (*group, string) {
	target := q.ClientDC
	if len(t.overrides) > 0 && q.ClientDC != "" {
		if to, ok := t.overrides[q.ClientDC]; ok {
			target = to
		}
	}
	f := q.Family
	if f >= numFamilies {
		f = AnyFamily
	}
	if target == "" {
		return t.anyDC[f], target
	}
	if g := t.groups[groupKey{target, f}]; g != nil {
		return g, target
	}
	return t.elsewhere[f], target
}
