package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunPlugin runs a plugin on a host through the controller and prints its output;
// a failing plugin exits 3.
func TestRunPlugin(t *testing.T) {
	f := newCtlFixture(t)
	plugin := filepath.Join(f.dir, "plugins", "hello")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\nreq=$(cat)\necho \"hello from $BERTH_HOST_ID: $req\"\ncase \"$req\" in *fail*) exit 1;; esac\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := f.berthCmd(t, "run", "--hosts", f.host, "--plugin", "hello", "--arg", "who=world", "--", "a1", "a2")
	if err != nil {
		t.Fatalf("run: %v: %s", err, out)
	}
	for _, want := range []string{"== h1: succeeded", "hello from h1", `"who":"world"`, `"args":["a1","a2"]`} {
		if !strings.Contains(out, want) {
			t.Errorf("run output lacks %q:\n%s", want, out)
		}
	}
	out, err = f.berthCmd(t, "run", "--hosts", f.host, "--plugin", "hello", "--", "fail")
	if got := exitCode(err); got != ExitFailed {
		t.Errorf("failing plugin: got exit %d (%v), want %d: %s", got, err, ExitFailed, out)
	}
	if _, err := f.berthCmd(t, "run", "--hosts", f.host, "--plugin", "../bin/sh"); err == nil || !strings.Contains(err.Error(), "plugin") {
		t.Errorf("plugin given as a path: got %v, want a refusal naming the plugin", err)
	}
	if _, err := f.berthCmd(t, "run", "--plugin", "hello"); err == nil || !strings.Contains(err.Error(), "--hosts") {
		t.Errorf("run without hosts: got %v, want --hosts named", err)
	}
}
