package ippool

import (
	"errors"
	"net/netip"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParse(t *testing.T) {
	tests := []struct {
		in      []string
		size    uint64
		first   string
		wantErr bool
	}{
		{in: []string{"172.30.0.0/24"}, size: 254, first: "172.30.0.1"},
		{in: []string{"172.30.0.2-172.30.0.254"}, size: 253, first: "172.30.0.2"},
		{in: []string{"10.0.0.0/31"}, size: 2, first: "10.0.0.0"},
		{in: []string{"10.0.0.7/32", "10.0.0.1-10.0.0.3"}, size: 4, first: "10.0.0.1"},
		{in: []string{"fd00::/120"}, size: 255, first: "fd00::1"},
		{in: []string{"172.30.0.1/24"}, wantErr: true},
		{in: []string{"172.30.0.0/33"}, wantErr: true},
		{in: []string{"10.0.0.9-10.0.0.1"}, wantErr: true},
		{in: []string{"10.0.0.1-fd00::1"}, wantErr: true},
		{in: []string{"10.0.0.0/24", "10.0.0.128/25"}, wantErr: true},
		{in: []string{"banana"}, wantErr: true},
		{in: []string{""}, wantErr: true},
	}
	for _, tt := range tests {
		p, err := Parse(tt.in)
		if tt.wantErr {
			if !errors.Is(err, ErrBadPool) {
				t.Errorf("Parse(%q): got err %v, want ErrBadPool", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.in, err)
			continue
		}
		if got := p.Size(); got != tt.size {
			t.Errorf("Parse(%q).Size(): got %d, want %d", tt.in, got, tt.size)
		}
		if got, _ := p.FirstFree(nil); got.String() != tt.first {
			t.Errorf("Parse(%q).FirstFree(nil): got %s, want %s", tt.in, got, tt.first)
		}
	}
}

func TestFirstFreeHandsOutEveryAddressOnce(t *testing.T) {
	p, err := Parse([]string{"10.1.0.0/29", "10.2.0.5-10.2.0.7"})
	if err != nil {
		t.Fatal(err)
	}
	var used []netip.Addr
	seen := map[netip.Addr]bool{}
	for range p.Size() {
		a, ok := p.FirstFree(used)
		if !ok {
			t.Fatalf("FirstFree: pool exhausted after %d of %d", len(used), p.Size())
		}
		if seen[a] || !p.Contains(a) {
			t.Fatalf("FirstFree: got %s (seen %v, in pool %v), want a new address of the pool", a, seen[a], p.Contains(a))
		}
		seen[a] = true
		used, _ = Insert(used, a)
	}
	if a, ok := p.FirstFree(used); ok {
		t.Fatalf("FirstFree on a full pool: got %s, want none", a)
	}
	// Freeing one in the middle makes it the next one handed out.
	mid := netip.MustParseAddr("10.1.0.3")
	used, _ = Remove(used, mid)
	if a, _ := p.FirstFree(used); a != mid {
		t.Fatalf("FirstFree after freeing %s: got %s", mid, a)
	}
	if got := p.Free(used); got != 1 {
		t.Fatalf("Free: got %d, want 1", got)
	}
}

func TestOverlap(t *testing.T) {
	tests := []struct {
		a, b []string
		want bool
	}{
		{[]string{"10.0.0.0/24"}, []string{"10.0.1.0/24"}, false},
		{[]string{"10.0.0.0/24"}, []string{"10.0.0.200-10.0.1.5"}, true},
		{[]string{"10.0.0.10-10.0.0.20"}, []string{"10.0.0.20-10.0.0.30"}, true},
		{[]string{"10.0.0.10-10.0.0.19"}, []string{"10.0.0.20-10.0.0.30"}, false},
		{[]string{"fd00::/120"}, []string{"10.0.0.0/8"}, false},
	}
	for _, tt := range tests {
		a, _ := Parse(tt.a)
		b, _ := Parse(tt.b)
		if _, got := a.Overlap(b); got != tt.want {
			t.Errorf("Overlap(%q, %q): got %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if _, got := b.Overlap(a); got != tt.want {
			t.Errorf("Overlap(%q, %q): got %v, want %v", tt.b, tt.a, got, tt.want)
		}
	}
}
