package tmpl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/descriptor"
	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/pkg/natsbus"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/services/agent/internal/configkeys"
	"github.com/berthdev/berth/services/agent/internal/views"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeViews is a hand-written Views: the test sets each service's view.
type fakeViews struct {
	mu    sync.Mutex
	views map[string]*namesv1.ServiceView
	ch    map[string]chan struct{}
	holds map[string]int
}

func newFakeViews() *fakeViews {
	return &fakeViews{views: map[string]*namesv1.ServiceView{}, ch: map[string]chan struct{}{}, holds: map[string]int{}}
}

func (f *fakeViews) chanLocked(s string) chan struct{} {
	if f.ch[s] == nil {
		f.ch[s] = make(chan struct{})
	}
	return f.ch[s]
}

func (f *fakeViews) Hold(s string) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holds[s]++
	return func() { f.mu.Lock(); f.holds[s]--; f.mu.Unlock() }, nil
}

func (f *fakeViews) Get(s string) views.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.views[s]
	snap := views.Snapshot{Service: s, View: v, Loaded: true, Changed: f.chanLocked(s)}
	if v != nil {
		snap.Table = dnsview.Compile(v)
	}
	return snap
}

func (f *fakeViews) Wait(_ context.Context, s string) views.Snapshot { return f.Get(s) }

func (f *fakeViews) set(s string, v *namesv1.ServiceView) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.views[s] = v
	close(f.chanLocked(s))
	f.ch[s] = make(chan struct{})
}

// fakeKeys is a hand-written Keys.
type fakeKeys struct {
	mu   sync.Mutex
	vals map[string][]byte
	ch   chan struct{}
}

func (f *fakeKeys) Want(context.Context, string) error { return nil }
func (f *fakeKeys) Get(k string) configkeys.Value {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ch == nil {
		f.ch = make(chan struct{})
	}
	v, ok := f.vals[k]
	return configkeys.Value{Data: v, Found: ok, Changed: f.ch}
}

// recorder is a Reporter that keeps the events' types.
type recorder struct {
	mu    sync.Mutex
	types []string
}

func (r *recorder) Publish(e natsbus.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.types = append(r.types, e.Type)
}

func (r *recorder) count(typ string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, t := range r.types {
		if t == "dev.berth.template."+typ {
			n++
		}
	}
	return n
}

func view(rev int64, ips ...string) *namesv1.ServiceView {
	v := &namesv1.ServiceView{Service: "hotel/search", Revision: rev}
	for i, ip := range ips {
		v.Instances = append(v.Instances, &namesv1.Instance{Id: "i-" + string(rune('a'+i)), Ip: ip, Port: 8080,
			Health: namesv1.Health_HEALTH_HEALTHY, Weight: 10})
	}
	return v
}

const upstream = `upstream search {
{{- range service "hotel/search" }}
  server {{ .Address }} weight={{ .Weight }};
{{- end }}
}
`

// env is one template under test.
type env struct {
	t       *testing.T
	dir     string
	views   *fakeViews
	rec     *recorder
	m       *Manager
	reloads chan struct{}
	count   int
	mu      sync.Mutex
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, dir: t.TempDir(), views: newFakeViews(), rec: &recorder{}, reloads: make(chan struct{}, 100)}
	m, err := New(Config{Host: "h1", DC: "dc1", Views: e.views, Keys: &fakeKeys{}, Reporter: e.rec, CheckTimeout: 5 * time.Second, Path: "/usr/bin:/bin"})
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

func (e *env) add(src string, spec Spec) *Handle {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, "t.tmpl"), []byte(src), 0o644); err != nil {
		e.t.Fatal(err)
	}
	spec.Service, spec.Source, spec.SourceName, spec.Dest = "edge/nginx", filepath.Join(e.dir, "t.tmpl"), "t.tmpl", filepath.Join(e.dir, "out.conf")
	spec.Dir = e.dir
	spec.Env = []string{"PATH=/usr/bin:/bin"}
	spec.Reload = func(context.Context) error {
		e.mu.Lock()
		e.count++
		e.mu.Unlock()
		e.reloads <- struct{}{}
		return nil
	}
	h, err := e.m.Add(e.t.Context(), spec)
	if err != nil {
		e.t.Fatalf("Add: %v", err)
	}
	e.t.Cleanup(h.Close)
	return h
}

func (e *env) reloadCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.count
}

