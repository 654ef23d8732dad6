// Package dnsserver is the name service's authoritative DNS server. It is the only package
// of the service that imports github.com/miekg/dns (used to parse and pack messages); the
// UDP and TCP loops are its own, so that malformed packets, truncation, rate limiting and
// metrics are handled in one place.
//
// Names: the service hotel/search is search.hotel.<zone>; its instance i-1 is
// i-1.search.hotel.<zone>; SRV is answered at the service name and at
// _<anything>._tcp|_udp.<service name>. See the service README for the full behaviour.
package dnsserver

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/services/name-service/internal/catalog"
)

// SOA timers of every zone. The serial is the catalog's coord revision (modulo 2^32).
const (
	soaRefresh = 3600
	soaRetry   = 600
	soaExpire  = 86400
	// srvPriority is the priority of every SRV record; the order of the records is the
	// weighted shuffle, and the SRV weight is the instance's effective weight.
	srvPriority = 10
)

// zone is one zone the server is authoritative for.
type zone struct {
	name   string // canonical: lowercase, trailing dot
	nsName string // ns.<zone>
	labels int
}

// Result is what one query did, for metrics and tests.
type Result struct {
	qtype uint16
	rcode int
	drop  bool // nothing is sent
	tc    bool
}

// respond answers one request. It returns the packed response appended to out[:0] (or
// nil when nothing must be sent: no readable header, or a response packet). maxTCP is the
// size limit over TCP. It never panics on any input (FuzzRespond).
func (s *Server) respond(req []byte, src netip.Addr, tcp bool, r *rand.Rand, out []byte) ([]byte, Result) {
	var res Result
	var m dns.Msg
	if err := m.Unpack(req); err != nil {
		if len(req) < 12 || req[2]&0x80 != 0 {
			res.drop = true
			return nil, res
		}
		// Echo the id, opcode and RD bit with FORMERR and no sections.
		res.rcode = dns.RcodeFormatError
		hdr := append(out[:0], req[0], req[1], 0x80|req[2]&0x79, byte(dns.RcodeFormatError), 0, 0, 0, 0, 0, 0, 0, 0)
		return hdr, res
	}
	if m.Response {
		res.drop = true
		return nil, res
	}
	w := new(dns.Msg)
	w.Id = m.Id
	w.Response = true
	w.Opcode = m.Opcode
	w.RecursionDesired = m.RecursionDesired
	w.CheckingDisabled = m.CheckingDisabled
	if len(m.Question) == 1 {
		res.qtype = m.Question[0].Qtype
	}
	finish := func(rcode int) ([]byte, Result) {
		w.Rcode = rcode
		res.rcode = rcode
		b, err := w.PackBuffer(out)
		if err != nil {
			// Cannot happen for messages built here; answer SERVFAIL without sections.
			w.Answer, w.Ns, w.Extra = nil, nil, nil
			w.Rcode, res.rcode = dns.RcodeServerFailure, dns.RcodeServerFailure
			b, _ = w.PackBuffer(out)
		}
		return b, res
	}
	if m.Opcode != dns.OpcodeQuery {
		return finish(dns.RcodeNotImplemented)
	}
	if len(m.Question) != 1 || len(m.Answer) != 0 || len(m.Ns) != 0 {
		return finish(dns.RcodeFormatError)
	}
	w.Question = m.Question
	q := m.Question[0]

	// EDNS: at most one OPT, version 0, a sane client subnet.
	var opt *dns.OPT
	for _, rr := range m.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			if opt != nil {
				return finish(dns.RcodeFormatError)
			}
			opt = o
		}
	}
	size := dns.MinMsgSize
	clientAddr := src
	if opt != nil {
		w.SetEdns0(uint16(s.cfg.MaxUDPSize), opt.Do())
		if opt.Version() != 0 {
			return finish(dns.RcodeBadVers)
		}
		size = min(max(int(opt.UDPSize()), dns.MinMsgSize), s.cfg.MaxUDPSize)
		for _, o := range opt.Option {
			ecs, ok := o.(*dns.EDNS0_SUBNET)
			if !ok {
				continue
			}
			a, ok := ecsAddr(ecs)
			if !ok {
				return finish(dns.RcodeFormatError)
			}
			clientAddr = a
			w.IsEdns0().Option = append(w.IsEdns0().Option, &dns.EDNS0_SUBNET{
				Code: dns.EDNS0SUBNET, Family: ecs.Family, SourceNetmask: ecs.SourceNetmask,
				SourceScope: ecs.SourceNetmask, Address: ecs.Address,
			})
		}
	}
	if tcp {
		size = dns.MaxMsgSize
	}

	if q.Qclass != dns.ClassINET {
		return finish(dns.RcodeNotImplemented)
	}
	switch q.Qtype {
	case dns.TypeOPT:
		return finish(dns.RcodeFormatError)
	case dns.TypeAXFR, dns.TypeIXFR, dns.TypeMAILA, dns.TypeMAILB:
		return finish(dns.RcodeNotImplemented)
	}
	lname := strings.ToLower(q.Name)
	z := s.zoneOf(lname)
	if z == nil {
		return finish(dns.RcodeRefused)
	}
	w.Authoritative = true
	rcode := s.answer(w, z, q, lname, clientAddr, r)
	if rcode == dns.RcodeSuccess && len(w.Answer) == 0 || rcode == dns.RcodeNameError {
		w.Ns = append(w.Ns, s.soa(z))
	}
	w.Truncate(size)
	res.tc = w.Truncated
	return finish(rcode)
}

