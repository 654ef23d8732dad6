package names

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	nameservice "github.com/berthdev/berth/services/name-service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T, tweak func(*nameservice.Config)) *Env {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	e, err := Start(ctx, t.TempDir(), nil, tweak)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return e
}

func healthy(ip string, port uint32, dc string) *namesv1.Instance {
	return &namesv1.Instance{Ip: ip, Port: port, Dc: dc, Version: "1.0", Health: namesv1.Health_HEALTH_HEALTHY}
}

// coordView reads the service's instances straight from coord, as the view should hold
// them (id order, id and service filled).
func coordView(t *testing.T, e *Env, service string) []*namesv1.Instance {
	t.Helper()
	res, err := e.Coord.List(t.Context(), "/berth/instances/"+service, coordclient.Recursive())
	if err != nil {
		t.Fatal(err)
	}
	var out []*namesv1.Instance
	for _, n := range res.Nodes {
		if n.Version == 0 {
			continue
		}
		in := &namesv1.Instance{}
		if err := protojson.Unmarshal(n.Value, in); err != nil {
			t.Fatal(err)
		}
		in.Id = n.Path[strings.LastIndexByte(n.Path, '/')+1:]
		in.Service = service
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b *namesv1.Instance) int { return strings.Compare(a.GetId(), b.GetId()) })
	return out
}

func sameInstances(a, b []*namesv1.Instance) bool {
	return slices.EqualFunc(a, b, func(x, y *namesv1.Instance) bool { return proto.Equal(x, y) })
}

func decodeView(t *testing.T, data []byte) *namesv1.ServiceView {
	t.Helper()
	v := &namesv1.ServiceView{}
	if err := proto.Unmarshal(data, v); err != nil {
		t.Fatalf("decode view: %v", err)
	}
	return v
}

// TestViewsBurst makes 100 changes to one service as fast as coord takes them: the views on
// the subject come in increasing revision order and the last equals coord's state; a
// subscriber that starts afterwards reads the same view from the KV bucket at once.
func TestViewsBurst(t *testing.T) {
	e := start(t, nil)
	const svc = "hotel/search"
	subject, _ := subjects.NamesView(svc)
	views := make(chan *nats.Msg, 1000)
	sub, err := e.Bus.Conn().ChanSubscribe(subject, views)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ctx := t.Context()
	// 100 changes: 40 registrations, 40 updates, 20 deregistrations.
	for i := range 40 {
		if _, err := e.Register(ctx, svc, "i-"+Itoa(i), healthy(fmt.Sprintf("10.0.0.%d", i+1), 8080, "dc1"), 0); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		in := healthy(fmt.Sprintf("10.0.0.%d", i+1), 9090, "dc1")
		in.Weight = uint32(i + 1)
		if _, err := e.Register(ctx, svc, "i-"+Itoa(i), in, 0); err != nil {
			t.Fatal(err)
		}
	}
	var last int64
	for i := range 20 {
		res, err := e.Coord.Delete(ctx, InstancePath(svc, "i-"+Itoa(i*2)))
		if err != nil {
			t.Fatal(err)
		}
		last = res.Revision
	}
	want := coordView(t, e, svc)
	if len(want) != 20 {
		t.Fatalf("coord: got %d instances, want 20", len(want))
	}
	var prev int64
	n := 0
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-views:
			v := decodeView(t, m.Data)
			n++
			if v.GetRevision() <= prev {
				t.Fatalf("view %d: revision %d after %d, want increasing", n, v.GetRevision(), prev)
			}
			prev = v.GetRevision()
			if v.GetRevision() < last {
				continue
			}
			if !sameInstances(v.GetInstances(), want) {
				t.Fatalf("last view (revision %d): got %v, want coord's %v", v.GetRevision(), v.GetInstances(), want)
			}
			if v.GetRevision() != last {
				t.Fatalf("last view: got revision %d, want %d", v.GetRevision(), last)
			}
			t.Logf("%d views for 100 changes; last at revision %d", n, last)
			// A late subscriber: the KV bucket has the current view at once.
			kv, err := e.Bus.JetStream().KeyValue(ctx, subjects.NamesBucket)
			if err != nil {
				t.Fatal(err)
			}
			key, _ := subjects.ServiceTokens(svc)
			waitFor(t, 5*time.Second, func() error {
				entry, err := kv.Get(ctx, key)
				if err != nil {
					return err
				}
				kvView := decodeView(t, entry.Value())
				if kvView.GetRevision() != last || !sameInstances(kvView.GetInstances(), want) {
					return fmt.Errorf("kv view at revision %d, want %d", kvView.GetRevision(), last)
				}
				return nil
			})
			w, err := kv.Watch(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			select {
			case entry := <-w.Updates():
				if entry == nil || decodeView(t, entry.Value()).GetRevision() != last {
					t.Fatalf("kv watch: first entry %v, want the view at %d", entry, last)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("kv watch: no current value within 2s")
			}
			return
		case <-deadline:
			t.Fatalf("no view at revision %d within 10s (got %d views, last revision %d)", last, n, prev)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, v any) (int, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v: %s", url, err, b)
		}
	}
	return resp.StatusCode, resp.Header
}

