package dnsserver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/services/name-service/internal/catalog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testZone = "ns.berth.internal."

func instNode(t testing.TB, svc, id, ip string, port uint32, dc string, health namesv1.Health) coordclient.Node {
	t.Helper()
	b, err := protojson.Marshal(&namesv1.Instance{Ip: ip, Port: port, Dc: dc, Version: "1.0", Health: health})
	if err != nil {
		t.Fatal(err)
	}
	return coordclient.Node{Path: catalog.PrefixInstances + "/" + svc + "/" + id, Value: b, Version: 1, ModRev: 5}
}

// testCatalog holds hotel/search (dc1: i-1, i-2, i-6 (IPv6), i-4 unhealthy; dc2: i-3),
// big/svc (100 instances), and flight (a tree node without instances).
func testCatalog(t testing.TB) *catalog.Catalog {
	t.Helper()
	subnets := map[netip.Prefix]string{netip.MustParsePrefix("127.0.0.0/8"): "dc1", netip.MustParsePrefix("10.2.0.0/16"): "dc2"}
	cat := catalog.New(catalog.Config{DefaultTTL: 7 * time.Second, Subnets: subnets})
	healthy := namesv1.Health_HEALTH_HEALTHY
	nodes := []coordclient.Node{
		instNode(t, "hotel/search", "i-1", "10.1.0.1", 8080, "dc1", healthy),
		instNode(t, "hotel/search", "i-2", "10.1.0.2", 8081, "dc1", healthy),
		instNode(t, "hotel/search", "i-3", "10.2.0.1", 8082, "dc2", healthy),
		instNode(t, "hotel/search", "i-4", "10.1.0.4", 8084, "dc1", namesv1.Health_HEALTH_UNHEALTHY),
		instNode(t, "hotel/search", "i-6", "fd00::6", 8086, "dc1", healthy),
	}
	for i := range 100 {
		nodes = append(nodes, instNode(t, "big/svc", fmt.Sprintf("b-%03d", i), fmt.Sprintf("10.3.%d.%d", i/200, i%200+1), 9000, "", healthy))
	}
	cat.Reset(catalog.KindInstances, nodes, 10)
	cat.Reset(catalog.KindTree, []coordclient.Node{{Path: catalog.PrefixTree + "/flight", Value: []byte(`{}`), Version: 1, ModRev: 3}}, 10)
	cat.Reset(catalog.KindTraffic, nil, 10)
	cat.Reset(catalog.KindHosts, nil, 10)
	return cat
}

func startServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Zones == nil {
		cfg.Zones = []string{"ns.berth.internal", "example.test"}
	}
	cfg.NSAddrs = []netip.Addr{netip.MustParseAddr("127.0.0.53")}
	s, err := New(cfg, testCatalog(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	u, _, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, "") }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, u.String()
}

type query struct {
	name     string
	qtype    uint16
	class    uint16
	tcp      bool
	edns     uint16 // 0: no OPT
	ednsVer  uint8
	ecs      string // client subnet, like 10.2.0.0/24
	opcode   int
	twoQs    bool
	wantCode int
	// wantAnswers are the answers' data (A/AAAA address, SRV "port target", SOA/NS target,
	// HINFO cpu) as a sorted list; nil skips the check.
	wantAnswers []string
	minAnswers  int // with wantAnswers nil: at least this many answers
	wantSOA     bool
	wantTC      bool
	wantAA      bool
	wantExtra   int // at least this many additional records (OPT excluded)
	wantTTL     uint32
}

func rdata(rr dns.RR) string {
	switch r := rr.(type) {
	case *dns.A:
		return r.A.String()
	case *dns.AAAA:
		return r.AAAA.String()
	case *dns.SRV:
		return fmt.Sprintf("%d %s", r.Port, r.Target)
	case *dns.SOA:
		return "SOA " + r.Ns
	case *dns.NS:
		return "NS " + r.Ns
	case *dns.HINFO:
		return "HINFO " + r.Cpu
	}
	return rr.String()
}