// ecsAddr returns the address of an EDNS Client Subnet option, masked to its source
// prefix; ok is false for a malformed option (RFC 7871 §7.1.1: FORMERR).
func ecsAddr(e *dns.EDNS0_SUBNET) (netip.Addr, bool) {
	var bits int
	switch e.Family {
	case 1:
		bits = 32
	case 2:
		bits = 128
	default:
		return netip.Addr{}, false
	}
	if int(e.SourceNetmask) > bits || e.SourceScope != 0 {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(e.Address)
	if !ok {
		return netip.Addr{}, false
	}
	a = a.Unmap()
	if bits == 32 && !a.Is4() || bits == 128 && !a.Is6() {
		return netip.Addr{}, false
	}
	p, err := a.Prefix(int(e.SourceNetmask))
	if err != nil {
		return netip.Addr{}, false
	}
	return p.Addr(), true
}

// zoneOf returns the zone lname (lowercase, fully qualified) is in, the longest match.
func (s *Server) zoneOf(lname string) *zone {
	var best *zone
	for _, z := range s.zones {
		if lname == z.name || strings.HasSuffix(lname, "."+z.name) {
			if best == nil || z.labels > best.labels {
				best = z
			}
		}
	}
	return best
}

// soa is the zone's SOA record; its TTL and MINIMUM are the default TTL, which is also the
// TTL of negative answers.
func (s *Server) soa(z *zone) dns.RR {
	ttl := s.ttl
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: z.name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      z.nsName,
		Mbox:    "hostmaster." + z.name,
		Serial:  uint32(s.cat.Revision()),
		Refresh: soaRefresh,
		Retry:   soaRetry,
		Expire:  soaExpire,
		Minttl:  s.ttl,
	}
}

// rfc8482 is the minimal answer to ANY (RFC 8482 §4.2).
func rfc8482(name string, ttl uint32) dns.RR {
	return &dns.HINFO{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeHINFO, Class: dns.ClassINET, Ttl: ttl}, Cpu: "RFC8482"}
}

// answer fills w for a name inside z and returns the rcode.
func (s *Server) answer(w *dns.Msg, z *zone, q dns.Question, lname string, client netip.Addr, r *rand.Rand) int {
	labels, _ := dnsview.SplitName(lname, z.name)
	switch {
	case len(labels) == 0:
		return s.answerApex(w, z, q)
	case len(labels) == 1 && lname == z.nsName:
		w.Answer = append(w.Answer, s.nsHost(q.Qtype, q.Name)...)
		return dns.RcodeSuccess
	}
	svcLabels, srvForm := labels, false
	if len(labels) >= 3 && isSRVPrefix(labels[0], labels[1]) {
		svcLabels, srvForm = labels[2:], true
	}
	snap, below := s.cat.LookupLower(dnsview.ServicePath(svcLabels))
	if snap != nil {
		if srvForm && q.Qtype != dns.TypeSRV && q.Qtype != dns.TypeANY {
			return dns.RcodeSuccess // NODATA: only SRV lives at _x._tcp names
		}
		// The service's own name as the client wrote it, for SRV targets.
		svcName := q.Name
		if srvForm {
			svcName = q.Name[len(labels[0])+len(labels[1])+2:]
		}
		s.answerService(w, snap, q, svcName, client, r)
		return dns.RcodeSuccess
	}
	if below {
		return dns.RcodeSuccess // an empty non-terminal: hotel above hotel/search
	}
	if len(labels) >= 2 {
		parent, _ := s.cat.LookupLower(dnsview.ServicePath(labels[1:]))
		if parent != nil {
			if ep, ok := parent.Table.Instance(labels[0]); ok {
				s.answerInstance(w, ep, q, parent.View.GetTtlSeconds())
				return dns.RcodeSuccess
			}
			if labels[0] == "_tcp" || labels[0] == "_udp" {
				return dns.RcodeSuccess // empty non-terminal above _x._tcp.<service>
			}
		}
	}
	return dns.RcodeNameError
}

