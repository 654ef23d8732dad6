// Package catalog is the name service's picture of coord: every registered instance
// (/berth/instances), traffic policy (/berth/traffic), service tree node (/berth/tree) and
// host (/berth/hosts), kept current by List + Watch (Sync), and turned into one immutable
// Snapshot per service — its ServiceView and the dnsview.Table that answers for it.
//
// Readers (DNS, HTTP) take snapshots under a read lock and never wait on writers for long;
// writers are the four watch loops, serialised by applyMu so that changes are observed (and
// published, through the OnChange callback) in the order they were applied.
package catalog

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/dnsview"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// Coord prefixes the catalog follows (DESIGN §3).
const (
	PrefixInstances = "/berth/instances"
	PrefixTraffic   = "/berth/traffic"
	PrefixTree      = "/berth/tree"
	PrefixHosts     = "/berth/hosts"
)

// Kind is one of the followed prefixes.
type Kind int

// Kinds, one per prefix.
const (
	KindInstances Kind = iota
	KindTraffic
	KindTree
	KindHosts
	numKinds
)

var kindPrefix = [numKinds]string{PrefixInstances, PrefixTraffic, PrefixTree, PrefixHosts}

// Prefix returns the coord prefix of k.
func (k Kind) Prefix() string { return kindPrefix[k] }

// Snapshot is one service's state at one revision. It is immutable.
type Snapshot struct {
	// Service is the service path as registered (hotel/search).
	Service string
	// View is the view published for the service.
	View *namesv1.ServiceView
	// Table answers queries for the service.
	Table *dnsview.Table
	// Known is false for a service that has nothing left in coord (no instance, policy or
	// tree node): the last snapshot of a removed service.
	Known bool
	// changed is closed when a newer snapshot replaces this one.
	changed chan struct{}
}

// Changed returns a channel closed when a newer snapshot of the service exists.
func (s *Snapshot) Changed() <-chan struct{} { return s.changed }

// Change is one service's transition, delivered to OnChange.
type Change struct {
	// Prev is the previous snapshot, nil for a new service.
	Prev *Snapshot
	// Next is the new snapshot; Next.Known is false when the service was removed.
	Next *Snapshot
	// Registered and Deregistered are the instances that appeared or went away through
	// watch events (not through initial lists or re-lists after compaction), with the
	// revision of each.
	Registered, Deregistered []InstanceChange
	// PanicChanged is true when the service entered or left panic.
	PanicChanged bool
	// Panic describes the panic state of Next.
	Panic dnsview.PanicState
}

// InstanceChange is an instance that was registered or deregistered at Revision.
type InstanceChange struct {
	Instance *namesv1.Instance
	Revision int64
}

// Config configures a Catalog.
type Config struct {
	// DefaultTTL is the TTL of answers for services whose tree gives none.
	DefaultTTL time.Duration
	// Subnets map client subnets to datacenters, in addition to the inventory's host
	// addresses.
	Subnets map[netip.Prefix]string
	// Logger receives warnings about values that cannot be decoded.
	Logger *slog.Logger
	// OnChange, when set, is called after every applied batch with the services whose view
	// changed, in order, from the applying goroutine: it must not block (queue the work).
	OnChange func([]Change)
	// OnInvalid, when set, is called for every coord value that cannot be decoded.
	OnInvalid func(kind Kind, path string, err error)
}

// service is the mutable state of one service, guarded by Catalog.mu.
type service struct {
	path      string
	instances map[string]*namesv1.Instance
	policy    *namesv1.TrafficPolicy
	tree      bool
	ttl       time.Duration // 0: inherit or default
	snap      *Snapshot
}

func (s *service) known() bool { return len(s.instances) > 0 || s.policy != nil || s.tree }

// host is what the catalog keeps of an inventory host.
type host struct {
	ip netip.Addr
	dc string
}

// Catalog is the name service's state. Create it with New.
type Catalog struct {
	cfg Config
	log *slog.Logger

	// applyMu serialises writers so that OnChange sees changes in apply order.
	applyMu sync.Mutex

	mu sync.RWMutex
	// services are by service path.
	services map[string]*service
	// lower maps a lowercase service path to its current snapshot (DNS is case-insensitive).
	lower map[string]*Snapshot
	// below counts, by lowercase path, the known services strictly below it, so that names
	// between the zone and a service (hotel for hotel/search) exist without data.
	below map[string]int
	// hosts are the inventory by host id.
	hosts map[string]host
	// dcs counts instances per datacenter.
	dcs map[string]int
	// loaded marks the kinds whose first listing is applied.
	loaded [numKinds]bool
	// anyChange is closed and replaced after every applied batch.
	anyChange chan struct{}

	locator atomic.Pointer[dnsview.Locator]
	// revision is the highest coord revision applied.
	revision atomic.Int64
}

