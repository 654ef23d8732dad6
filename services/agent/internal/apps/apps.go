// Package apps ties together what the agent does for each app on its host: the releases
// the package-deploy plugin starts and stops (it implements pkgdeploy.Lifecycle), the
// releases found running when the agent starts, and the static services declared in
// <config dir>/services.d/*.yaml for apps Berth did not deploy (nginx, say). For each it
// renders the descriptor's templates (tmpl), registers the instance once healthy and
// keeps checking it (instances), and drains it before it stops: draining, deregistered,
// then the drain barrier — the service's DNS TTL (from /berth/tree, capped) and this
// host's template reloads — before the stop script runs.
package apps

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/descriptor"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/services/agent/internal/health"
	"github.com/berthdev/berth/services/agent/internal/instances"
	"github.com/berthdev/berth/services/agent/internal/pkgdeploy"
	"github.com/berthdev/berth/services/agent/internal/plugin"
	"github.com/berthdev/berth/services/agent/internal/proc"
	"github.com/berthdev/berth/services/agent/internal/tmpl"
)

// TreePrefix is the parent of the service tree's nodes in coord.
const TreePrefix = "/berth/tree/"

// Defaults of Config.
const (
	DefaultTTL      = 5 * time.Second
	DefaultDrainMax = 30 * time.Second
)

// healthKillGrace is the SIGTERM → SIGKILL delay of a health check that overran its
// timeout.
const healthKillGrace = 500 * time.Millisecond

// Tree reads service tree nodes; *coordclient.Client implements it.
type Tree interface {
	Get(ctx context.Context, path string, opts ...coordclient.GetOption) (*coordclient.Node, error)
}

// Config configures Apps.
type Config struct {
	// Host is this host's id and DC its datacenter.
	Host, DC string
	// Instances registers and checks instances; Templates renders templates.
	Instances *instances.Manager
	Templates *tmpl.Manager
	// Tree reads /berth/tree (TTLs, and that static services exist); nil without coord.
	Tree Tree
	// DefaultTTL is the DNS TTL of a service whose tree sets none; 0 means DefaultTTL.
	DefaultTTL time.Duration
	// DrainMax caps the drain barrier; 0 means DefaultDrainMax.
	DrainMax time.Duration
	// StaticDir is the services.d directory of static services; "" means none.
	StaticDir string
	// Path is the PATH of static services' scripts; Facts are BERTH_* variables they get.
	Path  string
	Facts map[string]string
	// ScriptTimeout bounds reload scripts; KillGrace is their SIGTERM → SIGKILL delay.
	ScriptTimeout, KillGrace time.Duration
	// Logger receives what happens; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Apps is the agent's view of its apps. Create it with New.
type Apps struct {
	cfg     Config
	log     *slog.Logger
	drain   prometheus.Histogram
	static  *prometheus.GaugeVec
	mu      sync.Mutex
	apps    map[string]*app // by service + "@" + version, or "static:" + file
	refused map[string]error
}

// app is one release or static service.
type app struct {
	service, version, dir string
	desc                  *descriptor.Descriptor
	env                   []string
	handles               []*tmpl.Handle
	static                bool
}

// New returns Apps; it starts nothing.
func New(cfg Config) (*Apps, error) {
	if cfg.Instances == nil || cfg.Templates == nil {
		return nil, errors.New("apps: instances and templates are required")
	}
	if cfg.DefaultTTL <= 0 {
		cfg.DefaultTTL = DefaultTTL
	}
	if cfg.DrainMax <= 0 {
		cfg.DrainMax = DefaultDrainMax
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Path == "" {
		cfg.Path = plugin.DefaultPath
	}
	a := &Apps{cfg: cfg, log: cfg.Logger, apps: map[string]*app{}, refused: map[string]error{},
		drain: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "berth", Subsystem: "agent", Name: "drain_barrier_seconds",
			Help: "Time an instance's drain barrier took before its stop script ran.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 13)}),
		static: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "agent", Name: "static_services",
			Help: "Static services from services.d, by state (ok, refused)."}, []string{"state"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.drain, a.static} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("apps metrics: %w", err)
			}
		}
	}
	return a, nil
}

