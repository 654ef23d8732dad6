package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// strategyFlags are the flags that set a strategy (berth deploy, berth run, berth tree set).
type strategyFlags struct {
	batches          string
	maxParallel      uint32
	pause            string
	maxFailures      string
	autoRollback     bool
	progressDeadline time.Duration
	minHealthyTime   time.Duration
	healthDeadline   time.Duration
	stepTimeout      time.Duration
	infraRetries     uint32
}

// add registers the flags; deploy adds the deployment-only ones.
func (s *strategyFlags) add(f *pflag.FlagSet, deploy bool) {
	f.StringVar(&s.batches, "batches", "", "ramp of cumulative batch sizes, counts or percentages, ending at 100% (1,25%,100%)")
	f.Uint32Var(&s.maxParallel, "max-parallel", 0, "steps in flight at once inside a batch (0: the whole batch)")
	f.StringVar(&s.pause, "pause", "", "after every batch but the last: none, manual (wait for resume) or a duration (30s)")
	f.StringVar(&s.maxFailures, "max-failures", "", "targets that may fail before the rollout stops: a count (2) or a percentage (10%)")
	f.DurationVar(&s.stepTimeout, "step-timeout", 0, "bound of one step on a host")
	f.Uint32Var(&s.infraRetries, "infra-retries", 0, "retries of an unreachable agent or retryable failure before a target is unreachable")
	if deploy {
		f.BoolVar(&s.autoRollback, "auto-rollback", false, "roll every touched host back when the rollout stops on failures")
		f.DurationVar(&s.progressDeadline, "progress-deadline", 0, "fail when no target succeeds for this long (0 with the flag given: no deadline)")
		f.DurationVar(&s.minHealthyTime, "min-healthy-time", 0, "a deployed target must stay healthy this long to count as succeeded")
		f.DurationVar(&s.healthDeadline, "health-deadline", 0, "time a new release has to pass its health checks on a host")
	}
}

// apply writes the flags that were given into a strategy map (the API's JSON).
func (s *strategyFlags) apply(f *pflag.FlagSet, m map[string]any) error {
	changed := func(n string) bool { fl := f.Lookup(n); return fl != nil && fl.Changed }
	if changed("batches") {
		var bs []string
		for b := range strings.SplitSeq(s.batches, ",") {
			if b = strings.TrimSpace(b); b != "" {
				bs = append(bs, b)
			}
		}
		if len(bs) == 0 {
			return errors.New("--batches: empty; want a list such as 1,25%,100%")
		}
		m["batches"] = bs
	}
	if changed("max-parallel") {
		m["max_parallel"] = s.maxParallel
	}
	if changed("pause") {
		m["pause"] = s.pause
	}
	if changed("max-failures") {
		m["max_failures"] = s.maxFailures
	}
	if changed("auto-rollback") {
		m["auto_rollback"] = s.autoRollback
	}
	if changed("progress-deadline") {
		m["progress_deadline"] = s.progressDeadline.String()
	}
	if changed("step-timeout") {
		m["step_timeout"] = s.stepTimeout.String()
	}
	if changed("infra-retries") {
		m["infra_retries"] = s.infraRetries
	}
	hg, _ := m["health_gate"].(map[string]any)
	if changed("min-healthy-time") || changed("health-deadline") {
		if hg == nil {
			hg = map[string]any{}
		}
		if changed("min-healthy-time") {
			hg["min_healthy_time"] = s.minHealthyTime.String()
		}
		if changed("health-deadline") {
			hg["deadline"] = s.healthDeadline.String()
		}
		m["health_gate"] = hg
	}
	return nil
}

// deployOptions are the flags of berth deploy.
type deployOptions struct {
	version, pkg, sha256, hosts, file string
	queue, wait, json                 bool
	strategy                          strategyFlags
	container                         containerFlags
}

// containerFlags are the flags of a container deployment.
type containerFlags struct {
	mode, memory, spread, constraints string
	replicas, maxPerHost              uint32
	cpu                               float64
}

// containerFlagNames are the flags that only container mode takes.
var containerFlagNames = []string{"replicas", "cpu", "memory", "spread", "constraints", "max-per-host"}

