package tree

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestDedupeTableMatchesReference drives the table and a plain reference (an ordered list)
// with the same random requests, with a hash that collides often, and compares them.
func TestDedupeTableMatchesReference(t *testing.T) {
	for _, tt := range []struct {
		name       string
		hash       func(string) uint64
		maxEntries int
		maxBytes   int
	}{
		{"real hash", nil, 50, 1 << 20},
		{"every id collides", func(string) uint64 { return 7 }, 50, 1 << 20},
		{"ids collide by length", func(id string) uint64 { return uint64(len(id)) }, 300, 1 << 20},
		{"bounded by bytes", func(id string) uint64 { return uint64(len(id) % 3) }, 1000, 4000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDedupeTable(tt.maxEntries, tt.maxBytes)
			if tt.hash != nil {
				d.hashID = tt.hash
			}
			type ref struct {
				id  string
				enc []byte
			}
			var live []ref
			refBytes := 0
			size := func(r ref) int { return len(r.id) + 64 + len(r.enc) }
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range 5000 {
				id := fmt.Sprintf("r%d", rng.IntN(400))
				found := -1
				for j, r := range live {
					if r.id == id {
						found = j
					}
				}
				e, ok := d.get(id)
				if ok != (found >= 0) {
					t.Fatalf("step %d: get %s: got found %v, want %v", i, id, ok, found >= 0)
				}
				if ok {
					if string(e.enc) != string(live[found].enc) {
						t.Fatalf("step %d: get %s: got %q, want %q", i, id, e.enc, live[found].enc)
					}
					continue
				}
				r := ref{id: id, enc: []byte(fmt.Sprint("res-", i))}
				d.put(id, [32]byte{}, r.enc)
				live = append(live, r)
				refBytes += size(r)
				for len(live) > 1 && (len(live) > tt.maxEntries || refBytes > tt.maxBytes) {
					refBytes -= size(live[0])
					live = live[1:]
				}
				if d.len() != len(live) {
					t.Fatalf("step %d: got %d entries, want %d", i, d.len(), len(live))
				}
			}
			got := d.entries()
			if len(got) != len(live) {
				t.Fatalf("entries: got %d, want %d", len(got), len(live))
			}
			for i := range got {
				if got[i].id != live[i].id {
					t.Fatalf("entry %d: got %s, want %s (oldest first)", i, got[i].id, live[i].id)
				}
			}
		})
	}
}
