package controller_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/natsbus"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
)

// TestBadInputChangesNothing sends requests with one bad field each: every one gets a 4xx
// naming the field, and no deployment is recorded.
func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t)
	c := e.startController("c1")
	a := e.api(c)
	a.must(201, "PATCH", "/v1/tree/acc/web", map[string]any{"hosts": []string{"h1"}}, nil)
	p := e.makePkg("acc/web", "1.0.0", pkgOpts{})
	good := func() map[string]any { return deploymentBody("acc/web", "1.0.0", p, []string{"h1"}, nil) }
	cases := []struct {
		name   string
		edit   func(map[string]any)
		status int
		field  string
	}{
		{"unknown service", func(b map[string]any) { b["service"] = "acc/nope" }, 404, "service"},
		{"bad service path", func(b map[string]any) { b["service"] = "Acc/../web" }, 400, "service"},
		{"version with a slash", func(b map[string]any) { b["version"] = "1.0/../../etc" }, 400, "version"},
		{"version with dots only", func(b map[string]any) { b["version"] = "1..0" }, 400, "version"},
		{"ramp not ending at 100%", func(b map[string]any) { b["strategy"] = map[string]any{"batches": []any{1, "50%"}} }, 400, "strategy.batches"},
		{"ramp going down", func(b map[string]any) { b["strategy"] = map[string]any{"batches": []any{"50%", "10%", "100%"}} }, 400, "strategy.batches[1]"},
		{"unsupported scheme", func(b map[string]any) {
			b["artifact"] = map[string]string{"url": "gopher://x/p.tar.gz", "sha256": p.sha}
		}, 400, "artifact.url"},
		{"relative file url", func(b map[string]any) { b["artifact"] = map[string]string{"url": "file:p.tar.gz", "sha256": p.sha} }, 400, "artifact.url"},
		{"missing sha256", func(b map[string]any) { b["artifact"] = map[string]string{"url": p.url} }, 400, "artifact.sha256"},
		{"short sha256", func(b map[string]any) { b["artifact"] = map[string]string{"url": p.url, "sha256": "abc"} }, 400, "artifact.sha256"},
		{"bad pause", func(b map[string]any) { b["strategy"] = map[string]any{"pause": "sometimes"} }, 400, "strategy.pause"},
		{"bad max_failures", func(b map[string]any) { b["strategy"] = map[string]any{"max_failures": "lots"} }, 400, "strategy.max_failures"},
		{"duplicate host", func(b map[string]any) { b["hosts"] = []string{"h1", "h1"} }, 400, "hosts[1]"},
		{"host with a dot", func(b map[string]any) { b["hosts"] = []string{"h.1"} }, 400, "hosts[0]"},
		{"unknown field", func(b map[string]any) { b["colour"] = "blue" }, 400, "colour"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := good()
			tc.edit(body)
			code, b := a.do("POST", "/v1/deployments", body)
			if code != tc.status {
				t.Fatalf("got status %d, want %d: %s", code, tc.status, b)
			}
			var got struct{ Code, Message, Field string }
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("error body %s: %v", b, err)
			}
			if got.Field != tc.field || got.Message == "" || got.Code == "" {
				t.Errorf("got field %q code %q message %q, want field %q with a code and a message", got.Field, got.Code, got.Message, tc.field)
			}
		})
	}
	code, b := a.do("GET", "/v1/deployments", nil)
	if code != 200 || strings.Contains(string(b), `"id"`) {
		t.Errorf("after bad requests: got %d %s, want 200 and no deployment", code, b)
	}
	code, _ = a.do("POST", "/v1/deployments/d-20260101-000000-abcdef/resume", nil)
	if code != 404 {
		t.Errorf("resume of an unknown deployment: got %d, want 404", code)
	}
}