func (c *containerFlags) add(f *pflag.FlagSet) {
	f.StringVar(&c.mode, "mode", "", "package (default: the hosts run the package) or container (the scheduler places containers of an image built from it)")
	f.Uint32Var(&c.replicas, "replicas", 0, "container mode: number of containers (required)")
	f.Float64Var(&c.cpu, "cpu", 0, "container mode: CPU of each container in cores, 0.1 is a tenth of a core (required)")
	f.StringVar(&c.memory, "memory", "", "container mode: memory of each container: bytes or with Ki, Mi, Gi (64Mi; at least 6Mi; required)")
	f.StringVar(&c.spread, "spread", "", "container mode: spread the containers evenly over dc or rack")
	f.StringVar(&c.constraints, "constraints", "", "container mode: host label expression, e.g. 'dc=bj,disk in (ssd,nvme),!has gpu'")
	f.Uint32Var(&c.maxPerHost, "max-per-host", 0, "container mode: at most this many containers of the service on one host (0: no cap)")
}

// apply writes the container flags that were given into the request body. The mode comes
// from --mode, else from the file; placement flags without container mode are refused.
func (c *containerFlags) apply(f *pflag.FlagSet, body map[string]any) error {
	if f.Changed("mode") {
		switch c.mode {
		case "package", "container":
			body["mode"] = c.mode
		default:
			return fmt.Errorf("--mode %q: want package or container", c.mode)
		}
	}
	mode, _ := body["mode"].(string)
	var given []string
	for _, n := range containerFlagNames {
		if f.Changed(n) {
			given = append(given, "--"+n)
		}
	}
	if mode != "container" {
		if len(given) > 0 {
			return fmt.Errorf("%s: only with --mode container (package mode deploys to --hosts)", strings.Join(given, ", "))
		}
		return nil
	}
	if _, ok := body["hosts"]; ok {
		return errors.New("--hosts: package mode only; container mode places its containers with the scheduler (--replicas, --cpu, --memory)")
	}
	p, _ := body["placement"].(map[string]any)
	if p == nil {
		p = map[string]any{}
	}
	if f.Changed("replicas") {
		if c.replicas < 1 {
			return fmt.Errorf("--replicas %d: want at least 1", c.replicas)
		}
		p["replicas"] = c.replicas
	}
	if f.Changed("cpu") {
		m, err := cpuMillis(c.cpu)
		if err != nil {
			return err
		}
		p["cpu_millis"] = m
	}
	if f.Changed("memory") {
		b, err := parseBytes(c.memory)
		if err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		if b < 6<<20 {
			return fmt.Errorf("--memory %s: want at least 6Mi (Docker's smallest limit)", c.memory)
		}
		p["memory_bytes"] = b
	}
	if f.Changed("spread") {
		switch c.spread {
		case "", "dc", "rack":
			p["spread"] = c.spread
		default:
			return fmt.Errorf("--spread %q: want dc or rack", c.spread)
		}
	}
	if f.Changed("constraints") {
		p["constraints"] = c.constraints
	}
	if f.Changed("max-per-host") {
		p["max_per_host"] = c.maxPerHost
	}
	for _, req := range []struct{ key, flag string }{{"replicas", "--replicas N"}, {"cpu_millis", "--cpu CORES"}, {"memory_bytes", "--memory SIZE"}} {
		if _, ok := p[req.key]; !ok {
			return fmt.Errorf("container mode needs %s (and --replicas, --cpu, --memory)", req.flag)
		}
	}
	body["placement"] = p
	return nil
}

// cpuMillis turns cores into thousandths of a core.
func cpuMillis(cores float64) (uint64, error) {
	if math.IsNaN(cores) || cores <= 0 || cores > 1024 {
		return 0, fmt.Errorf("--cpu %g: want cores, more than 0 (0.1 is a tenth of a core) and at most 1024", cores)
	}
	m := uint64(math.Round(cores * 1000))
	if m == 0 {
		return 0, fmt.Errorf("--cpu %g: less than a thousandth of a core", cores)
	}
	return m, nil
}

