package apiaccess

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memStore is a Store in memory (versions count up, options are ignored); failPuts makes
// every Put fail, as an unreachable coord.
type memStore struct {
	mu       sync.Mutex
	nodes    map[string]coordclient.Node
	failPuts bool
}

func (s *memStore) Put(_ context.Context, path string, value []byte, opts ...coordclient.PutOption) (*coordclient.PutResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failPuts {
		return nil, coordclient.ErrUnavailable
	}
	n := s.nodes[path]
	n.Path, n.Value, n.Version = path, value, n.Version+1
	s.nodes[path] = n
	return &coordclient.PutResult{Path: path, Version: n.Version}, nil
}

func (s *memStore) records(t *testing.T, prefix string) []*eventsv1.AuditEvent {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*eventsv1.AuditEvent
	for p, n := range s.nodes {
		if !strings.HasPrefix(p, prefix+"/") {
			t.Errorf("record at %s, want it under %s", p, prefix)
			continue
		}
		r := &eventsv1.AuditEvent{}
		if err := protojson.Unmarshal(n.Value, r); err != nil {
			t.Fatal(err)
		}
		if p != prefix+"/"+r.GetId() {
			t.Errorf("record %s at %s", r.GetId(), p)
		}
		out = append(out, r)
	}
	return out
}

// testRules guard /api/; PUT /api/things/<service> needs a deployer of the service,
// POST /api/any needs any deployer, POST /api/teapot is refused with 418 and POST
// /api/broken errs; other writes need an admin of the whole tree.
type testRules struct{}

func (testRules) Kind(r *http.Request) Kind {
	switch {
	case !strings.HasPrefix(r.URL.Path, "/api/"):
		return Open
	case r.Method == http.MethodGet:
		return Read
	}
	return Write
}

func (testRules) Need(r *http.Request) (Need, error) {
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/api/things/"):
		return Need{Service: strings.TrimPrefix(r.URL.Path, "/api/things/"), Role: apitoken.Deployer}, nil
	case r.URL.Path == "/api/any":
		return Need{Role: apitoken.Deployer, AnyScope: true}, nil
	case r.URL.Path == "/api/teapot":
		return Need{Service: "hotel"}, &Denial{Status: http.StatusTeapot, Code: "teapot", Reason: "short and stout"}
	case r.URL.Path == "/api/broken":
		return Need{}, errors.New("lookup went wrong")
	}
	return Need{Role: apitoken.Admin}, nil
}

type fixture struct {
	st    *memStore
	tok   map[string]string
	h     http.Handler
	reg   *prometheus.Registry
	mu    sync.Mutex
	seen  []string
	guard *Guard
}

func (f *fixture) ran() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

func newFixture(t *testing.T, bus *natsbus.Bus) *fixture {
	t.Helper()
	f := &fixture{st: &memStore{nodes: map[string]coordclient.Node{}}, tok: map[string]string{}, reg: prometheus.NewRegistry()}
	file := "tokens:\n"
	for _, e := range []struct {
		name  string
		role  apitoken.Role
		scope string
	}{{"dep", apitoken.Deployer, "hotel"}, {"view", apitoken.Viewer, "/"}, {"root", apitoken.Admin, "/"}} {
		tok, err := apitoken.New()
		if err != nil {
			t.Fatal(err)
		}
		f.tok[e.name] = tok
		file += apitoken.FormatEntry(e.name, e.role, []string{e.scope}, tok)
	}
	set, err := apitoken.Parse("t", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	f.guard, err = New(Config{Tokens: set, Rules: testRules{}, Audit: f.st, AuditPrefix: "/audit/test/", Bus: bus, Source: "test/r1", Replica: "r1",
		Realm: "test-api", Subsystem: "testsvc", Registerer: f.reg,
		WriteError: func(w http.ResponseWriter, status int, code, message string) {
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": message, "kind": code})
		}})
	if err != nil {
		t.Fatal(err)
	}
	f.h = f.guard.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// An allowed write's record is in the store, not yet completed, before it runs.
		if r.Method != http.MethodGet && strings.HasPrefix(r.URL.Path, "/api/") {
			recs := f.st.records(t, "/audit/test")
			pending := 0
			for _, rec := range recs {
				if rec.GetStatus() == 0 && rec.GetResult() == ResultAllowed && rec.GetPath() == r.URL.Path {
					pending++
				}
			}
			if pending != 1 {
				t.Errorf("%s %s runs with %d pending records of it, want 1 written before it runs", r.Method, r.URL.Path, pending)
			}
		}
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.seen = append(f.seen, r.Method+" "+r.URL.Path+" "+r.Header.Get(UserHeader)+" "+string(b))
		f.mu.Unlock()
		switch r.URL.Path {
		case "/api/things/hotel/missing":
			w.WriteHeader(http.StatusNotFound)
		case "/api/things/hotel/a":
			w.Header().Set("Location", "/api/things/hotel/a")
			w.WriteHeader(http.StatusCreated)
		}
	}))
	return f
}

