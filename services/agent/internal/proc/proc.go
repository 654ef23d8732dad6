// Package proc runs one executable the way the agent runs every plugin and package script:
// directly (never through a shell), with a clean environment, in a process group of its
// own, with a timeout that sends SIGTERM to the whole group and SIGKILL after a grace
// period. A detached process (a package's start script) gets a session of its own instead,
// so that what it leaves running survives the agent.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults of Spec.
const (
	// DefaultKillGrace is the time between SIGTERM and SIGKILL when Spec.KillGrace is 0.
	DefaultKillGrace = 5 * time.Second
	// DefaultIODelay is how long Run keeps reading output after the process exited when
	// Spec.IODelay is 0: a background child that inherited the pipes may hold them open.
	DefaultIODelay = time.Second
)

// Spec is one process to run.
type Spec struct {
	// Path is the executable.
	Path string
	// Args is the whole argv, argv[0] included; empty means just Path.
	Args []string
	// Dir is the working directory; empty means the agent's.
	Dir string
	// Env is the whole environment; nil means an empty one (never the agent's).
	Env []string
	// Stdin is written to the process's standard input; nil means /dev/null.
	Stdin []byte
	// Stdout and Stderr receive the output; nil discards it. When both are the same
	// *os.File the process writes to the file directly, with no pipe.
	Stdout, Stderr io.Writer
	// Timeout bounds the run; zero means only ctx bounds it.
	Timeout time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL; zero means DefaultKillGrace.
	KillGrace time.Duration
	// IODelay is how long output is still read after the process exited; zero means
	// DefaultIODelay.
	IODelay time.Duration
	// Detach starts the process in a new session (setsid) rather than only a new process
	// group, and does not tie it to the agent's life: what it leaves running keeps running
	// when the agent stops. Without Detach the process gets SIGKILL when the agent dies.
	Detach bool
	// Started, when set, is called with the process id (= its group id) right after the
	// process started, before Run waits for it.
	Started func(pid int)
}

// Result is how a process ended.
type Result struct {
	// ExitCode is the exit status, or -1 when a signal ended the process.
	ExitCode int
	// Signal is the signal that ended the process, when one did.
	Signal syscall.Signal
	// TimedOut is set when Spec.Timeout expired and the group was signalled.
	TimedOut bool
	// Cancelled is set when ctx ended first and the group was signalled.
	Cancelled bool
	// Killed is set when the group had to be sent SIGKILL after the grace period.
	Killed bool
	// OutputHeld is set when the output pipes were still open IODelay after the process
	// exited (a background child kept them); reading stopped there.
	OutputHeld bool
	// PID is the process id, which is also its process group id.
	PID int
	// Duration is the time from start to exit.
	Duration time.Duration
}

// Success reports whether the process exited with status 0 on its own.
func (r Result) Success() bool { return r.ExitCode == 0 && !r.TimedOut && !r.Cancelled }

// Describe says in a few words how the process ended (exit status 3, killed by signal
// terminated, timed out after 5s).
func (r Result) Describe(timeout time.Duration) string {
	var s string
	switch {
	case r.Signal != 0:
		s = "killed by signal " + r.Signal.String()
	default:
		s = fmt.Sprintf("exit status %d", r.ExitCode)
	}
	switch {
	case r.TimedOut && r.Killed:
		return fmt.Sprintf("timed out after %s; process group killed (%s)", timeout, s)
	case r.TimedOut:
		return fmt.Sprintf("timed out after %s; process group terminated (%s)", timeout, s)
	case r.Cancelled:
		return "cancelled; process group terminated (" + s + ")"
	}
	return s
}

