// Package resolver is the agent's local caching DNS resolver (DESIGN §7). It is the only
// package of the agent that imports github.com/miekg/dns.
//
// Names in the Berth zones (ns.berth.internal by default; search.hotel.<zone> is the
// service hotel/search, <instance>.search.hotel.<zone> one instance) are answered from the
// per-service views the agent follows on NATS (package views), with the same selection code
// as the name service (pkg/dnsview) for the host's own datacenter: A, AAAA and SRV at a
// service, A and AAAA at an instance, SOA and NS at the apex. The first query for a service
// subscribes to its view (waiting up to Config.FirstWait for the bucket's value); a service
// nobody asked for in a while is dropped by the follower. When NATS or the name service is
// unreachable, answers keep coming from the last views.
//
// Every other name is forwarded to the upstream resolvers (Config.Upstreams, else
// /etc/resolv.conf) over UDP, retried over TCP when the answer is truncated, and cached:
// positive answers for their smallest TTL (capped by Config.MaxTTL), negative answers
// (NXDOMAIN, NODATA) for the SOA's TTL or minimum, whichever is smaller (RFC 2308), in an
// LRU of Config.CacheSize entries. Concurrent queries for the same name and type share one
// upstream exchange.
package resolver

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/services/agent/internal/views"
)

// Defaults of Config.
const (
	DefaultZone            = "ns.berth.internal"
	DefaultCacheSize       = 10000
	DefaultMaxTTL          = time.Hour
	DefaultUpstreamTimeout = 2 * time.Second
	DefaultFirstWait       = time.Second
	DefaultTTL             = 5 // seconds, for zone answers of views without a TTL
	upstreamUDPSize        = 1232
	maxServed              = 1232 // cap of the EDNS size answered over UDP
)

// Views is what the resolver needs from the view follower.
type Views interface {
	Touch(service string) error
	Get(service string) views.Snapshot
	Wait(ctx context.Context, service string) views.Snapshot
}

// Config configures a Resolver.
type Config struct {
	// Listen is host:port for UDP and TCP.
	Listen string
	// Zones are the Berth zones; empty means DefaultZone.
	Zones []string
	// DC is the host's datacenter: zone answers prefer its instances.
	DC string
	// Upstreams are resolvers (host:port or host) for other names; empty means the
	// nameservers of ResolvConf.
	Upstreams []string
	// ResolvConf is read when Upstreams is empty; "" means /etc/resolv.conf.
	ResolvConf string
	// CacheSize bounds the forwarding cache (entries); 0 means DefaultCacheSize.
	CacheSize int
	// MaxTTL caps cached TTLs; 0 means DefaultMaxTTL.
	MaxTTL time.Duration
	// UpstreamTimeout bounds one upstream exchange; 0 means DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
	// FirstWait bounds the wait for a service's first view; 0 means DefaultFirstWait.
	FirstWait time.Duration
	// Logger receives problems; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Resolver answers DNS queries. Create it with New, bind with Listen, serve with Run.
type Resolver struct {
	cfg       Config
	zones     []string
	upstreams []string
	views     Views
	log       *slog.Logger
	m         *rmetrics

	udp *dns.Server
	tcp *dns.Server

	randMu sync.Mutex
	rand   *rand.Rand

	mu       sync.Mutex
	cache    map[cacheKey]*list.Element
	lru      *list.List
	inflight map[cacheKey]*call
}

type cacheKey struct {
	name          string
	qtype, qclass uint16
	do, cd        bool
}

type cacheEntry struct {
	key     cacheKey
	msg     *dns.Msg
	stored  time.Time
	expires time.Time
}

type call struct {
	done chan struct{}
	msg  *dns.Msg
	err  error
}

type rmetrics struct {
	requests *prometheus.CounterVec
	cache    *prometheus.CounterVec
	entries  prometheus.GaugeFunc
	upstream *prometheus.CounterVec
}

// New checks cfg and returns a resolver; it binds nothing.
func New(cfg Config, v Views) (*Resolver, error) {
	if cfg.Listen == "" {
		return nil, errors.New("resolver: listen address: empty")
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("resolver: listen address %q: want host:port", cfg.Listen)
	}
	if len(cfg.Zones) == 0 {
		cfg.Zones = []string{DefaultZone}
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.FirstWait <= 0 {
		cfg.FirstWait = DefaultFirstWait
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Resolver{cfg: cfg, views: v, log: cfg.Logger, rand: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		cache: map[cacheKey]*list.Element{}, lru: list.New(), inflight: map[cacheKey]*call{}}
	for _, z := range cfg.Zones {
		cz, err := dnsview.CanonicalZone(z)
		if err != nil {
			return nil, fmt.Errorf("resolver: %w", err)
		}
		r.zones = append(r.zones, cz)
	}
	ups, err := upstreams(cfg)
	if err != nil {
		return nil, err
	}
	r.upstreams = ups
	r.m = &rmetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "dns_requests_total",
			Help: "Queries answered by the local resolver, by kind (zone, forward) and rcode."}, []string{"kind", "rcode"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "dns_cache_total",
			Help: "Forwarded queries by cache result (hit, miss, coalesced)."}, []string{"result"}),
		entries: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "agent", Name: "dns_cache_entries",
			Help: "Answers in the forwarding cache."}, func() float64 {
			r.mu.Lock()
			defer r.mu.Unlock()
			return float64(len(r.cache))
		}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "dns_upstream_total",
			Help: "Upstream exchanges, by outcome (ok, tcp_retry, error)."}, []string{"outcome"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{r.m.requests, r.m.cache, r.m.entries, r.m.upstream} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("resolver metrics: %w", err)
			}
		}
	}
	return r, nil
}

