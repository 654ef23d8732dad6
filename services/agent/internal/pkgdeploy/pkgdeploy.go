// Package pkgdeploy is the built-in package-deploy plugin (DESIGN §5): it deploys a
// package (.tar.gz or .zip with berth.yaml at its root) as a release of a service on this
// host, and rolls back, stops, starts and reports on the releases it keeps.
//
// Layout on the host, under the apps directory:
//
//	<service path>/releases/<version>/   one unpacked package per release
//	<service path>/current               symbolic link to releases/<version>
//	<service path>/logs/<version>.start.log
//	                                     output of the start script (and of what it started
//	                                     without redirecting)
//	<service path>/state.json            the order releases were made current, with their
//	                                     sha256 and URL
//	<service path>/.lock                 held while an action runs on the service
//	.staging/                            packages being unpacked, before berth.yaml says
//	                                     which service they belong to
//
// A deploy fetches the artifact (verified against its sha256, cached), unpacks it into a
// fresh directory (every entry checked; removed again on any failure), reads berth.yaml
// strictly, then: runs the old release's stop script, flips current atomically (a symlink
// made under a temporary name and renamed over current), runs the new release's start
// script, and polls its health script every interval until it passes rise times in a row.
// When the start script fails or the health deadline passes, the new release is stopped,
// current flips back, and the old release is started again; the step fails saying so.
// The last KeepReleases releases are kept; rollback makes the previous one current the same
// way.
//
// Scripts run directly (no shell) with cwd the release directory, a clean environment
// (PATH and BERTH_* facts), in their own process group, with a timeout. The start script
// runs in a session of its own and is never tied to the agent, so what it starts keeps
// running when the agent stops or restarts: the agent never owns app processes.
package pkgdeploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent/internal/plugin"
	"github.com/berthdev/berth/services/agent/internal/proc"
)

// Name is the plugin's name in step requests.
const Name = "package-deploy"

// Actions.
const (
	ActionDeploy   = "deploy"
	ActionRollback = "rollback"
	ActionStop     = "stop"
	ActionStart    = "start"
	ActionStatus   = "status"
)

// Config configures the plugin.
type Config struct {
	// AppsDir holds the services' releases.
	AppsDir string
	// CacheDir holds fetched artifacts, by sha256.
	CacheDir string
	// Path is the PATH scripts run with.
	Path string
	// Facts are BERTH_* variables every script gets (BERTH_HOST_ID, ...).
	Facts map[string]string
	// KeepReleases is how many releases of a service are kept, the current one included.
	KeepReleases int
	// ScriptTimeout bounds the start and stop scripts.
	ScriptTimeout time.Duration
	// HealthDeadline is how long a release has to pass its health checks, unless the step
	// argument health_deadline says otherwise.
	HealthDeadline time.Duration
	// FetchTimeout bounds one download attempt.
	FetchTimeout time.Duration
	// MaxPackageBytes bounds an artifact and what it unpacks to.
	MaxPackageBytes int64
	// KillGrace is the time between SIGTERM and SIGKILL to a script's group on timeout.
	KillGrace time.Duration
	// FetchRetries is how many times an unavailable source is retried within a step; 0
	// means DefaultFetchRetries, negative none.
	FetchRetries int
	// Fetcher gets artifacts; nil means pkg/artifact on CacheDir.
	Fetcher Fetcher
	// Registerer receives pkg/artifact's metrics (berth_artifact_*); nil does not export
	// them.
	Registerer prometheus.Registerer
	// Lifecycle is told when releases start and stop (templates, registration, draining);
	// nil tells nobody.
	Lifecycle Lifecycle
}

// Release is one release of a service on this host, as Lifecycle sees it.
type Release struct {
	// Service and Version name it.
	Service, Version string
	// Dir is its directory (releases/<version>); template destinations and scripts are
	// inside it.
	Dir string
	// Descriptor is its berth.yaml.
	Descriptor *Descriptor
	// Env is the environment its scripts get (BERTH_SCRIPT=reload), for the reload script
	// and template check commands.
	Env []string
}

// Lifecycle is told about the releases the plugin starts and stops, so that the agent can
// render their templates, register their instances and drain them. The plugin owns this
// interface; the agent's apps package implements it. Errors of Prepare fail the action
// before anything is stopped; errors of the others are reported in the step's output and
// do not fail it.
type Lifecycle interface {
	// Prepare renders the release's templates into its directory before its start script
	// runs.
	Prepare(ctx context.Context, r Release) error
	// Started is called once the release passed its health checks rise times in a row: its
	// instance is registered and its templates may reload it.
	Started(ctx context.Context, r Release) error
	// Stopping is called before the release's stop script runs: its instance is drained
	// (draining, deregistered, and the drain barrier waited for).
	Stopping(ctx context.Context, r Release) error
	// Stopped is called after the release stopped, or when a prepared release is not
	// started after all: its templates stop.
	Stopped(r Release)
}

// nopLifecycle tells nobody.
type nopLifecycle struct{}

