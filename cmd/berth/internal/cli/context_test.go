package cli

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestContextCommands(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "config.yaml")
	t.Setenv(envConfigFile, path)

	mustRun := func(stdin string, args ...string) string {
		t.Helper()
		out, err := runCLI(t, stdin, args...)
		if err != nil {
			t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	if out := mustRun("", "context", "ls"); !strings.Contains(out, "no contexts in "+path) {
		t.Fatalf("ls without a file: got %q", out)
	}
	if out := mustRun("", "context", "set", "dev", "--controller", "http://127.0.0.1:7070"); !strings.Contains(out, "context dev created") || !strings.Contains(out, "(current)") {
		t.Fatalf("first set: got %q, want created and current", out)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file: got %v, %v; want mode 0600 (it holds tokens)", fi, err)
	}
	out := mustRun("s3cret-token\n", "context", "set", "prod", "--controller", "https://berth.example.com", "--coord", "10.0.0.1:7379, 10.0.0.2:7379",
		"--nats", "nats://10.0.0.9:4222", "--names", "https://names.example.com", "--token-stdin")
	if !strings.Contains(out, "context prod created") || strings.Contains(out, "(current)") {
		t.Fatalf("second set: got %q, want created and not current", out)
	}
	if out := mustRun("", "context", "use", "prod"); !strings.Contains(out, "current context is now prod") {
		t.Fatalf("use: got %q", out)
	}
	out = mustRun("", "context", "ls")
	for _, want := range []string{"*        prod", "https://berth.example.com", "10.0.0.1:7379,10.0.0.2:7379", "set"} {
		if !strings.Contains(out, want) {
			t.Errorf("ls lacks %q:\n%s", want, out)
		}
	}
	out += mustRun("", "context", "ls", "--json") + mustRun("", "context", "show") + mustRun("", "context", "show", "--json")
	if strings.Contains(out, "s3cret") {
		t.Fatalf("a listing printed the token:\n%s", out)
	}
	raw, _ := os.ReadFile(path)
	if !strings.Contains(string(raw), "token: s3cret-token") {
		t.Fatalf("the token from stdin was not stored:\n%s", raw)
	}

	// Changing a field keeps the others; --unset clears one.
	mustRun("", "context", "set", "prod", "--nats", "nats://10.0.0.8:4222", "--unset", "names,token")
	mustRun("", "context", "set", "prod", "--controller", "https://berth2.example.com")
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	p := c.Contexts["prod"]
	if p.Controller != "https://berth2.example.com" || p.NATS != "nats://10.0.0.8:4222" || p.Names != "" || p.Token != "" || len(p.Coord) != 2 {
		t.Fatalf("prod after set --nats --unset names,token, then set --controller: got %+v", p)
	}

	// Refusals change nothing.
	before, _ := os.ReadFile(path)
	for _, args := range [][]string{
		{"context", "set", "prod", "--controller", "ftp://x"},
		{"context", "set", "prod", "--coord", "nohostport"},
		{"context", "set", "prod", "--nats", "http://x"},
		{"context", "set", "bad name"},
		{"context", "set", "prod", "--unset", "colour"},
		{"context", "set", "prod", "--token", "a", "--token-stdin"},
		{"context", "use", "missing"},
		{"context", "rm", "missing"},
	} {
		if out, err := runCLI(t, "x\n", args...); err == nil {
			t.Errorf("berth %s: got nil error, want a refusal\n%s", strings.Join(args, " "), out)
		}
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatalf("refused commands changed the file:\n%s\nwas\n%s", after, before)
	}

	if out := mustRun("", "context", "rm", "prod"); !strings.Contains(out, "context prod deleted") {
		t.Fatalf("rm: got %q", out)
	}
	c, _ = loadConfig()
	if c.CurrentContext != "" || len(c.Contexts) != 1 {
		t.Fatalf("after rm of the current context: got current %q and %d contexts, want none current and 1 left", c.CurrentContext, len(c.Contexts))
	}
}

func TestCompletion(t *testing.T) {
	writeConfig(t, "contexts:\n  dev: {}\n  prod: {}\n")
	for shell, want := range map[string]string{
		"bash": "__start_berth", "zsh": "#compdef berth", "fish": "complete -c berth", "powershell": "Register-ArgumentCompleter",
	} {
		out, err := runCLI(t, "", "completion", shell)
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("completion %s: got %v and %d bytes without %q", shell, err, len(out), want)
		}
	}
	if _, err := runCLI(t, "", "completion", "tcsh"); err == nil {
		t.Error("completion tcsh: got nil error, want a refusal")
	}
	// The shells call berth __complete for dynamic values: context names.
	for _, args := range [][]string{{"__complete", "context", "use", ""}, {"__complete", "--context", ""}} {
		out, err := runCLI(t, "", args...)
		if err != nil || !strings.Contains(out, "dev\nprod\n") {
			t.Errorf("berth %s: got %v %q, want dev and prod", strings.Join(args, " "), err, out)
		}
	}
}

func TestStatusUnreachable(t *testing.T) {
	out, err := runCLI(t, "", "status", "--coord", "127.0.0.1:1", "--controller", "http://127.0.0.1:1", "--names", "http://127.0.0.1:1", "--timeout", "2s", "--json")
	var ex *ExitError
	if err == nil || !errors.As(err, &ex) || ex.Code != 1 {
		t.Fatalf("status with nothing reachable: got %v, want exit 1", err)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for what, msg := range map[string]string{"coord": rep.Coord.Error, "services": rep.Services.Error, "deployments": rep.Deployments.Error} {
		if !strings.Contains(msg, "is `berth dev` running?") || !strings.Contains(msg, "berth context use") {
			t.Errorf("%s error: got %q, want what to do", what, msg)
		}
	}
}