// parseBytes reads a size: plain bytes, or a number with Ki, Mi, Gi or Ti (powers of
// 1024), optionally followed by B.
func parseBytes(s string) (uint64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "B")
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}} {
		if n, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = n, u.mult
			break
		}
	}
	if t == "" {
		return 0, fmt.Errorf("%q: want bytes or a size with Ki, Mi, Gi (64Mi)", s)
	}
	if n, err := strconv.ParseUint(t, 10, 64); err == nil {
		if n > math.MaxUint64/mult {
			return 0, fmt.Errorf("%q: too large", s)
		}
		return n * mult, nil
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) || mult == 1 {
		return 0, fmt.Errorf("%q: want bytes or a size with Ki, Mi, Gi (64Mi, 1.5Gi; not M or G)", s)
	}
	if v*float64(mult) >= math.MaxUint64/2 {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return uint64(v * float64(mult)), nil
}

func newDeployCmd() *cobra.Command {
	var o deployOptions
	var ctrl *string
	cmd := &cobra.Command{
		Use:   "deploy SERVICE",
		Short: "Deploy a version of a service's package to its hosts, or as containers, in batches",
		Long: `berth deploy asks the controller to roll a package out: SERVICE at --version, from
--package (a file://, http(s):// or ftp:// URL, or a local path) verified against --sha256,
to --hosts or, without it, to the hosts bound to SERVICE in the service tree. The strategy
flags override what the service tree sets (berth tree get SERVICE --effective).

-f FILE reads the request from YAML with the API's fields (service, version, artifact
{url, sha256} or package and sha256, hosts, strategy, queue); flags override it.

--mode container deploys containers instead: the image builder builds an image of the
package (once per version), the scheduler places --replicas containers of --cpu cores and
--memory each (--spread dc|rack, --constraints EXPR, --max-per-host N), and the agents run
them batch by batch; the service's old containers are stopped as the new ones become
healthy.

A second deployment of a service that has one running is refused, unless --queue: it then
waits for the running one to end.

--wait follows the rollout: a progress bar per batch on a terminal, one line per change
otherwise, then a summary. The exit code tells how it ended:
  0  succeeded     3  failed     4  aborted     5  rolled back
  1  the request failed (bad input, controller unreachable)`,
		Example: `  berth deploy hotel/search --version 1.4.2 --package ftp://pkgs/search-1.4.2.tar.gz --sha256 9f86... --wait
  berth deploy acc/web --version 2.0.0 --package ./web-2.0.0.tar.gz --sha256 $(sha256sum web-2.0.0.tar.gz | cut -d' ' -f1) \
      --hosts h1,h2,h3 --batches 1,50%,100% --max-parallel 2 --pause 30s --max-failures 1 --auto-rollback --wait
  berth deploy hotel/search --version 1.4.2 --mode container --replicas 3 --cpu 0.5 --memory 256Mi --spread rack \
      --package ftp://pkgs/search-1.4.2.tar.gz --sha256 9f86... --wait`,
		Args: cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			body, err := deployBody(cmd.Flags(), o, args)
			if err != nil {
				return err
			}
			c := newAPIClient(base)
			d := &controllerv1.Deployment{}
			if err := c.get(cmd.Context(), "POST", "/v1/deployments", body, d); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !o.wait {
				if o.json {
					return printProto(out, d)
				}
				fmt.Fprintf(out, "deployment %s of %s %s: %s\n", d.GetId(), d.GetService(), d.GetVersion(), d.GetStatus().GetState())
				return nil
			}
			if d.GetMode() == "container" {
				fmt.Fprintf(cmd.ErrOrStderr(), "deployment %s of %s %s: %d containers\n", d.GetId(), d.GetService(), d.GetVersion(), d.GetPlacement().GetReplicas())
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "deployment %s of %s %s to %d hosts\n", d.GetId(), d.GetService(), d.GetVersion(), len(d.GetHosts()))
			}
			v, err := waitRun(cmd.Context(), c, "/v1/deployments/"+d.GetId(), newProgress(out, isTTY(out) && !o.json), deploymentView)
			if err != nil {
				return err
			}
			if o.json {
				if err := printProto(out, v.raw); err != nil {
					return err
				}
			} else {
				printSummary(out, v)
			}
			if code := exitCodeOf(v.state); code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	ctrl = controllerFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&o.version, "version", "", "version to deploy (required)")
	f.StringVar(&o.pkg, "package", "", "package URL (file://, http(s)://, ftp://) or local path (required)")
	f.StringVar(&o.sha256, "sha256", "", "sha256 of the package, 64 hex digits (required)")
	f.StringVar(&o.hosts, "hosts", "", "target hosts, comma separated (default: the hosts bound to the service in the tree)")
	f.StringVarP(&o.file, "file", "f", "", "read the request from this YAML file")
	f.BoolVar(&o.queue, "queue", false, "wait behind a running deployment of the service instead of being refused")
	f.BoolVar(&o.wait, "wait", false, "follow the rollout and exit with its outcome (0 succeeded, 3 failed, 4 aborted, 5 rolled back)")
	f.BoolVar(&o.json, "json", false, "print the deployment as JSON")
	o.strategy.add(f, true)
	o.container.add(f)
	return cmd
}