func (e *env) dest() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "out.conf"))
	return string(b)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUnchangedOutputNoReload(t *testing.T) {
	e := newEnv(t)
	e.views.set("hotel/search", view(1, "10.0.0.1", "10.0.0.2"))
	h := e.add(upstream, Spec{})
	waitFor(t, "first render", func() bool { return h.Status().Renders >= 1 })
	if !strings.Contains(e.dest(), "server 10.0.0.1:8080 weight=10;") {
		t.Fatalf("first render: got %q, want both servers", e.dest())
	}
	// The first render reloads the app (its file was new).
	waitFor(t, "first reload", func() bool { return e.reloadCount() == 1 })
	e.views.set("hotel/search", view(2, "10.0.0.1", "10.0.0.2", "10.0.0.3"))
	waitFor(t, "reload after a change", func() bool { return e.reloadCount() == 2 })

	// A new revision with the same healthy set, and an unhealthy instance appearing: the
	// output bytes are the same, so nothing is written and nothing reloaded.
	v := view(3, "10.0.0.1", "10.0.0.2", "10.0.0.3")
	v.Instances = append(v.Instances, &namesv1.Instance{Id: "i-z", Ip: "10.0.0.9", Port: 8080, Health: namesv1.Health_HEALTH_UNHEALTHY})
	e.views.set("hotel/search", v)
	waitFor(t, "render of revision 3", func() bool { return e.m.WaitApplied(shortCtx(t), "hotel/search", 3) == nil })
	if got := h.Status().Outcome; got != OutcomeUnchanged {
		t.Errorf("outcome after an unchanged render: got %s, want %s", got, OutcomeUnchanged)
	}
	if got := e.reloadCount(); got != 2 {
		t.Errorf("reloads: got %d, want 2 (unchanged output must not reload)", got)
	}
	if got := e.rec.count(EventRendered); got != 2 {
		t.Errorf("rendered events: got %d, want 2", got)
	}
}

func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

func TestWaitCoalescesBurst(t *testing.T) {
	e := newEnv(t)
	e.views.set("hotel/search", view(1, "10.0.0.1"))
	e.add(upstream, Spec{Wait: descriptor.Wait{Min: 300 * time.Millisecond, Max: 3 * time.Second}})
	waitFor(t, "first render", func() bool { return e.reloadCount() == 1 })
	// Ten changes, 20 ms apart, each with a new address: one render, one reload.
	for i := range 10 {
		e.views.set("hotel/search", view(int64(2+i), "10.0.0.1", fmt.Sprintf("10.0.1.%d", i+1)))
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, "the burst's render", func() bool { return e.m.WaitApplied(shortCtx(t), "hotel/search", 11) == nil })
	time.Sleep(500 * time.Millisecond)
	if got := e.reloadCount(); got != 2 {
		t.Errorf("reloads after a burst of 10 changes with wait.min 300ms: got %d, want 2 (the first render's and the burst's)", got)
	}
	if !strings.Contains(e.dest(), "10.0.1.10:8080") {
		t.Errorf("file after the burst: got %q, want the last view's servers", e.dest())
	}
}

func TestWaitMaxBoundsDelay(t *testing.T) {
	e := newEnv(t)
	e.views.set("hotel/search", view(1, "10.0.0.1"))
	e.add(upstream, Spec{Wait: descriptor.Wait{Min: 200 * time.Millisecond, Max: 600 * time.Millisecond}})
	waitFor(t, "first render", func() bool { return e.reloadCount() == 1 })
	// Changes every 100 ms for 1.5 s never leave 200 ms of quiet; max forces renders.
	start := time.Now()
	for i := 0; time.Since(start) < 1500*time.Millisecond; i++ {
		e.views.set("hotel/search", view(int64(2+i), "10.0.0.1", fmt.Sprintf("10.0.2.%d", i+1)))
		time.Sleep(100 * time.Millisecond)
	}
	if got := e.reloadCount() - 1; got < 1 || got > 3 {
		t.Errorf("reloads over 1.5 s of changes every 100ms with wait max 600ms: got %d, want 1 to 3", got)
	}
}

