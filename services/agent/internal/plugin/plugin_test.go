package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"package-deploy", true},
		{"a", true},
		{"x_1-2", true},
		{"", false},
		{"-x", false},
		{"_x", false},
		{"Upper", false},
		{"../etc/passwd", false},
		{"/bin/sh", false},
		{"a/b", false},
		{"a.b", false},
		{"a b", false},
		{strings.Repeat("a", MaxNameLen+1), false},
	}
	for _, tc := range tests {
		err := ValidName("plugin", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidName(%q): got %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func writePlugin(t *testing.T, dir, name, body string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), mode); err != nil {
		t.Fatal(err)
	}
}

// echoBuiltin is a real built-in used to check the contract: it fails as told by its
// "outcome" argument.
type echoBuiltin struct{}

func (echoBuiltin) Name() string      { return "echo" }
func (echoBuiltin) Actions() []string { return []string{"say"} }
func (echoBuiltin) Run(ctx context.Context, req Request, out Writers) error {
	out.Stdout.Printf("hello %s", req.Arguments["who"])
	switch req.Arguments["outcome"] {
	case "retry":
		return Retryable(errors.New("server away"))
	case "fail":
		return errors.New("broken")
	case "wait":
		<-ctx.Done()
		return ctx.Err()
	case "panic":
		panic("boom")
	}
	return nil
}

