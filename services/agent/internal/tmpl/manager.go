package tmpl

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/descriptor"
	"github.com/berthdev/berth/pkg/natsbus"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent/internal/configkeys"
	"github.com/berthdev/berth/services/agent/internal/proc"
	"github.com/berthdev/berth/services/agent/internal/views"
)

// Event types on berth.v1.events.template.<type>.<host>.
const (
	EventRendered     = "rendered"
	EventRefused      = "refused"
	EventFailed       = "failed"
	EventCheckFailed  = "check_failed"
	EventReloaded     = "reloaded"
	EventReloadFailed = "reload_failed"
)

// PathPlaceholder in a check command's arguments is replaced by the path of the new file
// being checked (nginx -t -c {{path}}).
const PathPlaceholder = "{{path}}"

// Outcomes of a render (Status.Outcome, metric label).
const (
	OutcomeWritten     = "written"
	OutcomeUnchanged   = "unchanged"
	OutcomeRefused     = "refused"
	OutcomeFailed      = "failed"
	OutcomeCheckFailed = "check_failed"
)

// ErrRefused is returned by Handle.Render when an input service has no healthy instance:
// the destination keeps its last good content.
var ErrRefused = errors.New("tmpl: render refused")

// Views is what the manager needs from the view follower (views.Follower).
type Views interface {
	Hold(service string) (release func(), err error)
	Get(service string) views.Snapshot
	Wait(ctx context.Context, service string) views.Snapshot
}

// Keys is what the manager needs from the config key cache (configkeys.Cache).
type Keys interface {
	Want(ctx context.Context, key string) error
	Get(key string) configkeys.Value
}

// Reporter publishes events without blocking.
type Reporter interface {
	Publish(e natsbus.Event)
}

// Config configures a Manager.
type Config struct {
	// Host and DC are this host's, the templates' dot.
	Host, DC string
	// Views and Keys are the inputs. Keys may be nil (no coord): a template reading keys
	// then fails to add.
	Views Views
	Keys  Keys
	// CheckTimeout bounds a check command; KillGrace is its SIGTERM → SIGKILL delay.
	CheckTimeout, KillGrace time.Duration
	// Path is the PATH bare check command names are looked up in.
	Path string
	// Reporter publishes events; nil publishes none.
	Reporter Reporter
	// Logger receives renders; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Spec is one template of one app.
type Spec struct {
	// Service and Version are the app's (Version empty for a static service).
	Service, Version string
	// Source is the template file; SourceName is how the descriptor names it.
	Source, SourceName string
	// Dest is the absolute path of the rendered file.
	Dest string
	// Services and Keys are the descriptor's lists: every input the template reads must
	// be listed (an empty list is not checked).
	Services, Keys []string
	// Wait debounces re-renders.
	Wait descriptor.Wait
	// Check is the check command's argv (nil: none); it runs in Dir with Env.
	Check []string
	Dir   string
	Env   []string
	// Reload runs after each new file is in place while the app runs (its reload script);
	// nil runs nothing until SetReload sets one.
	Reload func(ctx context.Context) error
}

// Manager renders templates. Create it with New and run Run; Add may come before Run.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	metrics *tmetrics

	mu      sync.Mutex
	runCtx  context.Context
	wg      sync.WaitGroup
	handles map[*Handle]bool
}

type tmetrics struct {
	renders   *prometheus.CounterVec
	reloads   *prometheus.CounterVec
	duration  prometheus.Histogram
	templates prometheus.GaugeFunc
}

// New returns a manager; it starts nothing.
func New(cfg Config) (*Manager, error) {
	if cfg.Views == nil {
		return nil, errors.New("templates: views: nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = time.Minute
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, handles: map[*Handle]bool{}}
	m.metrics = &tmetrics{
		renders: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "template_renders_total",
			Help: "Template renders, by outcome (written, unchanged, refused, failed, check_failed)."}, []string{"outcome"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "agent", Name: "template_reloads_total",
			Help: "Reload scripts run after a template changed, by outcome (ok, failed)."}, []string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "berth", Subsystem: "agent", Name: "template_render_duration_seconds",
			Help: "Time from a render's start to its file in place (check included, reload excluded).", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9)}),
		templates: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "agent", Name: "templates",
			Help: "Templates the agent renders."}, func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			return float64(len(m.handles))
		}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{m.metrics.renders, m.metrics.reloads, m.metrics.duration, m.metrics.templates} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("template metrics: %w", err)
			}
		}
	}
	return m, nil
}

