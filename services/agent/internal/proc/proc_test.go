package proc

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// script writes an executable shell script into dir.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	// A zombie is not alive.
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b))
	return len(fields) > 2 && fields[2] != "Z"
}

// readPIDs reads one pid per line.
func readPIDs(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read pids: %v", err)
	}
	var pids []int
	for _, l := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("pid %q: %v", l, err)
		}
		pids = append(pids, n)
	}
	return pids
}

// killLater kills the pids at cleanup, whatever the test did.
func killLater(t *testing.T, pids *[]int) {
	t.Cleanup(func() {
		for _, p := range *pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
}

func TestExitStatusAndOutput(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name     string
		body     string
		wantCode int
		wantOut  string
		wantErr  string
		success  bool
	}{
		{"ok", "echo hello; echo oops >&2; exit 0", 0, "hello\n", "oops\n", true},
		{"retryable", "exit 75", 75, "", "", false},
		{"failed", "echo bad; exit 3", 3, "bad\n", "", false},
		{"stdin", "cat", 0, `{"a":1}`, "", true},
		{"clean env", "echo \"$PATH|$HOME|$BERTH_X\"", 0, "/usr/bin:/bin||y\n", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := script(t, dir, strings.ReplaceAll(tc.name, " ", "-"), tc.body)
			var out, errb bytes.Buffer
			res, err := Run(t.Context(), Spec{Path: p, Stdin: []byte(`{"a":1}`), Env: []string{"PATH=/usr/bin:/bin", "BERTH_X=y"},
				Stdout: &out, Stderr: &errb, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.ExitCode != tc.wantCode || res.Success() != tc.success {
				t.Errorf("exit: got %d (success %v), want %d (success %v)", res.ExitCode, res.Success(), tc.wantCode, tc.success)
			}
			if out.String() != tc.wantOut || errb.String() != tc.wantErr {
				t.Errorf("output: got %q / %q, want %q / %q", out.String(), errb.String(), tc.wantOut, tc.wantErr)
			}
		})
	}
}

func TestStartFailure(t *testing.T) {
	_, err := Run(t.Context(), Spec{Path: filepath.Join(t.TempDir(), "missing")})
	if !errors.Is(err, ErrStart) {
		t.Fatalf("got %v, want ErrStart", err)
	}
}

// TestTimeoutKillsTheWholeGroup runs a script that starts two children, all of them
// ignoring SIGTERM, and checks that the timeout ends every one of them.
func TestTimeoutKillsTheWholeGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pids")
	p := script(t, dir, "stubborn", `trap '' TERM
sleep 300 & echo $! >> `+pidFile+`
sh -c 'trap "" TERM; sleep 300' & echo $! >> `+pidFile+`
echo $$ >> `+pidFile+`
echo started
wait
`)
	var pids []int
	killLater(t, &pids)
	var out bytes.Buffer
	start := time.Now()
	res, err := Run(t.Context(), Spec{Path: p, Stdout: &out, Timeout: 300 * time.Millisecond, KillGrace: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	took := time.Since(start)
	pids = readPIDs(t, pidFile)
	if len(pids) != 3 {
		t.Fatalf("pids: got %v, want 3", pids)
	}
	if !res.TimedOut || !res.Killed || res.Success() {
		t.Errorf("result: got %+v, want timed out and killed", res)
	}
	if took > 5*time.Second {
		t.Errorf("Run took %s, want about timeout + grace", took)
	}
	for _, pid := range pids {
		deadline := time.Now().Add(2 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("process %d of the group is alive after the timeout, want killed", pid)
		}
	}
	if !strings.Contains(res.Describe(300*time.Millisecond), "timed out after 300ms; process group killed") {
		t.Errorf("describe: got %q", res.Describe(300*time.Millisecond))
	}
}

// TestTimeoutTermIsEnough checks that a group that obeys SIGTERM is not waited on for the
// whole grace period.
func TestTimeoutTermIsEnough(t *testing.T) {
	dir := t.TempDir()
	p := script(t, dir, "polite", "sleep 300 & wait\n")
	start := time.Now()
	res, err := Run(t.Context(), Spec{Path: p, Timeout: 200 * time.Millisecond, KillGrace: 10 * time.Second})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Run took %s, want well under the 10s grace", took)
	}
	if !res.TimedOut || res.Killed {
		t.Errorf("result: got %+v, want timed out, not killed", res)
	}
}

// TestDetachedChildSurvives checks that what a detached process leaves behind keeps running
// after Run returns, and that output held open by it does not block Run.
func TestDetachedChildSurvives(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	p := script(t, dir, "start", "sleep 300 & echo $! > "+pidFile+"\necho launched\n")
	var pids []int
	killLater(t, &pids)
	var out bytes.Buffer
	start := time.Now()
	res, err := Run(t.Context(), Spec{Path: p, Stdout: &out, Detach: true, IODelay: 200 * time.Millisecond, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	pids = readPIDs(t, pidFile)
	if !res.Success() {
		t.Fatalf("result: got %+v, want success", res)
	}
	if !res.OutputHeld {
		t.Errorf("OutputHeld: got false, want true (the child kept stdout open)")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Run took %s, want about the IO delay", took)
	}
	if !alive(pids[0]) {
		t.Errorf("detached child %d: got dead, want alive", pids[0])
	}
	if sid, mine := session(t, pids[0]), session(t, os.Getpid()); sid == mine {
		t.Errorf("child session: got %d, the test's own; want a session of its own", sid)
	}
}

// session reads a process's session id from /proc/<pid>/stat.
func session(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// state ppid pgrp session
	n, err := strconv.Atoi(fields[3])
	if err != nil {
		t.Fatalf("stat of %d: %q", pid, s)
	}
	return n
}

func TestCancel(t *testing.T) {
	dir := t.TempDir()
	p := script(t, dir, "long", "sleep 300\n")
	ctx, cancel := contextWithCancelAfter(t, 100*time.Millisecond)
	defer cancel()
	res, err := Run(ctx, Spec{Path: p, KillGrace: time.Second})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !res.Cancelled || res.Success() {
		t.Errorf("result: got %+v, want cancelled", res)
	}
}

func contextWithCancelAfter(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}

// TestKillOrphans checks that the leftovers of a group whose leader is gone are killed,
// and that a group is left alone when its identity does not match.
func TestKillOrphans(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	p := script(t, dir, "leaver", "sleep 300 & echo $! > "+pidFile+"\n")
	var pids []int
	killLater(t, &pids)
	var g Group
	res, err := Run(t.Context(), Spec{Path: p, IODelay: 100 * time.Millisecond, Started: func(pid int) {
		var ierr error
		if g, ierr = Identify(pid); ierr != nil {
			t.Errorf("Identify: %v", ierr)
		}
	}})
	if err != nil || !res.Success() {
		t.Fatalf("Run: %v %+v", err, res)
	}
	pids = readPIDs(t, pidFile)
	if g.PGID != res.PID || g.Start == 0 || g.Boot == "" {
		t.Fatalf("group: got %+v, want the leader %d identified", g, res.PID)
	}
	for _, wrong := range []Group{{PGID: g.PGID, Start: g.Start, Boot: "another-boot"}, {PGID: 0}} {
		if killed, err := KillOrphans(wrong); killed || err != nil {
			t.Errorf("KillOrphans(%+v): got %v %v, want nothing done", wrong, killed, err)
		}
	}
	if !alive(pids[0]) {
		t.Fatalf("orphan %d died before KillOrphans", pids[0])
	}
	killed, err := KillOrphans(g)
	if !killed || err != nil {
		t.Fatalf("KillOrphans: got %v %v, want the group killed", killed, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for alive(pids[0]) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pids[0]) {
		t.Errorf("orphan %d: got alive, want killed", pids[0])
	}
	// A live leader that is another process than the one recorded (the id was reused) is
	// not touched.
	other := exec.Command("sleep", "300")
	other.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	reused := Group{PGID: other.Process.Pid, Start: 1, Boot: g.Boot}
	if killed, err := KillOrphans(reused); killed || err != nil {
		t.Errorf("KillOrphans of a reused id: got %v %v, want nothing done", killed, err)
	}
	if !alive(other.Process.Pid) {
		t.Errorf("the process that reused the id was killed")
	}
}

// TestRunRetriesBusyExecutable: a script that some process still holds open for writing
// cannot be executed (ETXTBSY), as happens for an instant when another step forks while a
// package is being unpacked; Run tries again and starts it once the writer is gone.
func TestRunRetriesBusyExecutable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteString("#!/bin/sh\necho started\n"); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() {
		defer close(released)
		time.Sleep(30 * time.Millisecond)
		w.Close()
	}()
	var out bytes.Buffer
	res, err := Run(t.Context(), Spec{Path: path, Stdout: &out, Timeout: 5 * time.Second})
	<-released
	if err != nil {
		t.Fatalf("Run of a script busy for 30ms: %v, want it started once free", err)
	}
	if res.ExitCode != 0 || strings.TrimSpace(out.String()) != "started" {
		t.Fatalf("got exit %d, output %q; want 0, started", res.ExitCode, out.String())
	}
}
