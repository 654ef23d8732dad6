package rows

import (
	"strings"
	"testing"

	"go.uber.org/goleak"

	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/cmdb-sync/internal/source"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func rec(pos string, kv ...any) source.Record {
	m := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	return source.Record{Pos: pos, Fields: m}
}

func good(id, pool string, extra ...any) []any {
	return append([]any{"id", id, "dc", "dc1", "cpu", int64(16), "memory", "64GiB", "ip_pool", pool}, extra...)
}

func TestParseKeepsGoodRowsAndRejectsBadOnes(t *testing.T) {
	recs := []source.Record{
		rec("line 2", good("h1", "10.0.0.0/24", "ip", "192.168.0.1", "rack", "r1", "labels", "ssd=true;kernel=6.1", "label.gpu", "none")...),
		rec("line 3", good("h2", "10.0.1.0/24", "ip", "192.168.0.2", "max_containers", "32", "state", "maintenance")...),
		rec("line 4", good("h1", "10.0.2.0/24")...),                                      // duplicate id
		rec("line 5", good("h3", "10.0.3.0/24", "ip", "192.168.0.1")...),                 // duplicate ip
		rec("line 6", good("h4", "10.0.0.128/25")...),                                    // overlaps h1
		rec("line 7", good("h5", "10.0.5.1/24")...),                                      // bad CIDR
		rec("line 8", "id", "h6", "dc", "dc1", "memory", "1G", "ip_pool", "10.0.6.0/24"), // no cpu
		rec("line 9", good("h7", "10.0.7.0/24", "memory", "12 parsecs")...),              // bad memory
		rec("line 10", good("h8", "10.0.8.0/24", "state", "exploded")...),                // bad state
		rec("line 11", good("bad.id", "10.0.9.0/24")...),                                 // id not a subject token
		rec("line 12", good("h9", "10.9.0.0/24")...),                                     // overlaps retained
		rec("line 13", good("h10", "10.0.10.0/24", "cpu", "2500m", "memory", int64(1<<30), "disk", "1.5TiB")...),
	}
	retained := []*inventoryv1.Host{{Id: "old", IpPools: []string{"10.9.0.0/16"}}}
	res := Parse(recs, Options{DefaultMaxContainers: 64, Source: "file"}, retained)

	var ids []string
	for _, h := range res.Hosts {
		ids = append(ids, h.GetId())
	}
	if got := strings.Join(ids, ","); got != "h1,h2,h10" {
		t.Fatalf("kept: got %s, want h1,h2,h10", got)
	}
	want := map[string]string{
		"line 4": ReasonDuplicateID, "line 5": ReasonDuplicateIP, "line 6": ReasonOverlappingPool,
		"line 7": ReasonBadPool, "line 8": ReasonInvalid, "line 9": ReasonInvalid, "line 10": ReasonInvalid,
		"line 11": ReasonInvalid, "line 12": ReasonOverlappingPool,
	}
	if len(res.Rejected) != len(want) {
		t.Fatalf("rejected: got %d (%v), want %d", len(res.Rejected), res.Rejected, len(want))
	}
	for _, r := range res.Rejected {
		if want[r.Pos] != r.Reason {
			t.Errorf("%s (%s): got reason %s (%v), want %s", r.Pos, r.ID, r.Reason, r.Err, want[r.Pos])
		}
	}
	for _, r := range res.Rejected {
		if r.Pos == "line 8" && !strings.Contains(r.Err.Error(), "cpu: missing") {
			t.Errorf("line 8: got %v, want it to name the cpu field", r.Err)
		}
		if r.Pos == "line 12" && !strings.Contains(r.Err.Error(), "old") {
			t.Errorf("line 12: got %v, want it to name the retained host", r.Err)
		}
	}
	h1, h2, h10 := res.Hosts[0], res.Hosts[1], res.Hosts[2]
	if h1.GetCpuMillis() != 16000 || h1.GetMemoryBytes() != 64<<30 || h1.GetMaxContainers() != 64 || h1.GetRack() != "r1" {
		t.Errorf("h1: got %v", h1)
	}
	if h1.GetLabels()["ssd"] != "true" || h1.GetLabels()["kernel"] != "6.1" || h1.GetLabels()["gpu"] != "none" {
		t.Errorf("h1 labels: got %v", h1.GetLabels())
	}
	if h2.GetMaxContainers() != 32 || !h2.GetCmdbDraining() {
		t.Errorf("h2: got max %d draining %v, want 32 and true", h2.GetMaxContainers(), h2.GetCmdbDraining())
	}
	if h10.GetCpuMillis() != 2500 || h10.GetMemoryBytes() != 1<<30 || h10.GetDiskBytes() != 3<<39 {
		t.Errorf("h10: got cpu %d mem %d disk %d", h10.GetCpuMillis(), h10.GetMemoryBytes(), h10.GetDiskBytes())
	}
	for _, id := range []string{"h1", "h3", "h6", "bad.id", "h10"} {
		if !res.Claimed[id] {
			t.Errorf("claimed: %s missing", id)
		}
	}
}

func TestMapping(t *testing.T) {
	recs := []source.Record{rec("row 1", "hostname", "h1", "site", "east", "cores", 8.5, "ram_gb", "32G", "pool", []any{"10.0.0.0/24", "10.0.1.1-10.0.1.9"}, "tag.role", "web")}
	res := Parse(recs, Options{Mapping: Mapping{ID: "hostname", DC: "site", CPU: "cores", Memory: "ram_gb", IPPool: "pool", LabelPrefix: "tag."}, DefaultMaxContainers: 64}, nil)
	if len(res.Hosts) != 1 {
		t.Fatalf("got %d hosts (%v), want 1", len(res.Hosts), res.Rejected)
	}
	h := res.Hosts[0]
	if h.GetId() != "h1" || h.GetDc() != "east" || h.GetCpuMillis() != 8500 || h.GetMemoryBytes() != 32<<30 ||
		len(h.GetIpPools()) != 2 || h.GetLabels()["role"] != "web" {
		t.Fatalf("got %v", h)
	}
}

func TestSizes(t *testing.T) {
	tests := []struct {
		in   any
		want uint64
		bad  bool
	}{
		{int64(1024), 1024, false}, {"512", 512, false}, {"1K", 1024, false}, {"1KB", 1000, false},
		{"2GiB", 2 << 30, false}, {"1.5G", 3 << 29, false}, {"1TB", 1e12, false}, {"-1", 0, true},
		{"1X", 0, true}, {1.5, 0, true}, {"", 0, true}, {nil, 0, true},
	}
	for _, tt := range tests {
		got, err := bytesOf(tt.in, true)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("bytesOf(%v): got %d, %v; want %d (error %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}