func (nopLifecycle) Prepare(context.Context, Release) error  { return nil }
func (nopLifecycle) Started(context.Context, Release) error  { return nil }
func (nopLifecycle) Stopping(context.Context, Release) error { return nil }
func (nopLifecycle) Stopped(Release)                         {}

// Fetcher gets a verified artifact into the local cache and returns its path. Its errors
// carry their outcome: wrapped with plugin.Retryable when a later attempt may pass.
type Fetcher interface {
	Fetch(ctx context.Context, url, sha256 string) (string, error)
}

// Plugin is the package-deploy plugin.
type Plugin struct {
	cfg Config
}

// New returns the plugin. It touches nothing on disk.
func New(cfg Config) (*Plugin, error) {
	if cfg.AppsDir == "" || !filepath.IsAbs(cfg.AppsDir) {
		return nil, fmt.Errorf("package-deploy: apps directory %q: want an absolute path", cfg.AppsDir)
	}
	if cfg.KeepReleases < 2 {
		return nil, fmt.Errorf("package-deploy: keep releases %d: want at least 2", cfg.KeepReleases)
	}
	if cfg.ScriptTimeout <= 0 || cfg.HealthDeadline <= 0 {
		return nil, errors.New("package-deploy: script timeout and health deadline must be positive")
	}
	if cfg.Path == "" {
		cfg.Path = plugin.DefaultPath
	}
	if cfg.Lifecycle == nil {
		cfg.Lifecycle = nopLifecycle{}
	}
	if cfg.Fetcher == nil {
		f, err := newArtifactFetcher(cfg)
		if err != nil {
			return nil, err
		}
		cfg.Fetcher = f
	}
	return &Plugin{cfg: cfg}, nil
}

// Name implements plugin.Builtin.
func (p *Plugin) Name() string { return Name }

// Actions implements plugin.Builtin.
func (p *Plugin) Actions() []string {
	return []string{ActionDeploy, ActionRollback, ActionStop, ActionStart, ActionStatus}
}

// Run implements plugin.Builtin.
func (p *Plugin) Run(ctx context.Context, req plugin.Request, out plugin.Writers) error {
	a := &action{p: p, req: req, out: out}
	switch req.Action {
	case ActionDeploy:
		return a.deploy(ctx)
	case ActionRollback:
		return a.rollback(ctx)
	case ActionStop:
		return a.stop(ctx)
	case ActionStart:
		return a.start(ctx)
	case ActionStatus:
		return a.status(ctx)
	}
	return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("unknown action %q", req.Action))
}

// bad is a failure of the input (the package, the arguments): not retryable, application.
func bad(format string, args ...any) error {
	return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf(format, args...))
}

// hostFailure is a failure of this host (disk, permissions): not retryable, infrastructure.
func hostFailure(format string, args ...any) error {
	return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, fmt.Errorf(format, args...))
}

