package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// fakeNames is a hand-written stand-in for berth-name-service's HTTP API: a stored policy
// per service, a fixed resolve answer, and a record of the PUT bodies.
type fakeNames struct {
	mu     sync.Mutex
	policy map[string]string // service → stored policy JSON
	puts   []string
}

func (f *fakeNames) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/resolve/hotel/search":
		w.Write([]byte(`{"service":"hotel/search","revision":9,"ttl_seconds":5,"client_dc":"dc1","rules":["same-dc","all"],
			"explain":["same-dc: dc1 has 2 candidates"],"instances":[{"id":"i-1","addr":"10.0.0.1:8080","dc":"dc1"},{"id":"i-2","addr":"10.0.0.2:8081","dc":"dc1"}]}`))
	case r.Method == http.MethodGet && r.URL.Path == "/v1/view/hotel/search":
		w.Write([]byte(`{"service":"hotel/search","revision":9,"ttl_seconds":5,"instances":[{"id":"i-1","ip":"10.0.0.1","port":8080,"dc":"dc1","health":"HEALTH_UNHEALTHY"}]}`))
	case strings.HasPrefix(r.URL.Path, "/v1/traffic/"):
		svc := strings.TrimPrefix(r.URL.Path, "/v1/traffic/")
		switch r.Method {
		case http.MethodGet:
			p, ok := f.policy[svc]
			if !ok {
				w.WriteHeader(http.StatusNotFound)
				w.Write([]byte(`{"error":"service ` + svc + ` has no traffic policy","field":"service"}`))
				return
			}
			w.Write([]byte(`{"service":"` + svc + `","revision":3,"policy":` + p + `}`))
		case http.MethodPut:
			b, _ := io.ReadAll(r.Body)
			var p namesv1.TrafficPolicy
			if err := protojson.Unmarshal(b, &p); err != nil || p.GetPanicThreshold() > 100 {
				w.WriteHeader(http.StatusBadRequest)
				w.Write([]byte(`{"error":"traffic policy panic_threshold: out of range","field":"panic_threshold"}`))
				return
			}
			f.puts = append(f.puts, string(b))
			f.policy[svc] = string(b)
			w.Write([]byte(`{"service":"` + svc + `","revision":4,"policy":` + string(b) + `}`))
		}
	default:
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error":"not found"}`))
	}
}

func runNamesCmd(t *testing.T, srv *httptest.Server, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(append(args, "--names", srv.URL))
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

func TestNamesCommands(t *testing.T) {
	f := &fakeNames{policy: map[string]string{"hotel/search": `{"dcOverrides":{"dc1":"dc2"},"panicThreshold":50}`}}
	srv := httptest.NewServer(f)
	defer srv.Close()

	out, err := runNamesCmd(t, srv, "resolve", "hotel/search", "--explain")
	if err != nil || !strings.Contains(out, "10.0.0.1:8080") || !strings.Contains(out, "10.0.0.2:8081") || !strings.Contains(out, "rules: same-dc, all") {
		t.Fatalf("resolve: got %v\n%s", err, out)
	}
	out, err = runNamesCmd(t, srv, "instances", "hotel/search")
	if err != nil || !strings.Contains(out, "10.0.0.1:8080") || !strings.Contains(out, "unhealthy") {
		t.Fatalf("instances: got %v\n%s", err, out)
	}
	if _, err := runNamesCmd(t, srv, "resolve", "hotel//search"); err == nil {
		t.Fatalf("resolve of a bad path: got nil error")
	}

	// set changes only the flags given: the override and threshold stay.
	if _, err := runNamesCmd(t, srv, "traffic", "set", "hotel/search", "--weights", "1.4.1=90,1.4.2=10", "--mode", "single"); err != nil {
		t.Fatalf("traffic set: %v", err)
	}
	var p namesv1.TrafficPolicy
	if err := protojson.Unmarshal([]byte(f.puts[len(f.puts)-1]), &p); err != nil {
		t.Fatal(err)
	}
	if p.GetDcOverrides()["dc1"] != "dc2" || p.GetPanicThreshold() != 50 || p.GetVersionWeights()["1.4.2"] != 10 || p.GetMode() != namesv1.AnswerMode_ANSWER_MODE_SINGLE {
		t.Fatalf("merged policy: got %v", &p)
	}
	// Bad weights never reach the service.
	n := len(f.puts)
	_, err = runNamesCmd(t, srv, "traffic", "set", "hotel/search", "--weights", "1.4.1=ninety")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 2 || !strings.Contains(err.Error(), "--weights") || len(f.puts) != n {
		t.Fatalf("bad weights: got %v (puts %d→%d), want exit 2 naming --weights and no PUT", err, n, len(f.puts))
	}
	// The service's refusal is reported with its message.
	_, err = runNamesCmd(t, srv, "traffic", "set", "hotel/search", "--panic-threshold", "150")
	if err == nil || !strings.Contains(err.Error(), "panic_threshold") {
		t.Fatalf("refused policy: got %v, want the service's error naming panic_threshold", err)
	}
	// get on a service without a policy says so; --replace starts empty.
	out, err = runNamesCmd(t, srv, "traffic", "get", "flight/api")
	if err != nil || !strings.Contains(out, "has no traffic policy") {
		t.Fatalf("traffic get: got %v\n%s", err, out)
	}
	if _, err := runNamesCmd(t, srv, "traffic", "set", "hotel/search", "--replace", "--pin", "i-1"); err != nil {
		t.Fatal(err)
	}
	var replaced map[string]any
	_ = json.Unmarshal([]byte(f.puts[len(f.puts)-1]), &replaced)
	if _, ok := replaced["dcOverrides"]; ok || replaced["pin"] == nil {
		t.Fatalf("--replace: got %v, want only the pin", replaced)
	}
}