func newRunner(t *testing.T, dirs ...string) *Runner {
	t.Helper()
	reg, err := NewRegistry(echoBuiltin{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRunner(Config{Dirs: dirs, Builtins: reg, Path: "/usr/bin:/bin",
		Facts: map[string]string{"BERTH_HOST_ID": "h1"}, KillGrace: time.Second, WorkDir: filepath.Join(t.TempDir(), "work")})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLookup(t *testing.T) {
	d1, d2 := t.TempDir(), t.TempDir()
	writePlugin(t, d2, "hello", "exit 0\n", 0o755)
	writePlugin(t, d1, "noexec", "exit 0\n", 0o644)
	writePlugin(t, d2, "echo", "exit 0\n", 0o755) // shadowed by the built-in
	if err := os.Mkdir(filepath.Join(d1, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := newRunner(t, d1, d2)
	tests := []struct {
		plugin, action string
		wantPath       string
		builtin        bool
		wantErr        string
	}{
		{"hello", "run", filepath.Join(d2, "hello"), false, ""},
		{"echo", "say", "", true, ""},
		{"echo", "other", "", false, "has no action"},
		{"missing", "run", "", false, "no plugin \"missing\""},
		{"noexec", "run", "", false, "not executable"},
		{"adir", "run", "", false, "not a regular file"},
		{"../hello", "run", "", false, "not a path"},
		{"hello", "Run", "", false, "action"},
	}
	for _, tc := range tests {
		p, err := r.Lookup(tc.plugin, tc.action)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Lookup(%q, %q): got %v, want an error with %q", tc.plugin, tc.action, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Lookup(%q, %q): %v", tc.plugin, tc.action, err)
			continue
		}
		if p.Path != tc.wantPath || (p.Builtin != nil) != tc.builtin {
			t.Errorf("Lookup(%q): got %+v, want path %q builtin %v", tc.plugin, p, tc.wantPath, tc.builtin)
		}
	}
	if got, want := r.Available(), []string{"echo", "hello"}; !slices.Equal(got, want) {
		t.Errorf("Available: got %v, want %v", got, want)
	}
}

// collector gathers emitted lines.
type collector struct {
	mu    sync.Mutex
	lines []string
}

func (c *collector) emit(s agentv1.Stream, lines []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range lines {
		c.lines = append(c.lines, strings.ToLower(strings.TrimPrefix(s.String(), "STREAM_"))+": "+l)
	}
}

func TestRunExecutable(t *testing.T) {
	dir := t.TempDir()
	// The plugin prints its argv, environment and request, then exits as the request says.
	writePlugin(t, dir, "probe", `echo "argv=$0 $1 $#"
env | sort | tr '\n' ' '; echo
read -r req; echo "req=$req"
echo "cwd=$(pwd)"
echo warn >&2
case "$req" in *'"code":"75"'*) exit 75;; *'"code":"3"'*) exit 3;; esac
exit 0
`, 0o755)
	r := newRunner(t, dir)
	p, err := r.Lookup("probe", "run")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		code      string
		wantState agentv1.StepState
		wantClass agentv1.FailureClass
		wantExit  int
	}{
		{"0", agentv1.StepState_STEP_STATE_OK, agentv1.FailureClass_FAILURE_CLASS_UNSPECIFIED, 0},
		{"75", agentv1.StepState_STEP_STATE_RETRYABLE, agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, 75},
		{"3", agentv1.StepState_STEP_STATE_FAILED, agentv1.FailureClass_FAILURE_CLASS_APPLICATION, 3},
	}
	for _, tc := range tests {
		t.Run("exit "+tc.code, func(t *testing.T) {
			var c collector
			out := NewOutput(c.emit, 0)
			req := Request{TaskID: "t1", StepID: "s1", Attempt: 2, Host: "h1", Plugin: "probe", Action: "run",
				Arguments: map[string]string{"code": tc.code}, Payload: json.RawMessage(`{"x":1}`)}
			o := r.Run(t.Context(), p, req, 10*time.Second, out, nil)
			if o.State != tc.wantState || o.Class != tc.wantClass || o.ExitCode != tc.wantExit {
				t.Errorf("outcome: got %v %v exit %d (%s), want %v %v exit %d", o.State, o.Class, o.ExitCode, o.Message, tc.wantState, tc.wantClass, tc.wantExit)
			}
			all := strings.Join(c.lines, "\n")
			for _, want := range []string{
				" run 1",
				"BERTH_HOST_ID=h1", "BERTH_TASK_ID=t1", "BERTH_ATTEMPT=2", "PATH=/usr/bin:/bin",
				`"arguments":{"code":"` + tc.code + `"}`, `"payload":{"x":1}`,
				"cwd=" + filepath.Join(filepath.Dir(r.cfg.WorkDir), "work", "probe"),
				"stderr: warn",
			} {
				if !strings.Contains(all, want) {
					t.Errorf("output: got\n%s\nwant it to contain %q", all, want)
				}
			}
			for _, leak := range []string{"HOME=", "USER=", "GOPATH="} {
				if strings.Contains(all, leak) {
					t.Errorf("environment: got %s from the agent's, want a clean one", leak)
				}
			}
		})
	}
}

func TestRunTimeout(t *testing.T) {
	dir := t.TempDir()
	writePlugin(t, dir, "sleepy", "echo going to sleep; sleep 300\n", 0o755)
	r := newRunner(t, dir)
	p, _ := r.Lookup("sleepy", "run")
	var c collector
	o := r.Run(t.Context(), p, Request{Plugin: "sleepy", Action: "run"}, 200*time.Millisecond, NewOutput(c.emit, 0), nil)
	if o.State != agentv1.StepState_STEP_STATE_FAILED || !strings.Contains(o.Message, "timed out after 200ms") {
		t.Errorf("outcome: got %v %q, want failed, timed out", o.State, o.Message)
	}
}

func TestRunBuiltin(t *testing.T) {
	r := newRunner(t)
	p, _ := r.Lookup("echo", "say")
	tests := []struct {
		outcome   string
		wantState agentv1.StepState
		wantExit  int
		wantMsg   string
	}{
		{"", agentv1.StepState_STEP_STATE_OK, 0, "ok"},
		{"retry", agentv1.StepState_STEP_STATE_RETRYABLE, 75, "server away"},
		{"fail", agentv1.StepState_STEP_STATE_FAILED, 1, "broken"},
		{"wait", agentv1.StepState_STEP_STATE_FAILED, 1, "timed out after 100ms"},
		{"panic", agentv1.StepState_STEP_STATE_FAILED, 1, "panicked: boom"},
	}
	for _, tc := range tests {
		var c collector
		o := r.Run(t.Context(), p, Request{Plugin: "echo", Action: "say", Arguments: map[string]string{"who": "you", "outcome": tc.outcome}},
			100*time.Millisecond, NewOutput(c.emit, 0), nil)
		if o.State != tc.wantState || o.ExitCode != tc.wantExit || !strings.Contains(o.Message, tc.wantMsg) {
			t.Errorf("outcome %q: got %v exit %d %q, want %v exit %d %q", tc.outcome, o.State, o.ExitCode, o.Message, tc.wantState, tc.wantExit, tc.wantMsg)
		}
		if len(c.lines) == 0 || c.lines[0] != "stdout: hello you" {
			t.Errorf("outcome %q: output got %v, want the plugin's line", tc.outcome, c.lines)
		}
	}
}

func TestOutputLinesAndCap(t *testing.T) {
	var c collector
	o := NewOutput(c.emit, 40)
	w := o.Stdout()
	fmt.Fprint(w, "one\ntw")
	fmt.Fprint(w, "o\r\nthree\n")
	fmt.Fprint(o.Stderr(), "err line\n")
	fmt.Fprint(w, "this line goes past the cap\nand is cut\n")
	fmt.Fprint(w, "dropped\n")
	o.Flush()
	want := []string{"stdout: one", "stdout: two", "stdout: three", "stderr: err line", "stdout: this line goes p",
		"stdout: [berth: output truncated after 40 bytes]"}
	if !slices.Equal(c.lines, want) {
		t.Errorf("lines: got %q, want %q", c.lines, want)
	}
	if !o.Truncated() {
		t.Errorf("Truncated: got false, want true")
	}

	var long collector
	o2 := NewOutput(long.emit, 0)
	fmt.Fprint(o2.Stdout(), strings.Repeat("x", MaxLineBytes+10)+"\nend")
	o2.Flush()
	if len(long.lines) != 3 || len(long.lines[0]) != len("stdout: ")+MaxLineBytes || long.lines[2] != "stdout: end" {
		t.Errorf("long line: got %d lines, want it split at %d bytes and the unfinished last line flushed", len(long.lines), MaxLineBytes)
	}
	for i := range 30 {
		fmt.Fprintf(o2.Stdout(), "l%d\n", i)
	}
	if tail := o2.Tail(); len(tail) != TailLines || tail[TailLines-1] != "l29" {
		t.Errorf("tail: got %d lines ending %q, want %d ending l29", len(tail), tail[len(tail)-1], TailLines)
	}
}