type resolution struct {
	Rules     []string `json:"rules"`
	ClientDC  string   `json:"client_dc"`
	Explain   []string `json:"explain"`
	Revision  int64    `json:"revision"`
	Instances []struct {
		ID   string `json:"id"`
		Addr string `json:"addr"`
	} `json:"instances"`
}

func (r resolution) addrs() []string {
	var out []string
	for _, in := range r.Instances {
		out = append(out, in.Addr)
	}
	slices.Sort(out)
	return out
}

func dnsA(t *testing.T, e *Env, name string) []string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, err := dns.Exchange(m, e.Addrs.DNSUDP.String())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	slices.Sort(out)
	return out
}

// TestEphemeralInstanceLeaves registers instances in a coord session; closing the session
// removes them from resolve and DNS within seconds.
func TestEphemeralInstanceLeaves(t *testing.T) {
	e := start(t, nil)
	ctx := t.Context()
	sess, err := e.Coord.NewSession(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Register(ctx, "hotel/search", "a", healthy("10.0.0.1", 8080, ""), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Register(ctx, "hotel/search", "b", healthy("10.0.0.2", 8081, ""), sess.ID()); err != nil {
		t.Fatal(err)
	}
	url := e.HTTPURL() + "/v1/resolve/hotel/search"
	waitFor(t, 5*time.Second, func() error {
		var r resolution
		getJSON(t, url, &r)
		if got := r.addrs(); !slices.Equal(got, []string{"10.0.0.1:8080", "10.0.0.2:8081"}) {
			return fmt.Errorf("resolve: got %v", got)
		}
		return nil
	})
	if got := dnsA(t, e, "search.hotel.ns.berth.internal."); !slices.Equal(got, []string{"10.0.0.1", "10.0.0.2"}) {
		t.Fatalf("dns: got %v", got)
	}
	closed := time.Now()
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, func() error {
		var r resolution
		getJSON(t, url, &r)
		if got := r.addrs(); !slices.Equal(got, []string{"10.0.0.1:8080"}) {
			return fmt.Errorf("resolve after session close: got %v", got)
		}
		if got := dnsA(t, e, "search.hotel.ns.berth.internal."); !slices.Equal(got, []string{"10.0.0.1"}) {
			return fmt.Errorf("dns after session close: got %v", got)
		}
		return nil
	})
	t.Logf("gone from resolve and DNS %s after the session closed", time.Since(closed).Round(time.Millisecond))
}

func put(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, url, strings.NewReader(body))
	req.Header.Set("X-Berth-User", "alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestTrafficPolicy sets, reads, applies and clears a policy through the HTTP API, and
// checks that bad policies are refused with the field named and change nothing.
func TestTrafficPolicy(t *testing.T) {
	e := start(t, func(c *nameservice.Config) { c.DCSubnets = []string{"10.9.0.0/16=dc2"} })
	ctx := t.Context()
	// The inventory puts this client (127.0.0.1) in dc1.
	if _, err := e.Coord.Put(ctx, "/berth/hosts/h1", []byte(`{"id":"h1","dc":"dc1","ip":"127.0.0.1","cpu_millis":"8000"}`)); err != nil {
		t.Fatal(err)
	}
	for i, dc := range []string{"dc1", "dc1", "dc2"} {
		in := healthy(fmt.Sprintf("10.0.0.%d", i+1), 8080, dc)
		in.Version = []string{"1.4.1", "1.4.2", "1.4.1"}[i]
		if _, err := e.Register(ctx, "hotel/search", "i"+Itoa(i), in, 0); err != nil {
			t.Fatal(err)
		}
	}
	resolveURL := e.HTTPURL() + "/v1/resolve/hotel/search?explain=true"
	waitFor(t, 5*time.Second, func() error {
		var r resolution
		getJSON(t, resolveURL, &r)
		if r.ClientDC != "dc1" || !slices.Equal(r.addrs(), []string{"10.0.0.1:8080", "10.0.0.2:8080"}) || !slices.Contains(r.Rules, "same-dc") {
			return fmt.Errorf("same-dc resolve: got dc %q %v %v", r.ClientDC, r.addrs(), r.Rules)
		}
		return nil
	})
	trafficURL := e.HTTPURL() + "/v1/traffic/hotel/search"
	bad := []struct {
		body, field string
	}{
		{`{"panic_threshold": 150}`, "panic_threshold"},
		{`{"dc_overrides": {"dc1": "dc9"}}`, `dc_overrides["dc1"]`},
		{`{"version_weights": {"1.4.1": 0}}`, "version_weights"},
		{`{"mode": "ANSWER_MODE_LIMIT"}`, "limit"},
		{`{"no_such_field": 1}`, "policy"},
		{`not json`, "policy"},
	}
	for _, b := range bad {
		code, out := put(t, trafficURL, b.body)
		if code != http.StatusBadRequest || out["field"] != b.field {
			t.Errorf("PUT %s: got %d %v, want 400 naming %s", b.body, code, out, b.field)
		}
	}
	if code, _ := getJSON(t, trafficURL, nil); code != http.StatusNotFound {
		t.Fatalf("after refused PUTs: GET got %d, want 404 (nothing written)", code)
	}
	// Send dc1's clients to dc2.
	code, out := put(t, trafficURL, `{"dc_overrides": {"dc1": "dc2"}, "version_weights": {"1.4.1": 90, "1.4.2": 10}}`)
	if code != http.StatusOK {
		t.Fatalf("PUT: got %d %v", code, out)
	}
	var got struct {
		Policy struct {
			UpdatedBy string `json:"updated_by"`
		} `json:"policy"`
	}
	if code, _ := getJSON(t, trafficURL, &got); code != http.StatusOK || got.Policy.UpdatedBy != "alice" {
		t.Fatalf("GET: got %d %+v, want the policy set by alice", code, got)
	}
	waitFor(t, 5*time.Second, func() error {
		var r resolution
		getJSON(t, resolveURL, &r)
		if !slices.Equal(r.addrs(), []string{"10.0.0.3:8080"}) || !slices.Contains(r.Rules, "dc-override") {
			return fmt.Errorf("override resolve: got %v %v", r.addrs(), r.Rules)
		}
		return nil
	})
	// ?dc= asks as another datacenter; an unknown one is refused.
	var r resolution
	getJSON(t, e.HTTPURL()+"/v1/resolve/hotel/search?dc=dc2", &r)
	if !slices.Equal(r.addrs(), []string{"10.0.0.3:8080"}) {
		t.Errorf("?dc=dc2: got %v", r.addrs())
	}
	if code, _ := getJSON(t, e.HTTPURL()+"/v1/resolve/hotel/search?dc=mars", nil); code != http.StatusBadRequest {
		t.Errorf("?dc=mars: got %d, want 400", code)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, trafficURL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE: got %d", resp.StatusCode)
	}
	waitFor(t, 5*time.Second, func() error {
		var r resolution
		getJSON(t, resolveURL, &r)
		if !slices.Equal(r.addrs(), []string{"10.0.0.1:8080", "10.0.0.2:8080"}) {
			return fmt.Errorf("after DELETE: got %v", r.addrs())
		}
		return nil
	})
}

// TestWatchAndEvents checks the blocking query and the SSE stream.
func TestWatchAndEvents(t *testing.T) {
	e := start(t, nil)
	ctx := t.Context()
	rev, err := e.Register(ctx, "flight/api", "a", healthy("10.0.0.1", 80, ""), 0)
	if err != nil {
		t.Fatal(err)
	}
	watchURL := e.HTTPURL() + "/v1/watch/flight/api"
	waitFor(t, 5*time.Second, func() error {
		_, h := getJSON(t, watchURL+"?wait=50ms", nil)
		if h.Get("X-Berth-Index") != strconv.FormatInt(rev, 10) {
			return fmt.Errorf("index %q, want %d", h.Get("X-Berth-Index"), rev)
		}
		return nil
	})
	// Blocks at the current index until the wait ends.
	start := time.Now()
	code, h := getJSON(t, fmt.Sprintf("%s?index=%d&wait=300ms", watchURL, rev), nil)
	if code != http.StatusOK || h.Get("X-Berth-Index") != strconv.FormatInt(rev, 10) || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("blocking query at the current index: got %d index %s after %s, want 200 %d after ~300ms", code, h.Get("X-Berth-Index"), time.Since(start), rev)
	}
	// Returns as soon as the view changes.
	type result struct {
		code  int
		index string
		took  time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		resp, err := http.Get(fmt.Sprintf("%s?index=%d&wait=20s", watchURL, rev))
		if err != nil {
			done <- result{}
			return
		}
		resp.Body.Close()
		done <- result{resp.StatusCode, resp.Header.Get("X-Berth-Index"), time.Since(start)}
	}()
	// SSE: the current view first, then the change.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.HTTPURL()+"/v1/events/flight/api", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events content type: got %q", ct)
	}
	events := make(chan string, 10)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var id string
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "id: "); ok {
				id = v
			}
			if strings.HasPrefix(line, "data: ") {
				events <- id
			}
		}
	}()
	if first := <-events; first != strconv.FormatInt(rev, 10) {
		t.Fatalf("first event id: got %q, want %d", first, rev)
	}
	time.Sleep(100 * time.Millisecond)
	rev2, err := e.Register(ctx, "flight/api", "b", healthy("10.0.0.2", 80, ""), 0)
	if err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.code != http.StatusOK || res.index != strconv.FormatInt(rev2, 10) || res.took > 5*time.Second {
		t.Fatalf("blocking query: got %+v, want 200 at index %d", res, rev2)
	}
	select {
	case id := <-events:
		if id != strconv.FormatInt(rev2, 10) {
			t.Fatalf("second event id: got %q, want %d", id, rev2)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no second event within 5s")
	}
	resp.Body.Close()
	for range events {
	}
}