// Handle is one template being rendered. Its methods are safe for concurrent use.
type Handle struct {
	m        *Manager
	spec     Spec
	tp       *Template
	releases []func()

	cancel context.CancelFunc
	done   chan struct{}
	closed bool

	// render serializes renders.
	render sync.Mutex

	mu sync.Mutex
	// reload runs after a new file is in place; nil until the app runs.
	reload func(ctx context.Context) error
	// applied are the view revisions the last finished render read, by service.
	applied map[string]int64
	// appliedCh is closed when applied changes.
	appliedCh chan struct{}
	// last is the last render's outcome.
	last Status
}

// Status is the outcome of a template's last render.
type Status struct {
	Service, Source, Dest string
	Outcome               string
	Reason                string
	At                    time.Time
	Renders, Reloads      int
}

// Add parses spec's template, follows its inputs, and renders it: at once when Run runs
// (or when Run starts), then whenever an input changes. The error names the template's
// file and line when it does not parse, calls a function outside the allow-list, or reads
// a service or key the descriptor does not list.
func (m *Manager) Add(ctx context.Context, spec Spec) (*Handle, error) {
	src, err := os.ReadFile(spec.Source)
	if err != nil {
		return nil, fmt.Errorf("read template %s: %w", spec.SourceName, err)
	}
	tp, err := Parse(spec.SourceName, src)
	if err != nil {
		return nil, err
	}
	if len(spec.Services) > 0 {
		for _, s := range tp.Services() {
			if !slices.Contains(spec.Services, s) {
				return nil, fmt.Errorf("%w: %s reads service %q, which its descriptor's templates entry does not list in services", ErrInvalid, spec.SourceName, s)
			}
		}
	}
	if len(spec.Keys) > 0 {
		for _, k := range tp.Keys() {
			if !slices.Contains(spec.Keys, k) {
				return nil, fmt.Errorf("%w: %s reads key %q, which its descriptor's templates entry does not list in keys", ErrInvalid, spec.SourceName, k)
			}
		}
	}
	if len(spec.Check) > 0 && spec.Dir == "" {
		return nil, fmt.Errorf("template %s: check command without a directory", spec.SourceName)
	}
	h := &Handle{m: m, spec: spec, tp: tp, applied: map[string]int64{}, appliedCh: make(chan struct{}), reload: spec.Reload}
	for _, s := range tp.Services() {
		rel, err := m.cfg.Views.Hold(s)
		if err != nil {
			h.release()
			return nil, fmt.Errorf("template %s: %w", spec.SourceName, err)
		}
		h.releases = append(h.releases, rel)
	}
	for _, k := range tp.Keys() {
		if m.cfg.Keys == nil {
			h.release()
			return nil, fmt.Errorf("template %s reads key %s: %w", spec.SourceName, k, configkeys.ErrNoCoord)
		}
		if err := m.cfg.Keys.Want(ctx, k); err != nil {
			h.release()
			return nil, fmt.Errorf("template %s: %w", spec.SourceName, err)
		}
	}
	m.mu.Lock()
	m.handles[h] = true
	if m.runCtx != nil {
		m.startLocked(h)
	}
	m.mu.Unlock()
	return h, nil
}

func (h *Handle) release() {
	for _, r := range h.releases {
		r()
	}
	h.releases = nil
}

// Template returns the parsed template.
func (h *Handle) Template() *Template { return h.tp }

// SetReload sets the function run after each new file is in place (the app's reload
// script); nil runs nothing (the app is not running yet).
func (h *Handle) SetReload(fn func(ctx context.Context) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reload = fn
}

// Status returns the last render's outcome.
func (h *Handle) Status() Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// Close stops rendering the template and waits for a render in progress.
func (h *Handle) Close() {
	m := h.m
	m.mu.Lock()
	if h.closed {
		m.mu.Unlock()
		return
	}
	h.closed = true
	delete(m.handles, h)
	cancel, done := h.cancel, h.done
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	h.release()
}