// upstreams returns the configured upstreams as host:port, or resolv.conf's.
func upstreams(cfg Config) ([]string, error) {
	var out []string
	if len(cfg.Upstreams) > 0 {
		for i, u := range cfg.Upstreams {
			if _, _, err := net.SplitHostPort(u); err != nil {
				if net.ParseIP(u) == nil {
					return nil, fmt.Errorf("resolver: upstreams[%d] %q: want an IP address or IP:port", i, u)
				}
				u = net.JoinHostPort(u, "53")
			}
			out = append(out, u)
		}
		return out, nil
	}
	path := cfg.ResolvConf
	if path == "" {
		path = "/etc/resolv.conf"
	}
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		// Without upstreams only the zones are answered; other names get SERVFAIL.
		cfg.Logger.Warn("resolver: no upstreams configured and resolv.conf unreadable; only Berth zones are answered", "file", path, "err", err)
		return nil, nil
	}
	for _, s := range cc.Servers {
		hp := net.JoinHostPort(s, cc.Port)
		if hp == cfg.Listen {
			continue // never forward to ourselves
		}
		out = append(out, hp)
	}
	return out, nil
}

// Upstreams returns the upstream resolvers in use.
func (r *Resolver) Upstreams() []string { return append([]string(nil), r.upstreams...) }

// Listen binds the UDP socket and the TCP listener on the same port and returns the
// address (port 0 picks one: a port free for UDP whose TCP twin is taken is given back
// and another one picked).
func (r *Resolver) Listen() (net.Addr, error) {
	var pc net.PacketConn
	var l net.Listener
	for attempt := 1; ; attempt++ {
		var err error
		pc, err = net.ListenPacket("udp", r.cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("resolver: listen udp %s: %w", r.cfg.Listen, err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		_, port, _ := net.SplitHostPort(r.cfg.Listen)
		if port != "0" || !errors.Is(err, syscall.EADDRINUSE) || attempt == 10 {
			return nil, fmt.Errorf("resolver: listen tcp %s: %w", pc.LocalAddr(), err)
		}
	}
	r.udp = &dns.Server{PacketConn: pc, Handler: r}
	r.tcp = &dns.Server{Listener: l, Handler: r, ReadTimeout: 10 * time.Second}
	return pc.LocalAddr(), nil
}

// Run serves until ctx ends (binding first when Listen was not called), then shuts the
// servers down and returns nil.
func (r *Resolver) Run(ctx context.Context) error {
	if r.udp == nil {
		if _, err := r.Listen(); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	for _, s := range []*dns.Server{r.udp, r.tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ActivateAndServe(); err != nil {
				errc <- err
			}
		}()
		select {
		case <-started:
		case err := <-errc:
			return fmt.Errorf("resolver: serve: %w", err)
		}
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = r.udp.ShutdownContext(sctx)
	_ = r.tcp.ShutdownContext(sctx)
	wg.Wait()
	if err != nil {
		return fmt.Errorf("resolver: serve: %w", err)
	}
	return nil
}

// ServeDNS answers one query.
func (r *Resolver) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.UpstreamTimeout*2+r.cfg.FirstWait)
	defer cancel()
	resp, kind := r.answer(ctx, req)
	if resp == nil {
		return
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = min(max(int(opt.UDPSize()), dns.MinMsgSize), maxServed)
		}
		resp.Truncate(size)
	}
	r.m.requests.WithLabelValues(kind, dns.RcodeToString[resp.Rcode]).Inc()
	_ = w.WriteMsg(resp)
}