var _ pkgdeploy.Lifecycle = (*Apps)(nil)

func key(service, version string) string { return service + "@" + version }

// Prepare implements pkgdeploy.Lifecycle: it renders the release's templates now (their
// inputs must give at least one instance each) and keeps them rendering.
func (a *Apps) Prepare(ctx context.Context, r pkgdeploy.Release) error {
	a.mu.Lock()
	if _, ok := a.apps[key(r.Service, r.Version)]; ok {
		a.mu.Unlock()
		return nil
	}
	a.mu.Unlock()
	ap := &app{service: r.Service, version: r.Version, dir: r.Dir, desc: r.Descriptor, env: r.Env}
	if err := a.addTemplates(ctx, ap, false); err != nil {
		return err
	}
	for _, h := range ap.handles {
		if err := h.Render(ctx); err != nil {
			ap.close()
			return err
		}
	}
	a.mu.Lock()
	a.apps[key(r.Service, r.Version)] = ap
	a.mu.Unlock()
	return nil
}

// addTemplates adds ap's templates to the template manager; with reload set, their
// changes reload the app at once (it runs).
func (a *Apps) addTemplates(ctx context.Context, ap *app, reload bool) error {
	for i, t := range ap.desc.Templates {
		spec := tmpl.Spec{
			Service: ap.service, Version: ap.version,
			Source: filepath.Join(ap.dir, filepath.FromSlash(t.Source)), SourceName: t.Source,
			Dest:     filepath.Join(ap.dir, filepath.FromSlash(t.Destination)),
			Services: t.Services, Keys: t.Keys, Wait: t.Wait, Check: t.Check, Dir: ap.dir, Env: ap.env,
		}
		if reload {
			spec.Reload = a.reloader(ap)
		}
		h, err := a.cfg.Templates.Add(ctx, spec)
		if err != nil {
			ap.close()
			return fmt.Errorf("templates[%d]: %w", i, err)
		}
		ap.handles = append(ap.handles, h)
	}
	return nil
}

func (ap *app) close() {
	for _, h := range ap.handles {
		h.Close()
	}
	ap.handles = nil
}

// reloader returns the function that runs ap's reload script, or nil when it has none.
func (a *Apps) reloader(ap *app) func(context.Context) error {
	rel := ap.desc.Scripts.Reload
	if rel == "" {
		return nil
	}
	return func(ctx context.Context) error { return a.runScript(ctx, ap, rel, a.cfg.ScriptTimeout) }
}

// runScript runs one of ap's scripts with its environment.
func (a *Apps) runScript(ctx context.Context, ap *app, rel string, timeout time.Duration) error {
	exe, err := pkgdeploy.ScriptPath(ap.dir, rel)
	if err != nil {
		return err
	}
	out := plugin.NewOutput(nil, 64<<10)
	grace := a.cfg.KillGrace
	if grace <= 0 || grace > timeout {
		grace = healthKillGrace
	}
	res, err := proc.Run(ctx, proc.Spec{Path: exe, Args: []string{rel}, Dir: ap.dir, Env: ap.env,
		Stdout: out.Stdout(), Stderr: out.Stderr(), Timeout: timeout, KillGrace: grace, IODelay: 200 * time.Millisecond})
	out.Flush()
	if err != nil {
		return err
	}
	if !res.Success() {
		msg := fmt.Sprintf("%s: %s", rel, res.Describe(timeout))
		if tail := out.Tail(); len(tail) > 0 {
			msg += ": " + tail[len(tail)-1]
		}
		if res.TimedOut {
			return fmt.Errorf("%w: %s", health.ErrTimeout, msg)
		}
		return errors.New(msg)
	}
	return nil
}