// TestSameServiceRule checks the rule for two deployments of one service: the second is
// refused with 409 naming the running one, unless it asks to queue; a queued one runs
// when the first ends.
func TestSameServiceRule(t *testing.T) {
	e := newEnv(t)
	e.startAgent("h1")
	e.startAgent("h2")
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	a.must(201, "PATCH", "/v1/tree/acc/web", map[string]any{"hosts": []string{"h1", "h2"}}, nil)
	p1 := e.makePkg("acc/web", "1.0.0", pkgOpts{})
	p2 := e.makePkg("acc/web", "2.0.0", pkgOpts{})
	first := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", map[string]any{"service": "acc/web", "version": "1.0.0",
		"artifact": map[string]string{"url": p1.url, "sha256": p1.sha}, "strategy": map[string]any{"pause": "manual", "batches": []any{1, "100%"}}}, first)
	a.waitDeployment(first.GetId(), 20*time.Second, stateIs("paused"))
	code, b := a.do("POST", "/v1/deployments", map[string]any{"service": "acc/web", "version": "2.0.0",
		"artifact": map[string]string{"url": p2.url, "sha256": p2.sha}})
	if code != 409 || !strings.Contains(string(b), first.GetId()) {
		t.Fatalf("second deployment: got %d %s, want 409 naming %s", code, b, first.GetId())
	}
	queued := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", map[string]any{"service": "acc/web", "version": "2.0.0", "queue": true,
		"artifact": map[string]string{"url": p2.url, "sha256": p2.sha}}, queued)
	if got := queued.GetStatus().GetState(); got != "queued" {
		t.Fatalf("queued deployment: got state %s, want queued", got)
	}
	if got := a.deployment(first.GetId()).GetStatus().GetState(); got != "paused" {
		t.Logf("first deployment is %s", got)
	}
	if got := a.deployment(queued.GetId()).GetStatus().GetState(); got != "queued" {
		t.Errorf("while the first is paused: queued deployment is %s, want queued", got)
	}
	a.must(202, "POST", "/v1/deployments/"+first.GetId()+"/resume", nil, nil)
	a.waitDeployment(first.GetId(), 20*time.Second, terminal)
	d := a.waitDeployment(queued.GetId(), 20*time.Second, terminal)
	if got := d.GetStatus().GetState(); got != "succeeded" {
		t.Fatalf("queued deployment: got %s, want succeeded: %s", got, dump(d))
	}
	if got := e.runningVersion("h1", "acc/web"); got != "2.0.0" {
		t.Errorf("h1 runs %q, want 2.0.0", got)
	}
}