// answer builds the response to req and says which kind of name it was.
func (r *Resolver) answer(ctx context.Context, req *dns.Msg) (*dns.Msg, string) {
	resp := new(dns.Msg)
	if req.Response || len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		resp.SetRcode(req, dns.RcodeFormatError)
		if req.Opcode != dns.OpcodeQuery {
			resp.SetRcode(req, dns.RcodeNotImplemented)
		}
		return resp, "invalid"
	}
	q := req.Question[0]
	for _, z := range r.zones {
		if labels, ok := dnsview.SplitName(q.Name, z); ok {
			return r.zone(ctx, req, z, labels), "zone"
		}
	}
	return r.forward(ctx, req), "forward"
}

// zone answers a name in zone z.
func (r *Resolver) zone(ctx context.Context, req *dns.Msg, z string, labels []string) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(maxServed, false)
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET {
		resp.SetRcode(req, dns.RcodeNotImplemented)
		return resp
	}
	if len(labels) == 0 {
		switch q.Qtype {
		case dns.TypeSOA:
			resp.Answer = append(resp.Answer, r.soa(z, q.Name))
		case dns.TypeNS:
			resp.Answer = append(resp.Answer, &dns.NS{Hdr: hdr(q.Name, dns.TypeNS, DefaultTTL), Ns: "ns." + z})
		default:
			resp.Ns = append(resp.Ns, r.soa(z, z))
		}
		return resp
	}
	wctx, cancel := context.WithTimeout(ctx, r.cfg.FirstWait)
	defer cancel()
	// The whole name as a service first, then the first label as an instance of the rest.
	svc := dnsview.ServicePath(labels)
	if dnsview.CheckServicePath(svc) == nil {
		if snap := r.view(wctx, svc); snap.View != nil {
			r.serviceAnswer(resp, q, z, svc, snap)
			return resp
		}
	}
	if len(labels) >= 2 {
		svc = dnsview.ServicePath(labels[1:])
		if dnsview.CheckServicePath(svc) == nil {
			if snap := r.view(wctx, svc); snap.Table != nil {
				if ep, ok := snap.Table.Instance(labels[0]); ok {
					r.addrAnswer(resp, q, ep, ttlOf(snap))
					if len(resp.Answer) == 0 {
						resp.Ns = append(resp.Ns, r.soa(z, z))
					}
					return resp
				}
			}
		}
	}
	resp.Rcode = dns.RcodeNameError
	resp.Ns = append(resp.Ns, r.soa(z, z))
	return resp
}

// view follows service and returns its view once known (or when ctx ends).
func (r *Resolver) view(ctx context.Context, service string) views.Snapshot {
	if err := r.views.Touch(service); err != nil {
		return views.Snapshot{}
	}
	return r.views.Wait(ctx, service)
}

func ttlOf(s views.Snapshot) uint32 {
	if s.Table != nil && s.Table.TTL() > 0 {
		return s.Table.TTL()
	}
	return DefaultTTL
}

func hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

func (r *Resolver) soa(z, name string) *dns.SOA {
	return &dns.SOA{Hdr: hdr(name, dns.TypeSOA, DefaultTTL), Ns: "ns." + z, Mbox: "hostmaster." + z,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: DefaultTTL}
}

