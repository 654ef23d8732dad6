package dnsserver

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// FuzzRespond feeds raw bytes through the handler: it must never panic, must answer only
// with a message that parses, keeps the request's id, and fits 512 bytes over UDP without
// EDNS. The seeds (testdata/fuzz/FuzzRespond) are real queries of every kind the server
// distinguishes.
func FuzzRespond(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
	}{
		{"search.hotel." + testZone, dns.TypeA, false},
		{"search.hotel." + testZone, dns.TypeSRV, true},
		{"_http._tcp.search.hotel." + testZone, dns.TypeSRV, false},
		{"i-1.search.hotel." + testZone, dns.TypeAAAA, true},
		{"svc.big." + testZone, dns.TypeA, false},
		{testZone, dns.TypeSOA, false},
		{testZone, dns.TypeANY, true},
		{"nothere." + testZone, dns.TypeA, false},
		{"example.com.", dns.TypeA, false},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(4096, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	s, err := New(Config{Zones: []string{"ns.berth.internal"}}, testCatalog(f), nil)
	if err != nil {
		f.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	src := netip.MustParseAddr("127.0.0.1")
	f.Fuzz(func(t *testing.T, pkt []byte) {
		for _, tcp := range []bool{false, true} {
			// The fast path, when it answers, must say what the general path says given the
			// same random draws.
			if fast, _, ok := s.fastRespond(pkt, src, tcp, rand.New(rand.NewPCG(7, 7)), nil); ok {
				slow, _ := s.respond(pkt, src, tcp, rand.New(rand.NewPCG(7, 7)), nil)
				sameAnswer(t, pkt, fast, slow)
			}
			out, res := s.respond(pkt, src, tcp, r, nil)
			if res.drop {
				if out != nil {
					t.Fatalf("drop with a reply")
				}
				continue
			}
			var m dns.Msg
			if err := m.Unpack(out); err != nil {
				// A FORMERR for an unparsable request is only a header.
				if len(out) == 12 && int(out[3]&0x0f) == dns.RcodeFormatError {
					continue
				}
				t.Fatalf("reply does not parse: %v\nrequest % x\nreply % x", err, pkt, out)
			}
			if m.Id != uint16(pkt[0])<<8|uint16(pkt[1]) || !m.Response {
				t.Fatalf("reply id %d response %v: want the request's id and QR", m.Id, m.Response)
			}
			var req dns.Msg
			if !tcp && req.Unpack(pkt) == nil && req.IsEdns0() == nil && len(out) > 512 {
				t.Fatalf("udp reply without EDNS: got %d bytes, want at most 512", len(out))
			}
		}
	})
}

// sameAnswer fails unless two packed replies to req carry the same message.
func sameAnswer(t *testing.T, req, a, b []byte) {
	t.Helper()
	var ma, mb dns.Msg
	if err := ma.Unpack(a); err != nil {
		t.Fatalf("fast reply does not parse: %v\nrequest % x\nreply % x", err, req, a)
	}
	if err := mb.Unpack(b); err != nil {
		t.Fatalf("general reply does not parse: %v", err)
	}
	if ma.String() != mb.String() {
		t.Fatalf("request % x\nfast path:\n%v\ngeneral path:\n%v", req, &ma, &mb)
	}
}

func TestFastPathMatchesSlowPath(t *testing.T) {
	s, err := New(Config{Zones: []string{"ns.berth.internal", "example.test"}}, testCatalog(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		qtype    uint16
		edns     uint16
		do, cd   bool
		src      string
		wantFast bool
	}{
		{"search.hotel." + testZone, dns.TypeA, 0, false, false, "127.0.0.1", true},
		{"SEARCH.hotel." + testZone, dns.TypeA, 0, false, true, "10.2.0.5", true},
		{"search.hotel.example.test.", dns.TypeAAAA, 1232, true, false, "127.0.0.1", true},
		{"search.hotel." + testZone, dns.TypeA, 4096, false, false, "192.0.2.1", true},
		{"svc.big." + testZone, dns.TypeA, 0, false, false, "127.0.0.1", false},    // truncated
		{"svc.big." + testZone, dns.TypeA, 4096, false, false, "127.0.0.1", false}, // does not fit 1232
		{"flight." + testZone, dns.TypeA, 0, false, false, "127.0.0.1", false},     // NODATA
		{"nothere." + testZone, dns.TypeA, 0, false, false, "127.0.0.1", false},    // NXDOMAIN
		{"search.hotel." + testZone, dns.TypeSRV, 0, false, false, "127.0.0.1", false},
		{"i-1.search.hotel." + testZone, dns.TypeA, 0, false, false, "127.0.0.1", false},
	}
	for _, tt := range tests {
		m := new(dns.Msg)
		m.SetQuestion(tt.name, tt.qtype)
		m.CheckingDisabled = tt.cd
		if tt.edns > 0 {
			m.SetEdns0(tt.edns, tt.do)
		}
		pkt, _ := m.Pack()
		src := netip.MustParseAddr(tt.src)
		for _, tcp := range []bool{false, true} {
			fast, _, ok := s.fastRespond(pkt, src, tcp, rand.New(rand.NewPCG(3, 3)), nil)
			want := tt.wantFast || tcp && tt.name == "svc.big."+testZone // TCP fits the big answer
			if ok != want {
				t.Errorf("%s %s tcp=%v: fast path taken %v, want %v", tt.name, dns.TypeToString[tt.qtype], tcp, ok, want)
			}
			if ok {
				slow, _ := s.respond(pkt, src, tcp, rand.New(rand.NewPCG(3, 3)), nil)
				sameAnswer(t, pkt, fast, slow)
			}
		}
	}
}
