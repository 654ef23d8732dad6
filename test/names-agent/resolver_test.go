package namesagent_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/berthdev/berth/services/agent"
)

// upstreamDNS is a real DNS server on loopback standing for the host's resolvers; it
// counts the queries it gets.
func upstreamDNS(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		n.Add(1)
		resp := new(dns.Msg)
		resp.SetReply(req)
		if req.Question[0].Name == "www.example.test." {
			resp.Answer = append(resp.Answer, &dns.A{Hdr: dns.RR_Header{Name: "www.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)})
		} else {
			resp.Rcode = dns.RcodeNameError
			resp.Ns = append(resp.Ns, &dns.SOA{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 30},
				Ns: "ns.example.test.", Mbox: "h.example.test.", Minttl: 30})
		}
		_ = w.WriteMsg(resp)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown(); wg.Wait() })
	return pc.LocalAddr().String(), &n
}

func ask(t *testing.T, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, server)
	if err != nil {
		t.Fatalf("ask %s: %v", name, err)
	}
	return r
}

func addrs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func TestLocalResolver(t *testing.T) {
	e := startEnv(t)
	e.tree("app/web", time.Second)
	up, upQueries := upstreamDNS(t)
	cfg := e.agentCfg("h-dns")
	cfg.DNSListen = "127.0.0.1:0"
	cfg.NameAPIListen = "127.0.0.1:0"
	cfg.DNS.Upstreams = []string{up}
	port := freePort(t)
	dir := static(t, cfg, "web", webYAML("app/web", port, 200*time.Millisecond), map[string]string{"health.sh": healthScript})
	setOK(t, dir, true)
	ra := e.startAgent(cfg)
	server := ra.a.Addrs().DNS.String()
	api := "http://" + ra.a.Addrs().NameAPI.String()

	// Answers from the view: the name follows the instance's registration.
	took := eventually(t, 10*time.Second, "web.app answered", func() bool {
		return equal(addrs(ask(t, server, "web.app.ns.berth.internal.", dns.TypeA)), []string{"127.0.0.1"})
	})
	t.Logf("answered by the local resolver %s after the agent started", took.Round(time.Millisecond))
	if got := resolveAt(t, api, "app/web"); !equal(got, []string{"127.0.0.1:" + strconv.Itoa(port)}) {
		t.Errorf("local name API resolve: got %v", got)
	}
	srv := ask(t, server, "web.app.ns.berth.internal.", dns.TypeSRV)
	if len(srv.Answer) != 1 || srv.Answer[0].(*dns.SRV).Port != uint16(port) {
		t.Errorf("SRV: got %v", srv.Answer)
	}
	if r := ask(t, server, "nothing.app.ns.berth.internal.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("unknown service: got %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}

	// Forwarded names are cached, positive and negative.
	for range 3 {
		if got := addrs(ask(t, server, "www.example.test.", dns.TypeA)); !equal(got, []string{"192.0.2.7"}) {
			t.Fatalf("www.example.test: got %v", got)
		}
		if r := ask(t, server, "gone.example.test.", dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Fatalf("gone.example.test: got %s", dns.RcodeToString[r.Rcode])
		}
	}
	if got := upQueries.Load(); got != 2 {
		t.Errorf("upstream queries for 3 × 2 questions: got %d, want 2 (the rest from the cache)", got)
	}

	// NATS goes away (and with it the name service's views): the agent answers from its
	// last view, by DNS and by its HTTP API.
	e.nats.Shutdown()
	time.Sleep(300 * time.Millisecond)
	if got := addrs(ask(t, server, "web.app.ns.berth.internal.", dns.TypeA)); !equal(got, []string{"127.0.0.1"}) {
		t.Errorf("with NATS down: got %v, want the last view's [127.0.0.1]", got)
	}
	if got := resolveAt(t, api, "app/web"); len(got) != 1 {
		t.Errorf("local name API with NATS down: got %v", got)
	}
	e.nats.Start()
}

func TestOnceDryRun(t *testing.T) {
	e := startEnv(t)
	e.tree("app/web", time.Second)
	cfg := e.agentCfg("h-once")
	port := freePort(t)
	static(t, cfg, "web", fmt.Sprintf("service: app/web\nport: %d\n", port), nil)
	e.startAgent(cfg)
	eventually(t, 10*time.Second, "registration", func() bool { return len(e.resolved("app/web")) == 1 })
	if _, err := e.coord.Put(t.Context(), "/berth/config/app/flags", []byte("on")); err != nil {
		t.Fatal(err)
	}
	tmpl := filepath.Join(t.TempDir(), "up.tmpl")
	src := "{{ range service \"app/web\" }}server {{ .Address }};\n{{ end }}flags={{ key \"app/flags\" }}\n"
	if err := os.WriteFile(tmpl, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	once := e.agentCfg("h-once")
	once.Once, once.DryRun, once.Template = true, true, tmpl
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := agent.RenderOnce(ctx, once, &out, nil); err != nil {
		t.Fatalf("RenderOnce: %v", err)
	}
	want := "server 127.0.0.1:" + strconv.Itoa(port) + ";\nflags=on\n"
	if out.String() != want {
		t.Errorf("--once --dry-run: got %q, want %q", out.String(), want)
	}
	// A template with a function outside the allow-list is refused with its line.
	if err := os.WriteFile(tmpl, []byte("ok\n{{ exec \"id\" }}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := agent.RenderOnce(ctx, once, &out, nil); err == nil || !strings.Contains(err.Error(), "up.tmpl:2") {
		t.Errorf("bad template: got %v, want an error naming up.tmpl:2", err)
	}
}