func do(h http.Handler, token, method, path, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set(UserHeader, "forged")
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestNewChecksConfig(t *testing.T) {
	tok, _ := apitoken.New()
	set, err := apitoken.Parse("t", []byte("tokens:\n"+apitoken.FormatEntry("a", apitoken.Admin, []string{"/"}, tok)))
	if err != nil {
		t.Fatal(err)
	}
	empty, _ := apitoken.Parse("t", nil)
	ok := Config{Tokens: set, Rules: testRules{}, Audit: &memStore{}, Realm: "r", Subsystem: "s"}
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no tokens", func(c *Config) { c.Tokens = nil }, "no tokens"},
		{"an empty token set", func(c *Config) { c.Tokens = empty }, "no tokens"},
		{"no rules", func(c *Config) { c.Rules = nil }, "no rules"},
		{"no audit store", func(c *Config) { c.Audit = nil }, "no audit store"},
		{"no realm", func(c *Config) { c.Realm = "" }, "no realm"},
		{"no subsystem", func(c *Config) { c.Subsystem = "" }, "no metrics subsystem"},
	}
	for _, tt := range tests {
		c := ok
		tt.edit(&c)
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	g, err := New(ok)
	if err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if g.AuditPrefix() != AuditPrefix {
		t.Errorf("audit prefix: got %s, want the default %s", g.AuditPrefix(), AuditPrefix)
	}
	// Two guards in one registry need two subsystems.
	reg := prometheus.NewRegistry()
	ok.Registerer = reg
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
	if _, err := New(ok); err == nil {
		t.Errorf("second guard of subsystem s in one registry: got nil error, want a registration error")
	}
}

func TestDecisions(t *testing.T) {
	ns := natstest.RunServer(t)
	bus, err := natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{ns.URL()}, Name: "apiaccess-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	}()
	if err := bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	events := map[string]*eventsv1.AuditEvent{}
	subjectsSeen := map[string]string{}
	sub, err := bus.Conn().Subscribe(subjects.AuditEvents, func(m *nats.Msg) {
		ev, err := natsbus.DecodeEvent(m)
		if err != nil {
			t.Errorf("audit event on %s: %v", m.Subject, err)
			return
		}
		r := &eventsv1.AuditEvent{}
		if err := protojson.Unmarshal(ev.Data, r); err != nil {
			t.Errorf("audit event data on %s: %v", m.Subject, err)
			return
		}
		mu.Lock()
		events[r.GetId()], subjectsSeen[r.GetId()] = r, m.Subject+" "+ev.Source+" "+ev.Type
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := bus.Conn().Flush(); err != nil {
		t.Fatal(err)
	}

	f := newFixture(t, bus)
	tok := f.tok
	tests := []struct {
		name, token, method, path string
		want                      int
		ran                       bool
		code                      string
	}{
		{"open route", "", "GET", "/healthz", 200, true, ""},
		{"read without token", "", "GET", "/api/things", 401, false, "unauthenticated"},
		{"read with unknown token", "berth_nope", "GET", "/api/things", 401, false, "unauthenticated"},
		{"read with viewer", tok["view"], "GET", "/api/things", 200, true, ""},
		{"write without token", "", "PUT", "/api/things/hotel/a", 401, false, "unauthenticated"},
		{"write inside scope", tok["dep"], "PUT", "/api/things/hotel/a", 201, true, ""},
		{"allowed write the API fails", tok["dep"], "PUT", "/api/things/hotel/missing", 404, true, ""},
		{"write outside scope", tok["dep"], "PUT", "/api/things/flight/a", 403, false, "permission_denied"},
		{"scope is a subtree, not a prefix", tok["dep"], "PUT", "/api/things/hotels/a", 403, false, "permission_denied"},
		{"viewer may not write", tok["view"], "PUT", "/api/things/hotel/a", 403, false, "permission_denied"},
		{"no service needs the whole tree", tok["dep"], "POST", "/api/other", 403, false, "permission_denied"},
		{"admin of the whole tree", tok["root"], "POST", "/api/other", 200, true, ""},
		{"any scope", tok["dep"], "POST", "/api/any", 200, true, ""},
		{"a rule's refusal", tok["root"], "POST", "/api/teapot", 418, false, "teapot"},
		{"a rule's error", tok["root"], "POST", "/api/broken", 500, false, "internal"},
	}
	for _, tt := range tests {
		before := len(f.ran())
		w := do(f.h, tt.token, tt.method, tt.path, "body")
		if w.Code != tt.want {
			t.Errorf("%s: %s %s got %d %s, want %d", tt.name, tt.method, tt.path, w.Code, w.Body, tt.want)
		}
		if ran := len(f.ran()) > before; ran != tt.ran {
			t.Errorf("%s: handler ran %v, want %v", tt.name, ran, tt.ran)
		}
		if tt.code != "" {
			var body map[string]string
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["kind"] != tt.code || body["error"] == "" {
				t.Errorf("%s: body %s, want the configured error writer's, kind %s", tt.name, w.Body, tt.code)
			}
		}
		if want := `Bearer realm="test-api"`; tt.want == 401 && w.Header().Get("WWW-Authenticate") != want {
			t.Errorf("%s: WWW-Authenticate %q, want %q", tt.name, w.Header().Get("WWW-Authenticate"), want)
		}
	}
	// The API saw the body and the token's name instead of the client's header.
	if got := f.ran()[2]; got != "PUT /api/things/hotel/a dep body" {
		t.Errorf("API saw %q, want the body and user dep", got)
	}

	recs := f.st.records(t, "/audit/test")
	writes := 0
	for _, tt := range tests {
		if tt.method != "GET" {
			writes++
		}
	}
	if len(recs) != writes {
		t.Fatalf("audit records: got %d, want one per write (%d)", len(recs), writes)
	}
	byPath := map[string][]*eventsv1.AuditEvent{}
	for _, r := range recs {
		byPath[r.GetPath()] = append(byPath[r.GetPath()], r)
		if r.GetStatus() == 0 || r.GetDoneAt() == nil || r.GetReplica() != "r1" || r.GetMethod() == "GET" {
			t.Errorf("record %v: want a write, completed, replica r1", r)
		}
		if (r.GetStatus() < 300) != (r.GetResult() == ResultAllowed) && r.GetStatus() != 404 {
			t.Errorf("record %v: result %s does not match status %d", r, r.GetResult(), r.GetStatus())
		}
	}
	for _, r := range byPath["/api/things/hotel/a"] {
		switch r.GetWho() {
		case "dep":
			if r.GetResult() != ResultAllowed || r.GetStatus() != 201 || r.GetResource() != "/api/things/hotel/a" || r.GetService() != "hotel/a" || r.GetRole() != "deployer" {
				t.Errorf("allowed record %v: want allowed, 201, the resource and service hotel/a", r)
			}
		case "view":
			if r.GetResult() != ResultDenied || r.GetStatus() != 403 || !strings.Contains(r.GetReason(), "token view is a viewer") {
				t.Errorf("viewer's record %v: want denied 403 naming the role", r)
			}
		case "":
			if r.GetResult() != ResultDenied || r.GetStatus() != 401 || r.GetService() != "" || !strings.HasPrefix(r.GetReason(), "no API token") {
				t.Errorf("tokenless record %v: want denied 401, no service, no API token", r)
			}
		default:
			t.Errorf("unexpected record %v", r)
		}
	}
	if r := byPath["/api/things/hotel/missing"]; len(r) != 1 || r[0].GetResult() != ResultAllowed || r[0].GetStatus() != 404 || r[0].GetReason() != "Not Found" {
		t.Errorf("record of the write the API failed: %v, want allowed, 404, Not Found", r)
	}
	if r := byPath["/api/things/flight/a"]; len(r) != 1 || !strings.Contains(r[0].GetReason(), "token dep (deployer of hotel) may not act on service flight/a") {
		t.Errorf("record of the write outside the scope: %v, want its reason", r)
	}
	if r := byPath["/api/teapot"]; len(r) != 1 || r[0].GetStatus() != 418 || r[0].GetService() != "hotel" || r[0].GetReason() != "short and stout" {
		t.Errorf("record of the rule's refusal: %v, want 418, service hotel and its reason", r)
	}

	// Every record, in its final form, as an event on its subject.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for _, r := range recs {
			ev, ok := events[r.GetId()]
			if !ok {
				missing++
				continue
			}
			svc := r.GetService()
			if svc == "" {
				svc = subjects.NoService
			}
			subj, _ := subjects.AuditEvent(r.GetResult(), svc)
			want := subj + " test/r1 " + subjects.EventType(subjects.DomainAudit, r.GetResult())
			if subjectsSeen[r.GetId()] != want || ev.GetStatus() != r.GetStatus() {
				t.Errorf("event of %s: got %q status %d, want %q status %d", r.GetId(), subjectsSeen[r.GetId()], ev.GetStatus(), want, r.GetStatus())
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit events: %d of %d records never published", missing, len(recs))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Metrics, in the injected registry under the subsystem.
	if got := testutil.ToFloat64(f.guard.decisions.WithLabelValues("write", ResultAllowed)); got != 4 {
		t.Errorf("allowed writes: got %v, want 4", got)
	}
	if got := testutil.ToFloat64(f.guard.decisions.WithLabelValues("read", ResultDenied)); got != 2 {
		t.Errorf("refused reads: got %v, want 2", got)
	}
	n, err := testutil.GatherAndCount(f.reg, "berth_testsvc_access_decisions_total", "berth_testsvc_audit_write_failures_total")
	if err != nil || n != 5 {
		t.Errorf("registered series: got %d, %v; want 4 decision series and the failure counter", n, err)
	}
}

func TestAuditFailureFailsClosed(t *testing.T) {
	f := newFixture(t, nil)
	f.st.failPuts = true
	for _, c := range []struct{ name, token, path string }{
		{"allowed", f.tok["dep"], "/api/things/hotel/a"},
		{"refused for its scope", f.tok["dep"], "/api/things/flight/a"},
		{"refused for no token", "", "/api/things/hotel/a"},
		{"refused by a rule", f.tok["root"], "/api/teapot"},
	} {
		w := do(f.h, c.token, "PUT", c.path, "{}")
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "audit record") {
			t.Errorf("%s write with the audit store down: got %d %s, want 503 naming the audit record", c.name, w.Code, w.Body)
		}
	}
	if ran := f.ran(); len(ran) != 0 {
		t.Fatalf("the API ran %v with the audit store down; want nothing run", ran)
	}
	if got := testutil.ToFloat64(f.guard.failures); got != 4 {
		t.Errorf("audit write failures: got %v, want 4", got)
	}
	// Reads are not audited and go on.
	if w := do(f.h, f.tok["view"], "GET", "/api/things", ""); w.Code != 200 {
		t.Fatalf("read with the audit store down: got %d, want 200", w.Code)
	}
}
