package api

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/berthdev/berth/pkg/coordclient"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

func put(path string, b []byte) coordclient.Node {
	return coordclient.Node{Path: path, Value: b, Version: 1, CreateRev: 1, ModRev: 1}
}

func TestBuildHosts(t *testing.T) {
	const gib = 1 << 30
	hosts := []coordclient.Node{
		put("/berth/hosts/h1", model.MustMarshal(&inventoryv1.Host{Id: "h1", Dc: "dc1", CpuMillis: 8000, MemoryBytes: 16 * gib, DiskBytes: 100 * gib})),
		put("/berth/hosts/h2", model.MustMarshal(&inventoryv1.Host{Id: "h2", Dc: "dc2", CpuMillis: 1000, MemoryBytes: gib, MaxContainers: 2})),
		put("/berth/hosts/bad", []byte("not json")),
		{Path: "/berth/hosts/implicit"}, // a parent of deeper nodes, not a host
	}
	alive := []coordclient.Node{
		put("/berth/alive/h1", model.MustMarshal(&agentv1.AgentInfo{HostId: "h1", Dc: "dc1", AgentVersion: "v1"})),
		put("/berth/alive/h9", model.MustMarshal(&agentv1.AgentInfo{HostId: "h9", Dc: "dc9"})),
	}
	alloc := func(host, id, svc string, cpu, mem uint64) coordclient.Node {
		return put("/berth/alloc/"+host+"/"+id, model.MustMarshal(&inventoryv1.Allocation{Id: id, Host: host, Service: svc,
			Resources: &inventoryv1.Resources{CpuMillis: cpu, MemoryBytes: mem}}))
	}
	allocs := []coordclient.Node{
		put("/berth/alloc/h1", model.MustMarshal(&inventoryv1.AllocationGuard{Host: "h1", Count: 2})),
		alloc("h1", "a1", "hotel/search", 500, gib),
		alloc("h1", "a2", "hotel/api", 1500, 2*gib),
		put("/berth/alloc/h2", model.MustMarshal(&inventoryv1.AllocationGuard{Host: "h2", Count: 3})),
		alloc("h2", "b1", "hotel/search", 600, gib/2),
		alloc("h2", "b2", "hotel/search", 600, gib/2),
		alloc("h2", "b3", "hotel/search", 600, gib/2),
	}
	v := BuildHosts(hosts, alive, allocs)
	byID := map[string]HostView{}
	var ids []string
	for _, h := range v.Hosts {
		byID[h.ID] = h
		ids = append(ids, h.ID)
	}
	if got, want := strings.Join(ids, ","), "h1,h2,h9"; got != want {
		t.Fatalf("hosts: got %s, want %s", got, want)
	}
	if got, want := strings.Join(v.DCs, ","), "dc1,dc2,dc9"; got != want {
		t.Errorf("dcs: got %s, want %s", got, want)
	}
	cases := []struct {
		id                     string
		inInventory, alive     bool
		allocations, free, max int
		freeCPU, freeMem       int64
		services               string
	}{
		{"h1", true, true, 2, 62, 64, 6000, 13 * gib, "hotel/api,hotel/search"},
		// Over-committed: free never goes below zero.
		{"h2", true, false, 3, 0, 2, 0, 0, "hotel/search"},
		{"h9", false, true, 0, 64, 64, 0, 0, ""},
	}
	for _, tc := range cases {
		h := byID[tc.id]
		got := []any{h.InInventory, h.Alive, h.Allocations, h.FreeContainers, h.MaxContainers, h.Free.CPUMillis, h.Free.MemoryBytes, strings.Join(h.Services, ",")}
		want := []any{tc.inInventory, tc.alive, tc.allocations, tc.free, tc.max, tc.freeCPU, tc.freeMem, tc.services}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: got %v, want %v (in_inventory, alive, allocations, free_containers, max, free cpu, free memory, services)", tc.id, got, want)
				break
			}
		}
	}
	if byID["h1"].Host == nil || byID["h1"].Agent == nil || byID["h9"].Host != nil {
		t.Errorf("records: got host %s agent %s for h1 and host %s for h9, want h1's both and none for h9", byID["h1"].Host, byID["h1"].Agent, byID["h9"].Host)
	}
}

