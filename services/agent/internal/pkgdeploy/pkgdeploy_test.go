package pkgdeploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	"github.com/berthdev/berth/services/agent/internal/plugin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The packages of these tests run no server: start writes "running" with the version into
// a state file outside the release (as a real app holds a port), stop removes it, health
// checks it. The state file is $BERTH_DATA_DIR/<service>.run.

const (
	tinyStart  = "#!/bin/sh\necho \"started $BERTH_VERSION\"\necho \"$BERTH_VERSION\" > \"$BERTH_DATA_DIR/run\"\n"
	tinyStop   = "#!/bin/sh\nrm -f \"$BERTH_DATA_DIR/run\"\n"
	tinyHealth = "#!/bin/sh\n[ \"$(cat \"$BERTH_DATA_DIR/run\" 2>/dev/null)\" = \"$BERTH_VERSION\" ]\n"
)

func tinyPkg(svc string, health string) map[string]string {
	return map[string]string{
		"berth.yaml": fmt.Sprintf("service: %s\nscripts:\n  start: bin/start\n  stop: bin/stop\n  health: bin/health\nhealth:\n  interval: 100ms\n  timeout: 90ms\n  rise: 2\n", svc),
		"bin/start":  tinyStart,
		"bin/stop":   tinyStop,
		"bin/health": health,
	}
}

// writeTgz writes files (names ending in no extension under bin/ are executable) as a
// .tar.gz and returns its file:// URL and sha256.
func writeTgz(t *testing.T, dir, name string, files map[string]string) (string, string) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		mode := int64(0o644)
		if strings.HasPrefix(n, "bin/") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: mode, Size: int64(len(files[n]))}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(files[n]))
	}
	tw.Close()
	zw.Close()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return "file://" + p, hex.EncodeToString(sum[:])
}

type fixture struct {
	p    *Plugin
	data string
	pkgs string
	n    int
}

