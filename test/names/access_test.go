package names

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	nameservice "github.com/berthdev/berth/services/name-service"
)

type tokenEntry struct {
	name   string
	role   apitoken.Role
	scopes []string
}

// writeTokens writes a token file of the entries and returns its path and the tokens by
// name.
func writeTokens(t *testing.T, entries ...tokenEntry) (string, map[string]string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	toks := map[string]string{}
	var b strings.Builder
	b.WriteString("tokens:\n")
	for _, e := range entries {
		tok, err := apitoken.New()
		if err != nil {
			t.Fatal(err)
		}
		toks[e.name] = tok
		b.WriteString(apitoken.FormatEntry(e.name, e.role, e.scopes, tok))
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, toks
}

// call sends a request with a token ("" for none) and a forged X-Berth-User, and returns
// the status, headers and body.
func call(t *testing.T, method, url, token, body string) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Berth-User", "forged")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// syncBuffer is a log sink for the service's logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startWithLog(t *testing.T, tweak func(*nameservice.Config), deps func(*Env, *nameservice.Deps)) (*Env, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	e, err := StartWithDeps(ctx, t.TempDir(), slog.New(slog.NewTextHandler(logs, nil)), tweak, deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return e, logs
}

// auditRecords reads every audit record in coord.
func auditRecords(t *testing.T, e *Env) []*eventsv1.AuditEvent {
	t.Helper()
	res, err := e.Coord.List(t.Context(), "/berth/audit")
	if err != nil {
		t.Fatal(err)
	}
	var out []*eventsv1.AuditEvent
	for _, n := range res.Nodes {
		r := &eventsv1.AuditEvent{}
		if err := protojson.Unmarshal(n.Value, r); err != nil {
			t.Fatalf("audit record %s: %v", n.Path, err)
		}
		if n.Path != "/berth/audit/"+r.GetId() {
			t.Errorf("audit record at %s has id %s", n.Path, r.GetId())
		}
		out = append(out, r)
	}
	return out
}

// findAudit returns the one record of who, method, path and status.
func findAudit(t *testing.T, recs []*eventsv1.AuditEvent, who, method, path string, status int32) *eventsv1.AuditEvent {
	t.Helper()
	var hit []*eventsv1.AuditEvent
	for _, r := range recs {
		if r.GetWho() == who && r.GetMethod() == method && r.GetPath() == path && r.GetStatus() == status {
			hit = append(hit, r)
		}
	}
	if len(hit) != 1 {
		var all []string
		for _, r := range recs {
			all = append(all, fmt.Sprintf("%q %s %s %s %d", r.GetWho(), r.GetMethod(), r.GetPath(), r.GetResult(), r.GetStatus()))
		}
		t.Fatalf("audit records of %q %s %s %d: got %d, want 1; all:\n%s", who, method, path, status, len(hit), strings.Join(all, "\n"))
	}
	return hit[0]
}

