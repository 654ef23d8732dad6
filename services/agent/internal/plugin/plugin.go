// Package plugin runs task plugins (DESIGN §5): executables found by name in the agent's
// local plugin directories, and built-in plugins written in Go, both behind one contract.
//
// A plugin gets the request as JSON (Request) on standard input and the argv
// "<plugin> <action>"; its standard output and error are streamed back as progress; its
// exit status says how the step ended: 0 ok, 75 (EX_TEMPFAIL) retryable, anything else
// failed. An executable plugin runs with a clean environment (PATH and BERTH_* facts only),
// no shell, in its own process group, and the step timeout sends SIGTERM to that group,
// then SIGKILL. A built-in plugin gets the same Request, writes to the same two streams, and
// returns an error that carries the same three outcomes (Retryable, Failed).
//
// Built-in plugins are listed explicitly in a Registry; no init() registers anything. A
// built-in name cannot be shadowed by a file in a plugin directory.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"time"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent/internal/proc"
)

// Exit statuses of the plugin contract.
const (
	ExitOK        = 0
	ExitRetryable = 75 // EX_TEMPFAIL
	ExitFailed    = 1
)

// MaxNameLen bounds plugin and action names.
const MaxNameLen = 64

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// ValidName checks a plugin or action name: [a-z0-9][a-z0-9_-]*, at most MaxNameLen bytes.
// what names the field in the error ("plugin", "action").
func ValidName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s: empty", what)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%s %.20q...: longer than %d bytes", what, name, MaxNameLen)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s %q: want a name of lowercase letters, digits, '-' and '_' starting with a letter or digit, not a path", what, name)
	}
	return nil
}

// Request is the JSON document a plugin reads on standard input.
type Request struct {
	// TaskID, StepID and Attempt identify the step.
	TaskID  string `json:"task_id"`
	StepID  string `json:"step_id"`
	Attempt uint32 `json:"attempt"`
	// Host and DC are the agent's host id and datacenter.
	Host string `json:"host"`
	DC   string `json:"dc,omitempty"`
	// Plugin and Action are what is run.
	Plugin string `json:"plugin"`
	Action string `json:"action"`
	// Service is the service path the step is about, if any.
	Service string `json:"service,omitempty"`
	// Arguments are the step's named arguments.
	Arguments map[string]string `json:"arguments"`
	// Payload is the step's JSON payload, if any.
	Payload json.RawMessage `json:"payload,omitempty"`
	// Deadline is when the step times out (RFC 3339).
	Deadline time.Time `json:"deadline"`
}

