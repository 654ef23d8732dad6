package dnsview

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Locator finds a client's datacenter from its address: an exact host address (from the
// inventory, /berth/hosts/*) wins, then the longest configured subnet that contains it.
// A Locator is immutable and safe for concurrent use; build a new one when the inventory
// changes.
type Locator struct {
	hosts   map[netip.Addr]string
	subnets []subnetDC // longest prefix first
	dcs     map[string]bool
}

type subnetDC struct {
	p  netip.Prefix
	dc string
}

// NewLocator returns a Locator over subnets (prefix → datacenter) and hosts (address →
// datacenter). Addresses are unmapped (::ffff:10.0.0.1 is 10.0.0.1); entries with an
// empty datacenter are ignored.
func NewLocator(subnets map[netip.Prefix]string, hosts map[netip.Addr]string) *Locator {
	l := &Locator{hosts: make(map[netip.Addr]string, len(hosts)), dcs: map[string]bool{}}
	for a, dc := range hosts {
		if dc == "" || !a.IsValid() {
			continue
		}
		l.hosts[a.Unmap()] = dc
		l.dcs[dc] = true
	}
	for p, dc := range subnets {
		if dc == "" || !p.IsValid() {
			continue
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		l.subnets = append(l.subnets, subnetDC{p: p.Masked(), dc: dc})
		l.dcs[dc] = true
	}
	slices.SortFunc(l.subnets, func(a, b subnetDC) int {
		if a.p.Bits() != b.p.Bits() {
			return b.p.Bits() - a.p.Bits()
		}
		return a.p.Addr().Compare(b.p.Addr())
	})
	return l
}

// DC returns the datacenter of addr; ok is false when no host or subnet matches.
func (l *Locator) DC(addr netip.Addr) (dc string, ok bool) {
	if l == nil || !addr.IsValid() {
		return "", false
	}
	addr = addr.Unmap()
	if dc, ok := l.hosts[addr]; ok {
		return dc, true
	}
	for _, s := range l.subnets {
		if s.p.Contains(addr) {
			return s.dc, true
		}
	}
	return "", false
}

// Known reports whether dc appears among the Locator's hosts or subnets.
func (l *Locator) Known(dc string) bool { return l != nil && l.dcs[dc] }

// DCs returns the datacenters the Locator knows, sorted.
func (l *Locator) DCs() []string {
	if l == nil {
		return nil
	}
	return sortedKeys(l.dcs)
}

// ParseSubnets parses entries of the form "10.1.0.0/16=dc1" (a configuration's subnet →
// datacenter map). field names the setting in errors.
func ParseSubnets(field string, entries []string) (map[netip.Prefix]string, error) {
	out := map[netip.Prefix]string{}
	for i, e := range entries {
		p, dc, ok := strings.Cut(strings.TrimSpace(e), "=")
		if !ok {
			return nil, fmt.Errorf("%s[%d] %q: want SUBNET=DC (10.1.0.0/16=dc1)", field, i, e)
		}
		pfx, err := netip.ParsePrefix(strings.TrimSpace(p))
		if err != nil {
			return nil, fmt.Errorf("%s[%d] %q: subnet: %w", field, i, e, err)
		}
		dc = strings.TrimSpace(dc)
		if err := checkLabel(dc); err != nil {
			return nil, fmt.Errorf("%s[%d] %q: datacenter: %w", field, i, e, err)
		}
		pfx = pfx.Masked()
		if prev, dup := out[pfx]; dup && prev != dc {
			return nil, fmt.Errorf("%s[%d] %q: subnet %s is already mapped to %s", field, i, e, pfx, prev)
		}
		out[pfx] = dc
	}
	return out, nil
}