// deployBody builds the POST /v1/deployments body from the file and the flags.
func deployBody(f *pflag.FlagSet, o deployOptions, args []string) (map[string]any, error) {
	body := map[string]any{}
	if o.file != "" {
		b, err := readFileLimit(o.file, maxInputFile)
		if err != nil {
			return nil, fmt.Errorf("-f: %w", err)
		}
		var doc map[string]any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("-f %s: %w", o.file, err)
		}
		for k, v := range doc {
			switch k {
			case "service", "version", "hosts", "strategy", "queue", "artifact", "mode", "placement":
				body[k] = v
			case "package", "sha256":
				a, _ := body["artifact"].(map[string]any)
				if a == nil {
					a = map[string]any{}
				}
				key := map[string]string{"package": "url", "sha256": "sha256"}[k]
				a[key] = v
				body["artifact"] = a
			default:
				return nil, fmt.Errorf("-f %s: unknown field %q (want service, version, package, sha256, artifact, hosts, mode, placement, strategy, queue)", o.file, k)
			}
		}
	}
	if len(args) == 1 {
		body["service"] = args[0]
	}
	if _, ok := body["service"]; !ok {
		return nil, errors.New("name the service: berth deploy SERVICE --version V --package URL --sha256 HEX")
	}
	if f.Changed("version") {
		body["version"] = o.version
	}
	a, _ := body["artifact"].(map[string]any)
	if a == nil {
		a = map[string]any{}
	}
	if f.Changed("package") {
		u, err := packageURL(o.pkg)
		if err != nil {
			return nil, err
		}
		a["url"] = u
	}
	if f.Changed("sha256") {
		a["sha256"] = strings.ToLower(o.sha256)
	}
	body["artifact"] = a
	for _, req := range []struct{ flag, have string }{{"--version", "version"}} {
		if _, ok := body[req.have]; !ok {
			return nil, fmt.Errorf("%s is required", req.flag)
		}
	}
	if _, ok := a["url"]; !ok {
		return nil, errors.New("--package is required")
	}
	if _, ok := a["sha256"]; !ok {
		return nil, errors.New("--sha256 is required")
	}
	if f.Changed("hosts") {
		body["hosts"] = splitHosts(o.hosts)
	}
	if o.queue {
		body["queue"] = true
	}
	if err := o.container.apply(f, body); err != nil {
		return nil, err
	}
	st, _ := body["strategy"].(map[string]any)
	if st == nil {
		st = map[string]any{}
	}
	if err := o.strategy.apply(f, st); err != nil {
		return nil, err
	}
	if len(st) > 0 {
		body["strategy"] = st
	}
	return body, nil
}

// packageURL turns a local path into a file:// URL; URLs pass through.
func packageURL(p string) (string, error) {
	if strings.Contains(p, "://") {
		return p, nil
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("--package %q: %w", p, err)
	}
	return (&url.URL{Scheme: "file", Path: abs}).String(), nil
}

