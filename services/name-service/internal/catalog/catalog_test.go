package catalog

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func instNode(t *testing.T, svc, id, ip string, modRev int64) coordclient.Node {
	t.Helper()
	b, err := protojson.Marshal(&namesv1.Instance{Ip: ip, Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	return coordclient.Node{Path: PrefixInstances + "/" + svc + "/" + id, Value: b, Version: 1, ModRev: modRev}
}

func put(n coordclient.Node, rev int64) coordclient.Event {
	return coordclient.Event{Type: coordclient.EventPut, Node: n, Revision: rev}
}

func del(path string, rev int64) coordclient.Event {
	return coordclient.Event{Type: coordclient.EventDelete, Node: coordclient.Node{Path: path}, Revision: rev}
}

func ids(s *Snapshot) []string {
	var out []string
	for _, in := range s.View.GetInstances() {
		out = append(out, in.GetId())
	}
	return out
}

func TestRevisionsAndChanges(t *testing.T) {
	var got [][]Change
	c := New(Config{OnChange: func(ch []Change) { got = append(got, ch) }})
	c.Reset(KindInstances, []coordclient.Node{instNode(t, "a/b", "x", "10.0.0.1", 7), instNode(t, "a/b", "y", "10.0.0.2", 9)}, 20)
	s := c.Lookup("a/b")
	if s == nil || s.View.GetRevision() != 9 || !slices.Equal(ids(s), []string{"x", "y"}) {
		t.Fatalf("after the first listing: got %v, want x y at revision 9 (the highest mod_rev)", s.View)
	}
	if len(got) != 1 || len(got[0][0].Registered) != 0 {
		t.Fatalf("first listing: got %v, want one change without registration events", got)
	}
	// Ancestors exist without data.
	if snap, below := c.LookupLower("a"); snap != nil || !below {
		t.Fatalf("a: got %v, %v; want no snapshot but services below", snap, below)
	}
	// An update with equal content changes nothing and publishes nothing.
	c.ApplyEvents(KindInstances, []coordclient.Event{put(instNode(t, "a/b", "x", "10.0.0.1", 21), 21)})
	if len(got) != 1 || c.Lookup("a/b") != s {
		t.Fatalf("equal update: got %d change batches, want 1 and the same snapshot", len(got))
	}
	c.ApplyEvents(KindInstances, []coordclient.Event{put(instNode(t, "a/b", "z", "10.0.0.3", 22), 22), del(PrefixInstances+"/a/b/x", 23)})
	s2 := c.Lookup("a/b")
	if s2.View.GetRevision() != 23 || !slices.Equal(ids(s2), []string{"y", "z"}) {
		t.Fatalf("after events: got %v at %d, want y z at 23", ids(s2), s2.View.GetRevision())
	}
	select {
	case <-s.Changed():
	default:
		t.Fatalf("old snapshot's Changed not closed")
	}
	last := got[len(got)-1][0]
	if len(last.Registered) != 1 || last.Registered[0].Instance.GetId() != "z" || len(last.Deregistered) != 1 || last.Deregistered[0].Revision != 23 {
		t.Fatalf("events: got %+v", last)
	}
	// A re-list after compaction drops what is gone and takes the listing's revision.
	c.Reset(KindInstances, []coordclient.Node{instNode(t, "a/b", "z", "10.0.0.3", 22)}, 40)
	s3 := c.Lookup("a/b")
	if s3.View.GetRevision() != 40 || !slices.Equal(ids(s3), []string{"z"}) {
		t.Fatalf("after re-list: got %v at %d, want z at 40", ids(s3), s3.View.GetRevision())
	}
	// The last instance gone: the service is unknown.
	c.ApplyEvents(KindInstances, []coordclient.Event{del(PrefixInstances+"/a/b/z", 41)})
	if c.Lookup("a/b") != nil {
		t.Fatalf("after the last deregistration: service still known")
	}
	if _, below := c.LookupLower("a"); below {
		t.Fatalf("a still has services below")
	}
	if removed := got[len(got)-1][0]; removed.Next.Known || removed.Next.View.GetRevision() != 41 {
		t.Fatalf("removal change: got %+v", removed.Next)
	}
}

func TestTreeTTLAndInvalid(t *testing.T) {
	var invalid []string
	c := New(Config{DefaultTTL: 5 * time.Second, OnInvalid: func(_ Kind, path string, _ error) { invalid = append(invalid, path) }})
	c.Reset(KindInstances, []coordclient.Node{
		instNode(t, "hotel/search", "x", "10.0.0.1", 3),
		{Path: PrefixInstances + "/hotel/search/bad", Value: []byte("{not json"), Version: 1, ModRev: 3},
		{Path: PrefixInstances + "/hotel.x/y", Value: []byte("{}"), Version: 1, ModRev: 3},
	}, 5)
	if got := c.Lookup("hotel/search").View.GetTtlSeconds(); got != 5 {
		t.Fatalf("default ttl: got %d, want 5", got)
	}
	if len(invalid) != 2 {
		t.Fatalf("invalid values: got %v, want 2", invalid)
	}
	// A TTL on hotel is inherited by hotel/search.
	c.Reset(KindTree, []coordclient.Node{{Path: PrefixTree + "/hotel", Value: []byte(`{"owners":["team-hotel"],"policy":{"dns_ttl":"30s"}}`), Version: 1, ModRev: 6}}, 6)
	if got := c.Lookup("hotel/search").View.GetTtlSeconds(); got != 30 {
		t.Fatalf("inherited ttl: got %d, want 30", got)
	}
	c.ApplyEvents(KindTree, []coordclient.Event{put(coordclient.Node{Path: PrefixTree + "/hotel/search", Value: []byte(`{"policy":{"dnsTtl":"2.5s"}}`), Version: 1}, 7)})
	if got := c.Lookup("hotel/search").View.GetTtlSeconds(); got != 2 {
		t.Fatalf("own ttl: got %d, want 2", got)
	}
	// A policy that does not validate is ignored.
	c.ApplyEvents(KindTraffic, []coordclient.Event{put(coordclient.Node{Path: PrefixTraffic + "/hotel/search", Value: []byte(`{"panicThreshold":500}`), Version: 1}, 8)})
	if c.Lookup("hotel/search").View.GetPolicy() != nil || len(invalid) != 3 {
		t.Fatalf("invalid policy: got %v, invalid %v", c.Lookup("hotel/search").View.GetPolicy(), invalid)
	}
}

func TestHostsLocateClients(t *testing.T) {
	c := New(Config{Subnets: map[netip.Prefix]string{netip.MustParsePrefix("10.0.0.0/8"): "dc1"}})
	c.Reset(KindHosts, []coordclient.Node{{Path: PrefixHosts + "/h1", Value: []byte(`{"id":"h1","dc":"dc2","ip":"10.1.2.3","rack":"r1","cpu_millis":"8000"}`), Version: 1}}, 3)
	for _, tt := range []struct{ ip, dc string }{{"10.1.2.3", "dc2"}, {"10.9.9.9", "dc1"}, {"192.0.2.1", ""}} {
		if got, _ := c.Locator().DC(netip.MustParseAddr(tt.ip)); got != tt.dc {
			t.Errorf("DC(%s): got %q, want %q", tt.ip, got, tt.dc)
		}
	}
	if !c.KnownDC("dc2") || c.KnownDC("dc3") {
		t.Errorf("KnownDC: got dc2=%v dc3=%v", c.KnownDC("dc2"), c.KnownDC("dc3"))
	}
	c.ApplyEvents(KindHosts, []coordclient.Event{del(PrefixHosts+"/h1", 4)})
	if got, _ := c.Locator().DC(netip.MustParseAddr("10.1.2.3")); got != "dc1" {
		t.Errorf("after the host left: got %q, want dc1 from the subnet", got)
	}
}