// spec is ap's instance.
func (a *Apps) spec(ap *app, origin string) instances.Spec {
	d := ap.desc
	s := instances.Spec{Service: ap.service, Version: ap.version, Port: d.Port, Tags: d.Tags, Weight: d.Weight,
		Interval: d.Health.Interval, Timeout: d.Health.Timeout, Rise: d.Health.Rise, Fall: d.Health.Fall, Origin: origin}
	if rel := d.Scripts.Health; rel != "" {
		s.Probe = func(ctx context.Context) error { return a.runScript(ctx, ap, rel, d.Health.Timeout) }
	}
	return s
}

// Started implements pkgdeploy.Lifecycle: the release's instance is registered (its rise
// passes were seen by the plugin) and its templates reload it from now on.
func (a *Apps) Started(ctx context.Context, r pkgdeploy.Release) error {
	a.mu.Lock()
	ap := a.apps[key(r.Service, r.Version)]
	if ap == nil {
		ap = &app{service: r.Service, version: r.Version, dir: r.Dir, desc: r.Descriptor, env: r.Env}
		a.apps[key(r.Service, r.Version)] = ap
	}
	a.mu.Unlock()
	if fn := a.reloader(ap); fn != nil {
		for _, h := range ap.handles {
			h.SetReload(fn)
		}
	}
	_, err := a.cfg.Instances.Add(ctx, a.spec(ap, "deploy"), true)
	return err
}

// Stopping implements pkgdeploy.Lifecycle: it drains the release's instance.
func (a *Apps) Stopping(ctx context.Context, r pkgdeploy.Release) error {
	return a.Drain(ctx, r.Service, r.Descriptor.Port)
}

// Stopped implements pkgdeploy.Lifecycle: the release's templates stop, and its instance
// is forgotten if it is still checked.
func (a *Apps) Stopped(r pkgdeploy.Release) {
	a.mu.Lock()
	ap := a.apps[key(r.Service, r.Version)]
	delete(a.apps, key(r.Service, r.Version))
	a.mu.Unlock()
	if ap != nil {
		ap.close()
	}
}

// Drain drains the instance of service on port: draining, deregistered, then the drain
// barrier (the service's DNS TTL and this host's template reloads, both within DrainMax).
// An instance that was never registered is only forgotten.
func (a *Apps) Drain(ctx context.Context, service string, port int) error {
	return a.DrainID(ctx, service, instances.InstanceID(a.cfg.Host, port))
}