// New returns an empty Catalog.
func New(cfg Config) *Catalog {
	if cfg.DefaultTTL <= 0 {
		cfg.DefaultTTL = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Catalog{
		cfg: cfg, log: log,
		services:  map[string]*service{},
		lower:     map[string]*Snapshot{},
		below:     map[string]int{},
		hosts:     map[string]host{},
		dcs:       map[string]int{},
		anyChange: make(chan struct{}),
	}
	c.locator.Store(dnsview.NewLocator(cfg.Subnets, nil))
	return c
}

// Lookup returns the current snapshot of the service with this path, compared without
// case; nil when the service is unknown.
func (c *Catalog) Lookup(servicePath string) *Snapshot {
	c.mu.RLock()
	s := c.lower[servicePath]
	if s == nil {
		s = c.lower[strings.ToLower(servicePath)]
	}
	c.mu.RUnlock()
	return s
}

// LookupLower is Lookup for a path already in lowercase (the DNS server's), and also
// reports whether known services exist below the path.
func (c *Catalog) LookupLower(lowerPath string) (snap *Snapshot, hasBelow bool) {
	c.mu.RLock()
	snap = c.lower[lowerPath]
	hasBelow = c.below[lowerPath] > 0
	c.mu.RUnlock()
	return snap, hasBelow
}

// LookupLowerBytes is LookupLower for a path in bytes; it does not allocate.
func (c *Catalog) LookupLowerBytes(lowerPath []byte) *Snapshot {
	c.mu.RLock()
	snap := c.lower[string(lowerPath)]
	c.mu.RUnlock()
	return snap
}

// Watch returns the service's current snapshot (nil when unknown) and a channel closed when
// it may have changed.
func (c *Catalog) Watch(servicePath string) (*Snapshot, <-chan struct{}) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if s := c.lower[strings.ToLower(servicePath)]; s != nil {
		return s, s.changed
	}
	return nil, c.anyChange
}

// Services returns the snapshots of every known service, by path.
func (c *Catalog) Services() []*Snapshot {
	c.mu.RLock()
	out := make([]*Snapshot, 0, len(c.lower))
	for _, s := range c.lower {
		out = append(out, s)
	}
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Snapshot) int { return strings.Compare(a.Service, b.Service) })
	return out
}

// Locator returns the current client locator (subnets and inventory hosts).
func (c *Catalog) Locator() *dnsview.Locator { return c.locator.Load() }

// KnownDC reports whether dc is a datacenter of the inventory, the configured subnets or
// a registered instance.
func (c *Catalog) KnownDC(dc string) bool {
	if c.Locator().Known(dc) {
		return true
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.dcs[dc] > 0
}

// DCs returns every known datacenter, sorted.
func (c *Catalog) DCs() []string {
	set := map[string]bool{}
	for _, dc := range c.Locator().DCs() {
		set[dc] = true
	}
	c.mu.RLock()
	for dc, n := range c.dcs {
		if n > 0 {
			set[dc] = true
		}
	}
	c.mu.RUnlock()
	out := make([]string, 0, len(set))
	for dc := range set {
		out = append(out, dc)
	}
	slices.Sort(out)
	return out
}

// Revision returns the highest coord revision applied.
func (c *Catalog) Revision() int64 { return c.revision.Load() }

// Loaded reports whether the first listing of every prefix has been applied.
func (c *Catalog) Loaded() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, l := range c.loaded {
		if !l {
			return false
		}
	}
	return true
}

// Count returns the number of known services and registered instances.
func (c *Catalog) Count() (services, instances int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, s := range c.services {
		instances += len(s.instances)
	}
	return len(c.lower), instances
}

// ApplyEvents applies one watch batch of kind k.
func (c *Catalog) ApplyEvents(k Kind, events []coordclient.Event) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.mu.Lock()
	b := newBatch()
	for _, ev := range events {
		c.applyEventLocked(b, k, ev)
		if ev.Revision > c.revision.Load() {
			c.revision.Store(ev.Revision)
		}
	}
	changes := c.finishLocked(b)
	c.mu.Unlock()
	c.notify(changes)
}