func exchange(t *testing.T, addr string, q query) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(q.name, q.qtype)
	if q.class != 0 {
		m.Question[0].Qclass = q.class
	}
	if q.opcode != 0 {
		m.Opcode = q.opcode
	}
	if q.twoQs {
		m.Question = append(m.Question, dns.Question{Name: q.name, Qtype: dns.TypeA, Qclass: dns.ClassINET})
	}
	if q.edns > 0 {
		m.SetEdns0(q.edns, false)
		opt := m.IsEdns0()
		opt.SetVersion(q.ednsVer)
		if q.ecs != "" {
			p := netip.MustParsePrefix(q.ecs)
			fam := uint16(1)
			if p.Addr().Is6() {
				fam = 2
			}
			opt.Option = append(opt.Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: fam, SourceNetmask: uint8(p.Bits()), Address: p.Addr().AsSlice()})
		}
	}
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second, UDPSize: 65535}
	if q.tcp {
		c.Net = "tcp"
	}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("exchange %s %s: %v", q.name, dns.TypeToString[q.qtype], err)
	}
	return r
}

func TestQueries(t *testing.T) {
	_, addr := startServer(t, Config{})
	srv := func(port int, id string) string {
		return fmt.Sprintf("%d %s.search.hotel.ns.berth.internal.", port, id)
	}
	tests := []struct {
		name string
		q    query
	}{
		{"A same dc", query{name: "search.hotel." + testZone, qtype: dns.TypeA, wantAnswers: []string{"10.1.0.1", "10.1.0.2"}, wantAA: true, wantTTL: 7}},
		{"A mixed case", query{name: "SeArCh.HoTeL.NS.berth.internal.", qtype: dns.TypeA, wantAnswers: []string{"10.1.0.1", "10.1.0.2"}, wantAA: true}},
		{"A by ECS in dc2", query{name: "search.hotel." + testZone, qtype: dns.TypeA, edns: 1232, ecs: "10.2.7.0/24", wantAnswers: []string{"10.2.0.1"}}},
		{"A by ECS unknown dc", query{name: "search.hotel." + testZone, qtype: dns.TypeA, edns: 1232, ecs: "192.0.2.0/24", wantAnswers: []string{"10.1.0.1", "10.1.0.2", "10.2.0.1"}}},
		{"AAAA", query{name: "search.hotel." + testZone, qtype: dns.TypeAAAA, wantAnswers: []string{"fd00::6"}}},
		{"SRV plain name", query{name: "search.hotel." + testZone, qtype: dns.TypeSRV,
			wantAnswers: []string{srv(8080, "i-1"), srv(8081, "i-2"), srv(8086, "i-6")}, wantExtra: 3}},
		{"SRV _http._tcp", query{name: "_http._tcp.search.hotel." + testZone, qtype: dns.TypeSRV,
			wantAnswers: []string{srv(8080, "i-1"), srv(8081, "i-2"), srv(8086, "i-6")}}},
		{"A at _http._tcp is NODATA", query{name: "_http._tcp.search.hotel." + testZone, qtype: dns.TypeA, wantAnswers: []string{}, wantSOA: true}},
		{"_tcp is an empty non-terminal", query{name: "_tcp.search.hotel." + testZone, qtype: dns.TypeA, wantAnswers: []string{}, wantSOA: true}},
		{"SRV target resolves", query{name: "i-1.search.hotel." + testZone, qtype: dns.TypeA, wantAnswers: []string{"10.1.0.1"}}},
		{"SRV target IPv6 resolves", query{name: "i-6.search.hotel." + testZone, qtype: dns.TypeAAAA, wantAnswers: []string{"fd00::6"}}},
		{"instance name AAAA of IPv4 is NODATA", query{name: "i-1.search.hotel." + testZone, qtype: dns.TypeAAAA, wantAnswers: []string{}, wantSOA: true}},
		{"unhealthy instance name still resolves", query{name: "i-4.search.hotel." + testZone, qtype: dns.TypeA, wantAnswers: []string{"10.1.0.4"}}},
		{"unknown instance NXDOMAIN", query{name: "i-9.search.hotel." + testZone, qtype: dns.TypeA, wantCode: dns.RcodeNameError, wantAnswers: []string{}, wantSOA: true}},
		{"TXT is NODATA", query{name: "search.hotel." + testZone, qtype: dns.TypeTXT, wantAnswers: []string{}, wantSOA: true, wantAA: true}},
		{"MX is NODATA", query{name: "search.hotel." + testZone, qtype: dns.TypeMX, wantAnswers: []string{}, wantSOA: true}},
		{"unknown NXDOMAIN", query{name: "nothere." + testZone, qtype: dns.TypeA, wantCode: dns.RcodeNameError, wantAnswers: []string{}, wantSOA: true, wantAA: true}},
		{"deep unknown NXDOMAIN", query{name: "a.b.c.nothere." + testZone, qtype: dns.TypeA, wantCode: dns.RcodeNameError, wantSOA: true}},
		{"empty non-terminal NODATA", query{name: "hotel." + testZone, qtype: dns.TypeA, wantAnswers: []string{}, wantSOA: true}},
		{"service without instances NODATA", query{name: "flight." + testZone, qtype: dns.TypeA, wantAnswers: []string{}, wantSOA: true}},
		{"SOA at apex", query{name: testZone, qtype: dns.TypeSOA, wantAnswers: []string{"SOA ns." + testZone}}},
		{"NS at apex", query{name: testZone, qtype: dns.TypeNS, wantAnswers: []string{"NS ns." + testZone}, wantExtra: 1}},
		{"A at apex NODATA", query{name: testZone, qtype: dns.TypeA, wantAnswers: []string{}, wantSOA: true}},
		{"name server address", query{name: "ns." + testZone, qtype: dns.TypeA, wantAnswers: []string{"127.0.0.53"}}},
		{"ANY minimal", query{name: "search.hotel." + testZone, qtype: dns.TypeANY, wantAnswers: []string{"HINFO RFC8482"}}},
		{"ANY at apex minimal", query{name: testZone, qtype: dns.TypeANY, wantAnswers: []string{"HINFO RFC8482"}}},
		{"second testZone", query{name: "search.hotel.example.test.", qtype: dns.TypeA, wantAnswers: []string{"10.1.0.1", "10.1.0.2"}}},
		{"outside the zones REFUSED", query{name: "www.example.com.", qtype: dns.TypeA, wantCode: dns.RcodeRefused, wantAnswers: []string{}}},
		{"parent of testZone REFUSED", query{name: "berth.internal.", qtype: dns.TypeA, wantCode: dns.RcodeRefused}},
		{"CHAOS class NOTIMP", query{name: "version.bind.", qtype: dns.TypeTXT, class: dns.ClassCHAOS, wantCode: dns.RcodeNotImplemented}},
		{"class ANY NOTIMP", query{name: "search.hotel." + testZone, qtype: dns.TypeA, class: dns.ClassANY, wantCode: dns.RcodeNotImplemented}},
		{"opcode NOTIFY NOTIMP", query{name: testZone, qtype: dns.TypeSOA, opcode: dns.OpcodeNotify, wantCode: dns.RcodeNotImplemented}},
		{"AXFR NOTIMP", query{name: testZone, qtype: dns.TypeAXFR, tcp: true, wantCode: dns.RcodeNotImplemented}},
		{"two questions FORMERR", query{name: "search.hotel." + testZone, qtype: dns.TypeA, twoQs: true, wantCode: dns.RcodeFormatError}},
		{"EDNS version 1 BADVERS", query{name: "search.hotel." + testZone, qtype: dns.TypeA, edns: 1232, ednsVer: 1, wantCode: dns.RcodeBadVers}},
		{"ECS host route", query{name: "search.hotel." + testZone, qtype: dns.TypeA, edns: 1232, ecs: "10.2.0.9/32", wantAnswers: []string{"10.2.0.1"}}},
		{"big over UDP without EDNS truncated", query{name: "svc.big." + testZone, qtype: dns.TypeA, wantTC: true, minAnswers: 20}},
		{"big over UDP with EDNS 4096 capped to 1232", query{name: "svc.big." + testZone, qtype: dns.TypeA, edns: 4096, wantTC: true, minAnswers: 70}},
		{"big over TCP complete", query{name: "svc.big." + testZone, qtype: dns.TypeA, tcp: true, minAnswers: 100}},
		{"big SRV over TCP complete", query{name: "svc.big." + testZone, qtype: dns.TypeSRV, tcp: true, minAnswers: 100, wantExtra: 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.q
			r := exchange(t, addr, q)
			if r.Rcode != q.wantCode {
				t.Fatalf("rcode: got %s, want %s\n%v", dns.RcodeToString[r.Rcode], dns.RcodeToString[q.wantCode], r)
			}
			if r.RecursionAvailable {
				t.Errorf("RA: got set, want clear (no recursion)")
			}
			got := []string{}
			for _, rr := range r.Answer {
				got = append(got, rdata(rr))
				if q.wantTTL > 0 && rr.Header().Ttl != q.wantTTL {
					t.Errorf("TTL of %s: got %d, want %d", rr, rr.Header().Ttl, q.wantTTL)
				}
			}
			sort.Strings(got)
			if q.wantAnswers != nil && !slices.Equal(got, q.wantAnswers) {
				t.Errorf("answers: got %q, want %q", got, q.wantAnswers)
			}
			if len(got) < q.minAnswers {
				t.Errorf("answers: got %d, want at least %d", len(got), q.minAnswers)
			}
			hasSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA
			if hasSOA != q.wantSOA {
				t.Errorf("SOA in authority: got %v (%v), want %v", hasSOA, r.Ns, q.wantSOA)
			}
			if r.Truncated != q.wantTC {
				t.Errorf("TC: got %v, want %v (%d answers)", r.Truncated, q.wantTC, len(r.Answer))
			}
			if q.wantAA && !r.Authoritative {
				t.Errorf("AA: got clear, want set")
			}
			extra := 0
			for _, rr := range r.Extra {
				if rr.Header().Rrtype != dns.TypeOPT {
					extra++
				}
			}
			if extra < q.wantExtra {
				t.Errorf("additional: got %d records, want at least %d", extra, q.wantExtra)
			}
			if q.edns > 0 && r.IsEdns0() == nil {
				t.Errorf("OPT: got none, want one in answer to an EDNS query")
			}
			if !q.tcp {
				size := 512
				if q.edns > 0 {
					size = min(int(q.edns), DefaultMaxUDPSize)
				}
				r.Compress = true
				if n := r.Len(); n > size {
					t.Errorf("size: got %d bytes, want at most %d", n, size)
				}
			}
		})
	}
}

