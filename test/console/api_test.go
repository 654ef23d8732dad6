package console_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// externalRef matches a reference to anything outside the controller's origin.
var externalRef = regexp.MustCompile(`(?i)(\b(https?|wss?|ftp):|(src|href|action)\s*=\s*["']?\s*//|url\(\s*["']?\s*//|@import)`)

// TestConsoleSelfContained GETs /ui/ from berth dev's controller, with no browser: the page
// mentions Deployments, and neither it nor any file it references points outside the
// controller's origin.
func TestConsoleSelfContained(t *testing.T) {
	b := shared.get(t)
	get := func(path string) (string, http.Header) {
		t.Helper()
		resp, err := http.Get(b.controller + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: got %d, want 200", path, resp.StatusCode)
		}
		return string(body), resp.Header
	}
	page, hdr := get("/ui/")
	if !strings.Contains(page, "Deployments") {
		t.Errorf("GET /ui/: the page does not mention Deployments")
	}
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("GET /ui/: got Content-Security-Policy %q, want default-src 'none'", csp)
	}
	refs := regexp.MustCompile(`(?i)(?:src|href)="([^"#][^"]*)"`).FindAllStringSubmatch(page, -1)
	files := map[string]string{"/ui/": page}
	for _, m := range refs {
		ref := m[1]
		if strings.HasPrefix(ref, "data:") || strings.HasPrefix(ref, "/") {
			continue
		}
		files["/ui/"+ref], _ = get("/ui/" + ref)
	}
	if len(files) < 3 {
		t.Errorf("GET /ui/: got %d files (the page and what it references), want the page, its CSS and its JavaScript", len(files))
	}
	for path, body := range files {
		if m := externalRef.FindString(body); m != "" {
			t.Errorf("%s: got %q, want no reference outside the controller's origin", path, m)
		}
	}
}

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	name, id string
	data     []byte
}

// readEvents reads Server-Sent Events from r onto a channel, closed at the end.
func readEvents(r io.Reader) <-chan sseEvent {
	ch := make(chan sseEvent, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.data != nil {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "id: "):
				ev.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = []byte(strings.TrimPrefix(line, "data: "))
			}
		}
	}()
	return ch
}