// Reset replaces everything of kind k with nodes, the whole subtree as of revision rev (a
// first listing, or a re-list after the watch's start was compacted). Services whose state
// changed get revision rev; on a first listing they get the highest mod_rev of their nodes
// instead, so that replicas started at different times agree.
func (c *Catalog) Reset(k Kind, nodes []coordclient.Node, rev int64) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.mu.Lock()
	first := !c.loaded[k]
	c.loaded[k] = true
	if rev > c.revision.Load() {
		c.revision.Store(rev)
	}
	b := newBatch()
	b.quiet = true
	seen := map[string]bool{}
	for _, n := range nodes {
		if n.Version == 0 {
			continue // an implicit node: only a prefix of deeper nodes
		}
		seen[n.Path] = true
		evRev := rev
		if first {
			evRev = n.ModRev
		}
		c.applyEventLocked(b, k, coordclient.Event{Type: coordclient.EventPut, Node: n, Revision: evRev})
	}
	// Delete what the listing no longer has.
	for _, p := range c.pathsLocked(k) {
		if !seen[p] {
			c.applyEventLocked(b, k, coordclient.Event{Type: coordclient.EventDelete, Node: coordclient.Node{Path: p}, Revision: rev})
		}
	}
	if k == KindHosts {
		b.hosts = true
	}
	changes := c.finishLocked(b)
	c.mu.Unlock()
	c.notify(changes)
}

// pathsLocked lists the coord paths of kind k the catalog holds.
func (c *Catalog) pathsLocked(k Kind) []string {
	var out []string
	switch k {
	case KindInstances:
		for _, s := range c.services {
			for id := range s.instances {
				out = append(out, PrefixInstances+"/"+s.path+"/"+id)
			}
		}
	case KindTraffic:
		for _, s := range c.services {
			if s.policy != nil {
				out = append(out, PrefixTraffic+"/"+s.path)
			}
		}
	case KindTree:
		for _, s := range c.services {
			if s.tree {
				out = append(out, PrefixTree+"/"+s.path)
			}
		}
	case KindHosts:
		for id := range c.hosts {
			out = append(out, PrefixHosts+"/"+id)
		}
	}
	return out
}

// batch collects what one apply changed.
type batch struct {
	dirty   map[string]bool
	order   []string
	reg     map[string][]InstanceChange
	dereg   map[string][]InstanceChange
	hosts   bool
	quiet   bool // a listing: no registered/deregistered events
	maxRevs map[string]int64
}

func newBatch() *batch {
	return &batch{dirty: map[string]bool{}, reg: map[string][]InstanceChange{}, dereg: map[string][]InstanceChange{}, maxRevs: map[string]int64{}}
}

func (b *batch) touch(svc string, rev int64) {
	if !b.dirty[svc] {
		b.dirty[svc] = true
		b.order = append(b.order, svc)
	}
	if rev > b.maxRevs[svc] {
		b.maxRevs[svc] = rev
	}
}

func (c *Catalog) serviceLocked(path string) *service {
	s := c.services[path]
	if s == nil {
		s = &service{path: path, instances: map[string]*namesv1.Instance{}}
		c.services[path] = s
	}
	return s
}

func (c *Catalog) invalid(k Kind, path string, err error) {
	c.log.Warn("names: ignoring a coord value", "path", path, "err", err)
	if c.cfg.OnInvalid != nil {
		c.cfg.OnInvalid(k, path, err)
	}
}

var unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}