func newFixture(t *testing.T, keep int) *fixture {
	t.Helper()
	data := t.TempDir()
	p, err := New(Config{AppsDir: filepath.Join(data, "apps"), CacheDir: filepath.Join(data, "cache"), KeepReleases: keep,
		ScriptTimeout: 5 * time.Second, HealthDeadline: 2 * time.Second, KillGrace: time.Second,
		Facts: map[string]string{"BERTH_DATA_DIR": data}, FetchRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{p: p, data: data, pkgs: t.TempDir()}
}

// run runs an action and returns its error and output.
func (f *fixture) run(t *testing.T, action string, args map[string]string) (string, error) {
	t.Helper()
	f.n++
	var mu sync.Mutex
	var lines []string
	out := plugin.NewOutput(func(_ agentv1.Stream, ls []string) {
		mu.Lock()
		lines = append(lines, ls...)
		mu.Unlock()
	}, 0)
	err := f.p.Run(t.Context(), plugin.Request{TaskID: "t", StepID: fmt.Sprint(f.n), Attempt: 1, Plugin: Name, Action: action, Arguments: args},
		plugin.Writers{Stdout: out.Stdout(), Stderr: out.Stderr()})
	out.Flush()
	return strings.Join(lines, "\n"), err
}

func (f *fixture) deploy(t *testing.T, svc, version string, files map[string]string) (string, error) {
	url, sum := writeTgz(t, f.pkgs, strings.ReplaceAll(svc, "/", "-")+"-"+version+".tar.gz", files)
	return f.run(t, ActionDeploy, map[string]string{"url": url, "sha256": sum})
}

func (f *fixture) running(t *testing.T) string {
	b, _ := os.ReadFile(filepath.Join(f.data, "run"))
	return strings.TrimSpace(string(b))
}

func (f *fixture) releases(svc string) []string {
	ents, _ := os.ReadDir(filepath.Join(f.p.cfg.AppsDir, svc, "releases"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestKeepsTheLastReleases(t *testing.T) {
	f := newFixture(t, 3)
	svc := "shop/cart"
	for i := 1; i <= 5; i++ {
		files := tinyPkg(svc, tinyHealth)
		files["VERSION"] = fmt.Sprint(i) // every release from other bytes, so each has its cache file
		if out, err := f.deploy(t, svc, fmt.Sprint(i), files); err != nil {
			t.Fatalf("deploy %d: %v\n%s", i, err, out)
		}
		if got := f.running(t); got != fmt.Sprint(i) {
			t.Fatalf("after deploy %d: running %q", i, got)
		}
	}
	if got, want := f.releases(svc), []string{"3", "4", "5"}; !slices.Equal(got, want) {
		t.Errorf("releases: got %v, want %v", got, want)
	}
	if cached, _ := os.ReadDir(f.p.cfg.CacheDir); len(cached) != 3 {
		t.Errorf("artifact cache: got %d files, want the 3 kept releases'", len(cached))
	}
	// Rollback goes to 4, then to 5 (the previous current), and a named version works.
	for _, want := range []string{"4", "5"} {
		if out, err := f.run(t, ActionRollback, map[string]string{"service": svc}); err != nil {
			t.Fatalf("rollback: %v\n%s", err, out)
		}
		if got := f.running(t); got != want {
			t.Errorf("after rollback: running %q, want %q", got, want)
		}
	}
	if _, err := f.run(t, ActionRollback, map[string]string{"service": svc, "version": "3"}); err != nil || f.running(t) != "3" {
		t.Errorf("rollback to 3: got %v, running %q", err, f.running(t))
	}
	if _, err := f.run(t, ActionRollback, map[string]string{"service": svc, "version": "1"}); err == nil || !strings.Contains(err.Error(), "release 1 is not on this host") {
		t.Errorf("rollback to a pruned release: got %v", err)
	}
}

func TestStopStartStatusAndRedeploy(t *testing.T) {
	f := newFixture(t, 5)
	svc := "shop/cart"
	if out, err := f.deploy(t, svc, "1", tinyPkg(svc, tinyHealth)); err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	if _, err := f.run(t, ActionStop, map[string]string{"service": svc}); err != nil || f.running(t) != "" {
		t.Fatalf("stop: got %v, running %q", err, f.running(t))
	}
	out, err := f.run(t, ActionStatus, map[string]string{"service": svc})
	if err != nil || !strings.Contains(out, `"current":"1"`) || !strings.Contains(out, `"healthy":false`) {
		t.Errorf("status when stopped: got %v %q", err, out)
	}
	// Deploying the current version again starts it when it is down, and runs nothing else.
	if out, err := f.deploy(t, svc, "1", tinyPkg(svc, tinyHealth)); err != nil || f.running(t) != "1" || !strings.Contains(out, "already current") {
		t.Fatalf("redeploy: got %v, running %q\n%s", err, f.running(t), out)
	}
	if _, err := f.run(t, ActionStop, map[string]string{"service": svc}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.run(t, ActionStart, map[string]string{"service": svc}); err != nil || f.running(t) != "1" {
		t.Errorf("start: got %v, running %q", err, f.running(t))
	}
	if _, err := f.run(t, ActionRollback, map[string]string{"service": svc}); err == nil || !strings.Contains(err.Error(), "no previous release") {
		t.Errorf("rollback with one release: got %v", err)
	}
	if _, err := f.run(t, ActionStatus, map[string]string{"service": "shop/none"}); err == nil || !strings.Contains(err.Error(), "not deployed on this host") {
		t.Errorf("status of an unknown service: got %v", err)
	}
	// A version already on disk from other bytes is refused.
	other := tinyPkg(svc, tinyHealth)
	other["extra"] = "x"
	if _, err := f.deploy(t, svc, "1", other); err == nil || !strings.Contains(err.Error(), "already on this host from another package") {
		t.Errorf("same version, other package: got %v", err)
	}
}

func TestFirstReleaseThatNeverGetsHealthy(t *testing.T) {
	f := newFixture(t, 5)
	svc := "shop/cart"
	out, err := f.deploy(t, svc, "1", tinyPkg(svc, "#!/bin/sh\necho still warming up\nexit 1\n"))
	var se *plugin.StepError
	if err == nil || !strings.Contains(err.Error(), "health did not pass 2 time(s) in a row within 2s") ||
		!strings.Contains(err.Error(), "still warming up") || !strings.Contains(err.Error(), "no previous release") {
		t.Fatalf("deploy: got %v\n%s", err, out)
	}
	if !asStepError(err, &se) || se.Class != agentv1.FailureClass_FAILURE_CLASS_APPLICATION {
		t.Errorf("class: got %v, want application", err)
	}
	if _, err := os.Lstat(filepath.Join(f.p.cfg.AppsDir, svc, "current")); !os.IsNotExist(err) {
		t.Errorf("current: got %v, want no link after the first release failed", err)
	}
	if got := f.releases(svc); len(got) != 0 {
		t.Errorf("releases: got %v, want none", got)
	}
	if f.running(t) != "" {
		t.Errorf("the failed release was left running")
	}
}

func asStepError(err error, se **plugin.StepError) bool {
	for err != nil {
		if s, ok := err.(*plugin.StepError); ok {
			*se = s
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

func TestScriptPathStaysInside(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "ok"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("/bin/sh", filepath.Join(dir, "bin", "out"))
	os.Symlink("ok", filepath.Join(dir, "bin", "in"))
	tests := []struct {
		rel     string
		wantErr string
	}{
		{"bin/ok", ""},
		{"bin/in", ""},
		{"bin/out", "leads outside the package"},
		{"../x", "not a path inside the package"},
		{"/bin/sh", "not a path inside the package"},
		{"bin/missing", "no such file"},
	}
	for _, tc := range tests {
		_, err := scriptPath(dir, tc.rel)
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("scriptPath(%q): got %v, want %q", tc.rel, err, tc.wantErr)
		}
	}
}

func TestDeriveVersion(t *testing.T) {
	sum := strings.Repeat("0123456789abcdef", 4)
	tests := []struct{ url, svc, want string }{
		{"ftp://h/pub/hotel-search-1.4.2.tar.gz", "hotel/search", "1.4.2"},
		{"https://h/search-1.4.2.tgz", "hotel/search", "1.4.2"},
		{"file:///x/hotel-search-2.zip", "hotel/search", "2"},
		{"file:///x/package.tar.gz", "hotel/search", "sha256-0123456789ab"},
		{"file:///x/hotel-search-..bad.tar.gz", "hotel/search", "sha256-0123456789ab"},
	}
	for _, tc := range tests {
		if got := deriveVersion(tc.url, tc.svc, sum); got != tc.want {
			t.Errorf("deriveVersion(%q, %q): got %q, want %q", tc.url, tc.svc, got, tc.want)
		}
	}
}

func TestOneActionPerServiceAtATime(t *testing.T) {
	f := newFixture(t, 5)
	s, err := f.p.openService(t.Context(), "shop/cart")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithTimeout(t, 300*time.Millisecond)
	defer cancel()
	if _, err := f.p.openService(ctx, "shop/cart"); err == nil || !strings.Contains(err.Error(), "another action on shop/cart is still running") {
		t.Errorf("second lock: got %v, want it to wait and give up", err)
	}
	s.unlock()
	s2, err := f.p.openService(t.Context(), "shop/cart")
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	s2.unlock()
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}