func splitHosts(s string) []string {
	out := []string{}
	for h := range strings.SplitSeq(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// runView is what the progress display needs of a deployment or a task.
type runView struct {
	id, what, state, message string
	draining                 bool
	batches                  []*controllerv1.Batch
	targets                  []*controllerv1.Target
	started, ended           time.Time
	revision                 int64
	raw                      proto.Message
}

// deploymentView reads a deployment answer.
func deploymentView(b []byte) (runView, error) {
	d := &controllerv1.Deployment{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, d); err != nil {
		return runView{}, fmt.Errorf("decode deployment: %w", err)
	}
	st := d.GetStatus()
	v := runView{id: d.GetId(), what: d.GetService() + " " + d.GetVersion(), state: st.GetState(), message: st.GetMessage(),
		draining: st.GetDraining(), batches: st.GetBatches(), targets: d.GetTargets(), revision: d.GetRevision(), raw: d}
	if st.GetStartedAt() != nil {
		v.started = st.GetStartedAt().AsTime()
	}
	if st.GetEndedAt() != nil {
		v.ended = st.GetEndedAt().AsTime()
	}
	return v, nil
}

func terminalState(s string) bool {
	switch s {
	case "succeeded", "failed", "aborted", "rolled_back":
		return true
	}
	return false
}

// waitRun follows a run with long polls until it reaches a terminal state, showing its
// progress. Ctrl-C stops the wait (the run goes on) with exit code 130.
func waitRun(ctx context.Context, c *apiClient, path string, p *progress, conv func([]byte) (runView, error)) (runView, error) {
	var rev int64
	var last runView
	failures := 0
	for {
		b, err := c.call(ctx, "GET", path+"?wait=20s&after_revision="+strconv.FormatInt(rev, 10), nil)
		if ctx.Err() != nil {
			p.done()
			return last, &ExitError{Code: 130, Err: fmt.Errorf("%w; %s goes on (berth deployments show %s)", errStoppedWaiting, last.id, last.id)}
		}
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.Status < 500 {
				return last, err
			}
			// The controller may be restarting: keep trying for a while.
			failures++
			if failures > 30 {
				return last, err
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		failures = 0
		v, err := conv(b)
		if err != nil {
			return last, err
		}
		last = v
		p.update(v)
		if terminalState(v.state) {
			p.done()
			return v, nil
		}
		rev = v.revision
	}
}

// progress shows a run's progress: on a terminal, a line per batch redrawn in place;
// otherwise one line per change.
type progress struct {
	w     io.Writer
	tty   bool
	drawn int
	// plain mode: what was printed last, by key.
	seen map[string]string
}

func newProgress(w io.Writer, tty bool) *progress {
	return &progress{w: w, tty: tty, seen: map[string]string{}}
}

func (p *progress) update(v runView) {
	if p.tty {
		p.draw(v)
		return
	}
	p.say("state", v.state, fmt.Sprintf("%s: %s%s", v.id, v.state, suffix(v.message)))
	for _, b := range v.batches {
		key := fmt.Sprintf("batch%d", b.GetIndex())
		c := countRange(v.targets, int(b.GetStart()), int(b.GetEnd()))
		switch {
		case b.GetCompletedAt() != nil:
			p.say(key, "done", fmt.Sprintf("batch %d/%d completed: %s", b.GetIndex()+1, len(v.batches), c))
		case b.GetStartedAt() != nil:
			p.say(key, "started", fmt.Sprintf("batch %d/%d started: %d targets", b.GetIndex()+1, len(v.batches), b.GetEnd()-b.GetStart()))
		}
	}
	for _, t := range v.targets {
		state := t.GetState()
		if t.GetRollback() != "" {
			state += ", rollback " + t.GetRollback()
		}
		line := fmt.Sprintf("  %s: %s", targetName(t), state)
		if t.GetState() != "succeeded" && t.GetState() != "pending" && t.GetMessage() != "" {
			line += " (" + oneLine(t.GetMessage(), 120) + ")"
		}
		if t.GetState() == "pending" && t.GetRollback() == "" {
			continue
		}
		p.say("t/"+targetKey(t), state, line)
	}
}

// targetKey is a target's key: its allocation in container mode, else its host.
func targetKey(t *controllerv1.Target) string {
	if t.GetAllocation() != "" {
		return t.GetAllocation()
	}
	return t.GetHost()
}

// targetName names a target for people: its host, and in container mode the container's
// address (and "retire" for an old allocation the deployment stops).
func targetName(t *controllerv1.Target) string {
	if t.GetAllocation() == "" {
		return t.GetHost()
	}
	name := t.GetHost() + " " + t.GetIp()
	if t.GetRetire() {
		name += " (retire " + t.GetVersion() + ")"
	}
	return name
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return " (" + msg + ")"
}

// say prints line when key's value changed.
func (p *progress) say(key, value, line string) {
	if p.seen[key] == value {
		return
	}
	p.seen[key] = value
	fmt.Fprintln(p.w, line)
}

// draw redraws the terminal display: a status line and a bar per batch.
func (p *progress) draw(v runView) {
	if p.drawn > 0 {
		fmt.Fprintf(p.w, "\x1b[%dA", p.drawn)
	}
	lines := []string{fmt.Sprintf("%s %s: %s%s", v.id, v.what, v.state, suffix(oneLine(v.message, 80)))}
	for _, b := range v.batches {
		n := int(b.GetEnd() - b.GetStart())
		var ok, bad, running int
		for _, t := range v.targets[min(int(b.GetStart()), len(v.targets)):min(int(b.GetEnd()), len(v.targets))] {
			switch t.GetState() {
			case "succeeded":
				ok++
			case "failed", "timed_out", "unreachable":
				bad++
			case "dispatched", "running":
				running++
			}
		}
		const width = 30
		fill := 0
		if n > 0 {
			fill = (ok + bad) * width / n
		}
		bar := strings.Repeat("#", fill) + strings.Repeat(".", width-fill)
		line := fmt.Sprintf("  batch %d/%d [%s] %d/%d", b.GetIndex()+1, len(v.batches), bar, ok+bad, n)
		if running > 0 {
			line += fmt.Sprintf("  %d running", running)
		}
		if bad > 0 {
			line += fmt.Sprintf("  %d failed", bad)
		}
		lines = append(lines, line)
	}
	for _, l := range lines {
		fmt.Fprintf(p.w, "\x1b[2K%s\n", l)
	}
	p.drawn = len(lines)
}

func (p *progress) done() {}

// printSummary writes how a run ended, with the targets that did not succeed.
func printSummary(w io.Writer, v runView) {
	c := map[string]int{}
	for _, t := range v.targets {
		c[t.GetState()]++
	}
	dur := ""
	if !v.started.IsZero() && !v.ended.IsZero() {
		dur = " in " + v.ended.Sub(v.started).Round(time.Millisecond).String()
	}
	fmt.Fprintf(w, "%s %s%s: %d of %d targets succeeded", v.id, v.state, dur, c["succeeded"], len(v.targets))
	for _, s := range []string{"failed", "timed_out", "unreachable", "skipped"} {
		if c[s] > 0 {
			fmt.Fprintf(w, ", %d %s", c[s], s)
		}
	}
	fmt.Fprintln(w)
	if v.message != "" {
		fmt.Fprintf(w, "  %s\n", v.message)
	}
	for _, t := range v.targets {
		if t.GetState() == "succeeded" && (t.GetRollback() == "" || t.GetRollback() == "succeeded") {
			continue
		}
		if t.GetState() == "skipped" || t.GetState() == "pending" {
			continue
		}
		fmt.Fprintf(w, "  %s: %s", targetName(t), t.GetState())
		if t.GetRollback() != "" {
			fmt.Fprintf(w, ", rollback %s", t.GetRollback())
		}
		if t.GetMessage() != "" {
			fmt.Fprintf(w, ": %s", oneLine(t.GetMessage(), 200))
		}
		fmt.Fprintln(w)
		for _, l := range lastLines(t.GetOutput(), 5) {
			fmt.Fprintf(w, "    | %s\n", l)
		}
	}
}

// isTTY reports whether w is a terminal (a character device).
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