// UnknownArgs returns, sorted, the arguments of r that are not among names: a built-in
// action refuses them, so that a typo is not ignored.
func (r Request) UnknownArgs(names ...string) []string {
	var unknown []string
	for k := range r.Arguments {
		if !slices.Contains(names, k) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	return unknown
}

// Output writers of a built-in plugin.
type Writers struct {
	// Stdout and Stderr are the step's two streams; lines written there are streamed as
	// progress and the last ones end up in the result.
	Stdout, Stderr *StreamWriter
}

// Builtin is a plugin written in Go. Run must honour ctx (the step's timeout or the
// agent's shutdown) but may take a bounded time after it ends to leave things as they were
// (package-deploy restores the previous release). Its error says how the step ended:
// nil is ok; an error made by Retryable is retryable; anything else failed (Failed sets the
// failure class, application by default).
type Builtin interface {
	// Name is the plugin name used in step requests.
	Name() string
	// Actions lists the actions the plugin knows.
	Actions() []string
	// Run performs one action.
	Run(ctx context.Context, req Request, out Writers) error
}

// StepError is a built-in plugin's failure with its outcome.
type StepError struct {
	// State is retryable or failed.
	State agentv1.StepState
	// Class is infrastructure or application.
	Class agentv1.FailureClass
	// Err is the failure.
	Err error
}

func (e *StepError) Error() string { return e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// Retryable marks err as a failure that may pass on a new attempt; its class is
// infrastructure.
func Retryable(err error) error {
	return &StepError{State: agentv1.StepState_STEP_STATE_RETRYABLE, Class: agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, Err: err}
}

// Failed marks err as a failure of the given class.
func Failed(class agentv1.FailureClass, err error) error {
	return &StepError{State: agentv1.StepState_STEP_STATE_FAILED, Class: class, Err: err}
}

// Outcome is how a plugin run ended.
type Outcome struct {
	// State is ok, retryable or failed.
	State agentv1.StepState
	// ExitCode is the exit status (for built-ins: 0, 75 or 1); -1 when killed.
	ExitCode int
	// Class classifies a failure.
	Class agentv1.FailureClass
	// Message is one line for a person.
	Message string
}

// Registry is the explicit, ordered list of built-in plugins.
type Registry struct {
	order  []string
	byName map[string]Builtin
}

// NewRegistry returns a registry of the built-ins, in the order given. It fails on a bad
// or repeated name.
func NewRegistry(builtins ...Builtin) (*Registry, error) {
	r := &Registry{byName: map[string]Builtin{}}
	for _, b := range builtins {
		name := b.Name()
		if err := ValidName("built-in plugin", name); err != nil {
			return nil, err
		}
		if _, dup := r.byName[name]; dup {
			return nil, fmt.Errorf("built-in plugin %q registered twice", name)
		}
		r.byName[name] = b
		r.order = append(r.order, name)
	}
	return r, nil
}

// Names lists the built-ins in registration order.
func (r *Registry) Names() []string { return slices.Clone(r.order) }

// Config configures a Runner.
type Config struct {
	// Dirs are the plugin directories, searched in order.
	Dirs []string
	// Builtins are the built-in plugins; they win over files of the same name.
	Builtins *Registry
	// Path is the PATH given to executable plugins.
	Path string
	// Facts are extra environment variables given to executable plugins (BERTH_HOST_ID,
	// BERTH_DC, ...); keys must start with BERTH_.
	Facts map[string]string
	// MaxOutputBytes caps the output streamed per step; 0 means no cap.
	MaxOutputBytes int64
	// KillGrace is the time between SIGTERM and SIGKILL on timeout.
	KillGrace time.Duration
	// WorkDir, when set, holds a working directory per executable plugin
	// (<WorkDir>/<plugin>), its cwd and $BERTH_WORK_DIR; otherwise the plugin runs in its
	// own directory.
	WorkDir string
}

// DefaultPath is the PATH of executable plugins when Config.Path is empty.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Runner finds and runs plugins.
type Runner struct {
	cfg Config
}

// NewRunner returns a runner.
func NewRunner(cfg Config) (*Runner, error) {
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if cfg.Builtins == nil {
		cfg.Builtins = &Registry{byName: map[string]Builtin{}}
	}
	for k := range cfg.Facts {
		if len(k) <= len("BERTH_") || k[:len("BERTH_")] != "BERTH_" {
			return nil, fmt.Errorf("plugin fact %q: want a BERTH_ variable", k)
		}
	}
	return &Runner{cfg: cfg}, nil
}

// ErrUnknown is wrapped by Lookup's error when no plugin has the name.
var ErrUnknown = errors.New("plugin: unknown")

// Plugin is a plugin found by Lookup.
type Plugin struct {
	// Name is the plugin's name.
	Name string
	// Path is the executable of an executable plugin.
	Path string
	// Builtin is the implementation of a built-in plugin.
	Builtin Builtin
}

// Lookup finds the plugin named name: a built-in, else the first executable file of that
// name in the plugin directories. The name is checked first, so no path ever reaches the
// file system.
func (r *Runner) Lookup(name, action string) (Plugin, error) {
	if err := ValidName("plugin", name); err != nil {
		return Plugin{}, err
	}
	if err := ValidName("action", action); err != nil {
		return Plugin{}, err
	}
	if b, ok := r.cfg.Builtins.byName[name]; ok {
		if !slices.Contains(b.Actions(), action) {
			return Plugin{}, fmt.Errorf("%w: built-in plugin %s has no action %q (it has %v)", ErrUnknown, name, action, b.Actions())
		}
		return Plugin{Name: name, Builtin: b}, nil
	}
	var reasons []string
	for _, dir := range r.cfg.Dirs {
		p := filepath.Join(dir, name)
		err := proc.Executable(p)
		if err == nil {
			return Plugin{Name: name, Path: p}, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			reasons = append(reasons, err.Error())
		}
	}
	if len(reasons) > 0 {
		return Plugin{}, fmt.Errorf("%w: plugin %q: %v", ErrUnknown, name, reasons)
	}
	return Plugin{}, fmt.Errorf("%w: no plugin %q: not built in and not in the plugin directories %v", ErrUnknown, name, r.cfg.Dirs)
}

// Available lists the built-ins and the executables in the plugin directories.
func (r *Runner) Available() []string {
	seen := map[string]bool{}
	out := r.cfg.Builtins.Names()
	for _, n := range out {
		seen[n] = true
	}
	var found []string
	for _, dir := range r.cfg.Dirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			n := e.Name()
			if seen[n] || ValidName("plugin", n) != nil || proc.Executable(filepath.Join(dir, n)) != nil {
				continue
			}
			seen[n] = true
			found = append(found, n)
		}
	}
	sort.Strings(found)
	return append(out, found...)
}

// Run runs p for req with the given timeout (0: only ctx bounds it), streaming output to
// out. started, when set, is called with the process group id of an executable plugin as
// soon as it started (built-ins have none). Run returns when the plugin has ended (and, for
// an executable, its process group was stopped if it timed out).
func (r *Runner) Run(ctx context.Context, p Plugin, req Request, timeout time.Duration, out *Output, started func(pgid int)) Outcome {
	if p.Builtin != nil {
		return r.runBuiltin(ctx, p, req, timeout, out)
	}
	return r.runExec(ctx, p, req, timeout, out, started)
}