// rawExchange sends raw bytes over UDP and returns the reply, or nil after a short wait.
func rawExchange(t *testing.T, addr string, pkt []byte) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func TestMalformed(t *testing.T) {
	_, addr := startServer(t, Config{})
	// A header claiming one question, with a truncated name.
	bad := []byte{0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 5, 'a', 'b'}
	resp := rawExchange(t, addr, bad)
	if len(resp) < 12 || resp[0] != 0xbe || resp[1] != 0xef || resp[2]&0x80 == 0 || int(resp[3]&0x0f) != dns.RcodeFormatError || resp[2]&0x01 == 0 {
		t.Fatalf("truncated question: got % x, want a FORMERR reply with id beef and RD", resp)
	}
	if got := rawExchange(t, addr, []byte{1, 2, 3}); got != nil {
		t.Fatalf("3 bytes: got % x, want no reply", got)
	}
	// A response packet is never answered (no loops between servers).
	m := new(dns.Msg)
	m.SetQuestion("search.hotel."+testZone, dns.TypeA)
	m.Response = true
	pkt, _ := m.Pack()
	if got := rawExchange(t, addr, pkt); got != nil {
		t.Fatalf("response packet: got % x, want no reply", got)
	}
	// The server still answers afterwards.
	if r := exchange(t, addr, query{name: "search.hotel." + testZone, qtype: dns.TypeA}); len(r.Answer) == 0 {
		t.Fatalf("after garbage: got %v, want answers", r)
	}
}