// TestPanicEvent drops a service below its panic threshold: DNS keeps answering the last
// known good set and an instance.panic event is stored in BERTH_EVENTS.
func TestPanicEvent(t *testing.T) {
	e := start(t, nil)
	ctx := t.Context()
	for i := range 4 {
		if _, err := e.Register(ctx, "pay/api", "p"+Itoa(i), healthy(fmt.Sprintf("10.0.1.%d", i+1), 80, ""), 0); err != nil {
			t.Fatal(err)
		}
	}
	if code, out := put(t, e.HTTPURL()+"/v1/traffic/pay/api", `{"panic_threshold": 50}`); code != http.StatusOK {
		t.Fatalf("PUT: %d %v", code, out)
	}
	all := []string{"10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"}
	waitFor(t, 5*time.Second, func() error {
		if got := dnsA(t, e, "api.pay.ns.berth.internal."); !slices.Equal(got, all) {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
	// Three of four fail their health checks, one after the other (each seen by the name
	// service before the next, so that the last known good set is well defined).
	for i := range 3 {
		in := healthy(fmt.Sprintf("10.0.1.%d", i+1), 80, "")
		in.Health = namesv1.Health_HEALTH_UNHEALTHY
		rev, err := e.Register(ctx, "pay/api", "p"+Itoa(i), in, 0)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() error {
			_, h := getJSON(t, e.HTTPURL()+"/v1/view/pay/api", nil)
			if n, _ := strconv.ParseInt(h.Get("X-Berth-Index"), 10, 64); n < rev {
				return fmt.Errorf("view at %d, want %d", n, rev)
			}
			return nil
		})
	}
	cons, err := e.Bus.JetStream().OrderedConsumer(ctx, subjects.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"berth.v1.events.instance.panic.pay.api"},
	})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("no panic event: %v", err)
	}
	ce, err := natsbus.DecodeStreamEvent(msg)
	if err != nil {
		t.Fatal(err)
	}
	var ev eventsv1.InstanceEvent
	if err := natsbus.UnmarshalEventData(ce, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.GetService() != "pay/api" || !strings.Contains(ev.GetReason(), "1 of 4") {
		t.Fatalf("panic event: got %v", &ev)
	}
	// The last known good set is what was healthy the last time the service was not in
	// panic: p2 and p3 (at 2 of 4 healthy, 50%, the threshold is not crossed). DNS keeps
	// answering both rather than only the one healthy instance.
	if got, want := dnsA(t, e, "api.pay.ns.berth.internal."), []string{"10.0.1.3", "10.0.1.4"}; !slices.Equal(got, want) {
		t.Fatalf("in panic: got %v, want the last known good set %v", got, want)
	}
	var r resolution
	getJSON(t, e.HTTPURL()+"/v1/resolve/pay/api?explain=true", &r)
	if !slices.Contains(r.Rules, "panic") {
		t.Fatalf("resolve rules in panic: got %v", r.Rules)
	}
}
