package resolver

import (
	"context"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/dnsview"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/services/agent/internal/views"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeViews is a hand-written Views holding fixed views.
type fakeViews struct {
	mu      sync.Mutex
	views   map[string]*namesv1.ServiceView
	touched map[string]int
}

func (f *fakeViews) Touch(s string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.touched[s]++
	return nil
}

func (f *fakeViews) Get(s string) views.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.views[s]
	snap := views.Snapshot{Service: s, View: v, Loaded: true, Changed: make(chan struct{})}
	if v != nil {
		snap.Table = dnsview.Compile(v)
	}
	return snap
}

func (f *fakeViews) Wait(_ context.Context, s string) views.Snapshot { return f.Get(s) }

// upstream is a DNS server on loopback that counts the queries it gets.
type upstream struct {
	addr    string
	queries atomic.Int64
	tcp     atomic.Int64
	delay   time.Duration
}

func startUpstream(t *testing.T, delay time.Duration) *upstream {
	t.Helper()
	u := &upstream{delay: delay}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		u.queries.Add(1)
		_, isTCP := w.RemoteAddr().(*net.TCPAddr)
		if isTCP {
			u.tcp.Add(1)
		}
		time.Sleep(u.delay)
		resp := new(dns.Msg)
		resp.SetReply(req)
		q := req.Question[0]
		soa := &dns.SOA{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 300},
			Ns: "ns.example.test.", Mbox: "h.example.test.", Serial: 1, Minttl: 60}
		switch q.Name {
		case "www.example.test.":
			resp.Answer = append(resp.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.IPv4(192, 0, 2, 1)})
		case "big.example.test.":
			if !isTCP {
				resp.Truncated = true
				break
			}
			for i := range 40 {
				resp.Answer = append(resp.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.IPv4(192, 0, 2, byte(i))})
			}
		case "short.example.test.":
			resp.Answer = append(resp.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(192, 0, 2, 9)})
		case "nosoa.example.test.":
			resp.Rcode = dns.RcodeNameError
		default:
			resp.Rcode = dns.RcodeNameError
			resp.Ns = append(resp.Ns, soa)
		}
		_ = w.WriteMsg(resp)
	})
	su := &dns.Server{PacketConn: pc, Handler: h}
	st := &dns.Server{Listener: l, Handler: h}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{su, st} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.ActivateAndServe() }()
		<-started
	}
	t.Cleanup(func() { _ = su.Shutdown(); _ = st.Shutdown(); wg.Wait() })
	return u
}

func startResolver(t *testing.T, v Views, ups ...string) (*Resolver, string) {
	t.Helper()
	r, err := New(Config{Listen: "127.0.0.1:0", DC: "dc1", Upstreams: ups, UpstreamTimeout: time.Second}, v)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := r.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r, addr.String()
}

func query(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	resp, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return resp
}

func ips(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	sort.Strings(out)
	return out
}

func TestZoneAnswers(t *testing.T) {
	v := &fakeViews{touched: map[string]int{}, views: map[string]*namesv1.ServiceView{
		"hotel/search": {Service: "hotel/search", Revision: 7, TtlSeconds: 9, Instances: []*namesv1.Instance{
			{Id: "h1-80", Ip: "10.0.0.1", Port: 80, Dc: "dc1", Health: namesv1.Health_HEALTH_HEALTHY},
			{Id: "h2-80", Ip: "10.0.0.2", Port: 80, Dc: "dc1", Health: namesv1.Health_HEALTH_HEALTHY},
			{Id: "h3-80", Ip: "10.0.1.3", Port: 80, Dc: "dc2", Health: namesv1.Health_HEALTH_HEALTHY},
			{Id: "h4-80", Ip: "10.0.0.4", Port: 80, Dc: "dc1", Health: namesv1.Health_HEALTH_UNHEALTHY},
			{Id: "h5-80", Ip: "fd00::5", Port: 80, Dc: "dc1", Health: namesv1.Health_HEALTH_HEALTHY},
		}},
	}}
	_, addr := startResolver(t, v)
	tests := []struct {
		name  string
		qtype uint16
		rcode int
		want  []string
	}{
		// Same-DC priority: dc2's instance and the unhealthy one are left out.
		{"search.hotel.ns.berth.internal.", dns.TypeA, dns.RcodeSuccess, []string{"10.0.0.1", "10.0.0.2"}},
		{"SEARCH.Hotel.ns.berth.internal.", dns.TypeA, dns.RcodeSuccess, []string{"10.0.0.1", "10.0.0.2"}},
		{"search.hotel.ns.berth.internal.", dns.TypeAAAA, dns.RcodeSuccess, []string{"fd00::5"}},
		// An instance name answers whatever the health.
		{"h4-80.search.hotel.ns.berth.internal.", dns.TypeA, dns.RcodeSuccess, []string{"10.0.0.4"}},
		{"nope.hotel.ns.berth.internal.", dns.TypeA, dns.RcodeNameError, nil},
		{"search.hotel.ns.berth.internal.", dns.TypeTXT, dns.RcodeSuccess, nil},
	}
	for _, tt := range tests {
		resp := query(t, addr, tt.name, tt.qtype)
		if resp.Rcode != tt.rcode || !equal(ips(resp), tt.want) {
			t.Errorf("%s %s: got %s %v, want %s %v", tt.name, dns.TypeToString[tt.qtype], dns.RcodeToString[resp.Rcode], ips(resp),
				dns.RcodeToString[tt.rcode], tt.want)
		}
		if len(resp.Answer) > 0 && resp.Answer[0].Header().Ttl != 9 {
			t.Errorf("%s: TTL got %d, want the view's 9", tt.name, resp.Answer[0].Header().Ttl)
		}
	}
	srv := query(t, addr, "search.hotel.ns.berth.internal.", dns.TypeSRV)
	if len(srv.Answer) != 3 || len(srv.Extra) != 3 {
		t.Errorf("SRV: got %d answers and %d additional records, want 3 and 3", len(srv.Answer), len(srv.Extra))
	}
	v.mu.Lock()
	touched := v.touched["hotel/search"]
	v.mu.Unlock()
	if touched == 0 {
		t.Errorf("the resolver never followed hotel/search")
	}
}