func (c *Catalog) applyEventLocked(b *batch, k Kind, ev coordclient.Event) {
	rel, ok := strings.CutPrefix(ev.Node.Path, k.Prefix()+"/")
	if !ok || rel == "" {
		return
	}
	put := ev.Type == coordclient.EventPut
	switch k {
	case KindInstances:
		i := strings.LastIndexByte(rel, '/')
		if i <= 0 {
			c.invalid(k, ev.Node.Path, fmt.Errorf("want %s/<service path>/<instance>", PrefixInstances))
			return
		}
		svc, id := rel[:i], rel[i+1:]
		if err := dnsview.CheckServicePath(svc); err != nil {
			c.invalid(k, ev.Node.Path, err)
			return
		}
		if err := dnsview.CheckInstanceID(id); err != nil {
			c.invalid(k, ev.Node.Path, err)
			return
		}
		s := c.serviceLocked(svc)
		old := s.instances[id]
		if !put {
			if old == nil {
				return
			}
			delete(s.instances, id)
			c.countDCLocked(old, -1)
			b.dereg[svc] = append(b.dereg[svc], InstanceChange{Instance: old, Revision: ev.Revision})
			b.touch(svc, ev.Revision)
			return
		}
		in := &namesv1.Instance{}
		if err := unmarshal.Unmarshal(ev.Node.Value, in); err != nil {
			c.invalid(k, ev.Node.Path, fmt.Errorf("decode Instance: %w", err))
			if old != nil { // an unreadable update: the instance is no longer answerable
				delete(s.instances, id)
				c.countDCLocked(old, -1)
				b.touch(svc, ev.Revision)
			}
			return
		}
		in.Id, in.Service = id, svc
		if old != nil {
			if proto.Equal(old, in) {
				return
			}
			c.countDCLocked(old, -1)
		} else if !b.quiet {
			b.reg[svc] = append(b.reg[svc], InstanceChange{Instance: in, Revision: ev.Revision})
		}
		s.instances[id] = in
		c.countDCLocked(in, 1)
		b.touch(svc, ev.Revision)
	case KindTraffic:
		if err := dnsview.CheckServicePath(rel); err != nil {
			c.invalid(k, ev.Node.Path, err)
			return
		}
		s := c.serviceLocked(rel)
		var p *namesv1.TrafficPolicy
		if put {
			p = &namesv1.TrafficPolicy{}
			err := unmarshal.Unmarshal(ev.Node.Value, p)
			if err == nil {
				err = dnsview.ValidatePolicy(p, nil)
			}
			if err != nil {
				c.invalid(k, ev.Node.Path, fmt.Errorf("decode TrafficPolicy: %w", err))
				p = nil
			}
		}
		if proto.Equal(s.policy, p) && (s.policy == nil) == (p == nil) {
			return
		}
		s.policy = p
		b.touch(rel, ev.Revision)
	case KindTree:
		if err := dnsview.CheckServicePath(rel); err != nil {
			return // tree nodes that cannot be DNS names are not the name service's concern
		}
		s := c.serviceLocked(rel)
		ttl := time.Duration(0)
		if put {
			ttl = treeTTL(ev.Node.Value)
		}
		if s.tree == put && s.ttl == ttl {
			return
		}
		s.tree, s.ttl = put, ttl
		b.touch(rel, ev.Revision)
		// Services below inherit the TTL.
		for p, o := range c.services {
			if strings.HasPrefix(p, rel+"/") && o.known() {
				b.touch(p, ev.Revision)
			}
		}
	case KindHosts:
		if put {
			h, err := decodeHost(ev.Node.Value)
			if err != nil {
				c.invalid(k, ev.Node.Path, err)
				delete(c.hosts, rel)
			} else {
				c.hosts[rel] = h
			}
		} else {
			delete(c.hosts, rel)
		}
		b.hosts = true
	}
}

func (c *Catalog) countDCLocked(in *namesv1.Instance, d int) {
	if dc := in.GetDc(); dc != "" {
		c.dcs[dc] += d
		if c.dcs[dc] <= 0 {
			delete(c.dcs, dc)
		}
	}
}

// decodeHost reads the datacenter and address of an inventory host (the protojson of
// berth.inventory.v1.Host).
func decodeHost(value []byte) (host, error) {
	var v inventoryv1.Host
	if err := unmarshal.Unmarshal(value, &v); err != nil {
		return host{}, fmt.Errorf("decode Host: %w", err)
	}
	h := host{dc: v.GetDc()}
	if v.GetIp() != "" {
		a, err := netip.ParseAddr(v.GetIp())
		if err != nil {
			return host{}, fmt.Errorf("decode Host: ip %q: %w", v.GetIp(), err)
		}
		h.ip = a.Unmap()
	}
	return h, nil
}