// Render renders the template now, once its inputs are known or ctx ends, without waiting
// for a change and without running the reload (the app is not started yet): a deploy
// renders a release's templates before it starts it. It returns ErrRefused (wrapped) when
// an input service has no healthy instance and the error of a failed render or check.
func (h *Handle) Render(ctx context.Context) error {
	for _, s := range h.tp.Services() {
		h.m.cfg.Views.Wait(ctx, s)
	}
	out, _ := h.process(ctx, false)
	switch out.Outcome {
	case OutcomeWritten, OutcomeUnchanged:
		return nil
	case OutcomeRefused:
		return fmt.Errorf("template %s: %w: %s", h.spec.SourceName, ErrRefused, out.Reason)
	}
	return fmt.Errorf("template %s: %s", h.spec.SourceName, out.Reason)
}

// WaitApplied waits until every template reading service has finished a render (and its
// reload) from a view of revision rev or later, or ctx ends (its error is returned).
func (m *Manager) WaitApplied(ctx context.Context, service string, rev int64) error {
	m.mu.Lock()
	var hs []*Handle
	for h := range m.handles {
		if slices.Contains(h.tp.Services(), service) {
			hs = append(hs, h)
		}
	}
	m.mu.Unlock()
	for _, h := range hs {
		for {
			h.mu.Lock()
			got, ch := h.applied[service], h.appliedCh
			h.mu.Unlock()
			if got >= rev {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("template %s has applied revision %d of %s, not %d: %w", h.spec.SourceName, got, service, rev, ctx.Err())
			case <-ch:
			}
		}
	}
	return nil
}

// Run renders every template added, each in its own goroutine, until ctx ends; it returns
// nil after they all returned.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.runCtx = ctx
	for h := range m.handles {
		m.startLocked(h)
	}
	m.mu.Unlock()
	<-ctx.Done()
	m.mu.Lock()
	m.runCtx = nil
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}

func (m *Manager) startLocked(h *Handle) {
	if h.done != nil {
		return
	}
	ctx, cancel := context.WithCancel(m.runCtx)
	h.cancel, h.done = cancel, make(chan struct{})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(h.done)
		h.loop(ctx)
	}()
}

// loop renders once the inputs are known, then after every debounced change.
func (h *Handle) loop(ctx context.Context) {
	for _, s := range h.tp.Services() {
		h.m.cfg.Views.Wait(ctx, s)
	}
	if ctx.Err() != nil {
		return
	}
	_, watch := h.process(ctx, true)
	for {
		if !waitAny(ctx, watch, nil) {
			return
		}
		// Debounce: render once the inputs were quiet for Wait.Min, and at the latest
		// Wait.Max after the first change.
		if h.spec.Wait.Min > 0 {
			first := time.Now()
			deadline := first.Add(max(h.spec.Wait.Max, h.spec.Wait.Min))
			for {
				_, watch = h.inputs()
				quietAt := time.Now().Add(h.spec.Wait.Min)
				if deadline.Before(quietAt) {
					quietAt = deadline
				}
				quiet := time.Until(quietAt)
				if quiet <= 0 {
					break
				}
				t := time.NewTimer(quiet)
				changed := waitAny(ctx, watch, t.C)
				t.Stop()
				if ctx.Err() != nil {
					return
				}
				if !changed {
					break
				}
			}
		}
		_, watch = h.process(ctx, true)
	}
}

// waitAny waits for one of the channels to close (true), or for timer or ctx (false).
func waitAny(ctx context.Context, chans []<-chan struct{}, timer <-chan time.Time) bool {
	cases := make([]reflect.SelectCase, 0, len(chans)+2)
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())})
	if timer != nil {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(timer)})
	} else {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf((<-chan time.Time)(nil))})
	}
	for _, c := range chans {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(c)})
	}
	i, _, _ := reflect.Select(cases)
	return i >= 2
}