// serviceAnswer fills resp for a question about a service.
func (r *Resolver) serviceAnswer(resp *dns.Msg, q dns.Question, z, svc string, snap views.Snapshot) {
	ttl := ttlOf(snap)
	var fam dnsview.Family
	switch q.Qtype {
	case dns.TypeA:
		fam = dnsview.IPv4
	case dns.TypeAAAA:
		fam = dnsview.IPv6
	case dns.TypeSRV:
		fam = dnsview.AnyFamily
	default:
		resp.Ns = append(resp.Ns, r.soa(z, z))
		return
	}
	r.randMu.Lock()
	ans := snap.Table.Select(nil, dnsview.Query{ClientDC: r.cfg.DC, Family: fam}, r.rand)
	r.randMu.Unlock()
	for _, ep := range ans.Endpoints {
		if q.Qtype == dns.TypeSRV {
			target := ep.Instance.GetId() + "." + q.Name
			if strings.HasPrefix(q.Name, "_") {
				// _http._tcp.<service name>: targets hang off the service name.
				parts := strings.SplitN(q.Name, ".", 3)
				if len(parts) == 3 {
					target = ep.Instance.GetId() + "." + parts[2]
				}
			}
			w := ep.Instance.GetWeight()
			if w == 0 {
				w = dnsview.DefaultWeight
			}
			resp.Answer = append(resp.Answer, &dns.SRV{Hdr: hdr(q.Name, dns.TypeSRV, ttl), Priority: 10, Weight: uint16(min(w, 65535)),
				Port: uint16(ep.Instance.GetPort()), Target: dns.Fqdn(target)})
			resp.Extra = append(resp.Extra, addrRR(dns.Fqdn(target), ep.Addr, ttl))
			continue
		}
		resp.Answer = append(resp.Answer, addrRR(q.Name, ep.Addr, ttl))
	}
	if len(resp.Answer) == 0 {
		resp.Ns = append(resp.Ns, r.soa(z, z))
	}
}

// addrAnswer answers A or AAAA for one instance.
func (r *Resolver) addrAnswer(resp *dns.Msg, q dns.Question, ep dnsview.Endpoint, ttl uint32) {
	if !ep.Addr.IsValid() {
		return
	}
	if (q.Qtype == dns.TypeA && ep.Addr.Is4()) || (q.Qtype == dns.TypeAAAA && ep.Addr.Is6()) {
		resp.Answer = append(resp.Answer, addrRR(q.Name, ep.Addr, ttl))
	}
}

func addrRR(name string, a netip.Addr, ttl uint32) dns.RR {
	if a.Is4() {
		return &dns.A{Hdr: hdr(name, dns.TypeA, ttl), A: a.AsSlice()}
	}
	return &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA, ttl), AAAA: a.AsSlice()}
}

// forward answers a name outside the zones from the cache or the upstreams.
func (r *Resolver) forward(ctx context.Context, req *dns.Msg) *dns.Msg {
	q := req.Question[0]
	k := cacheKey{name: strings.ToLower(dns.Fqdn(q.Name)), qtype: q.Qtype, qclass: q.Qclass, cd: req.CheckingDisabled}
	if opt := req.IsEdns0(); opt != nil {
		k.do = opt.Do()
	}
	msg, err := r.lookup(ctx, k)
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	if err != nil {
		r.log.Debug("resolver: upstream failed", "name", q.Name, "err", err)
		resp.Rcode = dns.RcodeServerFailure
		return resp
	}
	resp.Rcode = msg.Rcode
	resp.AuthenticatedData = msg.AuthenticatedData
	resp.Answer = msg.Answer
	resp.Ns = msg.Ns
	for _, rr := range msg.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			resp.Extra = append(resp.Extra, rr)
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(maxServed, opt.Do())
	}
	return resp
}

