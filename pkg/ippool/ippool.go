// Package ippool parses a host's container address pool (CIDRs and inclusive ranges) and
// hands out its addresses: the lowest address of the pool that is not in use. cmdb-sync
// uses it to refuse bad and overlapping pools, the scheduler to allocate.
package ippool

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
)

// ErrBadPool is wrapped by every parse error.
var ErrBadPool = errors.New("ippool: bad pool")

// Range is an inclusive range of addresses of one family.
type Range struct {
	First, Last netip.Addr
}

// Pool is a set of addresses: sorted, non-overlapping ranges of one or both families.
// The zero Pool is empty.
type Pool struct {
	ranges []Range
}

// Parse reads pool entries: CIDRs ("172.30.0.0/24"; for IPv4 prefixes up to /30 the
// network and broadcast addresses are left out, for IPv6 the subnet-router anycast
// address) and inclusive ranges ("172.30.0.2-172.30.0.254"). Entries must not overlap.
// Errors wrap ErrBadPool and quote the entry.
func Parse(entries []string) (Pool, error) {
	var rs []Range
	for _, e := range entries {
		r, err := parseEntry(strings.TrimSpace(e))
		if err != nil {
			return Pool{}, err
		}
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b Range) int { return a.First.Compare(b.First) })
	for i := 1; i < len(rs); i++ {
		if rs[i].First.Compare(rs[i-1].Last) <= 0 {
			return Pool{}, fmt.Errorf("%w: entries %s and %s overlap", ErrBadPool, rs[i-1], rs[i])
		}
	}
	return Pool{ranges: rs}, nil
}

func parseEntry(e string) (Range, error) {
	if e == "" {
		return Range{}, fmt.Errorf("%w: empty entry", ErrBadPool)
	}
	if first, last, ok := strings.Cut(e, "-"); ok {
		a, err := netip.ParseAddr(strings.TrimSpace(first))
		if err != nil {
			return Range{}, fmt.Errorf("%w: range %q: first address: %v", ErrBadPool, e, err)
		}
		b, err := netip.ParseAddr(strings.TrimSpace(last))
		if err != nil {
			return Range{}, fmt.Errorf("%w: range %q: last address: %v", ErrBadPool, e, err)
		}
		a, b = a.Unmap(), b.Unmap()
		if a.Is4() != b.Is4() {
			return Range{}, fmt.Errorf("%w: range %q mixes IPv4 and IPv6", ErrBadPool, e)
		}
		if a.Zone() != "" || b.Zone() != "" {
			return Range{}, fmt.Errorf("%w: range %q: zones are not allowed", ErrBadPool, e)
		}
		if b.Less(a) {
			return Range{}, fmt.Errorf("%w: range %q ends before it starts", ErrBadPool, e)
		}
		return Range{First: a, Last: b}, nil
	}
	p, err := netip.ParsePrefix(e)
	if err != nil {
		return Range{}, fmt.Errorf("%w: %q is neither a CIDR nor a first-last range: %v", ErrBadPool, e, err)
	}
	if p.Masked() != p {
		return Range{}, fmt.Errorf("%w: CIDR %q has host bits set (did you mean %s?)", ErrBadPool, e, p.Masked())
	}
	if p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return Range{}, fmt.Errorf("%w: CIDR %q: IPv4-mapped addresses and zones are not allowed", ErrBadPool, e)
	}
	first := p.Addr()
	last := lastOf(p)
	switch {
	case first.Is4() && p.Bits() <= 30:
		first, last = first.Next(), last.Prev()
	case first.Is6() && p.Bits() <= 126:
		first = first.Next()
	}
	return Range{First: first, Last: last}, nil
}

// lastOf is the highest address of p.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 7; j >= 0; j-- {
			if i*8+(7-j) >= bits {
				b[i] |= 1 << j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// String is the range as "first-last".
func (r Range) String() string { return r.First.String() + "-" + r.Last.String() }

// size is the number of addresses of r, saturating at math.MaxUint64.
func (r Range) size() uint64 {
	a, b := r.First.As16(), r.Last.As16()
	var hiA, loA, hiB, loB uint64
	for i := range 8 {
		hiA, hiB = hiA<<8|uint64(a[i]), hiB<<8|uint64(b[i])
		loA, loB = loA<<8|uint64(a[8+i]), loB<<8|uint64(b[8+i])
	}
	if hiB != hiA {
		return math.MaxUint64
	}
	d := loB - loA
	if d == math.MaxUint64 {
		return d
	}
	return d + 1
}

// Ranges returns the pool's ranges in address order.
func (p Pool) Ranges() []Range { return slices.Clone(p.ranges) }

// Empty reports whether the pool has no address.
func (p Pool) Empty() bool { return len(p.ranges) == 0 }

// Size is the number of addresses, saturating at math.MaxUint64.
func (p Pool) Size() uint64 {
	var n uint64
	for _, r := range p.ranges {
		s := r.size()
		if n+s < n {
			return math.MaxUint64
		}
		n += s
	}
	return n
}

// Contains reports whether a is in the pool.
func (p Pool) Contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, r := range p.ranges {
		if r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0 {
			return true
		}
	}
	return false
}

// Overlap returns an address both pools hold, and whether there is one.
func (p Pool) Overlap(q Pool) (netip.Addr, bool) {
	i, j := 0, 0
	for i < len(p.ranges) && j < len(q.ranges) {
		a, b := p.ranges[i], q.ranges[j]
		if a.Last.Less(b.First) {
			i++
			continue
		}
		if b.Last.Less(a.First) {
			j++
			continue
		}
		if a.First.Less(b.First) {
			return b.First, true
		}
		return a.First, true
	}
	return netip.Addr{}, false
}

// FirstFree returns the lowest address of the pool that is not in used, which must be
// sorted (Insert keeps it so). It costs O(len(used) + ranges).
func (p Pool) FirstFree(used []netip.Addr) (netip.Addr, bool) {
	k := 0
	for _, r := range p.ranges {
		for k < len(used) && used[k].Less(r.First) {
			k++
		}
		a := r.First
		for {
			if k >= len(used) || a.Less(used[k]) {
				return a, true
			}
			// used[k] == a: used is sorted and unique, so after k++ used[k] > a.
			k++
			if a == r.Last {
				break
			}
			a = a.Next()
		}
	}
	return netip.Addr{}, false
}

// Free is the number of addresses of the pool not in used (sorted), saturating.
func (p Pool) Free(used []netip.Addr) uint64 {
	n := p.Size()
	for _, a := range used {
		if n == 0 {
			break
		}
		if n != math.MaxUint64 && p.Contains(a) {
			n--
		}
	}
	return n
}

// Insert adds a to the sorted slice used, keeping it sorted; it reports false when a was
// already there.
func Insert(used []netip.Addr, a netip.Addr) ([]netip.Addr, bool) {
	i, found := slices.BinarySearchFunc(used, a, netip.Addr.Compare)
	if found {
		return used, false
	}
	return slices.Insert(used, i, a), true
}

// Remove deletes a from the sorted slice used; it reports whether it was there.
func Remove(used []netip.Addr, a netip.Addr) ([]netip.Addr, bool) {
	i, found := slices.BinarySearchFunc(used, a, netip.Addr.Compare)
	if !found {
		return used, false
	}
	return slices.Delete(used, i, i+1), true
}