// inputs snapshots the inputs and the channels that say they changed.
func (h *Handle) inputs() (Inputs, []<-chan struct{}) {
	in := Inputs{Views: map[string]*namesv1.ServiceView{}, Keys: map[string][]byte{}}
	var watch []<-chan struct{}
	for _, s := range h.tp.Services() {
		snap := h.m.cfg.Views.Get(s)
		in.Views[s] = snap.View
		watch = append(watch, snap.Changed)
	}
	for _, k := range h.tp.Keys() {
		v := h.m.cfg.Keys.Get(k)
		if v.Found {
			in.Keys[k] = v.Data
		}
		watch = append(watch, v.Changed)
	}
	return in, watch
}

// process renders, checks, writes and reloads once; it returns the outcome and the
// channels of the inputs it used.
func (h *Handle) process(ctx context.Context, reload bool) (Status, []<-chan struct{}) {
	h.render.Lock()
	defer h.render.Unlock()
	m := h.m
	start := time.Now()
	in, watch := h.inputs()
	revs := map[string]int64{}
	for s, v := range in.Views {
		revs[s] = v.GetRevision()
	}
	st := Status{Service: h.spec.Service, Source: h.spec.SourceName, Dest: h.spec.Dest, At: start}
	ev := &eventsv1.TemplateEvent{Host: m.cfg.Host, Service: h.spec.Service, Version: h.spec.Version, Source: h.spec.SourceName,
		Destination: h.spec.Dest, InputRevisions: revs, Instances: map[string]uint32{}}
	out, res, err := h.tp.Render(in, Data{Host: m.cfg.Host, DC: m.cfg.DC})
	for s, n := range res.Counts {
		ev.Instances[s] = uint32(n)
	}
	log := m.log.With("template", h.spec.SourceName, "service", h.spec.Service, "dest", h.spec.Dest)
	finish := func(outcome, reason, event string) (Status, []<-chan struct{}) {
		st.Outcome, st.Reason = outcome, reason
		m.metrics.renders.WithLabelValues(outcome).Inc()
		if event != "" {
			ev.Reason = reason
			ev.DurationSeconds = time.Since(start).Seconds()
			h.report(event, ev)
		}
		h.mu.Lock()
		st.Renders, st.Reloads = h.last.Renders+1, h.last.Reloads
		h.last = st
		h.mu.Unlock()
		return st, watch
	}
	defer h.markApplied(revs)
	switch {
	case err != nil:
		log.Warn("template render failed", "err", err)
		return finish(OutcomeFailed, err.Error(), EventFailed)
	case len(res.Empty) > 0:
		reason := fmt.Sprintf("no healthy instance of %s; keeping the last good %s (an upstream list is never rendered empty)",
			strings.Join(res.Empty, ", "), h.spec.Dest)
		log.Warn("template render refused", "empty", res.Empty)
		return finish(OutcomeRefused, reason, EventRefused)
	}
	sum := sha256.Sum256(out)
	ev.Sha256 = hex.EncodeToString(sum[:])
	cur, err := os.ReadFile(h.spec.Dest)
	if err == nil && bytes.Equal(cur, out) {
		return finish(OutcomeUnchanged, "", "")
	}
	if err := h.write(ctx, out); err != nil {
		var ce *checkError
		if errors.As(err, &ce) {
			log.Warn("template check failed; old file kept", "err", err)
			return finish(OutcomeCheckFailed, err.Error(), EventCheckFailed)
		}
		log.Warn("template write failed", "err", err)
		return finish(OutcomeFailed, err.Error(), EventFailed)
	}
	m.metrics.duration.Observe(time.Since(start).Seconds())
	log.Info("template rendered", "sha256", ev.Sha256[:12], "instances", ev.Instances)
	st2, w := finish(OutcomeWritten, "", EventRendered)
	h.mu.Lock()
	fn := h.reload
	h.mu.Unlock()
	if reload && fn != nil {
		rstart := time.Now()
		rev := &eventsv1.TemplateEvent{Host: m.cfg.Host, Service: h.spec.Service, Version: h.spec.Version, Source: h.spec.SourceName,
			Destination: h.spec.Dest, InputRevisions: revs, Sha256: ev.Sha256}
		err := fn(ctx)
		rev.DurationSeconds = time.Since(rstart).Seconds()
		h.mu.Lock()
		h.last.Reloads++
		h.mu.Unlock()
		if err != nil {
			m.metrics.reloads.WithLabelValues("failed").Inc()
			rev.Reason = err.Error()
			log.Warn("reload after template change failed", "err", err)
			h.report(EventReloadFailed, rev)
		} else {
			m.metrics.reloads.WithLabelValues("ok").Inc()
			h.report(EventReloaded, rev)
		}
	}
	return st2, w
}