// lookup returns the answer for k, from the cache (TTLs aged) or one upstream exchange
// shared by every concurrent asker.
func (r *Resolver) lookup(ctx context.Context, k cacheKey) (*dns.Msg, error) {
	now := time.Now()
	r.mu.Lock()
	if el, ok := r.cache[k]; ok {
		e := el.Value.(*cacheEntry)
		if now.Before(e.expires) {
			r.lru.MoveToFront(el)
			msg := aged(e.msg, now.Sub(e.stored))
			r.mu.Unlock()
			r.m.cache.WithLabelValues("hit").Inc()
			return msg, nil
		}
		r.lru.Remove(el)
		delete(r.cache, k)
	}
	if c, ok := r.inflight[k]; ok {
		r.mu.Unlock()
		r.m.cache.WithLabelValues("coalesced").Inc()
		select {
		case <-c.done:
			if c.err != nil {
				return nil, c.err
			}
			return c.msg.Copy(), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &call{done: make(chan struct{})}
	r.inflight[k] = c
	r.mu.Unlock()
	r.m.cache.WithLabelValues("miss").Inc()

	c.msg, c.err = r.exchange(ctx, k)
	r.mu.Lock()
	delete(r.inflight, k)
	if c.err == nil {
		if ttl, ok := cacheTTL(c.msg, r.cfg.MaxTTL); ok {
			r.storeLocked(k, c.msg, now, ttl)
		}
	}
	r.mu.Unlock()
	close(c.done)
	if c.err != nil {
		return nil, c.err
	}
	return c.msg.Copy(), nil
}

func (r *Resolver) storeLocked(k cacheKey, msg *dns.Msg, now time.Time, ttl time.Duration) {
	e := &cacheEntry{key: k, msg: msg, stored: now, expires: now.Add(ttl)}
	r.cache[k] = r.lru.PushFront(e)
	for r.lru.Len() > r.cfg.CacheSize {
		old := r.lru.Back()
		r.lru.Remove(old)
		delete(r.cache, old.Value.(*cacheEntry).key)
	}
}

// cacheTTL says how long msg may be cached: positive answers for their smallest TTL,
// NXDOMAIN and NODATA for min(SOA TTL, SOA minimum); nothing else is cached.
func cacheTTL(msg *dns.Msg, maxTTL time.Duration) (time.Duration, bool) {
	var ttl uint32
	switch {
	case msg.Rcode == dns.RcodeSuccess && len(msg.Answer) > 0:
		ttl = ^uint32(0)
		for _, rr := range msg.Answer {
			ttl = min(ttl, rr.Header().Ttl)
		}
	case msg.Rcode == dns.RcodeNameError || (msg.Rcode == dns.RcodeSuccess && len(msg.Answer) == 0):
		found := false
		for _, rr := range msg.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl = min(soa.Hdr.Ttl, soa.Minttl)
				found = true
				break
			}
		}
		if !found {
			return 0, false
		}
	default:
		return 0, false
	}
	if ttl == 0 {
		return 0, false
	}
	return min(time.Duration(ttl)*time.Second, maxTTL), true
}

// aged returns a copy of msg with its TTLs lowered by age.
func aged(msg *dns.Msg, age time.Duration) *dns.Msg {
	c := msg.Copy()
	sec := uint32(age / time.Second)
	for _, sec2 := range [][]dns.RR{c.Answer, c.Ns, c.Extra} {
		for _, rr := range sec2 {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			if h.Ttl > sec {
				h.Ttl -= sec
			} else {
				h.Ttl = 0
			}
		}
	}
	return c
}

// exchange asks the upstreams in turn, over UDP, then TCP when the answer is truncated.
func (r *Resolver) exchange(ctx context.Context, k cacheKey) (*dns.Msg, error) {
	if len(r.upstreams) == 0 {
		return nil, errors.New("no upstream resolvers")
	}
	m := new(dns.Msg)
	m.SetQuestion(k.name, k.qtype)
	m.Question[0].Qclass = k.qclass
	m.RecursionDesired = true
	m.CheckingDisabled = k.cd
	m.SetEdns0(upstreamUDPSize, k.do)
	var last error
	for _, up := range r.upstreams {
		cctx, cancel := context.WithTimeout(ctx, r.cfg.UpstreamTimeout)
		resp, _, err := (&dns.Client{Net: "udp", UDPSize: upstreamUDPSize, Timeout: r.cfg.UpstreamTimeout}).ExchangeContext(cctx, m, up)
		if err == nil && resp.Truncated {
			r.m.upstream.WithLabelValues("tcp_retry").Inc()
			resp, _, err = (&dns.Client{Net: "tcp", Timeout: r.cfg.UpstreamTimeout}).ExchangeContext(cctx, m, up)
		}
		cancel()
		if err == nil && resp.Id != m.Id {
			err = errors.New("answer with another id")
		}
		if err == nil && (resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused) {
			err = fmt.Errorf("upstream %s answered %s", up, dns.RcodeToString[resp.Rcode])
		}
		if err != nil {
			r.m.upstream.WithLabelValues("error").Inc()
			last = fmt.Errorf("upstream %s: %w", up, err)
			continue
		}
		r.m.upstream.WithLabelValues("ok").Inc()
		return resp, nil
	}
	return nil, last
}

// String describes the resolver for logs.
func (r *Resolver) String() string {
	return "resolver zones=" + strings.Join(r.zones, ",") + " upstreams=" + strings.Join(r.upstreams, ",") + " cache=" + strconv.Itoa(r.cfg.CacheSize)
}