// startCmd starts a command made by newCmd, again when exec fails with ETXTBSY: a file
// that is executed while any process holds it open for writing is "busy", and a fork of
// this process (another step starting a script) inherits for an instant the descriptors
// of files it is writing (packages being unpacked), so a script written and run by
// concurrent steps can meet it for a moment although nothing writes it any more (Go
// issue 22315). A few short retries outlast that instant.
func startCmd(ctx context.Context, newCmd func() *exec.Cmd) (*exec.Cmd, error) {
	delay := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		cmd := newCmd()
		err := cmd.Start()
		if err == nil || !errors.Is(err, syscall.ETXTBSY) || attempt == 8 {
			return cmd, err
		}
		select {
		case <-ctx.Done():
			return cmd, err
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// ErrStart is wrapped by Run's error when the process could not be started at all.
var ErrStart = errors.New("proc: start")

// Run starts the process and waits for it. The error is non-nil only when the process
// could not start; how it ended is in the Result. On timeout or when ctx ends, the whole
// process group gets SIGTERM, then SIGKILL after KillGrace if anything in it is still
// alive; Run returns once the process has been reaped and its output read (or IODelay
// passed). Run starts no goroutine that outlives it.
func Run(ctx context.Context, s Spec) (Result, error) {
	if s.KillGrace <= 0 {
		s.KillGrace = DefaultKillGrace
	}
	if s.IODelay <= 0 {
		s.IODelay = DefaultIODelay
	}
	args := s.Args
	if len(args) == 0 {
		args = []string{s.Path}
	}
	newCmd := func() *exec.Cmd {
		cmd := &exec.Cmd{Path: s.Path, Args: args, Dir: s.Dir, Env: s.Env, WaitDelay: s.IODelay}
		if cmd.Env == nil {
			cmd.Env = []string{}
		}
		if s.Stdin != nil {
			cmd.Stdin = bytes.NewReader(s.Stdin)
		}
		cmd.Stdout, cmd.Stderr = s.Stdout, s.Stderr
		if s.Detach {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		} else {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		}
		return cmd
	}
	if err := ctx.Err(); err != nil {
		return Result{ExitCode: -1, Cancelled: true}, fmt.Errorf("%w %s: %w", ErrStart, s.Path, err)
	}
	start := time.Now()
	cmd, err := startCmd(ctx, newCmd)
	if err != nil {
		return Result{ExitCode: -1}, fmt.Errorf("%w %s: %w", ErrStart, s.Path, err)
	}
	res := Result{PID: cmd.Process.Pid}
	if s.Started != nil {
		s.Started(res.PID)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var timeoutC <-chan time.Time
	if s.Timeout > 0 {
		t := time.NewTimer(s.Timeout)
		defer t.Stop()
		timeoutC = t.C
	}
	var waitErr error
	select {
	case waitErr = <-done:
	case <-timeoutC:
		res.TimedOut = true
		waitErr = stopGroup(res.PID, s.KillGrace, done, &res)
	case <-ctx.Done():
		res.Cancelled = true
		waitErr = stopGroup(res.PID, s.KillGrace, done, &res)
	}
	res.Duration = time.Since(start)
	if errors.Is(waitErr, exec.ErrWaitDelay) {
		res.OutputHeld = true
	}
	res.ExitCode = -1
	if ps := cmd.ProcessState; ps != nil {
		res.ExitCode = ps.ExitCode()
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Signal = ws.Signal()
		}
	}
	return res, nil
}

// stopGroup sends SIGTERM to the process group pgid, waits up to grace for the leader to
// be reaped and the group to empty, then sends SIGKILL to whatever is left, and returns
// the leader's Wait error.
func stopGroup(pgid int, grace time.Duration, done <-chan error, res *Result) error {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var (
		waitErr error
		reaped  bool
	)
	for {
		select {
		case waitErr = <-done:
			reaped = true
			if groupGone(pgid) {
				return waitErr
			}
		case <-tick.C:
			if reaped && groupGone(pgid) {
				return waitErr
			}
		case <-deadline.C:
			if !groupGone(pgid) {
				res.Killed = true
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
			}
			if !reaped {
				waitErr = <-done
			}
			return waitErr
		}
	}
}

// groupGone reports whether no process is left in the process group.
func groupGone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

// Executable reports whether path is a regular file with an execute bit, following
// symbolic links.
func Executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", path)
	}
	return nil
}

// Group names a process group in a way that survives the agent: its id, the start time of
// its leader (clock ticks since boot) and the boot it belongs to, so that a group id reused
// after a reboot or by a new leader is not mistaken for it.
type Group struct {
	PGID  int    `json:"pgid"`
	Start uint64 `json:"start"`
	Boot  string `json:"boot"`
}

// Identify returns the Group led by pid, which must be alive.
func Identify(pid int) (Group, error) {
	start, err := startTime(pid)
	if err != nil {
		return Group{}, err
	}
	boot, err := bootID()
	if err != nil {
		return Group{}, err
	}
	return Group{PGID: pid, Start: start, Boot: boot}, nil
}

// bootID reads the kernel's boot id once.
var bootID = sync.OnceValues(func() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
})

// KillOrphans sends SIGKILL to what is left of group g, for a step whose agent died: only
// when this is the same boot, and the group's leader is either gone (its orphans keep the
// group id in use, so no other group can have it) or still the same process. It reports
// whether a signal was sent.
func KillOrphans(g Group) (bool, error) {
	if g.PGID <= 1 {
		return false, nil
	}
	if boot, err := bootID(); err != nil || boot != g.Boot {
		return false, nil
	}
	if start, err := startTime(g.PGID); err == nil && start != g.Start {
		return false, nil // another process has the leader's id now
	}
	if groupGone(g.PGID) {
		return false, nil
	}
	if err := syscall.Kill(-g.PGID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("kill process group %d: %w", g.PGID, err)
	}
	return true, nil
}

// startTime reads a process's start time (field 22 of /proc/<pid>/stat).
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat of %d: malformed", pid)
	}
	// After "pid (comm)": state is field 3, starttime field 22.
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0, fmt.Errorf("stat of %d: malformed", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}
