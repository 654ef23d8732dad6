package access

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/coordclient"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memStore is a Store in memory; failPuts makes every Put fail, as an unreachable coord.
type memStore struct {
	mu       sync.Mutex
	nodes    map[string]coordclient.Node
	failPuts bool
}

func (s *memStore) Get(_ context.Context, path string, _ ...coordclient.GetOption) (*coordclient.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[path]
	if !ok {
		return nil, coordclient.ErrNotFound
	}
	return &n, nil
}

func (s *memStore) Put(_ context.Context, path string, value []byte, _ ...coordclient.PutOption) (*coordclient.PutResult, error) {
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

func (s *memStore) audits(t *testing.T) []*eventsv1.AuditEvent {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*eventsv1.AuditEvent
	for p, n := range s.nodes {
		if !strings.HasPrefix(p, AuditPrefix+"/") {
			continue
		}
		r := &eventsv1.AuditEvent{}
		if err := model.Unmarshal(n.Value, r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func setup(t *testing.T) (*memStore, map[string]string, http.Handler, *[]string) {
	t.Helper()
	toks := map[string]string{}
	file := "tokens:\n"
	for _, e := range []struct {
		name  string
		role  apitoken.Role
		scope string
	}{{"dep", apitoken.Deployer, "hotel"}, {"view", apitoken.Viewer, "/"}} {
		tok, _ := apitoken.New()
		toks[e.name] = tok
		file += apitoken.FormatEntry(e.name, e.role, []string{e.scope}, tok)
	}
	set, err := apitoken.Parse("t", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	st := &memStore{nodes: map[string]coordclient.Node{}}
	st.nodes[model.DeploymentPath("d-20260101-000000-abcdef")] = coordclient.Node{Value: model.MustMarshal(&controllerv1.Deployment{Service: "flight/x"})}
	a, err := New(Config{Tokens: set, Coord: st, Replica: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen = append(seen, r.Method+" "+r.URL.Path+" "+r.Header.Get("X-Berth-User")+" "+string(b))
		if r.Method == http.MethodPost {
			w.Header().Set("Location", "/v1/deployments/d-1")
			w.WriteHeader(http.StatusCreated)
		}
	})
	return st, toks, a.Wrap(next), &seen
}

func do(h http.Handler, token, method, path, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("X-Berth-User", "forged")
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestDecisions(t *testing.T) {
	st, tok, h, seen := setup(t)
	big := `{"service":"hotel/a","x":"` + strings.Repeat("a", maxBody) + `"}`
	tests := []struct {
		name, token, method, path, body string
		want                            int
		ran                             bool
	}{
		{"health is not guarded", "", "GET", "/healthz", "", 200, true},
		{"console is not guarded", "", "GET", "/ui/", "", 200, true},
		{"read without token", "", "GET", "/v1/tree", "", 401, false},
		{"read with viewer", tok["view"], "GET", "/v1/tree", "", 200, true},
		{"deploy inside scope", tok["dep"], "POST", "/v1/deployments", `{"service":"hotel/a"}`, 201, true},
		{"deploy outside scope", tok["dep"], "POST", "/v1/deployments", `{"service":"flight/a"}`, 403, false},
		{"scope is a subtree, not a prefix", tok["dep"], "POST", "/v1/deployments", `{"service":"hotels/a"}`, 403, false},
		{"service not a string", tok["dep"], "POST", "/v1/deployments", `{"service":7}`, 403, false},
		{"oversized body", tok["dep"], "POST", "/v1/deployments", big, 413, false},
		{"control of a run outside scope", tok["dep"], "POST", "/v1/deployments/d-20260101-000000-abcdef/abort", "", 403, false},
		{"control of a missing run goes to the API", tok["dep"], "POST", "/v1/deployments/d-20260101-000000-000000/abort", "", 201, true},
		{"tree edit needs admin", tok["dep"], "PUT", "/v1/tree/hotel/a", "{}", 403, false},
		{"unknown write needs admin of the whole tree", tok["dep"], "POST", "/v1/hosts", "{}", 403, false},
	}
	for _, tt := range tests {
		before := len(*seen)
		w := do(h, tt.token, tt.method, tt.path, tt.body)
		if w.Code != tt.want {
			t.Errorf("%s: got %d %s, want %d", tt.name, w.Code, w.Body, tt.want)
		}
		if ran := len(*seen) > before; ran != tt.ran {
			t.Errorf("%s: handler ran %v, want %v", tt.name, ran, tt.ran)
		}
	}
	// The API saw the body the middleware read, and the token's name as the user.
	if got := (*seen)[3]; got != `POST /v1/deployments dep {"service":"hotel/a"}` {
		t.Errorf("API saw %q, want the body and user dep", got)
	}
	recs := st.audits(t)
	writes := 0
	for _, tt := range tests {
		if tt.method != "GET" {
			writes++
		}
	}
	if len(recs) != writes {
		t.Fatalf("audit records: got %d, want one per write (%d)", len(recs), writes)
	}
	for _, r := range recs {
		if r.GetStatus() == 0 || r.GetReplica() != "r1" || r.GetWho() != "dep" {
			t.Errorf("record %v: want a status, replica r1, who dep", r)
		}
		if r.GetStatus() == 201 && (r.GetResult() != ResultAllowed || r.GetResource() != "/v1/deployments/d-1") {
			t.Errorf("allowed record %v: want result allowed and the resource created", r)
		}
		if r.GetStatus() == 403 && (r.GetResult() != ResultDenied || r.GetReason() == "") {
			t.Errorf("refused record %v: want result denied with a reason", r)
		}
	}
}

func TestAuditFailureFailsClosed(t *testing.T) {
	st, tok, h, seen := setup(t)
	st.failPuts = true
	for _, c := range []struct{ token, body string }{{tok["dep"], `{"service":"hotel/a"}`}, {tok["dep"], `{"service":"flight/a"}`}, {"", "{}"}} {
		w := do(h, c.token, "POST", "/v1/deployments", c.body)
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "audit record") {
			t.Errorf("write %s with the audit store down: got %d %s, want 503 naming the audit record", c.body, w.Code, w.Body)
		}
	}
	if len(*seen) != 0 {
		t.Fatalf("the API ran %v with the audit store down; want nothing run", *seen)
	}
	// Reads are not audited and go on.
	if w := do(h, tok["view"], "GET", "/v1/tree", ""); w.Code != 200 {
		t.Fatalf("read with the audit store down: got %d, want 200", w.Code)
	}
}