func TestSendWatch(t *testing.T) {
	id := "d-20260102-150405-1a2b3c"
	head := model.DeploymentPath(id)
	dep := &controllerv1.Deployment{Id: id, Service: "acc/web", Hosts: []string{"h1", "h2"}, Status: &controllerv1.RunStatus{State: "running"}}
	target := &controllerv1.Target{Host: "h1", State: "succeeded", Output: []string{"line one", "line\ntwo"}}
	cases := []struct {
		name string
		wr   coordclient.WatchResponse
		want []string // event names, in order
	}{
		{"header", coordclient.WatchResponse{Events: []coordclient.Event{{Type: coordclient.EventPut, Revision: 7, Node: put(head, model.MustMarshal(dep))}}}, []string{"deployment"}},
		{"target", coordclient.WatchResponse{Events: []coordclient.Event{{Type: coordclient.EventPut, Revision: 8, Node: put(model.TargetPath(id, "h1"), model.MustMarshal(target))}}}, []string{"target"}},
		{"both in one revision", coordclient.WatchResponse{Events: []coordclient.Event{
			{Type: coordclient.EventPut, Revision: 9, Node: put(model.TargetPath(id, "h1"), model.MustMarshal(target))},
			{Type: coordclient.EventPut, Revision: 9, Node: put(head, model.MustMarshal(dep))}}}, []string{"target", "deployment"}},
		{"removed", coordclient.WatchResponse{Events: []coordclient.Event{{Type: coordclient.EventDelete, Revision: 10, Node: coordclient.Node{Path: head, ModRev: 10}}}}, []string{"removed"}},
		{"relisted", coordclient.WatchResponse{Reset: true, Revision: 11, Nodes: []coordclient.Node{put(head, model.MustMarshal(dep)), put(model.TargetPath(id, "h1"), model.MustMarshal(target))}}, []string{"snapshot"}},
		{"error", coordclient.WatchResponse{Err: coordclient.ErrUnavailable}, []string{"error"}},
	}
	s := &Server{log: slog.New(slog.DiscardHandler)}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := s.sendWatch(&sseWriter{w: &buf}, model.KindDeployment, head, id, "deployment", "target", tc.wr); err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, block := range strings.Split(strings.TrimSpace(buf.String()), "\n\n") {
				var ev, data string
				for _, line := range strings.Split(block, "\n") {
					if v, ok := strings.CutPrefix(line, "event: "); ok {
						ev = v
					}
					if v, ok := strings.CutPrefix(line, "data: "); ok {
						if data != "" {
							t.Fatalf("event %s: got two data lines, want one", ev)
						}
						data = v
					}
				}
				if !json.Valid([]byte(data)) {
					t.Fatalf("event %s: data %q is not JSON", ev, data)
				}
				names = append(names, ev)
				if ev == "snapshot" {
					d := &controllerv1.Deployment{}
					if err := model.Unmarshal([]byte(data), d); err != nil || len(d.GetTargets()) != 2 || d.GetTargets()[1].GetState() != "pending" {
						t.Errorf("snapshot: got %v (%v), want two targets, h2 pending", d.GetTargets(), err)
					}
				}
			}
			if got, want := strings.Join(names, ","), strings.Join(tc.want, ","); got != want {
				t.Errorf("got events %s, want %s", got, want)
			}
		})
	}
}

func TestProxyResolve(t *testing.T) {
	var gotQuery, gotPath string
	names := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotQuery = r.URL.Path, r.URL.RawQuery
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("dc") == "nowhere" {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"unknown datacenter \"nowhere\"","field":"dc"}`)
			return
		}
		io.WriteString(w, `{"service":"acc/web","instances":[]}`)
	}))
	defer names.Close()
	base, _ := url.Parse(names.URL + "/prefix")
	dead, _ := url.Parse("http://127.0.0.1:1")
	cases := []struct {
		name     string
		base     *url.URL
		path     string
		code     int
		contains string
		upstream string // the request the name service must have seen
	}{
		{"resolve", base, "/v1/names/resolve/acc/web?dc=dc1&explain=1&junk=x", 200, `"service":"acc/web"`, "/prefix/v1/resolve/acc/web?dc=dc1&explain=true"},
		{"dcs", base, "/v1/names/dcs", 200, "service", "/prefix/v1/dcs?"},
		{"name service refuses", base, "/v1/names/resolve/acc/web?dc=nowhere", 400, "unknown datacenter", ""},
		{"bad service", base, "/v1/names/resolve/ACC/web", 400, `"field":"service"`, ""},
		{"bad dc", base, "/v1/names/resolve/acc/web?dc=a%2Fb", 400, `"field":"dc"`, ""},
		{"bad explain", base, "/v1/names/resolve/acc/web?explain=maybe", 400, `"field":"explain"`, ""},
		{"bad family", base, "/v1/names/resolve/acc/web?family=ipx", 400, `"field":"family"`, ""},
		{"unreachable", dead, "/v1/names/resolve/acc/web", 502, `"code":"unavailable"`, ""},
		{"not configured", nil, "/v1/names/dcs", 503, "names_url", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(nil, nil, "test", slog.New(slog.DiscardHandler), nil, Options{NamesURL: tc.base})
			if err != nil {
				t.Fatal(err)
			}
			mux := http.NewServeMux()
			s.Register(mux)
			gotPath, gotQuery = "", ""
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil).WithContext(t.Context()))
			if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.contains) {
				t.Fatalf("GET %s: got %d %s, want %d containing %s", tc.path, rec.Code, rec.Body.String(), tc.code, tc.contains)
			}
			if tc.upstream != "" && gotPath+"?"+gotQuery != tc.upstream {
				t.Errorf("GET %s: the name service got %s?%s, want %s", tc.path, gotPath, gotQuery, tc.upstream)
			}
			if tc.code == 400 && tc.upstream == "" && tc.name != "name service refuses" && gotPath != "" {
				t.Errorf("GET %s: refused input reached the name service (%s)", tc.path, gotPath)
			}
		})
	}
}
