package tree

import (
	"google.golang.org/protobuf/proto"
)

// dedupeEntry is the remembered outcome of one request id.
type dedupeEntry struct {
	id     string
	hash   [32]byte
	result any // a response message or an *applyError; never modified
	size   int
}

// dedupeTable remembers the results of the most recent requests by id, first in first out,
// bounded by count and by bytes. Eviction depends only on the order of Apply calls, so
// every member evicts the same entries.
type dedupeTable struct {
	maxEntries, maxBytes int
	byID                 map[string]*dedupeEntry
	order                []*dedupeEntry // oldest first; order[head:] are live
	head                 int
	bytes                int
}

func newDedupeTable(maxEntries, maxBytes int) *dedupeTable {
	return &dedupeTable{maxEntries: maxEntries, maxBytes: maxBytes, byID: map[string]*dedupeEntry{}}
}

func (d *dedupeTable) len() int { return len(d.byID) }

func (d *dedupeTable) get(id string) (*dedupeEntry, bool) {
	e, ok := d.byID[id]
	return e, ok
}

func resultSize(res any) int {
	switch r := res.(type) {
	case proto.Message:
		return proto.Size(r)
	case *applyError:
		return len(r.msg)
	case memberMark:
		return 8
	}
	return 0
}

func (d *dedupeTable) put(id string, hash [32]byte, res any) {
	e := &dedupeEntry{id: id, hash: hash, result: res, size: len(id) + 64 + resultSize(res)}
	d.byID[id] = e
	d.order = append(d.order, e)
	d.bytes += e.size
	for len(d.byID) > 1 && (len(d.byID) > d.maxEntries || d.bytes > d.maxBytes) {
		old := d.order[d.head]
		d.order[d.head] = nil
		d.head++
		delete(d.byID, old.id)
		d.bytes -= old.size
	}
	if d.head > 1024 && d.head > len(d.order)/2 {
		d.order = append([]*dedupeEntry(nil), d.order[d.head:]...)
		d.head = 0
	}
}

// entries returns the live entries, oldest first (a copy of the slice; entries are shared).
func (d *dedupeTable) entries() []*dedupeEntry {
	return append([]*dedupeEntry(nil), d.order[d.head:]...)
}
