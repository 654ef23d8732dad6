package dnsserver

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

func BenchmarkRespond(b *testing.B) {
	s, err := New(Config{Zones: []string{"ns.berth.internal"}}, testCatalog(b), nil)
	if err != nil {
		b.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("search.hotel."+testZone, dns.TypeA)
	pkt, _ := m.Pack()
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]byte, 0, 4096)
	src := netip.MustParseAddr("127.0.0.1")
	b.ReportAllocs()
	for b.Loop() {
		out, _ = s.Respond(pkt, src, false, r, out)
	}
}