func (r *Runner) runExec(ctx context.Context, p Plugin, req Request, timeout time.Duration, out *Output, started func(int)) Outcome {
	stdin, err := json.Marshal(req)
	if err != nil {
		return Outcome{State: agentv1.StepState_STEP_STATE_FAILED, ExitCode: -1, Class: agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE,
			Message: fmt.Sprintf("encode request of plugin %s: %v", p.Name, err)}
	}
	env := []string{"PATH=" + r.cfg.Path}
	keys := make([]string, 0, len(r.cfg.Facts))
	for k := range r.cfg.Facts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+r.cfg.Facts[k])
	}
	env = append(env,
		"BERTH_TASK_ID="+req.TaskID,
		"BERTH_STEP_ID="+req.StepID,
		"BERTH_ATTEMPT="+strconv.FormatUint(uint64(req.Attempt), 10),
		"BERTH_PLUGIN="+req.Plugin,
		"BERTH_ACTION="+req.Action,
	)
	dir := filepath.Dir(p.Path)
	if r.cfg.WorkDir != "" {
		dir = filepath.Join(r.cfg.WorkDir, p.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return Outcome{State: agentv1.StepState_STEP_STATE_FAILED, ExitCode: -1, Class: agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE,
				Message: fmt.Sprintf("work directory of plugin %s: %v", p.Name, err)}
		}
		env = append(env, "BERTH_WORK_DIR="+dir)
	}
	res, err := proc.Run(ctx, proc.Spec{
		Path:      p.Path,
		Args:      []string{p.Name, req.Action},
		Dir:       dir,
		Env:       env,
		Stdin:     stdin,
		Stdout:    out.Stdout(),
		Stderr:    out.Stderr(),
		Timeout:   timeout,
		KillGrace: r.cfg.KillGrace,
		Started:   started,
	})
	out.Flush()
	if err != nil {
		return Outcome{State: agentv1.StepState_STEP_STATE_FAILED, ExitCode: -1, Class: agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE,
			Message: fmt.Sprintf("run plugin %s: %v", p.Name, err)}
	}
	o := Outcome{ExitCode: res.ExitCode}
	switch {
	case res.TimedOut || res.Cancelled:
		o.State, o.Class = agentv1.StepState_STEP_STATE_FAILED, agentv1.FailureClass_FAILURE_CLASS_APPLICATION
		o.Message = fmt.Sprintf("plugin %s %s: %s", p.Name, req.Action, res.Describe(timeout))
	case res.ExitCode == ExitOK:
		o.State = agentv1.StepState_STEP_STATE_OK
		o.Message = fmt.Sprintf("plugin %s %s: ok", p.Name, req.Action)
	case res.ExitCode == ExitRetryable:
		o.State, o.Class = agentv1.StepState_STEP_STATE_RETRYABLE, agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE
		o.Message = fmt.Sprintf("plugin %s %s: exit status 75 (retryable)", p.Name, req.Action)
	default:
		o.State, o.Class = agentv1.StepState_STEP_STATE_FAILED, agentv1.FailureClass_FAILURE_CLASS_APPLICATION
		o.Message = fmt.Sprintf("plugin %s %s: %s", p.Name, req.Action, res.Describe(timeout))
	}
	if last := out.Tail(); o.State != agentv1.StepState_STEP_STATE_OK && len(last) > 0 {
		o.Message += ": " + last[len(last)-1]
	}
	return o
}

func (r *Runner) runBuiltin(ctx context.Context, p Plugin, req Request, timeout time.Duration, out *Output) Outcome {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	err := runSafely(ctx, p.Builtin, req, Writers{Stdout: out.Stdout(), Stderr: out.Stderr()})
	out.Flush()
	if err == nil {
		return Outcome{State: agentv1.StepState_STEP_STATE_OK, Message: fmt.Sprintf("%s %s: ok", p.Name, req.Action)}
	}
	o := Outcome{State: agentv1.StepState_STEP_STATE_FAILED, ExitCode: ExitFailed, Class: agentv1.FailureClass_FAILURE_CLASS_APPLICATION,
		Message: fmt.Sprintf("%s %s: %v", p.Name, req.Action, err)}
	var se *StepError
	if errors.As(err, &se) {
		o.State, o.Class = se.State, se.Class
		if se.State == agentv1.StepState_STEP_STATE_RETRYABLE {
			o.ExitCode = ExitRetryable
		}
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil && o.State != agentv1.StepState_STEP_STATE_RETRYABLE {
		o.Message = fmt.Sprintf("%s %s: timed out after %s: %v", p.Name, req.Action, timeout, err)
	}
	return o
}

// runSafely runs a built-in and turns a panic into a failure.
func runSafely(ctx context.Context, b Builtin, req Request, w Writers) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = Failed(agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, fmt.Errorf("built-in plugin %s panicked: %v", b.Name(), r))
		}
	}()
	return b.Run(ctx, req, w)
}