// TestConsoleAPI checks the endpoints the console reads, on a deployment that pauses
// after its first batch: the event stream's snapshot and live changes, instances, hosts,
// the names proxy, and refused input.
func TestConsoleAPI(t *testing.T) {
	b := shared.get(t)
	b.cli(t, "tree", "set", "capi", "--owner", "console-tests")
	b.cli(t, "tree", "set", "capi/web")
	id := b.deploy(t, "capi/web", "1.0.0", []string{b.host, "a2"}, "--batches", "1,100%", "--pause", "manual")
	b.waitDeployment(t, id, 60*time.Second, "paused after batch 1", func(d deployment) bool { return d.Status.State == "paused" })

	resp, err := http.Get(b.controller + "/v1/deployments/" + id + "/events")
	if err != nil {
		t.Fatal(err)
	}
	events := readEvents(resp.Body)
	defer func() {
		resp.Body.Close()
		for range events {
		}
	}()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("GET events: got %d %q, want 200 text/event-stream", resp.StatusCode, ct)
	}
	next := func(within time.Duration) sseEvent {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("event stream ended")
			}
			return ev
		case <-time.After(within):
			t.Fatalf("no event within %s", within)
		}
		return sseEvent{}
	}
	first := next(10 * time.Second)
	var snap deployment
	if err := json.Unmarshal(first.data, &snap); first.name != "snapshot" || err != nil || snap.ID != id || snap.Status.State != "paused" ||
		snap.target(b.host) != "succeeded" || snap.target("a2") != "pending" || first.id == "" {
		t.Fatalf("first event: got %s id %q %+v (%v), want a snapshot of %s, paused, %s succeeded, a2 pending", first.name, first.id, snap, err, id, b.host)
	}
	// Resume through the API: the stream must carry a2's progress and the end.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, b.controller+"/v1/deployments/"+id+"/resume", nil)
	rr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rr.Body.Close()
	if rr.StatusCode != http.StatusAccepted {
		t.Fatalf("resume: got %d, want 202", rr.StatusCode)
	}
	var a2Done, ended bool
	lastID := first.id
	for !(a2Done && ended) {
		ev := next(60 * time.Second)
		if ev.id < lastID && len(ev.id) == len(lastID) {
			t.Errorf("event %s: id %s after %s, want revisions in order", ev.name, ev.id, lastID)
		}
		lastID = ev.id
		switch ev.name {
		case "target":
			var tg struct{ Host, State string }
			if err := json.Unmarshal(ev.data, &tg); err != nil {
				t.Fatalf("target event %s: %v", ev.data, err)
			}
			a2Done = a2Done || (tg.Host == "a2" && tg.State == "succeeded")
		case "deployment":
			var d deployment
			if err := json.Unmarshal(ev.data, &d); err != nil {
				t.Fatalf("deployment event %s: %v", ev.data, err)
			}
			if len(d.Targets) != 0 {
				t.Errorf("deployment event: got %d targets, want the header only", len(d.Targets))
			}
			ended = d.Status.State == "succeeded"
		}
	}

	var inst struct {
		Service   string
		Instances []struct {
			ID, Host, Health, State string
			Port                    int
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := getJSON(t.Context(), b.controller+"/v1/instances/capi/web", &inst); err != nil {
			t.Fatal(err)
		}
		if len(inst.Instances) == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	hosts := map[string]bool{}
	for _, in := range inst.Instances {
		hosts[in.Host] = in.Port == 18080 && in.Health != "HEALTH_UNHEALTHY"
	}
	if len(inst.Instances) != 2 || !hosts[b.host] || !hosts["a2"] {
		t.Errorf("instances of capi/web: got %+v, want one on %s and one on a2, port 18080, healthy", inst.Instances, b.host)
	}

	var hv hostsView
	if err := getJSON(t.Context(), b.controller+"/v1/hosts", &hv); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, h := range hv.Hosts {
		seen[h.ID] = h.Alive && h.Agent != nil
		if h.ID == b.host && (!h.InInventory || h.Host == nil || h.FreeContainers != h.MaxContainers || h.MaxContainers == 0) {
			t.Errorf("host %s: got %+v, want it in the inventory with every container slot free", b.host, h)
		}
	}
	if !seen[b.host] || !seen["a2"] || !seen["a3"] {
		t.Errorf("hosts: got %+v, want %s, a2 and a3 alive with their agents' records", hv.Hosts, b.host)
	}

	t.Run("names", func(t *testing.T) {
		// The controller proxies the name service, so the answer lists the instances
		// berth dev's own name service knows.
		var res struct {
			Service   string
			Instances []struct{ Host string }
			Explain   []string
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			err := getJSON(t.Context(), b.controller+"/v1/names/resolve/capi/web?dc=dev&explain=true", &res)
			// Both instances are registered; with same-DC priority a client in dev gets the
			// dev instance, so the proof that this is berth dev's own name service is its
			// explanation counting both.
			if err == nil && len(res.Instances) >= 1 && strings.Contains(strings.Join(res.Explain, " "), "2 registered") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("resolve capi/web through the controller: got %+v, %v; want an answer from 2 registered instances (berth dev's name service is at %s: does berth dev give the controller its names_url?)",
					res, err, b.namesAPI)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if len(res.Explain) == 0 {
			t.Errorf("resolve with explain=true: got no explanation")
		}
	})

	for _, tc := range []struct {
		path  string
		code  int
		field string
	}{
		{"/v1/instances/Capi/web", 400, "service"},
		{"/v1/hosts?dc=a/b", 400, "dc"},
		{"/v1/deployments/d-nope/events", 404, "id"},
		{"/v1/deployments/d-20200101-000000-000000/events", 404, "id"},
		{"/v1/names/resolve/capi/web?family=ipx", 400, "family"},
	} {
		resp, err := http.Get(b.controller + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Code, Message, Field string }
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != tc.code || err != nil || e.Field != tc.field || e.Message == "" {
			t.Errorf("GET %s: got %d %+v (%v), want %d naming %s", tc.path, resp.StatusCode, e, err, tc.code, tc.field)
		}
	}
}