func TestForwardAndCache(t *testing.T) {
	up := startUpstream(t, 0)
	_, addr := startResolver(t, &fakeViews{touched: map[string]int{}, views: map[string]*namesv1.ServiceView{}}, up.addr)

	// Positive: asked twice, the upstream sees it once; the second answer's TTL is aged.
	a := query(t, addr, "www.example.test.", dns.TypeA)
	if got := ips(a); !equal(got, []string{"192.0.2.1"}) || !a.RecursionAvailable {
		t.Fatalf("www: got %v (RA %v), want [192.0.2.1] with RA", got, a.RecursionAvailable)
	}
	query(t, addr, "WWW.example.test.", dns.TypeA)
	if got := up.queries.Load(); got != 1 {
		t.Errorf("upstream queries after two identical questions: got %d, want 1 (cached)", got)
	}
	// Negative: NXDOMAIN with an SOA is cached for min(SOA TTL, minimum).
	nx := query(t, addr, "missing.example.test.", dns.TypeA)
	if nx.Rcode != dns.RcodeNameError {
		t.Fatalf("missing: got %s, want NXDOMAIN", dns.RcodeToString[nx.Rcode])
	}
	query(t, addr, "missing.example.test.", dns.TypeA)
	if got := up.queries.Load(); got != 2 {
		t.Errorf("upstream queries after two NXDOMAIN questions: got %d, want 2 (negative answer cached)", got)
	}
	// Without an SOA a negative answer is not cached.
	query(t, addr, "nosoa.example.test.", dns.TypeA)
	query(t, addr, "nosoa.example.test.", dns.TypeA)
	if got := up.queries.Load(); got != 4 {
		t.Errorf("upstream queries after two NXDOMAIN without SOA: got %d, want 4 (not cached)", got)
	}
	// A 1 s TTL expires.
	query(t, addr, "short.example.test.", dns.TypeA)
	time.Sleep(1100 * time.Millisecond)
	query(t, addr, "short.example.test.", dns.TypeA)
	if got := up.queries.Load(); got != 6 {
		t.Errorf("upstream queries after a TTL expired: got %d, want 6", got)
	}
	// Truncated over UDP: retried over TCP; the client gets what fits, with TC, and the
	// full answer over TCP.
	big := query(t, addr, "big.example.test.", dns.TypeA)
	if up.tcp.Load() != 1 {
		t.Errorf("TCP retries upstream: got %d, want 1", up.tcp.Load())
	}
	if !big.Truncated {
		t.Errorf("40 A records over UDP to a client without EDNS: got TC clear, want set")
	}
	m := new(dns.Msg)
	m.SetQuestion("big.example.test.", dns.TypeA)
	full, _, err := (&dns.Client{Net: "tcp", Timeout: 3 * time.Second}).Exchange(m, addr)
	if err != nil || len(full.Answer) != 40 {
		t.Errorf("big over TCP: got %d answers (%v), want 40", len(full.Answer), err)
	}
}

func TestForwardCoalesces(t *testing.T) {
	up := startUpstream(t, 200*time.Millisecond)
	_, addr := startResolver(t, &fakeViews{touched: map[string]int{}, views: map[string]*namesv1.ServiceView{}}, up.addr)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(dns.Msg)
			m.SetQuestion("www.example.test.", dns.TypeA)
			if _, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, addr); err != nil {
				t.Errorf("query: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := up.queries.Load(); got != 1 {
		t.Errorf("upstream queries for 20 concurrent identical questions: got %d, want 1", got)
	}
}

func TestUpstreamDown(t *testing.T) {
	// A closed port: the resolver answers SERVFAIL rather than hanging.
	l, _ := net.ListenPacket("udp", "127.0.0.1:0")
	dead := l.LocalAddr().String()
	l.Close()
	_, addr := startResolver(t, &fakeViews{touched: map[string]int{}, views: map[string]*namesv1.ServiceView{}}, dead)
	if resp := query(t, addr, "www.example.test.", dns.TypeA); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("upstream down: got %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
}

func TestCacheBound(t *testing.T) {
	r, err := New(Config{Listen: "127.0.0.1:0", CacheSize: 2, Upstreams: []string{"127.0.0.1:1"}}, &fakeViews{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, n := range []string{"a.", "b.", "c."} {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		r.storeLocked(cacheKey{name: n, qtype: dns.TypeA}, m, now, time.Minute)
	}
	if len(r.cache) != 2 {
		t.Errorf("cache entries with size 2 after 3 stores: got %d", len(r.cache))
	}
	if _, ok := r.cache[cacheKey{name: "a.", qtype: dns.TypeA}]; ok {
		t.Errorf("the least recently used entry a. is still cached")
	}
}

func TestBadConfig(t *testing.T) {
	tests := []Config{
		{Listen: ""},
		{Listen: "nope"},
		{Listen: "127.0.0.1:0", Zones: []string{"bad zone"}},
		{Listen: "127.0.0.1:0", Upstreams: []string{"not-an-ip"}},
	}
	for _, c := range tests {
		if _, err := New(c, &fakeViews{}); err == nil {
			t.Errorf("New(%+v): got nil error", c)
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