func isSRVPrefix(svc, proto string) bool {
	return len(svc) > 1 && svc[0] == '_' && (proto == "_tcp" || proto == "_udp")
}

func (s *Server) answerApex(w *dns.Msg, z *zone, q dns.Question) int {
	switch q.Qtype {
	case dns.TypeSOA:
		w.Answer = append(w.Answer, s.soa(z))
	case dns.TypeNS:
		w.Answer = append(w.Answer, &dns.NS{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: s.ttl}, Ns: z.nsName})
		w.Extra = append(w.Extra, s.nsHost(dns.TypeANY, z.nsName)...)
	case dns.TypeANY:
		w.Answer = append(w.Answer, rfc8482(q.Name, s.ttl))
	}
	return dns.RcodeSuccess
}

// nsHost returns the A and AAAA records (as qtype asks) of the zone's name server, from
// the configured addresses.
func (s *Server) nsHost(qtype uint16, name string) []dns.RR {
	var out []dns.RR
	for _, a := range s.cfg.NSAddrs {
		if a.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY) || a.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY) {
			out = append(out, addrRR(name, a, s.ttl))
		}
	}
	return out
}

func (s *Server) answerService(w *dns.Msg, snap *catalog.Snapshot, q dns.Question, svcName string, client netip.Addr, r *rand.Rand) {
	ttl := snap.View.GetTtlSeconds()
	var dq dnsview.Query
	dq.ClientDC, _ = s.cat.Locator().DC(client)
	switch q.Qtype {
	case dns.TypeA:
		dq.Family = dnsview.IPv4
	case dns.TypeAAAA:
		dq.Family = dnsview.IPv6
	case dns.TypeSRV:
		dq.Family = dnsview.AnyFamily
	case dns.TypeANY:
		w.Answer = append(w.Answer, rfc8482(q.Name, ttl))
		return
	default:
		return // NODATA
	}
	a := snap.Table.Select(nil, dq, r)
	for _, ep := range a.Endpoints {
		switch q.Qtype {
		case dns.TypeA:
			w.Answer = append(w.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: ep.Addr.AsSlice()})
		case dns.TypeAAAA:
			w.Answer = append(w.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: ep.Addr.AsSlice()})
		case dns.TypeSRV:
			target := strings.ToLower(ep.Instance.GetId()) + "." + svcName
			weight := ep.Instance.GetWeight()
			if weight == 0 {
				weight = dnsview.DefaultWeight
			}
			w.Answer = append(w.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
				Priority: srvPriority, Weight: uint16(min(weight, 65535)), Port: uint16(ep.Instance.GetPort()), Target: target,
			})
			w.Extra = append(w.Extra, addrRR(target, ep.Addr, ttl))
		}
	}
}

func (s *Server) answerInstance(w *dns.Msg, ep dnsview.Endpoint, q dns.Question, ttl uint32) {
	if !ep.Addr.IsValid() {
		return
	}
	switch {
	case q.Qtype == dns.TypeA && ep.Addr.Is4(), q.Qtype == dns.TypeAAAA && ep.Addr.Is6():
		w.Answer = append(w.Answer, addrRR(q.Name, ep.Addr, ttl))
	case q.Qtype == dns.TypeANY:
		w.Answer = append(w.Answer, rfc8482(q.Name, ttl))
	}
}

func addrRR(name string, a netip.Addr, ttl uint32) dns.RR {
	if a.Is4() {
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IP(a.AsSlice())}
	}
	return &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: net.IP(a.AsSlice())}
}
