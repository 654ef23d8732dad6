package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestContextSetRefusesBrokenContexts checks that `berth context set` refuses what would
// break every later command (a missing CA file, a coord member that is no host:port, a
// token with a control character) and writes nothing then.
func TestContextSetRefusesBrokenContexts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	t.Setenv(envConfigFile, path)
	for _, args := range [][]string{
		{"--ca-file", filepath.Join(t.TempDir(), "missing.crt")},
		{"--ca-file", t.TempDir()},
		{"--cert-file", "/nonexistent/c.crt", "--key-file", "/nonexistent/c.key"},
		{"--coord", "a;touch${IFS}x:7379"},
		{"--coord", "127.0.0.1:0"},
		{"--token", "a\x1bb"},
	} {
		out, err := runCLI(t, "", append([]string{"context", "set", "x"}, args...)...)
		if err == nil {
			t.Errorf("context set x %q: accepted (%s), want an error", args, out)
		}
		if _, err := os.Stat(path); err == nil {
			t.Fatalf("context set x %q: the config file was written", args)
		}
	}
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, []byte("not checked here"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, "", "context", "set", "x", "--ca-file", ca, "--coord", "coord-1.berth:7379,[::1]:7379"); err != nil || !strings.Contains(out, "created") {
		t.Fatalf("context set with an existing CA file: %v %s", err, out)
	}
}
