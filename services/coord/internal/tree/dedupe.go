package tree

import "hash/maphash"

// dedupeEntry is the remembered outcome of one request id.
type dedupeEntry struct {
	id   string
	hash [32]byte
	// enc is the result, encoded once when it is recorded as in snapshots (appendResult):
	// snapshots copy the bytes as they are, and the table holds no pointers into result
	// messages for the garbage collector to trace.
	enc []byte
}

func (e *dedupeEntry) size() int { return len(e.id) + 64 + len(e.enc) }

// dedupeTable remembers the results of the most recent requests by id, first in first out,
// bounded by count and by bytes. Eviction depends only on the order of Apply calls, so
// every member evicts the same entries.
//
// The entries live in a ring, in order; an entry's sequence number s is at ring[s&mask].
// The index maps a hash of the id to the sequence of the entry that has it; the rare id
// whose hash another live id already holds is indexed by the id itself in collided, so
// lookups are exact whatever the hash (a per-process seed: only the outcome must be the
// same on every member). Integer keys keep the index cheap to probe and free of pointers
// for the garbage collector.
type dedupeTable struct {
	maxEntries, maxBytes int
	hashID               func(string) uint64
	index                map[uint64]uint64
	collided             map[string]uint64
	ring                 []dedupeEntry // len is a power of two
	first, next          uint64        // live sequences: [first, next)
	bytes                int
}

func newDedupeTable(maxEntries, maxBytes int) *dedupeTable {
	seed := maphash.MakeSeed()
	return &dedupeTable{maxEntries: maxEntries, maxBytes: maxBytes,
		hashID: func(id string) uint64 { return maphash.String(seed, id) },
		index:  map[uint64]uint64{}, collided: map[string]uint64{}}
}

func (d *dedupeTable) len() int { return int(d.next - d.first) }

func (d *dedupeTable) at(seq uint64) *dedupeEntry { return &d.ring[seq&uint64(len(d.ring)-1)] }

func (d *dedupeTable) get(id string) (*dedupeEntry, bool) {
	if seq, ok := d.index[d.hashID(id)]; ok {
		if e := d.at(seq); e.id == id {
			return e, true
		}
	}
	if len(d.collided) > 0 {
		if seq, ok := d.collided[id]; ok {
			return d.at(seq), true
		}
	}
	return nil, false
}

// put records the encoded result of request id, which the table does not hold.
func (d *dedupeTable) put(id string, hash [32]byte, enc []byte) {
	if d.len() == len(d.ring) {
		d.grow()
	}
	seq := d.next
	d.next++
	e := d.at(seq)
	*e = dedupeEntry{id: id, hash: hash, enc: enc}
	d.bytes += e.size()
	h := d.hashID(id)
	if _, taken := d.index[h]; taken {
		d.collided[id] = seq
	} else {
		d.index[h] = seq
	}
	for d.len() > 1 && (d.len() > d.maxEntries || d.bytes > d.maxBytes) {
		d.evict()
	}
}

// evict forgets the oldest entry.
func (d *dedupeTable) evict() {
	e := d.at(d.first)
	if h := d.hashID(e.id); d.index[h] == d.first {
		delete(d.index, h)
	} else {
		delete(d.collided, e.id)
	}
	d.bytes -= e.size()
	*e = dedupeEntry{}
	d.first++
}

// grow doubles the ring, keeping every entry at its sequence.
func (d *dedupeTable) grow() {
	ring := make([]dedupeEntry, max(64, 2*len(d.ring)))
	for s := d.first; s < d.next; s++ {
		ring[s&uint64(len(ring)-1)] = *d.at(s)
	}
	d.ring = ring
}

// entries returns the live entries, oldest first (a copy; the ids and encoded results are
// shared and never modified).
func (d *dedupeTable) entries() []dedupeEntry {
	out := make([]dedupeEntry, 0, d.len())
	for s := d.first; s < d.next; s++ {
		out = append(out, *d.at(s))
	}
	return out
}