// DrainID drains the instance of service with the id, as Drain does; a container's
// instance has an id of its own. An instance the manager does not have is not an error.
func (a *Apps) DrainID(ctx context.Context, service, id string) error {
	if !a.cfg.Instances.Has(service, id) {
		return nil
	}
	rev, err := a.cfg.Instances.Drain(ctx, service, id)
	if err != nil {
		return err
	}
	if rev == 0 {
		return nil
	}
	// Clients may hold the last answer that named the instance for a TTL from the moment
	// it was deleted.
	start := time.Now()
	ttl := a.ttl(ctx, service)
	wait := min(ttl, a.cfg.DrainMax)
	bctx, cancel := context.WithTimeout(ctx, a.cfg.DrainMax)
	defer cancel()
	werr := a.cfg.Templates.WaitApplied(bctx, service, rev)
	if rest := wait - time.Since(start); rest > 0 {
		t := time.NewTimer(rest)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	took := time.Since(start)
	a.drain.Observe(took.Seconds())
	a.log.Info("instance drained", "service", service, "instance", id, "revision", rev, "ttl", ttl, "took", took.Round(time.Millisecond))
	if werr != nil {
		return fmt.Errorf("drain barrier of %s/%s: %w", service, id, werr)
	}
	return ctx.Err()
}

// ttl is service's DNS TTL: policy.dns_ttl of its tree node or its nearest ancestor's, else
// DefaultTTL.
func (a *Apps) ttl(ctx context.Context, service string) time.Duration {
	if a.cfg.Tree == nil {
		return a.cfg.DefaultTTL
	}
	for p := service; p != ""; {
		n, err := a.cfg.Tree.Get(ctx, TreePrefix+p, coordclient.Serializable())
		if err == nil {
			var node controllerv1.ServiceNode
			if protojson.Unmarshal(n.Value, &node) == nil && node.GetPolicy().GetDnsTtl() != nil {
				if d := node.GetPolicy().GetDnsTtl().AsDuration(); d > 0 {
					return d
				}
			}
		}
		i := strings.LastIndex(p, "/")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return a.cfg.DefaultTTL
}

// Resume checks and registers again the releases found running when the agent starts: each
// is registered after its health passes rise times, and its templates render and reload it.
func (a *Apps) Resume(ctx context.Context, rels []pkgdeploy.Release) {
	for _, r := range rels {
		ap := &app{service: r.Service, version: r.Version, dir: r.Dir, desc: r.Descriptor, env: r.Env}
		if err := a.addTemplates(ctx, ap, true); err != nil {
			a.log.Error("templates of a running release refused", "service", r.Service, "version", r.Version, "err", err)
		}
		a.mu.Lock()
		a.apps[key(r.Service, r.Version)] = ap
		a.mu.Unlock()
		if _, err := a.cfg.Instances.Add(ctx, a.spec(ap, "restart"), false); err != nil {
			a.log.Error("instance of a running release refused", "service", r.Service, "version", r.Version, "err", err)
			continue
		}
		a.log.Info("running release found; registering it once healthy", "service", r.Service, "version", r.Version)
	}
}

// LoadStatic reads every <StaticDir>/*.yaml, in name order, and starts checking,
// registering and rendering the templates of each. A file that is refused — it does not
// parse, its service is not in the tree, a template does not parse — is reported with the
// file and line and skipped; the others go on. It returns the refusals.
func (a *Apps) LoadStatic(ctx context.Context) []error {
	if a.cfg.StaticDir == "" {
		return nil
	}
	files, err := filepath.Glob(filepath.Join(a.cfg.StaticDir, "*.yaml"))
	if err != nil {
		return []error{err}
	}
	sort.Strings(files)
	var errs []error
	ok := 0
	for _, f := range files {
		if err := a.loadStatic(ctx, f); err != nil {
			a.log.Error("static service refused", "file", f, "err", err)
			errs = append(errs, err)
			a.mu.Lock()
			a.refused[f] = err
			a.mu.Unlock()
			continue
		}
		ok++
	}
	a.static.WithLabelValues("ok").Set(float64(ok))
	a.static.WithLabelValues("refused").Set(float64(len(errs)))
	return errs
}

// StaticDirOf is the directory the relative paths of a static descriptor file are resolved
// in: <services.d>/<file name less .yaml>/.
func StaticDirOf(file string) string {
	return strings.TrimSuffix(file, filepath.Ext(file))
}

func (a *Apps) loadStatic(ctx context.Context, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	d, err := ParseStatic(file, data)
	if err != nil {
		return err
	}
	dir := StaticDirOf(file)
	if err := d.CheckFiles(os.DirFS(dir)); err != nil {
		return fmt.Errorf("%w (paths are relative to %s)", err, dir)
	}
	if a.cfg.Tree != nil {
		_, err := a.cfg.Tree.Get(ctx, TreePrefix+d.Service)
		switch {
		case errors.Is(err, coordclient.ErrNotFound):
			return fmt.Errorf("%s:%d: service %q is not in the service tree (%s%s does not exist); not registered",
				file, lineOf(data, "service"), d.Service, TreePrefix, d.Service)
		case err != nil:
			a.log.Warn("cannot check that a static service is in the tree; registering it anyway", "file", file, "err", err)
		}
	}
	ap := &app{service: d.Service, dir: dir, desc: d, static: true, env: a.staticEnv(d, dir)}
	if err := a.addTemplates(ctx, ap, true); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if _, err := a.cfg.Instances.Add(ctx, a.spec(ap, "static"), false); err != nil {
		ap.close()
		return fmt.Errorf("%s: %w", file, err)
	}
	a.mu.Lock()
	a.apps["static:"+file] = ap
	a.mu.Unlock()
	a.log.Info("static service", "file", file, "service", d.Service, "port", d.Port, "templates", len(d.Templates))
	return nil
}

// staticEnv is the environment of a static service's scripts.
func (a *Apps) staticEnv(d *descriptor.Descriptor, dir string) []string {
	env := []string{"PATH=" + a.cfg.Path}
	keys := make([]string, 0, len(a.cfg.Facts))
	for k := range a.cfg.Facts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+a.cfg.Facts[k])
	}
	return append(env, "BERTH_SERVICE="+d.Service, "BERTH_RELEASE_DIR="+dir, "BERTH_PORT="+strconv.Itoa(d.Port))
}