// treeTTL reads the DNS TTL a service tree node sets (berth.controller.v1.ServiceNode,
// policy.dns_ttl), 0 when it sets none or cannot be read. Whole seconds; less than a second
// counts as one.
func treeTTL(value []byte) time.Duration {
	var n controllerv1.ServiceNode
	if unmarshal.Unmarshal(value, &n) != nil {
		return 0
	}
	d := n.GetPolicy().GetDnsTtl()
	if d == nil || d.AsDuration() <= 0 {
		return 0
	}
	return max(d.AsDuration().Truncate(time.Second), time.Second)
}

// ttlLocked is the TTL of a service: its own tree node's, else its nearest ancestor's,
// else the default.
func (c *Catalog) ttlLocked(path string) time.Duration {
	for p := path; p != ""; {
		if s := c.services[p]; s != nil && s.ttl > 0 {
			return s.ttl
		}
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return c.cfg.DefaultTTL
}

// finishLocked rebuilds the snapshots of the dirty services and returns the changes.
func (c *Catalog) finishLocked(b *batch) []Change {
	if b.hosts {
		addrs := make(map[netip.Addr]string, len(c.hosts))
		for _, h := range c.hosts {
			if h.ip.IsValid() && h.dc != "" {
				addrs[h.ip] = h.dc
			}
		}
		c.locator.Store(dnsview.NewLocator(c.cfg.Subnets, addrs))
	}
	var changes []Change
	for _, path := range b.order {
		s := c.services[path]
		if s == nil {
			continue
		}
		ch, ok := c.rebuildLocked(s, b.maxRevs[path])
		if !ok {
			continue
		}
		ch.Registered, ch.Deregistered = b.reg[path], b.dereg[path]
		changes = append(changes, ch)
	}
	if len(changes) > 0 || b.hosts {
		close(c.anyChange)
		c.anyChange = make(chan struct{})
	}
	return changes
}

// rebuildLocked builds the service's next snapshot; ok is false when its view did not
// change.
func (c *Catalog) rebuildLocked(s *service, rev int64) (Change, bool) {
	prev := s.snap
	ids := make([]string, 0, len(s.instances))
	for id := range s.instances {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	view := &namesv1.ServiceView{Service: s.path, Policy: s.policy}
	for _, id := range ids {
		view.Instances = append(view.Instances, s.instances[id])
	}
	view.TtlSeconds = uint32(max(c.ttlLocked(s.path)/time.Second, 1))
	var prevGood []string
	if prev != nil {
		prevGood = prev.View.GetLastGood()
	}
	ps := dnsview.UpdatePanic(view.Instances, s.policy, prevGood)
	view.Panic, view.LastGood = ps.Panic, ps.LastGood
	known := s.known()
	if prev != nil && prev.Known == known {
		// Equal content: keep the snapshot (and its revision) so nothing is republished.
		cmp := proto.Clone(view).(*namesv1.ServiceView)
		cmp.Revision = prev.View.GetRevision()
		if proto.Equal(cmp, prev.View) {
			return Change{}, false
		}
	}
	if prev == nil && !known {
		delete(c.services, s.path)
		return Change{}, false
	}
	view.Revision = rev
	if prev != nil && rev <= prev.View.GetRevision() {
		view.Revision = prev.View.GetRevision()
	}
	next := &Snapshot{Service: s.path, View: view, Table: dnsview.Compile(view), Known: known, changed: make(chan struct{})}
	key := strings.ToLower(s.path)
	switch {
	case known && (prev == nil || !prev.Known):
		c.lower[key] = next
		c.addBelowLocked(key, 1)
	case known:
		c.lower[key] = next
	case prev != nil && prev.Known:
		delete(c.lower, key)
		c.addBelowLocked(key, -1)
	}
	if known {
		s.snap = next
	} else {
		delete(c.services, s.path)
	}
	if prev != nil {
		close(prev.changed)
	}
	return Change{
		Prev: prev, Next: next, Panic: ps,
		PanicChanged: ps.Panic != (prev != nil && prev.View.GetPanic()),
	}, true
}

// addBelowLocked adds d to the count of known services below each ancestor of key.
func (c *Catalog) addBelowLocked(key string, d int) {
	for {
		i := strings.LastIndexByte(key, '/')
		if i < 0 {
			return
		}
		key = key[:i]
		c.below[key] += d
		if c.below[key] <= 0 {
			delete(c.below, key)
		}
	}
}

func (c *Catalog) notify(changes []Change) {
	if len(changes) > 0 && c.cfg.OnChange != nil {
		c.cfg.OnChange(changes)
	}
}
