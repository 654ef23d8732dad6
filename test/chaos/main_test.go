// Package chaos runs Berth's parts as they run in production — berth-coord as three
// processes, the controller, agents and NATS — and injects faults while clients work:
// kill -9 of leaders and followers and of every member at once, SIGSTOP pauses longer
// than the election timeout, partitions, cut links and slow links through a fault
// proxy on every peer link, NATS restarts and controller leader crashes. It checks what
// must hold whatever the faults: coord's client histories are linearizable (porcupine),
// its members end in identical states, no deployment is lost or stuck and no step runs
// twice.
//
// `go test -short ./chaos/...` runs each fault once (about two minutes); without -short the
// coord suite draws faults at random for CHAOS_DURATION (default 5m). CHAOS_SEED fixes the
// random choices. scripts/chaos.sh runs the suites and prints their summaries.
package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// binDir holds the binaries built for this test run.
var binDir string

// coordBin is berth-coord built by TestMain.
var coordBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "berth-chaos-bin-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	coordBin = filepath.Join(dir, "berth-coord")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := buildCoord(ctx, coordBin, ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			return 1
		}
	}
	return code
}

// buildCoord builds services/coord/cmd/berth-coord into out with the given build tags.
func buildCoord(ctx context.Context, out, tags string) error {
	args := []string{"build", "-o", out}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	args = append(args, "./cmd/berth-coord")
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = filepath.Join("..", "..", "services", "coord")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build berth-coord (tags %q): %w\n%s", tags, err, b)
	}
	return nil
}

// unsafeCoordBin builds, once, berth-coord with the berth_unsafe_local_reads tag: it
// serves linearizable reads from local state, the bug the checker must catch.
var unsafeCoordBin = sync.OnceValues(func() (string, error) {
	out := filepath.Join(binDir, "berth-coord-unsafe-local-reads")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return out, buildCoord(ctx, out, "berth_unsafe_local_reads")
})

// goTool is the go command of the running toolchain, else the one on PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// seed returns CHAOS_SEED or a fresh seed, logged so that a run can be repeated.
func seed(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: not an unsigned integer", s)
		}
		return v
	}
	v := uint64(time.Now().UnixNano())
	t.Logf("CHAOS_SEED=%d", v)
	return v
}

// duration returns CHAOS_DURATION or def.
func duration(t *testing.T, def time.Duration) time.Duration {
	t.Helper()
	s := os.Getenv("CHAOS_DURATION")
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("CHAOS_DURATION=%q: want a positive duration such as 10m", s)
	}
	return d
}

// keptDir is where keepFile copies logs: it outlives the test run.
var keptDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "berth-chaos-logs-*") })

// keepFile copies a file (a process's log) out of the test's temporary directory, which is
// removed when the test ends, and returns the copy's path (or why there is none).
func keepFile(t *testing.T, file string) string {
	dir, err := keptDir()
	if err != nil {
		return fmt.Sprintf("(not kept: %v)", err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("(not kept: %v)", err)
	}
	dst := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-"+filepath.Base(file))
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		return fmt.Sprintf("(not kept: %v)", err)
	}
	return dst
}