var (
	versionRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$`)
	componentRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	sha256RE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// checkService checks a service path (hotel/search): slash-separated names that are safe
// as directory names.
func checkService(s string) error {
	if s == "" {
		return errors.New("service: empty")
	}
	for _, c := range strings.Split(s, "/") {
		if !componentRE.MatchString(c) {
			return fmt.Errorf("service %q: component %q: want letters, digits, '.', '_' and '-', starting with a letter or digit", s, c)
		}
	}
	return nil
}

func checkVersion(v string) error {
	if !versionRE.MatchString(v) {
		return fmt.Errorf("version %q: want letters, digits, '.', '_', '+' and '-', starting with a letter or digit, at most 128 bytes", v)
	}
	return nil
}

// action is one run of the plugin.
type action struct {
	p   *Plugin
	req plugin.Request
	out plugin.Writers
}

func (a *action) say(format string, args ...any) { a.out.Stdout.Printf(format, args...) }

func (a *action) arg(name string) string { return a.req.Arguments[name] }

// knownArgs refuses arguments the action does not take, so that a typo is not ignored.
func (a *action) knownArgs(names ...string) error {
	if unknown := a.req.UnknownArgs(names...); len(unknown) > 0 {
		return bad("%s %s: unknown argument(s) %s; it takes %s", Name, a.req.Action, strings.Join(unknown, ", "), strings.Join(names, ", "))
	}
	return nil
}

// healthDeadline is the health_deadline argument or the configured default.
func (a *action) healthDeadline() (time.Duration, error) {
	s := a.arg("health_deadline")
	if s == "" {
		return a.p.cfg.HealthDeadline, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, bad("argument health_deadline %q: want a positive duration (30s, 2m)", s)
	}
	return d, nil
}

// serviceArg reads the service argument of the actions that need it.
func (a *action) serviceArg() (string, error) {
	svc := strings.Trim(a.arg("service"), "/")
	if svc == "" {
		svc = strings.Trim(a.req.Service, "/")
	}
	if svc == "" {
		return "", bad("%s %s: argument service is required (the service path, hotel/search)", Name, a.req.Action)
	}
	if err := checkService(svc); err != nil {
		return "", bad("argument %v", err)
	}
	return svc, nil
}

func (a *action) deploy(ctx context.Context) error {
	if err := a.knownArgs("url", "sha256", "version", "service", "health_deadline"); err != nil {
		return err
	}
	url, sum := a.arg("url"), strings.ToLower(a.arg("sha256"))
	if url == "" {
		return bad("deploy: argument url is required (file://, http(s):// or ftp:// URL of the package)")
	}
	if !sha256RE.MatchString(sum) {
		return bad("deploy: argument sha256 %q: want the package's sha256 as 64 hex digits", a.arg("sha256"))
	}
	deadline, err := a.healthDeadline()
	if err != nil {
		return err
	}
	wantSvc := strings.Trim(a.arg("service"), "/")
	if wantSvc == "" {
		wantSvc = strings.Trim(a.req.Service, "/")
	}
	version := a.arg("version")
	if version != "" {
		if err := checkVersion(version); err != nil {
			return bad("argument %v", err)
		}
	}

	a.say("fetching %s", url)
	archive, err := a.p.cfg.Fetcher.Fetch(ctx, url, sum)
	if err != nil {
		return err
	}
	a.say("fetched and verified sha256 %s", sum[:12])

	staged, err := a.stage(ctx, archive)
	if err != nil {
		return err
	}
	// staged is removed unless it becomes a release.
	defer func() {
		if staged != "" {
			_ = os.RemoveAll(staged)
		}
	}()
	desc, err := loadDescriptor(staged)
	if err != nil {
		return err
	}
	svc := desc.Service
	if wantSvc != "" && wantSvc != svc {
		return bad("package %s is for service %q (berth.yaml), not %q as the step says", url, svc, wantSvc)
	}
	if version == "" {
		version = deriveVersion(url, svc, sum)
	}
	a.say("package of %s version %s (port %d)", svc, version, desc.Port)

	s, err := a.p.openService(ctx, svc)
	if err != nil {
		return err
	}
	defer s.unlock()
	st, err := s.loadState()
	if err != nil {
		return err
	}
	cur := s.current()
	created := false
	if rel, ok := st.Releases[version]; ok && s.exists(version) {
		if rel.SHA256 != sum {
			return bad("version %s of %s is already on this host from another package (sha256 %s, not %s); deploy it under another version",
				version, svc, rel.SHA256[:12], sum[:12])
		}
		a.say("release %s is already unpacked; reusing it", version)
	} else {
		if s.exists(version) {
			// A directory without a record: left by a crash between the rename and the
			// state write. Its content is unknown; replace it.
			if err := os.RemoveAll(s.releaseDir(version)); err != nil {
				return hostFailure("remove stale release %s of %s: %v", version, svc, err)
			}
		}
		if err := os.MkdirAll(filepath.Join(s.dir, "releases"), 0o755); err != nil {
			return hostFailure("create releases directory of %s: %v", svc, err)
		}
		if err := os.Rename(staged, s.releaseDir(version)); err != nil {
			return hostFailure("move release %s of %s into place: %v", version, svc, err)
		}
		staged = ""
		created = true
		st.Releases[version] = release{SHA256: sum, URL: url, UnpackedAt: time.Now().UTC()}
		if err := s.saveState(st); err != nil {
			_ = os.RemoveAll(s.releaseDir(version))
			return err
		}
	}
	// A failed deploy removes the release it created, and its record.
	discard := func() {
		if !created {
			return
		}
		if err := os.RemoveAll(s.releaseDir(version)); err != nil {
			a.say("could not remove the failed release %s: %v", version, err)
		}
		delete(st.Releases, version)
		if err := s.saveState(st); err != nil {
			a.say("could not update the state of %s: %v", svc, err)
		}
	}

	if cur == version {
		a.say("%s %s is already current; checking that it runs", svc, version)
		if err := a.ensureRunning(ctx, s, version, deadline); err != nil {
			return err
		}
		return nil
	}
	if err := a.switchTo(ctx, s, cur, version, deadline); err != nil {
		discard()
		return err
	}
	st.activate(version)
	if err := s.saveState(st); err != nil {
		return err
	}
	a.prune(s, st)
	if cur == "" {
		a.say("deployed %s %s", svc, version)
	} else {
		a.say("deployed %s %s (was %s)", svc, version, cur)
	}
	return nil
}

// stage unpacks the archive into a fresh directory under .staging.
func (a *action) stage(ctx context.Context, archive string) (string, error) {
	root := filepath.Join(a.p.cfg.AppsDir, ".staging")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", hostFailure("create staging directory: %v", err)
	}
	cleanStaging(root)
	dir := filepath.Join(root, fmt.Sprintf("%s-%s-%s", a.req.TaskID, a.req.StepID, randomSuffix()))
	if err := extract(ctx, archive, dir, a.p.cfg.MaxPackageBytes); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// cleanStaging removes staging directories older than an hour: left by a crash.
func cleanStaging(root string) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
			_ = os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// deriveVersion names a release when the step gave no version: the URL's file name less
// the service prefix (hotel-search-) and the archive suffix, else sha256-<12 hex>.
func deriveVersion(url, svc, sum string) string {
	base := path.Base(url)
	for _, ext := range []string{".tar.gz", ".tgz", ".tar", ".zip"} {
		if b, ok := strings.CutSuffix(base, ext); ok {
			if v, ok := strings.CutPrefix(b, strings.ReplaceAll(svc, "/", "-")+"-"); ok && checkVersion(v) == nil {
				return v
			}
			if last := svc[strings.LastIndex(svc, "/")+1:]; last != svc {
				if v, ok := strings.CutPrefix(b, last+"-"); ok && checkVersion(v) == nil {
					return v
				}
			}
			break
		}
	}
	return "sha256-" + sum[:12]
}

// switchTo makes release to current in place of from (empty: none): stop from, flip,
// start to, wait for its health. On failure after from was stopped, it puts from back and
// returns an error saying what failed and how the restore went.
func (a *action) switchTo(ctx context.Context, s *service, from, to string, deadline time.Duration) error {
	newDesc, err := loadDescriptor(s.releaseDir(to))
	if err != nil {
		return err
	}
	var oldDesc *Descriptor
	if from != "" {
		oldDesc, err = loadDescriptor(s.releaseDir(from))
		if err != nil {
			a.say("cannot read berth.yaml of the current release %s (%v); not stopping it", from, err)
			oldDesc = nil
		}
	}
	lc := a.p.cfg.Lifecycle
	newRel := a.release(s, to, newDesc)
	if err := lc.Prepare(ctx, newRel); err != nil {
		lc.Stopped(newRel)
		return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION,
			fmt.Errorf("release %s of %s: %w; nothing was changed", to, s.name, err))
	}
	if oldDesc != nil {
		oldRel := a.release(s, from, oldDesc)
		if err := lc.Stopping(ctx, oldRel); err != nil {
			a.say("draining %s: %v (stopping it anyway)", from, err)
		}
		a.say("stopping %s", from)
		if err := a.script(ctx, s, from, oldDesc, "stop"); err != nil {
			lc.Stopped(newRel)
			// The old release still runs: register it again.
			a.started(ctx, s, from, oldDesc)
			return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION,
				fmt.Errorf("stop release %s of %s: %w; nothing was changed and %s is still current", from, s.name, err, from))
		}
		lc.Stopped(oldRel)
	}
	if err := s.flip(to); err != nil {
		lc.Stopped(newRel)
		a.restore(s, from, oldDesc, to, nil)
		return hostFailure("make %s current: %v", to, err)
	}
	a.say("current is now %s; starting it", to)
	var failure error
	if err := a.script(ctx, s, to, newDesc, "start"); err != nil {
		failure = fmt.Errorf("start release %s of %s: %w", to, s.name, err)
	} else if err := a.waitHealthy(ctx, s, to, newDesc, deadline); err != nil {
		failure = fmt.Errorf("release %s of %s: %w", to, s.name, err)
	}
	if failure == nil {
		a.started(ctx, s, to, newDesc)
		return nil
	}
	a.say("%v", failure)
	lc.Stopped(newRel)
	restored := a.restore(s, from, oldDesc, to, newDesc)
	return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("%w; %s", failure, restored))
}

// restore undoes a failed switch: stop the new release (when it was started), flip
// current back to from and start it again. It runs even when ctx ended (the step timed
// out): leaving the service down would be worse. It returns a summary for the message.
func (a *action) restore(s *service, from string, oldDesc *Descriptor, to string, newDesc *Descriptor) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*a.p.cfg.ScriptTimeout+a.p.cfg.HealthDeadline)
	defer cancel()
	if newDesc != nil {
		a.say("stopping the failed release %s", to)
		if err := a.script(ctx, s, to, newDesc, "stop"); err != nil {
			a.say("stop %s: %v", to, err)
		}
	}
	if from == "" {
		if err := s.unflip(); err != nil {
			return fmt.Sprintf("removing the current link failed: %v", err)
		}
		return "there was no previous release to restore"
	}
	if err := s.flip(from); err != nil {
		return fmt.Sprintf("flipping current back to %s failed: %v; the service needs a person", from, err)
	}
	if oldDesc == nil {
		return fmt.Sprintf("current is %s again, but its berth.yaml cannot be read to start it", from)
	}
	a.say("current is %s again; starting it", from)
	oldRel := a.release(s, from, oldDesc)
	if err := a.p.cfg.Lifecycle.Prepare(ctx, oldRel); err != nil {
		a.say("templates of %s: %v", from, err)
	}
	if err := a.script(ctx, s, from, oldDesc, "start"); err != nil {
		return fmt.Sprintf("current is %s again but its start script failed: %v", from, err)
	}
	if err := a.waitHealthy(ctx, s, from, oldDesc, a.p.cfg.HealthDeadline); err != nil {
		return fmt.Sprintf("rolled back to %s, which was started but is not healthy: %v", from, err)
	}
	a.started(ctx, s, from, oldDesc)
	return fmt.Sprintf("rolled back to %s, which is running and healthy again", from)
}

// ensureRunning makes sure the current release answers its health check, starting it
// once when it does not.
func (a *action) ensureRunning(ctx context.Context, s *service, version string, deadline time.Duration) error {
	desc, err := loadDescriptor(s.releaseDir(version))
	if err != nil {
		return err
	}
	rel := a.release(s, version, desc)
	if err := a.p.cfg.Lifecycle.Prepare(ctx, rel); err != nil {
		return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("release %s of %s: %w", version, s.name, err))
	}
	if err := a.healthOnce(ctx, s, version, desc); err == nil {
		a.say("%s %s is healthy", s.name, version)
		a.started(ctx, s, version, desc)
		return nil
	}
	a.say("%s %s is not healthy; starting it", s.name, version)
	if err := a.script(ctx, s, version, desc, "start"); err != nil {
		return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("start release %s of %s: %w", version, s.name, err))
	}
	if err := a.waitHealthy(ctx, s, version, desc, deadline); err != nil {
		return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("release %s of %s: %w", version, s.name, err))
	}
	a.started(ctx, s, version, desc)
	return nil
}

func (a *action) rollback(ctx context.Context) error {
	if err := a.knownArgs("service", "version", "health_deadline"); err != nil {
		return err
	}
	svc, err := a.serviceArg()
	if err != nil {
		return err
	}
	deadline, err := a.healthDeadline()
	if err != nil {
		return err
	}
	s, err := a.p.openService(ctx, svc)
	if err != nil {
		return err
	}
	defer s.unlock()
	st, err := s.loadState()
	if err != nil {
		return err
	}
	cur := s.current()
	to := a.arg("version")
	if to != "" {
		if err := checkVersion(to); err != nil {
			return bad("argument %v", err)
		}
		if !s.exists(to) {
			return bad("rollback %s: release %s is not on this host (releases: %s)", svc, to, strings.Join(s.releases(), ", "))
		}
	} else {
		to = st.previous(cur, s.exists)
		if to == "" {
			return bad("rollback %s: no previous release to roll back to (current %q; releases: %s)", svc, cur, strings.Join(s.releases(), ", "))
		}
	}
	if to == cur {
		a.say("%s %s is already current", svc, to)
		return a.ensureRunning(ctx, s, to, deadline)
	}
	a.say("rolling %s back from %s to %s", svc, cur, to)
	if err := a.switchTo(ctx, s, cur, to, deadline); err != nil {
		return err
	}
	st.activate(to)
	if err := s.saveState(st); err != nil {
		return err
	}
	a.say("rolled %s back to %s", svc, to)
	return nil
}

func (a *action) stop(ctx context.Context) error {
	if err := a.knownArgs("service"); err != nil {
		return err
	}
	svc, err := a.serviceArg()
	if err != nil {
		return err
	}
	s, err := a.p.openService(ctx, svc)
	if err != nil {
		return err
	}
	defer s.unlock()
	cur := s.current()
	if cur == "" {
		return bad("stop %s: no current release on this host", svc)
	}
	desc, err := loadDescriptor(s.releaseDir(cur))
	if err != nil {
		return err
	}
	rel := a.release(s, cur, desc)
	if err := a.p.cfg.Lifecycle.Stopping(ctx, rel); err != nil {
		a.say("draining %s: %v (stopping it anyway)", cur, err)
	}
	if err := a.script(ctx, s, cur, desc, "stop"); err != nil {
		a.started(ctx, s, cur, desc)
		return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("stop release %s of %s: %w", cur, svc, err))
	}
	a.p.cfg.Lifecycle.Stopped(rel)
	a.say("stopped %s %s", svc, cur)
	return nil
}

func (a *action) start(ctx context.Context) error {
	if err := a.knownArgs("service", "health_deadline"); err != nil {
		return err
	}
	svc, err := a.serviceArg()
	if err != nil {
		return err
	}
	deadline, err := a.healthDeadline()
	if err != nil {
		return err
	}
	s, err := a.p.openService(ctx, svc)
	if err != nil {
		return err
	}
	defer s.unlock()
	cur := s.current()
	if cur == "" {
		return bad("start %s: no current release on this host", svc)
	}
	desc, err := loadDescriptor(s.releaseDir(cur))
	if err != nil {
		return err
	}
	rel := a.release(s, cur, desc)
	if err := a.p.cfg.Lifecycle.Prepare(ctx, rel); err != nil {
		return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("release %s of %s: %w", cur, svc, err))
	}
	if err := a.script(ctx, s, cur, desc, "start"); err != nil {
		return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("start release %s of %s: %w", cur, svc, err))
	}
	if err := a.waitHealthy(ctx, s, cur, desc, deadline); err != nil {
		return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_APPLICATION, fmt.Errorf("release %s of %s: %w", cur, svc, err))
	}
	a.started(ctx, s, cur, desc)
	a.say("started %s %s", svc, cur)
	return nil
}

// statusReport is the JSON line the status action prints last.
type statusReport struct {
	Service  string   `json:"service"`
	Current  string   `json:"current"`
	Previous string   `json:"previous,omitempty"`
	Releases []string `json:"releases"`
	Healthy  bool     `json:"healthy"`
	Health   string   `json:"health,omitempty"`
}

func (a *action) status(ctx context.Context) error {
	if err := a.knownArgs("service"); err != nil {
		return err
	}
	svc, err := a.serviceArg()
	if err != nil {
		return err
	}
	s, err := a.p.openService(ctx, svc)
	if err != nil {
		return err
	}
	defer s.unlock()
	st, err := s.loadState()
	if err != nil {
		return err
	}
	cur := s.current()
	if cur == "" && len(s.releases()) == 0 {
		return bad("status %s: the service is not deployed on this host", svc)
	}
	rep := statusReport{Service: svc, Current: cur, Previous: st.previous(cur, s.exists), Releases: s.releases()}
	if cur != "" {
		desc, err := loadDescriptor(s.releaseDir(cur))
		if err != nil {
			rep.Health = err.Error()
		} else if err := a.healthOnce(ctx, s, cur, desc); err != nil {
			rep.Health = err.Error()
		} else {
			rep.Healthy = true
		}
	}
	b, _ := json.Marshal(rep)
	a.say("%s", b)
	return nil
}

// release describes version of s for Lifecycle.
func (a *action) release(s *service, version string, desc *Descriptor) Release {
	return Release{Service: s.name, Version: version, Dir: s.releaseDir(version), Descriptor: desc, Env: a.p.env(s.name, s.releaseDir(version), version, desc, "reload")}
}

// started tells Lifecycle that version of s runs and is healthy.
func (a *action) started(ctx context.Context, s *service, version string, desc *Descriptor) {
	if err := a.p.cfg.Lifecycle.Started(ctx, a.release(s, version, desc)); err != nil {
		a.say("registering %s %s: %v", s.name, version, err)
	}
}

// script runs one of the release's scripts (start, stop) with the script timeout.
func (a *action) script(ctx context.Context, s *service, version string, desc *Descriptor, which string) error {
	rel := scriptOf(desc, which)
	if rel == "" {
		if which == "stop" {
			a.say("release %s has no stop script", version)
			return nil
		}
		return fmt.Errorf("berth.yaml has no %s script", which)
	}
	dir := s.releaseDir(version)
	exe, err := scriptPath(dir, rel)
	if err != nil {
		return err
	}
	spec := proc.Spec{
		Path: exe, Args: []string{rel}, Dir: dir, Env: a.env(s, version, desc, which),
		Timeout: a.p.cfg.ScriptTimeout, KillGrace: a.p.cfg.KillGrace,
	}
	var logFile *os.File
	var logStart int64
	if which == "start" {
		// What the start script starts may keep its output open for ever: it goes to a file
		// of the service, never to a pipe of the agent.
		if err := os.MkdirAll(filepath.Join(s.dir, "logs"), 0o755); err != nil {
			return fmt.Errorf("create logs directory: %w", err)
		}
		logFile, err = os.OpenFile(filepath.Join(s.dir, "logs", version+".start.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("open start log: %w", err)
		}
		defer logFile.Close()
		if fi, err := logFile.Stat(); err == nil {
			logStart = fi.Size()
		}
		spec.Stdout, spec.Stderr, spec.Detach = logFile, logFile, true
	} else {
		spec.Stdout, spec.Stderr = a.out.Stdout, a.out.Stderr
	}
	res, err := proc.Run(ctx, spec)
	if logFile != nil {
		a.copyLog(logFile.Name(), logStart)
	}
	if err != nil {
		return err
	}
	if !res.Success() {
		return fmt.Errorf("%s script %s: %s", which, rel, res.Describe(spec.Timeout))
	}
	return nil
}

// copyLog passes the start log's new lines on as output, at most 16 KiB of them.
func (a *action) copyLog(name string, from int64) {
	f, err := os.Open(name)
	if err != nil {
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() <= from {
		return
	}
	const most = 16 << 10
	if fi.Size()-from > most {
		from = fi.Size() - most
	}
	_, _ = io.Copy(a.out.Stdout, io.NewSectionReader(f, from, fi.Size()-from))
}

// env is a script's environment: PATH, the agent's facts, and the release's.
func (a *action) env(s *service, version string, desc *Descriptor, which string) []string {
	return a.p.env(s.name, s.releaseDir(version), version, desc, which)
}

func (p *Plugin) env(svc, dir, version string, desc *Descriptor, which string) []string {
	env := []string{"PATH=" + p.cfg.Path}
	keys := make([]string, 0, len(p.cfg.Facts))
	for k := range p.cfg.Facts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+p.cfg.Facts[k])
	}
	return append(env,
		"BERTH_SERVICE="+svc,
		"BERTH_VERSION="+version,
		"BERTH_RELEASE_DIR="+dir,
		"BERTH_PORT="+strconv.Itoa(desc.Port),
		"BERTH_SCRIPT="+which,
	)
}

// ScriptPath resolves a script named in a descriptor inside dir, refusing anything that
// leads outside it or is not executable.
func ScriptPath(dir, rel string) (string, error) { return scriptPath(dir, rel) }

// Running returns the current release of every service deployed on this host (a current
// link whose berth.yaml reads), for the agent to check and register again after it
// restarts, and an error per service whose current release cannot be read.
func (p *Plugin) Running() ([]Release, []error) {
	var out []Release
	var errs []error
	_ = filepath.WalkDir(p.cfg.AppsDir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && (d.Name() == "releases" || d.Name() == "logs" || strings.HasPrefix(d.Name(), ".")) && path != p.cfg.AppsDir {
			return filepath.SkipDir
		}
		if d.Name() != "current" || d.Type()&os.ModeSymlink == 0 {
			return nil
		}
		dir := filepath.Dir(path)
		rel, err := filepath.Rel(p.cfg.AppsDir, dir)
		if err != nil {
			return nil
		}
		svc := filepath.ToSlash(rel)
		if checkService(svc) != nil {
			return nil
		}
		target, err := os.Readlink(path)
		if err != nil {
			return nil
		}
		version := filepath.Base(target)
		rdir := filepath.Join(dir, "releases", version)
		desc, err := loadDescriptor(rdir)
		if err != nil {
			errs = append(errs, fmt.Errorf("release %s of %s: %w", version, svc, err))
			return nil
		}
		out = append(out, Release{Service: svc, Version: version, Dir: rdir, Descriptor: desc, Env: p.env(svc, rdir, version, desc, "reload")})
		return nil
	})
	return out, errs
}

// scriptPath resolves a script named in berth.yaml inside the release directory, refusing
// anything that leads outside it.
func scriptPath(dir, rel string) (string, error) {
	if !filepath.IsLocal(rel) {
		return "", fmt.Errorf("script %q: not a path inside the package", rel)
	}
	p := filepath.Join(dir, rel)
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("script %s: %w", rel, err)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("release directory: %w", err)
	}
	if r, err := filepath.Rel(realDir, real); err != nil || !filepath.IsLocal(r) {
		return "", fmt.Errorf("script %s: leads outside the package", rel)
	}
	if err := proc.Executable(real); err != nil {
		return "", fmt.Errorf("script %s: %w", rel, err)
	}
	return real, nil
}

// healthOnce runs the health script once.
func (a *action) healthOnce(ctx context.Context, s *service, version string, desc *Descriptor) error {
	rel := desc.Scripts.Health
	if rel == "" {
		return nil
	}
	dir := s.releaseDir(version)
	exe, err := scriptPath(dir, rel)
	if err != nil {
		return err
	}
	out := plugin.NewOutput(nil, 64<<10)
	res, err := proc.Run(ctx, proc.Spec{
		Path: exe, Args: []string{rel}, Dir: dir, Env: a.env(s, version, desc, "health"),
		Stdout: out.Stdout(), Stderr: out.Stderr(),
		Timeout: desc.Health.Timeout, KillGrace: time.Second, IODelay: 200 * time.Millisecond,
	})
	out.Flush()
	if err != nil {
		return err
	}
	if !res.Success() {
		msg := fmt.Sprintf("health script %s: %s", rel, res.Describe(desc.Health.Timeout))
		if tail := out.Tail(); len(tail) > 0 {
			msg += ": " + tail[len(tail)-1]
		}
		return errors.New(msg)
	}
	return nil
}

// waitHealthy runs the health script every interval until it passed rise times in a row,
// or fails when deadline passes (or ctx ends).
func (a *action) waitHealthy(ctx context.Context, s *service, version string, desc *Descriptor, deadline time.Duration) error {
	if desc.Scripts.Health == "" {
		a.say("release %s has no health script; taking it as healthy", version)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	start := time.Now()
	rise := max(desc.Health.Rise, 1)
	interval := desc.Health.Interval
	passes, checks := 0, 0
	var last error
	wait := min(interval, 250*time.Millisecond)
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if last == nil {
				last = errors.New("no check finished")
			}
			return fmt.Errorf("health did not pass %d time(s) in a row within %s (%d checks; last: %v)", rise, deadline, checks, last)
		case <-t.C:
		}
		wait = interval
		checks++
		if err := a.healthOnce(ctx, s, version, desc); err != nil {
			if ctx.Err() != nil && last != nil {
				continue
			}
			passes, last = 0, err
			continue
		}
		passes++
		if passes >= rise {
			a.say("%s %s is healthy (%d check(s) in a row, %s)", s.name, version, passes, time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
}

// prune removes the releases beyond KeepReleases, oldest first, never the current one or
// the one a rollback would go to.
func (a *action) prune(s *service, st *state) {
	cur := s.current()
	prev := st.previous(cur, s.exists)
	order := st.byRecency(s.releases())
	keep := map[string]bool{cur: true, prev: true}
	n := 0
	for _, v := range order {
		if keep[v] {
			n++
			continue
		}
		if n < a.p.cfg.KeepReleases {
			keep[v] = true
			n++
		}
	}
	for _, v := range s.releases() {
		if keep[v] {
			continue
		}
		if err := os.RemoveAll(s.releaseDir(v)); err != nil {
			a.say("could not remove old release %s: %v", v, err)
			continue
		}
		_ = os.Remove(filepath.Join(s.dir, "logs", v+".start.log"))
		// The cached artifact goes too (pkg/artifact keeps <cache>/<sha256> until its
		// caller removes it); were another service to use the same bytes, it would be
		// fetched again.
		sum := st.Releases[v].SHA256
		delete(st.Releases, v)
		if a.p.cfg.CacheDir != "" && sha256RE.MatchString(sum) && !st.uses(sum) {
			_ = os.Remove(filepath.Join(a.p.cfg.CacheDir, sum))
		}
		a.say("removed old release %s", v)
	}
	if err := s.saveState(st); err != nil {
		a.say("could not update the state of %s: %v", s.name, err)
	}
}

// service is one service's directory, locked for the length of an action.
type service struct {
	name string
	dir  string
	lock *os.File
}

// openService locks the service's directory (creating it), waiting for another action on
// the same service to finish or ctx to end.
func (p *Plugin) openService(ctx context.Context, name string) (*service, error) {
	if err := checkService(name); err != nil {
		return nil, bad("%v", err)
	}
	dir := filepath.Join(p.cfg.AppsDir, filepath.FromSlash(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, hostFailure("create directory of %s: %v", name, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, hostFailure("lock %s: %v", name, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, hostFailure("lock %s: %v", name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, plugin.Retryable(fmt.Errorf("another action on %s is still running: %w", name, ctx.Err()))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return &service{name: name, dir: dir, lock: f}, nil
}

func (s *service) unlock() {
	_ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
	s.lock.Close()
}

func (s *service) releaseDir(v string) string { return filepath.Join(s.dir, "releases", v) }

func (s *service) exists(v string) bool {
	fi, err := os.Stat(s.releaseDir(v))
	return err == nil && fi.IsDir()
}

// releases lists the release directories, sorted by name.
func (s *service) releases() []string {
	ents, err := os.ReadDir(filepath.Join(s.dir, "releases"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

// current is the version current points at, or "".
func (s *service) current() string {
	target, err := os.Readlink(filepath.Join(s.dir, "current"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

// flip points current at releases/<v> atomically: a new link under a temporary name,
// renamed over current, then the directory synced.
func (s *service) flip(v string) error {
	tmp := filepath.Join(s.dir, ".current-"+randomSuffix())
	if err := os.Symlink(filepath.Join("releases", v), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "current")); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(s.dir)
}

// unflip removes current (the first release of a service failed).
func (s *service) unflip() error {
	if err := os.Remove(filepath.Join(s.dir, "current")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// state is state.json: what is known of each release and the order they were current.
type state struct {
	// Releases are the unpacked releases by version.
	Releases map[string]release `json:"releases"`
	// History lists versions in the order they became current, most recent last, each
	// once.
	History []string `json:"history"`
}

type release struct {
	SHA256     string    `json:"sha256"`
	URL        string    `json:"url"`
	UnpackedAt time.Time `json:"unpacked_at"`
}

func (s *service) loadState() (*state, error) {
	st := &state{Releases: map[string]release{}}
	b, err := os.ReadFile(filepath.Join(s.dir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, hostFailure("read state of %s: %v", s.name, err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, hostFailure("state of %s (%s): %v", s.name, filepath.Join(s.dir, "state.json"), err)
	}
	if st.Releases == nil {
		st.Releases = map[string]release{}
	}
	return st, nil
}

func (s *service) saveState(st *state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return hostFailure("encode state of %s: %v", s.name, err)
	}
	tmp := filepath.Join(s.dir, ".state-"+randomSuffix())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.dir, "state.json"))
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return hostFailure("write state of %s: %v", s.name, err)
	}
	return nil
}

// uses reports whether a release still recorded came from the artifact with this sha256.
func (st *state) uses(sum string) bool {
	for _, r := range st.Releases {
		if r.SHA256 == sum {
			return true
		}
	}
	return false
}

// activate records v as the most recent current release.
func (st *state) activate(v string) {
	st.History = append(slices.DeleteFunc(st.History, func(h string) bool { return h == v }), v)
}

// previous is the most recent release before cur that is still on disk.
func (st *state) previous(cur string, exists func(string) bool) string {
	for i := len(st.History) - 1; i >= 0; i-- {
		if v := st.History[i]; v != cur && exists(v) {
			return v
		}
	}
	return ""
}

// byRecency orders the releases on disk: most recently current first, then the ones never
// current (newest unpacked first).
func (st *state) byRecency(onDisk []string) []string {
	var out []string
	seen := map[string]bool{}
	for i := len(st.History) - 1; i >= 0; i-- {
		v := st.History[i]
		if slices.Contains(onDisk, v) && !seen[v] {
			out = append(out, v)
			seen[v] = true
		}
	}
	var rest []string
	for _, v := range onDisk {
		if !seen[v] {
			rest = append(rest, v)
		}
	}
	sort.Slice(rest, func(i, j int) bool {
		return st.Releases[rest[i]].UnpackedAt.After(st.Releases[rest[j]].UnpackedAt)
	})
	return append(out, rest...)
}
