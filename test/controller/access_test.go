package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/coordclient"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
	controller "github.com/berthdev/berth/services/task-controller"
)

// tokens is a token file and the tokens it holds, by name.
type tokens struct {
	file string
	tok  map[string]string
}

func writeTokens(t *testing.T, entries ...struct {
	name   string
	role   apitoken.Role
	scopes []string
}) tokens {
	t.Helper()
	ts := tokens{file: filepath.Join(t.TempDir(), "tokens.yaml"), tok: map[string]string{}}
	var b strings.Builder
	b.WriteString("tokens:\n")
	for _, e := range entries {
		tok, err := apitoken.New()
		if err != nil {
			t.Fatal(err)
		}
		ts.tok[e.name] = tok
		b.WriteString(apitoken.FormatEntry(e.name, e.role, e.scopes, tok))
	}
	if err := os.WriteFile(ts.file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return ts
}

// call sends a request with a token ("" for none) and returns the status and body.
func call(t *testing.T, base, token, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Berth-User", "forged")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// startGuardedController runs a controller with a token file; audit, when set, is the
// client its audit records go to.
func (e *env) startGuardedController(name, tokensFile string, audit *coordclient.Client) *ctrlProc {
	e.t.Helper()
	cfg := controller.DefaultConfig()
	cfg.Replica = name
	cfg.Listen = "127.0.0.1:0"
	cfg.SessionTTL = time.Second
	cfg.RetryBackoff = 50 * time.Millisecond
	cfg.RetryBackoffMax = 200 * time.Millisecond
	cfg.StepRequestTimeout = 2 * time.Second
	cfg.EnsureStreams = false
	cfg.NamesURL = ""
	cfg.TokensFile = tokensFile
	p := &ctrlProc{name: name, done: make(chan error, 1)}
	p.bus = connectBus(e.t, e.nats.URL(), "controller-"+name)
	p.cc = newCoordClient(e.t, e.coord.endpoints)
	c, err := controller.New(cfg, controller.Deps{Bus: p.bus, Coord: p.cc, AuditCoord: audit, Logger: testLogger().With("replica", name)})
	if err != nil {
		e.t.Fatalf("controller.New: %v", err)
	}
	addr, err := c.Listen()
	if err != nil {
		e.t.Fatal(err)
	}
	p.url = "http://" + addr.String()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { p.done <- c.Run(ctx) }()
	e.mu.Lock()
	e.ctrls = append(e.ctrls, p)
	e.mu.Unlock()
	return p
}

// auditRecords reads every audit record in coord, oldest first.
func (e *env) auditRecords() []*eventsv1.AuditEvent {
	e.t.Helper()
	res, err := e.cc.List(context.Background(), "/berth/audit")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*eventsv1.AuditEvent
	for _, n := range res.Nodes {
		r := &eventsv1.AuditEvent{}
		if err := protojson.Unmarshal(n.Value, r); err != nil {
			e.t.Fatalf("audit record %s: %v", n.Path, err)
		}
		if n.Path != "/berth/audit/"+r.GetId() {
			e.t.Errorf("audit record at %s has id %s", n.Path, r.GetId())
		}
		out = append(out, r)
	}
	return out
}

// findAudit returns the one record matching who, method, path, status and service.
func findAudit(t *testing.T, recs []*eventsv1.AuditEvent, who, method, path string, status int32, service string) *eventsv1.AuditEvent {
	t.Helper()
	var hit []*eventsv1.AuditEvent
	for _, r := range recs {
		if r.GetWho() == who && r.GetMethod() == method && r.GetPath() == path && r.GetStatus() == status && r.GetService() == service {
			hit = append(hit, r)
		}
	}
	if len(hit) != 1 {
		var all []string
		for _, r := range recs {
			all = append(all, fmt.Sprintf("%s %s %s %s %d", r.GetWho(), r.GetMethod(), r.GetPath(), r.GetResult(), r.GetStatus()))
		}
		t.Fatalf("audit records of %q %s %s %d %q: got %d, want 1; all:\n%s", who, method, path, status, service, len(hit), strings.Join(all, "\n"))
	}
	return hit[0]
}

func TestAccessControlAndAudit(t *testing.T) {
	e := newEnv(t)
	e.startAgent("h1")
	type entry = struct {
		name   string
		role   apitoken.Role
		scopes []string
	}
	ts := writeTokens(t,
		entry{"root", apitoken.Admin, []string{"/"}},
		entry{"alice", apitoken.Deployer, []string{"hotel"}},
		entry{"ada", apitoken.Admin, []string{"hotel"}},
		entry{"vic", apitoken.Viewer, []string{"/"}},
	)
	// Audit events as a subscriber sees them.
	var mu sync.Mutex
	var events []*eventsv1.AuditEvent
	sub, err := e.bus.Conn().Subscribe(subjects.AuditEvents, func(m *nats.Msg) {
		r := &eventsv1.AuditEvent{}
		if protojson.Unmarshal(m.Data, r) == nil {
			mu.Lock()
			events = append(events, r)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	p := e.startGuardedController("c1", ts.file, nil)
	e.leader(10 * time.Second)
	base := p.url
	tok := ts.tok

	// The tree, by the whole tree's admin.
	for _, svc := range []string{"hotel/search", "flight/search"} {
		if code, b := call(t, base, tok["root"], "PUT", "/v1/tree/"+svc, map[string]any{"hosts": []string{"h1"}}); code != 201 {
			t.Fatalf("root PUT /v1/tree/%s: got %d %s, want 201", svc, code, b)
		}
	}
	hotel := e.makePkg("hotel/search", "1.0.0", pkgOpts{})
	flight := e.makePkg("flight/search", "1.0.0", pkgOpts{})
	depHotel := deploymentBody("hotel/search", "1.0.0", hotel, []string{"h1"}, nil)
	depFlight := deploymentBody("flight/search", "1.0.0", flight, []string{"h1"}, map[string]any{"pause": "manual", "batches": []any{1, "100%"}})

	steps := []struct {
		name, token, method, path string
		body                      any
		want                      int
	}{
		{"no token may not deploy", "", "POST", "/v1/deployments", depHotel, 401},
		{"no token may not read", "", "GET", "/v1/deployments", nil, 401},
		{"an unknown token may not deploy", "berth_not-a-token", "POST", "/v1/deployments", depHotel, 401},
		{"a deployer of hotel may not deploy flight", tok["alice"], "POST", "/v1/deployments", depFlight, 403},
		{"a viewer may not deploy", tok["vic"], "POST", "/v1/deployments", depHotel, 403},
		{"a viewer reads", tok["vic"], "GET", "/v1/deployments", nil, 200},
		{"a deployer may not edit the tree", tok["alice"], "PUT", "/v1/tree/hotel/new", map[string]any{}, 403},
		{"an admin of hotel edits hotel's tree", tok["ada"], "PUT", "/v1/tree/hotel/new", map[string]any{}, 201},
		{"an admin of hotel may not edit flight's tree", tok["ada"], "DELETE", "/v1/tree/flight/search", nil, 403},
		{"a path trick is not inside hotel", tok["ada"], "PUT", "/v1/tree/hotel/../flight/search", map[string]any{}, 403},
		{"a task without a service needs the whole tree", tok["alice"], "POST", "/v1/tasks", map[string]any{"plugin": "x", "hosts": []string{"h1"}}, 403},
		{"a body that names no service needs the whole tree", tok["alice"], "POST", "/v1/deployments", "not json", 403},
	}
	for _, s := range steps {
		if code, b := call(t, base, s.token, s.method, s.path, s.body); code != s.want {
			t.Fatalf("%s: %s %s got %d %s, want %d", s.name, s.method, s.path, code, b, s.want)
		}
	}

	// A deployer of hotel deploys hotel/search; it runs to the end.
	code, b := call(t, base, tok["alice"], "POST", "/v1/deployments", depHotel)
	if code != 201 {
		t.Fatalf("alice deploys hotel/search: got %d %s, want 201", code, b)
	}
	dep := &controllerv1.Deployment{}
	if err := protojson.Unmarshal(b, dep); err != nil {
		t.Fatal(err)
	}
	if dep.GetRequestedBy() != "alice" {
		t.Errorf("requested_by: got %q, want the token's name alice (not the client's X-Berth-User)", dep.GetRequestedBy())
	}
	waitRun(t, base, tok["vic"], dep.GetId(), "succeeded")

	// Run control follows the run's service, read from coord.
	code, b = call(t, base, tok["root"], "POST", "/v1/deployments", depFlight)
	if code != 201 {
		t.Fatalf("root deploys flight/search: got %d %s", code, b)
	}
	fdep := &controllerv1.Deployment{}
	_ = protojson.Unmarshal(b, fdep)
	if code, b := call(t, base, tok["alice"], "POST", "/v1/deployments/"+fdep.GetId()+"/abort", nil); code != 403 {
		t.Fatalf("alice aborts a flight deployment: got %d %s, want 403", code, b)
	}
	if code, b := call(t, base, tok["root"], "POST", "/v1/deployments/"+fdep.GetId()+"/abort", nil); code != 202 {
		t.Fatalf("root aborts it: got %d %s, want 202", code, b)
	}

	// Every write was recorded, allowed or refused; reads were not.
	recs := e.auditRecords()
	var reasons []string
	for _, r := range recs {
		if r.GetStatus() == 401 {
			reasons = append(reasons, r.GetResult()+": "+r.GetReason())
		}
	}
	if len(reasons) != 2 || !strings.Contains(reasons[0], "denied: no API token") || reasons[1] != "denied: unknown API token" {
		t.Errorf("records of the requests without a valid token: got %q, want the no-token one then the unknown-token one", reasons)
	}
	if got := findAudit(t, recs, "alice", "POST", "/v1/deployments", 403, "flight/search"); got.GetResult() != "denied" || got.GetRole() != "deployer" ||
		!strings.Contains(got.GetReason(), "may not act on service flight/search") {
		t.Errorf("alice's refused deploy: got %v, want denied, saying she may not act on flight/search", got)
	}
	findAudit(t, recs, "alice", "POST", "/v1/deployments", 403, "")
	findAudit(t, recs, "vic", "POST", "/v1/deployments", 403, "hotel/search")
	allowed := findAudit(t, recs, "alice", "POST", "/v1/deployments", 201, "hotel/search")
	if allowed.GetResult() != "allowed" || allowed.GetService() != "hotel/search" || allowed.GetResource() != "/v1/deployments/"+dep.GetId() ||
		allowed.GetDoneAt() == nil || allowed.GetReplica() != "c1" {
		t.Errorf("alice's deploy: got %v, want allowed, hotel/search, resource /v1/deployments/%s", allowed, dep.GetId())
	}
	findAudit(t, recs, "alice", "POST", "/v1/deployments/"+fdep.GetId()+"/abort", 403, "flight/search")
	findAudit(t, recs, "root", "POST", "/v1/deployments/"+fdep.GetId()+"/abort", 202, "flight/search")
	findAudit(t, recs, "ada", "PUT", "/v1/tree/hotel/new", 201, "hotel/new")
	findAudit(t, recs, "ada", "PUT", "/v1/tree/hotel/../flight/search", 403, "")
	for _, r := range recs {
		if r.GetMethod() == "GET" {
			t.Errorf("a read was recorded: %v", r)
		}
		if r.GetStatus() == 0 {
			t.Errorf("a record was never completed: %v", r)
		}
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].GetId() < recs[i-1].GetId() || recs[i].GetAt().AsTime().Before(recs[i-1].GetAt().AsTime().Add(-time.Second)) {
			t.Errorf("records out of time order: %s then %s", recs[i-1].GetId(), recs[i].GetId())
		}
	}
	// And published: every record's final form, as an event.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(events)
		ids := map[string]bool{}
		for _, ev := range events {
			if ev.GetStatus() != 0 {
				ids[ev.GetId()] = true
			}
		}
		mu.Unlock()
		missing := 0
		for _, r := range recs {
			if !ids[r.GetId()] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit events: got %d, %d of %d records never published", n, missing, len(recs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRun waits for a deployment to reach state.
func waitRun(t *testing.T, base, token, id, state string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, b := call(t, base, token, "GET", "/v1/deployments/"+id, nil)
		d := &controllerv1.Deployment{}
		if code == 200 && protojson.Unmarshal(b, d) == nil && d.GetStatus().GetState() == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s: got %d %s, want state %s", id, code, b, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAuditFailureRefusesTheRequest gives the controller an audit store that cannot be
// written (a closed coord client): every write is answered 503 and none runs, while the
// rest of coord works.
func TestAuditFailureRefusesTheRequest(t *testing.T) {
	e := newEnv(t)
	type entry = struct {
		name   string
		role   apitoken.Role
		scopes []string
	}
	ts := writeTokens(t, entry{"root", apitoken.Admin, []string{"/"}}, entry{"alice", apitoken.Deployer, []string{"hotel"}})
	broken, err := coordclient.New(context.Background(), coordclient.Config{Endpoints: e.coord.endpoints})
	if err != nil {
		t.Fatal(err)
	}
	broken.Close()
	p := e.startGuardedController("c1", ts.file, broken)
	e.leader(10 * time.Second)
	// The tree node is written straight to coord: the API could not record it.
	node, _ := protojson.Marshal(&controllerv1.ServiceNode{Hosts: []string{"h1"}})
	if _, err := e.cc.Put(context.Background(), "/berth/tree/hotel/search", node); err != nil {
		t.Fatal(err)
	}
	pk := e.makePkg("hotel/search", "1.0.0", pkgOpts{})
	for _, s := range []struct {
		name, token, method, path string
		body                      any
	}{
		{"allowed deploy", ts.tok["root"], "POST", "/v1/deployments", deploymentBody("hotel/search", "1.0.0", pk, []string{"h1"}, nil)},
		{"allowed tree edit", ts.tok["root"], "PUT", "/v1/tree/flight", map[string]any{}},
		{"refused deploy", ts.tok["alice"], "POST", "/v1/deployments", deploymentBody("flight/search", "1.0.0", pk, []string{"h1"}, nil)},
		{"no token", "", "POST", "/v1/deployments", deploymentBody("hotel/search", "1.0.0", pk, []string{"h1"}, nil)},
	} {
		code, b := call(t, p.url, s.token, s.method, s.path, s.body)
		if code != 503 || !strings.Contains(string(b), "audit record") {
			t.Fatalf("%s with the audit store down: got %d %s, want 503 naming the audit record", s.name, code, b)
		}
	}
	// Nothing ran: no deployment, no lock, no tree node.
	res, err := e.cc.List(context.Background(), "/berth/deployments", coordclient.Recursive())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Nodes) > 0 {
		t.Fatalf("deployments in coord after refused requests: %d, want 0 (first %s)", len(res.Nodes), res.Nodes[0].Path)
	}
	if _, err := e.cc.Get(context.Background(), "/berth/tree/flight"); err == nil {
		t.Fatal("the refused tree edit was written")
	}
	if recs := e.auditRecords(); len(recs) != 0 {
		t.Fatalf("audit records: got %d, want 0 (the store was down)", len(recs))
	}
	// Reads need no audit record and still work.
	if code, b := call(t, p.url, ts.tok["alice"], "GET", "/v1/tree", nil); code != 200 {
		t.Fatalf("read with the audit store down: got %d %s, want 200", code, b)
	}
}