func TestSinglePolicyAndRemoval(t *testing.T) {
	cat := testCatalog(t)
	pol, _ := protojson.Marshal(&namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_SINGLE, DisableSameDc: true})
	cat.ApplyEvents(catalog.KindTraffic, []coordclient.Event{{Type: coordclient.EventPut, Node: coordclient.Node{Path: catalog.PrefixTraffic + "/hotel/search", Value: pol, Version: 1}, Revision: 20}})
	s, err := New(Config{Zones: []string{"ns.berth.internal"}}, cat, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[string]int{}
	for range 300 {
		m := new(dns.Msg)
		m.SetQuestion("search.hotel."+testZone, dns.TypeA)
		pkt, _ := m.Pack()
		out, _ := s.Respond(pkt, netip.MustParseAddr("127.0.0.1"), false, r, nil)
		var resp dns.Msg
		if err := resp.Unpack(out); err != nil || len(resp.Answer) != 1 {
			t.Fatalf("single: got %v (%v), want one answer", resp.Answer, err)
		}
		seen[rdata(resp.Answer[0])]++
	}
	if len(seen) != 3 {
		t.Fatalf("single over 300 queries: got %v, want each of the 3 IPv4 instances", seen)
	}
	// Deregistering every instance leaves the name unknown.
	var evs []coordclient.Event
	for _, id := range []string{"i-1", "i-2", "i-3", "i-4", "i-6"} {
		evs = append(evs, coordclient.Event{Type: coordclient.EventDelete, Node: coordclient.Node{Path: catalog.PrefixInstances + "/hotel/search/" + id}, Revision: 21})
	}
	cat.ApplyEvents(catalog.KindInstances, evs)
	m := new(dns.Msg)
	m.SetQuestion("search.hotel."+testZone, dns.TypeA)
	pkt, _ := m.Pack()
	out, _ := s.Respond(pkt, netip.MustParseAddr("127.0.0.1"), false, r, nil)
	var resp dns.Msg
	_ = resp.Unpack(out)
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 {
		// The traffic policy still makes the service known: NODATA.
		t.Fatalf("after deregistration with a policy: got %s %v, want NODATA", dns.RcodeToString[resp.Rcode], resp.Answer)
	}
	cat.ApplyEvents(catalog.KindTraffic, []coordclient.Event{{Type: coordclient.EventDelete, Node: coordclient.Node{Path: catalog.PrefixTraffic + "/hotel/search"}, Revision: 22}})
	out, _ = s.Respond(pkt, netip.MustParseAddr("127.0.0.1"), false, r, nil)
	_ = resp.Unpack(out)
	if resp.Rcode != dns.RcodeNameError {
		t.Fatalf("after the policy is gone: got %s, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}
}

func TestBadECS(t *testing.T) {
	s, err := New(Config{Zones: []string{"ns.berth.internal"}}, testCatalog(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Each case packs a valid option (family 1, /24, scope 0), then corrupts one byte of it.
	tests := []struct {
		name   string
		offset int // in the option: 5 family low byte, 6 source prefix, 7 scope
		value  byte
	}{
		{"source prefix 33", 6, 33},
		{"unknown family", 5, 3},
		{"scope set in a query", 7, 24},
	}
	for _, tt := range tests {
		m := new(dns.Msg)
		m.SetQuestion("search.hotel."+testZone, dns.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(10, 2, 0, 0).To4()})
		pkt, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		// The option is the last 11 bytes: code, length, family, source, scope, 3 address bytes.
		opt := pkt[len(pkt)-11:]
		if opt[0] != 0 || opt[1] != 8 {
			t.Fatalf("option not where expected: % x", opt)
		}
		opt[tt.offset] = tt.value
		out, _ := s.Respond(pkt, netip.MustParseAddr("127.0.0.1"), false, rand.New(rand.NewPCG(1, 1)), nil)
		var resp dns.Msg
		if err := resp.Unpack(out); err != nil {
			t.Fatalf("%s: unpack reply: %v", tt.name, err)
		}
		if resp.Rcode != dns.RcodeFormatError {
			t.Errorf("%s: got %s, want FORMERR", tt.name, dns.RcodeToString[resp.Rcode])
		}
	}
}

func TestRateLimit(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter(10, 5, 2, func() time.Time { return now })
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.200") // same /24
	c := netip.MustParseAddr("198.51.100.1")
	ok := 0
	slips := 0
	for i := range 20 {
		src := a
		if i%2 == 1 {
			src = b
		}
		allowed, slip := l.allow(src)
		if allowed {
			ok++
		}
		if slip {
			slips++
		}
	}
	if ok != 5 || slips != 7 {
		t.Fatalf("20 queries from one /24, burst 5, slip 2: got %d allowed and %d slips, want 5 and 7", ok, slips)
	}
	if allowed, _ := l.allow(c); !allowed {
		t.Fatalf("another network: got limited, want allowed")
	}
	now = now.Add(300 * time.Millisecond) // 3 tokens back
	ok = 0
	for range 5 {
		if allowed, _ := l.allow(a); allowed {
			ok++
		}
	}
	if ok != 3 {
		t.Fatalf("after 300ms at 10/s: got %d allowed, want 3", ok)
	}
}

func TestRateLimitedServer(t *testing.T) {
	_, addr := startServer(t, Config{RateLimit: 1, RateBurst: 2, RateSlip: 0})
	answered := 0
	for range 6 {
		m := new(dns.Msg)
		m.SetQuestion("search.hotel."+testZone, dns.TypeA)
		pkt, _ := m.Pack()
		if rawExchange(t, addr, pkt) != nil {
			answered++
		}
	}
	if answered < 2 || answered > 3 {
		t.Fatalf("6 quick queries at 1/s burst 2: got %d answered, want 2 (or 3 if a second passed)", answered)
	}
	// TCP is never limited.
	if r := exchange(t, addr, query{name: "search.hotel." + testZone, qtype: dns.TypeA, tcp: true}); len(r.Answer) == 0 {
		t.Fatalf("tcp: got no answer, want one")
	}
}

func TestConfig(t *testing.T) {
	cat := testCatalog(t)
	for _, cfg := range []Config{
		{},
		{Zones: []string{"a..b"}},
		{Zones: []string{"a", "A."}},
		{Zones: []string{"a"}, MaxUDPSize: 100},
		{Zones: []string{"a"}, RateLimit: -1},
	} {
		if _, err := New(cfg, cat, nil); err == nil {
			t.Errorf("New(%+v): got nil error, want one", cfg)
		}
	}
	_ = strings.ToLower
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := New(Config{Zones: []string{"ns.berth.internal"}}, testCatalog(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	u, _, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, "") }()
	defer func() { cancel(); <-done }()
	addr := u.String()
	exchange(t, addr, query{name: "search.hotel." + testZone, qtype: dns.TypeA})
	exchange(t, addr, query{name: "nothere." + testZone, qtype: dns.TypeAAAA})
	exchange(t, addr, query{name: "svc.big." + testZone, qtype: dns.TypeA, tcp: true})
	want := map[string]float64{
		`proto="udp",qtype="A",rcode="NOERROR"`:     1,
		`proto="udp",qtype="AAAA",rcode="NXDOMAIN"`: 1,
		`proto="tcp",qtype="A",rcode="NOERROR"`:     1,
		`proto="udp",qtype="A",rcode="NXDOMAIN"`:    0,
		`proto="tcp",qtype="AAAA",rcode="NXDOMAIN"`: 0,
	}
	// Requests are counted after the reply is written; wait for the last one.
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := map[string]float64{}
		var histCount uint64
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				switch mf.GetName() {
				case "berth_names_dns_requests_total":
					got[strings.Join(labels, ",")] = m.GetCounter().GetValue()
				case "berth_names_dns_request_duration_seconds":
					histCount += m.GetHistogram().GetSampleCount()
				}
			}
		}
		ok := histCount == 3
		for k, v := range want {
			if got[k] != v {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dns_requests_total: got %v (histogram count %d), want %v and 3 observations", got, histCount, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
