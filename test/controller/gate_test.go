package controller_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// TestHealthGateWaitsForTheNameService: a target whose health script passed on the host
// succeeds only once its instance is healthy in the name service (DESIGN §2). The agents
// here keep no coord session, so the test gives h1 a presence node (as an agent with coord
// has): its deploy then waits for an instance of the version on h1. An unhealthy instance
// fails the target at the gate's deadline; a healthy one, written while the gate waits,
// lets it succeed. h2, without presence, is not waited for and says so.
func TestHealthGateWaitsForTheNameService(t *testing.T) {
	e := newEnv(t)
	e.startAgent("h1")
	e.startAgent("h2")
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	ctx := t.Context()
	a.must(201, "PATCH", "/v1/tree/acc/gate", map[string]any{}, nil)
	if _, err := e.cc.Put(ctx, "/berth/alive/h1", []byte(`{"host_id":"h1"}`)); err != nil {
		t.Fatal(err)
	}
	instance := func(version string, health namesv1.Health) {
		t.Helper()
		b, _ := protojson.Marshal(&namesv1.Instance{Id: "h1-8080", Service: "acc/gate", Host: "h1", Ip: "127.0.0.1", Port: 8080,
			Version: version, State: namesv1.InstanceState_INSTANCE_STATE_ACTIVE, Health: health})
		if _, err := e.cc.Put(ctx, "/berth/instances/acc/gate/h1-8080", b); err != nil {
			t.Fatal(err)
		}
	}

	// v1: h1's instance stays unhealthy → h1 fails at the deadline, application failure.
	instance("1.0.0", namesv1.Health_HEALTH_UNHEALTHY)
	v1 := e.makePkg("acc/gate", "1.0.0", pkgOpts{})
	d := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", deploymentBody("acc/gate", "1.0.0", v1, []string{"h1", "h2"},
		map[string]any{"batches": []any{"100%"}, "health_gate": map[string]any{"deadline": "2s"}}), d)
	d = a.waitDeployment(d.GetId(), 60*time.Second, terminal)
	for _, tg := range d.GetTargets() {
		switch tg.GetHost() {
		case "h1":
			if tg.GetState() != "failed" || tg.GetFailureClass() != "application" || !strings.Contains(tg.GetMessage(), "name service") {
				t.Errorf("v1 h1: got %s/%s %q, want failed/application naming the name service", tg.GetState(), tg.GetFailureClass(), tg.GetMessage())
			}
		case "h2":
			if tg.GetState() != "succeeded" || !strings.Contains(tg.GetMessage(), "no name-service check") {
				t.Errorf("v1 h2: got %s %q, want succeeded without a name-service check", tg.GetState(), tg.GetMessage())
			}
		}
	}

	// v2: no instance of 2.0.0 at first; it turns up healthy while the gate waits.
	v2 := e.makePkg("acc/gate", "2.0.0", pkgOpts{})
	a.must(201, "POST", "/v1/deployments", deploymentBody("acc/gate", "2.0.0", v2, []string{"h1"},
		map[string]any{"batches": []any{"100%"}, "health_gate": map[string]any{"deadline": "30s"}}), d)
	a.waitDeployment(d.GetId(), 30*time.Second, func(d *controllerv1.Deployment) bool {
		for _, tg := range d.GetTargets() {
			if strings.Contains(tg.GetMessage(), "waiting for its instance") {
				return true
			}
		}
		return terminal(d)
	})
	if got := a.deployment(d.GetId()).GetStatus().GetState(); got != "running" {
		t.Fatalf("v2 before its instance is registered: got %s, want running", got)
	}
	instance("2.0.0", namesv1.Health_HEALTH_HEALTHY)
	d = a.waitDeployment(d.GetId(), 30*time.Second, terminal)
	if d.GetStatus().GetState() != "succeeded" {
		t.Fatalf("v2: got %s, want succeeded: %s", d.GetStatus().GetState(), dump(d))
	}
}