// storedPolicy reads a service's policy straight from coord; nil when it has none.
func storedPolicy(t *testing.T, e *Env, svc string) *namesv1.TrafficPolicy {
	t.Helper()
	n, err := e.Coord.Get(t.Context(), "/berth/traffic/"+svc)
	if err != nil {
		if errors.Is(err, coordclient.ErrNotFound) {
			return nil
		}
		t.Fatal(err)
	}
	p := &namesv1.TrafficPolicy{}
	if err := protojson.Unmarshal(n.Value, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAccessControlAndAudit runs the name service with a token file: reads need a token,
// traffic policy writes a deployer of the service, and every write is recorded in coord
// and published, allowed or refused.
func TestAccessControlAndAudit(t *testing.T) {
	file, tok := writeTokens(t,
		tokenEntry{"root", apitoken.Admin, []string{"/"}},
		tokenEntry{"alice", apitoken.Deployer, []string{"hotel"}},
		tokenEntry{"bob", apitoken.Deployer, []string{"flight"}},
		tokenEntry{"vic", apitoken.Viewer, []string{"/"}},
	)
	e, logs := startWithLog(t, func(c *nameservice.Config) { c.TokensFile, c.Name = file, "ns1" }, nil)
	if l := logs.String(); !strings.Contains(l, "API access control on: tokens required, writes audited") || !strings.Contains(l, "tokens=4") {
		t.Errorf("start log: want access control on with 4 tokens; got:\n%s", l)
	}
	// Audit events as a subscriber sees them.
	var mu sync.Mutex
	events := map[string]natsbus.CloudEvent{}
	sub, err := e.Bus.Conn().Subscribe(subjects.AuditEvents, func(m *nats.Msg) {
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
		if r.GetStatus() == 0 {
			t.Errorf("audit event %s published before it was completed", r.GetId())
		}
		ev.Subject = m.Subject
		mu.Lock()
		events[r.GetId()] = ev
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := e.Bus.Conn().Flush(); err != nil {
		t.Fatal(err)
	}

	base := e.HTTPURL()
	hotel := base + "/v1/traffic/hotel/search"
	flight := base + "/v1/traffic/flight/search"
	policy := `{"panic_threshold": 50, "updated_by": "mallory"}`
	steps := []struct {
		name, method, url, token, body string
		want                           int
	}{
		{"health is open", "GET", base + "/healthz", "", "", 200},
		{"metrics are open", "GET", base + "/metrics", "", "", 200},
		{"no token may not read", "GET", base + "/v1/services", "", "", 401},
		{"an unknown token may not read", "GET", base + "/v1/services", "berth_not-a-token", "", 401},
		{"a viewer reads", "GET", base + "/v1/services", tok["vic"], "", 200},
		{"no token may not set a policy", "PUT", hotel, "", policy, 401},
		{"a deployer of flight may not set hotel's policy", "PUT", hotel, tok["bob"], policy, 403},
		{"a viewer may not set a policy", "PUT", hotel, tok["vic"], policy, 403},
		{"a deployer of hotel sets hotel's policy", "PUT", hotel, tok["alice"], policy, 200},
		{"a bad policy inside the scope is the API's 400", "PUT", hotel, tok["alice"], `{"panic_threshold": 150}`, 400},
		{"a path trick is not inside hotel", "PUT", base + "/v1/traffic/hotel/../flight/search", tok["alice"], policy, 403},
		{"a deployer of flight may not clear hotel's policy", "DELETE", hotel, tok["bob"], "", 403},
		{"a deployer of flight sets flight's policy", "PUT", flight, tok["bob"], policy, 200},
		{"and clears it", "DELETE", flight, tok["bob"], "", 200},
		{"another write needs an admin of the whole tree", "POST", hotel, tok["alice"], policy, 403},
	}
	for _, s := range steps {
		code, h, b := call(t, s.method, s.url, s.token, s.body)
		if code != s.want {
			t.Fatalf("%s: %s %s got %d %s, want %d", s.name, s.method, s.url, code, b, s.want)
		}
		if code == 401 || code == 403 {
			var body map[string]string
			if err := json.Unmarshal(b, &body); err != nil || body["error"] == "" || body["code"] == "" {
				t.Errorf("%s: body %s, want the API's error form with a code", s.name, b)
			}
		}
		if want := `Bearer realm="berth-name-service"`; code == 401 && h.Get("WWW-Authenticate") != want {
			t.Errorf("%s: WWW-Authenticate %q, want %q", s.name, h.Get("WWW-Authenticate"), want)
		}
	}
	// Hotel's policy is alice's: the token's name, not the body's or the header's.
	p := storedPolicy(t, e, "hotel/search")
	if p == nil || p.GetPanicThreshold() != 50 || p.GetUpdatedBy() != "alice" {
		t.Fatalf("hotel's policy: got %v, want panic_threshold 50 updated by alice", p)
	}
	if p := storedPolicy(t, e, "flight/search"); p != nil {
		t.Fatalf("flight's policy: got %v, want none (cleared)", p)
	}

	recs := auditRecords(t, e)
	writes := 0
	for _, s := range steps {
		if s.method != "GET" {
			writes++
		}
	}
	if len(recs) != writes {
		t.Errorf("audit records: got %d, want one per write (%d)", len(recs), writes)
	}
	for _, r := range recs {
		if r.GetMethod() == "GET" || r.GetStatus() == 0 || r.GetDoneAt() == nil || r.GetReplica() != "ns1" {
			t.Errorf("record %v: want a write, completed, by replica ns1", r)
		}
	}
	if r := findAudit(t, recs, "", "PUT", "/v1/traffic/hotel/search", 401); r.GetResult() != "denied" || !strings.HasPrefix(r.GetReason(), "no API token") {
		t.Errorf("tokenless write: got %v, want denied, no API token", r)
	}
	if r := findAudit(t, recs, "bob", "PUT", "/v1/traffic/hotel/search", 403); r.GetResult() != "denied" || r.GetService() != "hotel/search" ||
		!strings.Contains(r.GetReason(), "token bob (deployer of flight) may not act on service hotel/search") {
		t.Errorf("bob's refused write: got %v, want denied on hotel/search with the reason", r)
	}
	if r := findAudit(t, recs, "vic", "PUT", "/v1/traffic/hotel/search", 403); r.GetRole() != "viewer" || !strings.Contains(r.GetReason(), "needs a deployer") {
		t.Errorf("vic's refused write: got %v, want the viewer refused for its role", r)
	}
	if r := findAudit(t, recs, "alice", "PUT", "/v1/traffic/hotel/search", 200); r.GetResult() != "allowed" || r.GetService() != "hotel/search" || r.GetRole() != "deployer" {
		t.Errorf("alice's write: got %v, want allowed on hotel/search", r)
	}
	if r := findAudit(t, recs, "alice", "PUT", "/v1/traffic/hotel/search", 400); r.GetResult() != "allowed" || r.GetReason() != "Bad Request" {
		t.Errorf("alice's bad policy: got %v, want allowed, answered 400", r)
	}
	if r := findAudit(t, recs, "alice", "PUT", "/v1/traffic/hotel/../flight/search", 403); r.GetService() != "" {
		t.Errorf("the path trick: got %v, want no service", r)
	}
	findAudit(t, recs, "bob", "DELETE", "/v1/traffic/hotel/search", 403)
	findAudit(t, recs, "bob", "PUT", "/v1/traffic/flight/search", 200)
	findAudit(t, recs, "bob", "DELETE", "/v1/traffic/flight/search", 200)
	findAudit(t, recs, "alice", "POST", "/v1/traffic/hotel/search", 403)

	// And published, each on its subject, from this replica.
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
			want, _ := subjects.AuditEvent(r.GetResult(), svc)
			if ev.Subject != want || ev.Source != "berth-name-service/ns1" {
				t.Errorf("event of %s: subject %s source %s, want %s from berth-name-service/ns1", r.GetId(), ev.Subject, ev.Source, want)
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
	if n, err := testutil.GatherAndCount(e.Registry, "berth_names_access_decisions_total"); err != nil || n != 4 {
		t.Errorf("berth_names_access_decisions_total: got %d series, %v; want 4 (read and write, allowed and denied)", n, err)
	}
}

// TestAuditStoreDown gives the name service an audit store that cannot be written (a
// closed coord client): every write is answered 503 and changes nothing, while reads go
// on.
func TestAuditStoreDown(t *testing.T) {
	file, tok := writeTokens(t,
		tokenEntry{"alice", apitoken.Deployer, []string{"hotel"}},
		tokenEntry{"bob", apitoken.Deployer, []string{"flight"}},
	)
	e, _ := startWithLog(t, func(c *nameservice.Config) { c.TokensFile = file }, func(e *Env, d *nameservice.Deps) {
		broken, err := coordclient.New(context.Background(), coordclient.Config{Endpoints: []string{e.CoordAddr}})
		if err != nil {
			t.Fatal(err)
		}
		broken.Close()
		d.AuditCoord = broken
	})
	// The policy is written straight to coord: the API could not record it.
	before := &namesv1.TrafficPolicy{PanicThreshold: 20, UpdatedBy: "ops"}
	b, _ := protojson.Marshal(before)
	if _, err := e.Coord.Put(t.Context(), "/berth/traffic/hotel/search", b); err != nil {
		t.Fatal(err)
	}
	hotel := e.HTTPURL() + "/v1/traffic/hotel/search"
	for _, s := range []struct{ name, method, token, body string }{
		{"allowed PUT", "PUT", tok["alice"], `{"panic_threshold": 80}`},
		{"allowed DELETE", "DELETE", tok["alice"], ""},
		{"refused PUT", "PUT", tok["bob"], `{"panic_threshold": 80}`},
		{"tokenless PUT", "PUT", "", `{"panic_threshold": 80}`},
	} {
		code, _, b := call(t, s.method, hotel, s.token, s.body)
		if code != http.StatusServiceUnavailable || !strings.Contains(string(b), "audit record") {
			t.Fatalf("%s with the audit store down: got %d %s, want 503 naming the audit record", s.name, code, b)
		}
	}
	if p := storedPolicy(t, e, "hotel/search"); p == nil || p.GetPanicThreshold() != 20 || p.GetUpdatedBy() != "ops" {
		t.Fatalf("policy after refused writes: got %v, want the one before (panic_threshold 20 by ops)", p)
	}
	if recs := auditRecords(t, e); len(recs) != 0 {
		t.Fatalf("audit records: got %d, want 0 (the store was down)", len(recs))
	}
	// Reads need no audit record and still work.
	code, _, b := call(t, "GET", hotel, tok["bob"], "")
	var got struct {
		Policy struct {
			PanicThreshold float64 `json:"panic_threshold"`
		} `json:"policy"`
	}
	if code != 200 || json.Unmarshal(b, &got) != nil || got.Policy.PanicThreshold != 20 {
		t.Fatalf("read with the audit store down: got %d %s, want 200 with the policy", code, b)
	}
}

// TestOpenWithoutTokens: with no tokens_file the API is open and the log says so.
func TestOpenWithoutTokens(t *testing.T) {
	e, logs := startWithLog(t, nil, nil)
	if l := logs.String(); !strings.Contains(l, "API access control off (no tokens_file)") {
		t.Errorf("start log: want access control off; got:\n%s", l)
	}
	if code, _, b := call(t, "PUT", e.HTTPURL()+"/v1/traffic/hotel/search", "", `{"panic_threshold": 50}`); code != 200 {
		t.Fatalf("PUT without a token on an open API: got %d %s, want 200", code, b)
	}
	if p := storedPolicy(t, e, "hotel/search"); p.GetUpdatedBy() != "forged" {
		t.Errorf("updated_by on an open API: got %q, want the client's X-Berth-User", p.GetUpdatedBy())
	}
	if recs := auditRecords(t, e); len(recs) != 0 {
		t.Errorf("audit records on an open API: got %d, want 0", len(recs))
	}
}