// markApplied records the revisions a finished render (and reload) read.
func (h *Handle) markApplied(revs map[string]int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s, r := range revs {
		if r > h.applied[s] {
			h.applied[s] = r
		}
	}
	close(h.appliedCh)
	h.appliedCh = make(chan struct{})
}

type checkError struct{ msg string }

func (e *checkError) Error() string { return e.msg }

// write puts out at the destination: a temporary file next to it, the check command on
// it, the old file linked to <dest>.bak, then a rename, then the directory synced.
func (h *Handle) write(ctx context.Context, out []byte) error {
	dest := h.spec.Dest
	dir := filepath.Dir(dest)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory of %s: %w", dest, err)
	}
	mode := os.FileMode(0o644)
	fi, statErr := os.Stat(dest)
	if statErr == nil {
		mode = fi.Mode().Perm()
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+filepath.Base(dest)+".berth-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	_, err = f.Write(out)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if len(h.spec.Check) > 0 {
		if err := h.check(ctx, tmp); err != nil {
			_ = os.Remove(tmp)
			return err
		}
	}
	if statErr == nil {
		bak := dest + ".bak"
		_ = os.Remove(bak)
		if err := os.Link(dest, bak); err != nil {
			if err := copyFile(dest, bak, mode); err != nil {
				_ = os.Remove(tmp)
				return fmt.Errorf("back up %s: %w", dest, err)
			}
		}
	}
	if err := os.Rename(tmp, dest); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", dest, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func copyFile(from, to string, mode os.FileMode) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// check runs the check command on the new file at path.
func (h *Handle) check(ctx context.Context, path string) error {
	argv := make([]string, len(h.spec.Check))
	for i, a := range h.spec.Check {
		argv[i] = strings.ReplaceAll(a, PathPlaceholder, path)
	}
	exe, err := lookPath(argv[0], h.spec.Dir, h.m.cfg.Path)
	if err != nil {
		return &checkError{fmt.Sprintf("check command %s: %v", argv[0], err)}
	}
	var out bytes.Buffer
	res, err := proc.Run(ctx, proc.Spec{Path: exe, Args: argv, Dir: h.spec.Dir, Env: h.spec.Env,
		Stdout: &out, Stderr: &out, Timeout: h.m.cfg.CheckTimeout, KillGrace: h.m.cfg.KillGrace, IODelay: 200 * time.Millisecond})
	if err != nil {
		return &checkError{fmt.Sprintf("check command %s: %v", strings.Join(argv, " "), err)}
	}
	if !res.Success() {
		msg := fmt.Sprintf("check command %s: %s", strings.Join(h.spec.Check, " "), res.Describe(h.m.cfg.CheckTimeout))
		if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) > 0 && lines[len(lines)-1] != "" {
			msg += ": " + lines[len(lines)-1]
		}
		return &checkError{msg}
	}
	return nil
}

// lookPath resolves a command: a path with a slash is taken relative to dir; a bare name is
// looked up in path.
func lookPath(name, dir, path string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return p, proc.Executable(p)
	}
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, name)
		if proc.Executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in PATH %s", path)
}

// report publishes a template event.
func (h *Handle) report(typ string, ev *eventsv1.TemplateEvent) {
	if h.m.cfg.Reporter == nil {
		return
	}
	subject, err := subjects.TemplateEvent(typ, h.m.cfg.Host)
	if err != nil {
		return
	}
	now := time.Now()
	ev.At = timestamppb.New(now)
	h.m.cfg.Reporter.Publish(natsbus.Event{
		Subject: subject, ID: natsbus.EventID(h.m.cfg.Host, h.spec.Dest, typ, strconv.FormatInt(now.UnixNano(), 10)),
		Type: subjects.EventType(subjects.DomainTemplate, typ), ServicePath: h.spec.Service, Time: now, Data: ev,
	})
}