func TestFailingCheckKeepsOldFile(t *testing.T) {
	e := newEnv(t)
	check := filepath.Join(e.dir, "check.sh")
	// The check refuses any file that names 10.0.0.66.
	if err := os.WriteFile(check, []byte("#!/bin/sh\n! grep -q 10.0.0.66 \"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.views.set("hotel/search", view(1, "10.0.0.1"))
	h := e.add(upstream, Spec{Check: []string{"./check.sh", PathPlaceholder}})
	waitFor(t, "first render", func() bool { return e.reloadCount() == 1 })
	good := e.dest()
	if !strings.Contains(good, "10.0.0.1:8080") {
		t.Fatalf("first render: got %q", good)
	}
	e.views.set("hotel/search", view(2, "10.0.0.1", "10.0.0.66"))
	waitFor(t, "render of revision 2", func() bool { return e.m.WaitApplied(shortCtx(t), "hotel/search", 2) == nil })
	if got := h.Status().Outcome; got != OutcomeCheckFailed {
		t.Fatalf("outcome: got %s (%s), want %s", got, h.Status().Reason, OutcomeCheckFailed)
	}
	if got := e.dest(); got != good {
		t.Errorf("file after a failed check: got %q, want the old %q", got, good)
	}
	if e.reloadCount() != 1 || e.rec.count(EventCheckFailed) != 1 {
		t.Errorf("after a failed check: %d reloads, %d check_failed events; want 1 (the first render's) and 1", e.reloadCount(), e.rec.count(EventCheckFailed))
	}
	leftovers, _ := filepath.Glob(filepath.Join(e.dir, ".out.conf.berth-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
	// A passing render replaces the file and keeps the previous one as .bak.
	e.views.set("hotel/search", view(3, "10.0.0.1", "10.0.0.7"))
	waitFor(t, "reload", func() bool { return e.reloadCount() == 2 })
	bak, _ := os.ReadFile(filepath.Join(e.dir, "out.conf.bak"))
	if string(bak) != good {
		t.Errorf("backup: got %q, want %q", bak, good)
	}
}

func TestEmptyUpstreamRefused(t *testing.T) {
	e := newEnv(t)
	e.views.set("hotel/search", view(1, "10.0.0.1", "10.0.0.2"))
	h := e.add(upstream, Spec{})
	waitFor(t, "first render", func() bool { return e.reloadCount() == 1 })
	good := e.dest()
	tests := []struct {
		name string
		v    *namesv1.ServiceView
	}{
		{"no instances", view(2)},
		{"all unhealthy", func() *namesv1.ServiceView {
			v := view(3, "10.0.0.1")
			v.Instances[0].Health = namesv1.Health_HEALTH_UNHEALTHY
			return v
		}()},
		{"all draining", func() *namesv1.ServiceView {
			v := view(4, "10.0.0.1")
			v.Instances[0].State = namesv1.InstanceState_INSTANCE_STATE_DRAINING
			return v
		}()},
	}
	for i, tt := range tests {
		e.views.set("hotel/search", tt.v)
		waitFor(t, tt.name, func() bool { return e.m.WaitApplied(shortCtx(t), "hotel/search", tt.v.GetRevision()) == nil })
		if got := h.Status().Outcome; got != OutcomeRefused {
			t.Errorf("%s: outcome got %s, want %s", tt.name, got, OutcomeRefused)
		}
		if got := e.dest(); got != good {
			t.Errorf("%s: file got %q, want the last good %q", tt.name, got, good)
		}
		if got := e.rec.count(EventRefused); got != i+1 {
			t.Errorf("%s: refused events got %d, want %d", tt.name, got, i+1)
		}
	}
	// A synchronous render (a deploy's) says so.
	if err := h.Render(t.Context()); !errors.Is(err, ErrRefused) {
		t.Errorf("Render with no instance: got %v, want ErrRefused", err)
	}
	if e.reloadCount() != 1 {
		t.Errorf("reloads: got %d, want 1 (the first render's)", e.reloadCount())
	}
}

func TestBadTemplates(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"env function", "a\n{{ env \"HOME\" }}\n", `t.tmpl:2: function "env" not defined`},
		{"exec function", "{{ exec \"ls\" }}", `function "exec" not defined`},
		{"readFile", "x\ny\n{{ readFile \"/etc/passwd\" }}", `t.tmpl:3: function "readFile" not defined`},
		{"syntax", "x\n{{ range }}", "t.tmpl:2:"},
		{"non-literal service", "x\n{{ $s := \"a/b\" }}{{ service $s }}", "t.tmpl:2:"},
		{"service in a pipe", "{{ \"a/b\" | service }}", "service takes a quoted service path"},
		{"bad service path", "{{ service \"Hotel//x\" }}", `service "Hotel//x"`},
		{"unlisted service", "{{ service \"other/svc\" }}", `reads service "other/svc"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "t.tmpl")
			if err := os.WriteFile(src, []byte(tt.src), 0o644); err != nil {
				t.Fatal(err)
			}
			m, err := New(Config{Host: "h1", Views: newFakeViews()})
			if err != nil {
				t.Fatal(err)
			}
			_, err = m.Add(t.Context(), Spec{Service: "a/b", Source: src, SourceName: "t.tmpl", Dest: filepath.Join(dir, "o"),
				Services: []string{"a/b", "Hotel//x"}})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Add(%q): got %v, want an error containing %q", tt.src, err, tt.want)
			}
		})
	}
}

func TestNoEnvironmentInOutput(t *testing.T) {
	const secret = "s3cr3t-berth-test-value"
	t.Setenv("BERTH_TEST_SECRET", secret)
	attempts := []string{
		`{{ env "BERTH_TEST_SECRET" }}`,
		`{{ .Env.BERTH_TEST_SECRET }}`,
		`{{ printf "%v" . }}`,
		`{{ key "../../../proc/self/environ" }}`,
		`{{ keyOr "/proc/self/environ" "none" }}`,
		`{{ call .Getenv "BERTH_TEST_SECRET" }}`,
		`{{ template "/proc/self/environ" }}`,
		`{{ range service "hotel/search" }}{{ printf "%#v" . }}{{ end }}`,
		`{{ toJSON . }}`,
	}
	for _, src := range attempts {
		tp, err := Parse("t.tmpl", []byte(src))
		if err != nil {
			continue
		}
		out, _, err := tp.Render(Inputs{Views: map[string]*namesv1.ServiceView{"hotel/search": view(1, "10.0.0.1")}}, Data{Host: "h1", DC: "dc1"})
		if strings.Contains(string(out), secret) || (err != nil && strings.Contains(err.Error(), secret)) {
			t.Errorf("template %q: the environment's secret appears in the output %q (err %v)", src, out, err)
		}
	}
}

func TestFunctions(t *testing.T) {
	v := view(1, "10.0.0.2", "10.0.0.1")
	v.Instances[0].Tags = []string{"b", "a"}
	v.Instances[1].Weight = 50
	v.Policy = &namesv1.TrafficPolicy{Exclude: []string{"i-c"}}
	v.Instances = append(v.Instances, &namesv1.Instance{Id: "i-c", Ip: "10.0.0.3", Port: 1, Health: namesv1.Health_HEALTH_HEALTHY})
	tests := []struct {
		src, want string
	}{
		{`{{ range service "hotel/search" }}{{ .ID }}={{ .Address }} {{ end }}`, "i-a=10.0.0.2:8080 i-b=10.0.0.1:8080 "},
		{`{{ range sortBy "ip" (service "hotel/search") }}{{ .IP }} {{ end }}`, "10.0.0.1 10.0.0.2 "},
		{`{{ range sortBy "weight" (service "hotel/search") }}{{ .Weight }} {{ end }}`, "50 10 "},
		{`{{ with index (service "hotel/search") 0 }}{{ join "," (sortStrings .Tags) }}{{ end }}`, "a,b"},
		{`{{ key "flags" | upper }} {{ keyOr "missing" "dflt" }}`, "ON dflt"},
		{`{{ split "," "a,b" | join ";" }} {{ replace "a" "b" "aaa" }} {{ trimPrefix "x" "xy" }}`, "a;b bbb y"},
		{`{{ .Host }}/{{ .DC }}`, "h1/dc1"},
	}
	for _, tt := range tests {
		tp, err := Parse("t.tmpl", []byte(tt.src))
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.src, err)
			continue
		}
		out, _, err := tp.Render(Inputs{Views: map[string]*namesv1.ServiceView{"hotel/search": v}, Keys: map[string][]byte{"flags": []byte("on")}}, Data{Host: "h1", DC: "dc1"})
		if err != nil || string(out) != tt.want {
			t.Errorf("Render(%q): got %q, %v; want %q", tt.src, out, err, tt.want)
		}
	}
	tp, _ := Parse("t.tmpl", []byte("x\n{{ key \"nope\" }}"))
	if _, _, err := tp.Render(Inputs{}, Data{}); err == nil || !strings.Contains(err.Error(), "t.tmpl:2:") || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing key: got %v, want an error naming t.tmpl:2 and the key", err)
	}
}