// TestEffectivePolicy sets policy on two levels of the tree and reads it back with the
// node each value came from; a deployment inherits it.
func TestEffectivePolicy(t *testing.T) {
	e := newEnv(t)
	c := e.startController("c1")
	a := e.api(c)
	a.must(201, "PATCH", "/v1/tree/hotel", map[string]any{"owners": []string{"team-hotel"},
		"policy": map[string]any{"strategy": map[string]any{"batches": []any{1, "10%", "100%"}, "max_failures": "5%"}, "dns_ttl": "10s"}}, nil)
	a.must(201, "PATCH", "/v1/tree/hotel/search", map[string]any{"hosts": []string{"h1", "h2"},
		"policy": map[string]any{"strategy": map[string]any{"max_parallel": 3}}}, nil)
	code, b := a.do("GET", "/v1/tree/hotel/search?effective=true", nil)
	if code != 200 {
		t.Fatalf("get effective: %d %s", code, b)
	}
	var got struct {
		Effective struct {
			Values []struct {
				Field  string `json:"field"`
				Value  any    `json:"value"`
				Source string `json:"source"`
			} `json:"values"`
		} `json:"effective"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	src := map[string]string{}
	for _, v := range got.Effective.Values {
		src[v.Field] = v.Source
	}
	for field, want := range map[string]string{
		"strategy.batches": "hotel", "strategy.max_failures": "hotel", "dns_ttl": "hotel",
		"strategy.max_parallel": "hotel/search", "strategy.pause": "default", "health.rise": "default",
	} {
		if src[field] != want {
			t.Errorf("%s: got source %q, want %q", field, src[field], want)
		}
	}
	// Unsetting at the child puts the parent's (here the default) value back.
	a.must(200, "PATCH", "/v1/tree/hotel/search", map[string]any{"unset": []string{"strategy.max_parallel"}}, nil)
	_, b = a.do("GET", "/v1/tree/hotel/search?effective=true", nil)
	if !strings.Contains(string(b), `"field":"strategy.max_parallel","value":0,"source":"default"`) &&
		!strings.Contains(strings.ReplaceAll(string(b), " ", ""), `"field":"strategy.max_parallel","value":0,"source":"default"`) {
		t.Errorf("after unset: max_parallel does not come from the default: %s", b)
	}
	p := e.makePkg("hotel/search", "1.0.0", pkgOpts{})
	d := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", map[string]any{"service": "hotel/search", "version": "1.0.0",
		"artifact": map[string]string{"url": p.url, "sha256": p.sha}, "strategy": map[string]any{"pause": "30s"}}, d)
	if got := strings.Join(d.GetStrategy().GetBatches(), ","); got != "1,10%,100%" {
		t.Errorf("deployment batches: got %s, want 1,10%%,100%% from hotel", got)
	}
	if d.GetStrategy().GetPause() != "30s" || d.GetStrategy().GetMaxFailures() != "5%" {
		t.Errorf("deployment strategy: got pause %q max_failures %q, want 30s and 5%%", d.GetStrategy().GetPause(), d.GetStrategy().GetMaxFailures())
	}
	if got := strings.Join(d.GetHosts(), ","); got != "h1,h2" {
		t.Errorf("deployment hosts: got %s, want the bound hosts h1,h2", got)
	}
	code, _ = a.do("DELETE", "/v1/tree/hotel", nil)
	if code != 409 {
		t.Errorf("delete of a node with children: got %d, want 409", code)
	}
}

// TestDeployEvents checks the events of a deployment: each transition once, in order,
// with deterministic ids.
func TestDeployEvents(t *testing.T) {
	e := newEnv(t)
	e.startAgent("h1")
	e.startAgent("h2")
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	a.must(201, "PATCH", "/v1/tree/acc/web", nil, nil)
	p := e.makePkg("acc/web", "1.0.0", pkgOpts{})
	d := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", deploymentBody("acc/web", "1.0.0", p, []string{"h1", "h2"}, map[string]any{"batches": []any{1, "100%"}}), d)
	a.waitDeployment(d.GetId(), 30*time.Second, terminal)
	// Events are published from a queue after each write; give the last ones a moment.
	want := []string{"requested", "started", "batch_started", "target_changed", "batch_completed", "completed"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		types, ids, err := deployEvents(t.Context(), e.bus, d.GetId())
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, ty := range types {
			seen[ty]++
		}
		ok := true
		for _, w := range want {
			if seen[w] == 0 {
				ok = false
			}
		}
		if ok && seen["completed"] == 1 {
			if seen["batch_started"] != 2 || seen["batch_completed"] != 2 {
				t.Errorf("got %d batch_started and %d batch_completed, want 2 each: %v", seen["batch_started"], seen["batch_completed"], types)
			}
			// dispatched, running, succeeded for each of two targets.
			if seen["target_changed"] != 6 {
				t.Errorf("got %d target_changed, want 6: %v", seen["target_changed"], types)
			}
			if types[0] != "requested" || types[len(types)-1] != "completed" {
				t.Errorf("got events %v, want requested first and completed last", types)
			}
			uniq := map[string]bool{}
			for _, id := range ids {
				if uniq[id] {
					t.Errorf("event id %s stored twice", id)
				}
				uniq[id] = true
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got events %v, want at least %v", types, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// deployEvents reads the deploy events of one deployment from BERTH_EVENTS.
func deployEvents(ctx context.Context, bus *natsbus.Bus, id string) (types, ids []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = bus.ConsumeEvents(ctx, natsbus.EventConsumerConfig{FilterSubjects: []string{"berth.v1.events.deploy.>"}, StopWhenCaughtUp: true},
		func(_ context.Context, dv natsbus.EventDelivery) error {
			ce := dv.Event
			ev := &eventsv1.DeployEvent{}
			if err := natsbus.UnmarshalEventData(ce, ev); err != nil {
				return err
			}
			if ev.GetDeploymentId() == id {
				types = append(types, strings.TrimPrefix(ce.Type, "dev.berth.deploy."))
				ids = append(ids, ce.ID)
			}
			return nil
		})
	return types, ids, err
}
