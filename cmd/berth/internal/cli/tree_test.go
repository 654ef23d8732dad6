package cli

import (
	"strings"
	"testing"
)

// TestTreeCommands creates, changes, reads (with the effective policy) and removes nodes.
func TestTreeCommands(t *testing.T) {
	f := newCtlFixture(t)
	if out, err := f.berthCmd(t, "tree", "set", "hotel", "--owner", "team-hotel", "--batches", "1,10%,100%", "--max-failures", "5%", "--ttl", "10s"); err != nil {
		t.Fatalf("tree set hotel: %v: %s", err, out)
	}
	if out, err := f.berthCmd(t, "tree", "set", "hotel/search", "--host", "h1", "--host", "h2", "--label", "tier=web", "--max-parallel", "3"); err != nil {
		t.Fatalf("tree set hotel/search: %v: %s", err, out)
	}
	// With no flags, set only makes sure the node exists and changes nothing.
	if out, err := f.berthCmd(t, "tree", "set", "hotel/search"); err != nil || !strings.Contains(out, "h1, h2") {
		t.Fatalf("tree set with no flags: %v: %s", err, out)
	}
	out, err := f.berthCmd(t, "tree", "get", "hotel/search", "--effective")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tier=web", "strategy.batches", `["1","10%","100%"]`, "strategy.max_parallel  3", "hotel/search", "dns_ttl", `"10s"`, "default"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("tree get --effective lacks %q:\n%s", want, out)
		}
	}
	out, err = f.berthCmd(t, "tree", "ls")
	if err != nil || !strings.Contains(out, "hotel/search") || !strings.Contains(out, "team-hotel") {
		t.Errorf("tree ls: %v: %s", err, out)
	}
	if _, err := f.berthCmd(t, "tree", "set", "hotel/search", "--batches", "1,50%"); err == nil || !strings.Contains(err.Error(), "batches") {
		t.Errorf("tree set with a bad ramp: got %v, want an error naming the batches", err)
	}
	if _, err := f.berthCmd(t, "tree", "set", "Hotel"); err == nil {
		t.Errorf("tree set of a bad path: want an error")
	}
	if _, err := f.berthCmd(t, "tree", "rm", "hotel"); err == nil || !strings.Contains(err.Error(), "child") {
		t.Errorf("tree rm of a node with children: got %v, want a refusal", err)
	}
	if out, err := f.berthCmd(t, "tree", "rm", "hotel", "--recursive"); err != nil || !strings.Contains(out, "deleted 2") {
		t.Errorf("tree rm --recursive: %v: %s", err, out)
	}
	if _, err := f.berthCmd(t, "tree", "get", "hotel/search"); err == nil {
		t.Errorf("tree get after rm: want not found")
	}
}