// Refused returns the static files refused by LoadStatic and why.
func (a *Apps) Refused() map[string]error {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]error, len(a.refused))
	for k, v := range a.refused {
		out[k] = v
	}
	return out
}

// Close stops every template. Instances stay with the instance manager (and its session).
func (a *Apps) Close() {
	a.mu.Lock()
	aps := a.apps
	a.apps = map[string]*app{}
	a.mu.Unlock()
	for _, ap := range aps {
		ap.close()
	}
}

// ParseStatic parses a services.d descriptor: berth.yaml's format, except that the start
// and stop scripts may be left out (Berth does not start or stop an app it did not deploy;
// when given they are not run).
func ParseStatic(file string, data []byte) (*descriptor.Descriptor, error) {
	d, err := descriptor.Parse(file, data)
	if err == nil {
		return d, nil
	}
	var errs descriptor.Errors
	if !errors.As(err, &errs) {
		return nil, err
	}
	var rest descriptor.Errors
	for _, e := range errs {
		if (e.Field == "scripts.start" || e.Field == "scripts.stop") && strings.HasPrefix(e.Msg, "missing field") {
			continue
		}
		rest = append(rest, e)
	}
	if len(rest) > 0 {
		return nil, rest
	}
	// Only the start and stop scripts were missing: parse again with placeholders so that
	// the defaults are applied, then drop them.
	patched := injectScripts(data)
	d, err = descriptor.Parse(file, patched)
	if err != nil {
		return nil, err
	}
	d.Scripts.Start, d.Scripts.Stop = "", ""
	return d, nil
}

// injectScripts adds placeholder start and stop scripts to a descriptor without them, at
// the end so that the lines of everything else stay the same.
func injectScripts(data []byte) []byte {
	s := string(data)
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	lines := strings.Split(s, "\n")
	hasScripts := false
	for _, l := range lines {
		if strings.HasPrefix(l, "scripts:") {
			hasScripts = true
		}
	}
	if !hasScripts {
		return []byte(s + "scripts:\n  start: berth-static-none\n  stop: berth-static-none\n")
	}
	// Insert under the scripts mapping the keys it lacks, indented like its first key.
	var out []string
	for i, l := range lines {
		out = append(out, l)
		if !strings.HasPrefix(l, "scripts:") {
			continue
		}
		indent := "  "
		present := map[string]bool{}
		for _, c := range lines[i+1:] {
			t := strings.TrimLeft(c, " ")
			if t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			if len(t) == len(c) {
				break // back at the top level
			}
			if len(present) == 0 {
				indent = c[:len(c)-len(t)]
			}
			k, _, _ := strings.Cut(t, ":")
			present[k] = true
		}
		for _, k := range []string{"start", "stop"} {
			if !present[k] {
				out = append(out, indent+k+": berth-static-none")
			}
		}
	}
	return []byte(strings.Join(out, "\n"))
}

// lineOf returns the line of the top-level field in a YAML document, or 0.
func lineOf(data []byte, field string) int {
	for i, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, field+":") {
			return i + 1
		}
	}
	return 0
}
