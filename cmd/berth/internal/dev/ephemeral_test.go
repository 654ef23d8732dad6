package dev

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStopApps checks that every current release's stop script runs, in its release
// directory with the agent's environment, and that old releases are left alone.
func TestStopApps(t *testing.T) {
	apps := t.TempDir()
	release := func(svc, version string, current bool) string {
		dir := filepath.Join(apps, svc, "releases", version)
		if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		desc := "service: " + svc + "\nport: 9001\nscripts:\n  start: bin/start\n  stop: bin/stop now\n  health: bin/start\n"
		os.WriteFile(filepath.Join(dir, "berth.yaml"), []byte(desc), 0o644)
		os.WriteFile(filepath.Join(dir, "bin", "start"), []byte("#!/bin/sh\n"), 0o755)
		os.WriteFile(filepath.Join(dir, "bin", "stop"), []byte("#!/bin/sh\necho \"$1 $BERTH_SERVICE $BERTH_VERSION $BERTH_PORT $(pwd)\" > stopped\n"), 0o755)
		if current {
			if err := os.Symlink(filepath.Join("releases", version), filepath.Join(apps, svc, "current")); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	a := release("demo/hello", "2", true)
	old := release("demo/hello", "1", false)
	b := release("team/api", "7", true)
	var out syncBuffer
	stopApps(t.Context(), apps, &out)

	for dir, want := range map[string]string{a: "now demo/hello 2 9001 " + a, b: "now team/api 7 9001 " + b} {
		got, err := os.ReadFile(filepath.Join(dir, "stopped"))
		if err != nil || strings.TrimSpace(string(got)) != want {
			t.Errorf("stop of %s: got %q, %v; want %q", dir, got, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(old, "stopped")); err == nil {
		t.Error("the stop script of a release that is not current ran")
	}
	if s := out.String(); !strings.Contains(s, "stopped demo/hello") || !strings.Contains(s, "stopped team/api") {
		t.Errorf("output: got %q, want a line per stopped app", s)
	}
}
