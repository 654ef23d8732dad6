package nameapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/dnsview"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/services/agent/internal/views"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeViews is a hand-written Views; set changes a view.
type fakeViews struct {
	mu    sync.Mutex
	views map[string]*namesv1.ServiceView
	ch    map[string]chan struct{}
}

func newFakeViews() *fakeViews {
	return &fakeViews{views: map[string]*namesv1.ServiceView{}, ch: map[string]chan struct{}{}}
}

func (f *fakeViews) chLocked(s string) chan struct{} {
	if f.ch[s] == nil {
		f.ch[s] = make(chan struct{})
	}
	return f.ch[s]
}
func (f *fakeViews) Touch(string) error                              { return nil }
func (f *fakeViews) Hold(string) (func(), error)                     { return func() {}, nil }
func (f *fakeViews) Wait(_ context.Context, s string) views.Snapshot { return f.Get(s) }
func (f *fakeViews) Get(s string) views.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.views[s]
	snap := views.Snapshot{Service: s, View: v, Loaded: true, Changed: f.chLocked(s)}
	if v != nil {
		snap.Table = dnsview.Compile(v)
	}
	return snap
}
func (f *fakeViews) set(s string, v *namesv1.ServiceView) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.views[s] = v
	close(f.chLocked(s))
	f.ch[s] = make(chan struct{})
}

func view(rev int64, ips ...string) *namesv1.ServiceView {
	v := &namesv1.ServiceView{Service: "hotel/search", Revision: rev, TtlSeconds: 5}
	for i, ip := range ips {
		v.Instances = append(v.Instances, &namesv1.Instance{Id: "i" + string(rune('a'+i)), Ip: ip, Port: 80, Dc: "dc1", Health: namesv1.Health_HEALTH_HEALTHY})
	}
	return v
}

func start(t *testing.T, v Views) string {
	t.Helper()
	a, err := New(Config{Listen: "127.0.0.1:0", DC: "dc1"}, v)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return "http://" + addr.String()
}

func get(t *testing.T, url string) (int, []byte, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

func TestResolve(t *testing.T) {
	v := newFakeViews()
	sv := view(4, "10.0.0.1", "10.0.0.2")
	sv.Instances[1].Health = namesv1.Health_HEALTH_UNHEALTHY
	v.set("hotel/search", sv)
	base := start(t, v)
	code, body, h := get(t, base+"/v1/resolve/hotel/search")
	var ans resolveAnswer
	if err := json.Unmarshal(body, &ans); err != nil || code != 200 {
		t.Fatalf("resolve: got %d %s (%v)", code, body, err)
	}
	if len(ans.Instances) != 1 || ans.Instances[0].Addr != "10.0.0.1:80" || h.Get("X-Berth-Index") != "4" {
		t.Errorf("resolve: got %+v (index %s), want only 10.0.0.1:80 at index 4", ans.Instances, h.Get("X-Berth-Index"))
	}
	tests := []struct {
		path string
		code int
	}{
		{"/v1/resolve/hotel/unknown", 404},
		{"/v1/resolve/Bad..path", 400},
		{"/v1/resolve/hotel/search?family=ipx", 400},
		{"/v1/watch/hotel/search?index=x", 400},
		{"/v1/watch/hotel/search?wait=11m", 400},
	}
	for _, tt := range tests {
		if code, body, _ := get(t, base+tt.path); code != tt.code {
			t.Errorf("GET %s: got %d %s, want %d", tt.path, code, body, tt.code)
		}
	}
}

func TestWatchBlocks(t *testing.T) {
	v := newFakeViews()
	v.set("hotel/search", view(4, "10.0.0.1"))
	base := start(t, v)
	// index below the current revision: at once.
	code, body, _ := get(t, base+"/v1/watch/hotel/search?index=3")
	if code != 200 || !strings.Contains(string(body), "10.0.0.1") {
		t.Fatalf("watch index=3: got %d %s", code, body)
	}
	// index at the current revision: blocks until the next change.
	go func() {
		time.Sleep(200 * time.Millisecond)
		v.set("hotel/search", view(5, "10.0.0.1", "10.0.0.9"))
	}()
	start := time.Now()
	code, body, h := get(t, base+"/v1/watch/hotel/search?index=4&wait=5s")
	if took := time.Since(start); code != 200 || took < 150*time.Millisecond || !strings.Contains(string(body), "10.0.0.9") || h.Get("X-Berth-Index") != "5" {
		t.Errorf("blocking watch: got %d after %s, index %s, body %s; want the view of revision 5 after ~200ms", code, took, h.Get("X-Berth-Index"), body)
	}
	// wait elapses: the current view.
	code, _, h = get(t, base+"/v1/watch/hotel/search?index=5&wait=100ms")
	if code != 200 || h.Get("X-Berth-Index") != "5" {
		t.Errorf("watch past wait: got %d index %s, want 200 at 5", code, h.Get("X-Berth-Index"))
	}
}

func TestCallbacks(t *testing.T) {
	v := newFakeViews()
	v.set("hotel/search", view(4, "10.0.0.1"))
	got := make(chan *namesv1.ServiceView, 10)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var sv namesv1.ServiceView
		if err := protojson.Unmarshal(b, &sv); err != nil {
			t.Errorf("callback body: %v", err)
		}
		got <- &sv
	}))
	defer app.Close()
	base := start(t, v)

	post := func(body string) (int, string) {
		resp, err := http.Post(base+"/v1/callbacks", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, bad := range []string{
		`{"service":"hotel/search","url":"http://10.1.2.3:80/x"}`,
		`{"service":"hotel/search","url":"https://127.0.0.1/x"}`,
		`{"service":"hotel/search","url":"http://example.com/x"}`,
		`{"service":"hotel//search","url":"http://127.0.0.1/x"}`,
		`{"service":"hotel/search","url":"http://127.0.0.1/x","extra":1}`,
	} {
		if code, body := post(bad); code != 400 {
			t.Errorf("POST %s: got %d %s, want 400", bad, code, body)
		}
	}
	code, body := post(`{"service":"hotel/search","url":"` + app.URL + `/berth"}`)
	if code != 201 {
		t.Fatalf("register: got %d %s", code, body)
	}
	recv := func(rev int64) {
		t.Helper()
		select {
		case sv := <-got:
			if sv.GetRevision() != rev {
				t.Errorf("callback: got revision %d, want %d", sv.GetRevision(), rev)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no callback for revision %d", rev)
		}
	}
	recv(4) // the current view at once
	v.set("hotel/search", view(6, "10.0.0.1", "10.0.0.2"))
	recv(6)
	var cb callback
	_ = json.Unmarshal([]byte(body), &cb)
	req, _ := http.NewRequest(http.MethodDelete, base+"/v1/callbacks/"+cb.ID, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("delete: %v %v", resp, err)
	}
	resp.Body.Close()
	v.set("hotel/search", view(7, "10.0.0.3"))
	select {
	case sv := <-got:
		t.Errorf("callback after delete: got revision %d", sv.GetRevision())
	case <-time.After(300 * time.Millisecond):
	}
}
