package controller_test

import (
	"testing"
	"time"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// TestDeployAndUpgrade deploys two versions to three hosts and checks that every host
// runs the new version, and that the release history lets a rollback go back.
func TestDeployAndUpgrade(t *testing.T) {
	e := newEnv(t)
	hosts := hostNames("h", 3)
	for _, h := range hosts {
		e.startAgent(h)
	}
	c := e.startController("c1")
	e.leader(10 * time.Second)
	a := e.api(c)
	a.must(201, "PATCH", "/v1/tree/acc/web", map[string]any{}, nil)

	p1 := e.makePkg("acc/web", "1.0.0", pkgOpts{})
	d := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", deploymentBody("acc/web", "1.0.0", p1, hosts, map[string]any{"batches": []any{1, "100%"}}), d)
	d = a.waitDeployment(d.GetId(), 30*time.Second, terminal)
	if got := d.GetStatus().GetState(); got != "succeeded" {
		t.Fatalf("deployment 1.0.0: got state %s, want succeeded: %s", got, dump(d))
	}
	for _, h := range hosts {
		if got := e.runningVersion(h, "acc/web"); got != "1.0.0" {
			t.Errorf("host %s runs %q, want 1.0.0", h, got)
		}
	}
	p2 := e.makePkg("acc/web", "2.0.0", pkgOpts{})
	a.must(201, "POST", "/v1/deployments", deploymentBody("acc/web", "2.0.0", p2, hosts, nil), d)
	d = a.waitDeployment(d.GetId(), 30*time.Second, terminal)
	if got := d.GetStatus().GetState(); got != "succeeded" {
		t.Fatalf("deployment 2.0.0: got state %s (%s), want succeeded", got, d.GetStatus().GetMessage())
	}
	for _, tg := range d.GetTargets() {
		if tg.GetPreviousVersion() != "1.0.0" {
			t.Errorf("target %s: got previous version %q, want 1.0.0", tg.GetHost(), tg.GetPreviousVersion())
		}
		if got := e.runningVersion(tg.GetHost(), "acc/web"); got != "2.0.0" {
			t.Errorf("host %s runs %q, want 2.0.0", tg.GetHost(), got)
		}
	}
}
