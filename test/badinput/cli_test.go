package badinput

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// cliCase is one run of the berth CLI with a hostile argument: it must exit non-zero with
// an error on stderr ("berth: ..."), naming wantIn when set, without a Go panic or stack
// trace, and change nothing.
type cliCase struct {
	name   string
	args   []string
	stdin  string
	wantIn string
	known  string
}

// cliEnv is the environment of every CLI run: the endpoints of the shared Berth, a CLI
// config file of the test's own and a home directory of its own.
func (b *berth) cliEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "BERTH_") || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+filepath.Join(b.dir, "home"), "BERTH_CONFIG_FILE="+b.cliConfigPath(),
		"BERTH_CONTROLLER_URL="+b.controller, "BERTH_NAMES_URL="+b.names, "BERTH_NATS_URL="+b.natsURL, "BERTH_COORD_ENDPOINTS="+b.coordAddr)
}

// runCLI runs the CLI and returns its exit code and output; a run still going after 20 s
// is killed and reported.
func (b *berth) runCLI(ctx context.Context, c cliCase) (int, string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.bin, c.args...)
	cmd.Dir = b.cwd
	cmd.Env = b.cliEnv()
	cmd.Stdin = strings.NewReader(c.stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return -1, stdout.String(), stderr.String(), fmt.Errorf("still running after 20 s")
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return -1, stdout.String(), stderr.String(), err
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String(), nil
}

// cliRefused runs c and checks the outcome.
func (b *berth) cliRefused(ctx context.Context, c cliCase) error {
	code, stdout, stderr, err := b.runCLI(ctx, c)
	if err != nil {
		return err
	}
	for _, bad := range []string{"panic:", "goroutine ", "runtime error", "runtime/debug", ".go:"} {
		if strings.Contains(stdout+stderr, bad) {
			return fmt.Errorf("exit %d with a Go crash or trace (%q):\n%.1500s", code, bad, stdout+stderr)
		}
	}
	if code <= 0 {
		return fmt.Errorf("exit %d, want non-zero; stdout %.300q stderr %.300q", code, stdout, stderr)
	}
	msg := strings.TrimSpace(stderr)
	// berth agent step prints a step's failure as its result on stdout, and berth status
	// its report with each source's error: those are their clear errors.
	if reported := c.args[0] == "agent" && (strings.Contains(stdout, "result: failed") || strings.Contains(stderr, ": rejected")) ||
		c.args[0] == "status" && strings.Contains(stdout, "invalid argument"); reported {
		return nil
	}
	if !strings.Contains(msg, "berth: ") || len(msg) < len("berth: ")+8 {
		return fmt.Errorf("exit %d without a \"berth: ...\" error on stderr (stderr %.300q, stdout %.300q)", code, stderr, stdout)
	}
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "_", "-") }
	if c.wantIn != "" && !strings.Contains(norm(msg), norm(c.wantIn)) {
		return fmt.Errorf("error %.400q does not name %q", msg, c.wantIn)
	}
	return nil
}

// cliBatch is how many CLI runs go at once.
const cliBatch = 8

// runCLIRefused runs the cases in concurrent batches between reads of the state, as
// runRefused does for HTTP.
func (b *berth) runCLIRefused(t *testing.T, cases []cliCase) {
	t.Helper()
	seen := map[string]int{}
	names := make([]string, len(cases))
	var known, clean []int
	for i, c := range cases {
		name := c.name
		if n := seen[name]; n > 0 {
			name = fmt.Sprintf("%s#%d", name, n)
		}
		seen[c.name]++
		names[i] = name
		if c.known != "" {
			known = append(known, i)
		} else {
			clean = append(clean, i)
		}
	}
	cliTried.Add(int64(len(cases)))
	what := func(c cliCase) string { return fmt.Sprintf("berth %.400q", c.args) }
	one := func(i int) {
		c := cases[i]
		t.Run(names[i], func(t *testing.T) {
			b.noSideEffect(t, what(c), c.known, func() error {
				defer b.restoreCLIConfig()
				return b.cliRefused(t.Context(), c)
			})
		})
	}
	for start := 0; start < len(clean); start += cliBatch {
		batch := clean[start:min(start+cliBatch, len(clean))]
		errs := make([]error, len(batch))
		problems := b.sideEffects(t, fmt.Sprintf("batch of %d CLI cases from %s", len(batch), names[batch[0]]), func() error {
			defer b.restoreCLIConfig()
			var wg sync.WaitGroup
			for k, i := range batch {
				wg.Go(func() { errs[k] = b.cliRefused(t.Context(), cases[i]) })
			}
			wg.Wait()
			return nil
		})
		if len(problems) > 0 {
			for _, i := range batch {
				one(i)
			}
			continue
		}
		for k, i := range batch {
			t.Run(names[i], func(t *testing.T) {
				if errs[k] != nil {
					t.Errorf("%s: %v", what(cases[i]), errs[k])
				}
			})
		}
	}
	for _, i := range known {
		one(i)
	}
}

// baseCLIConfig is the CLI config the cases start from.
var baseCLIConfig []byte

// restoreCLIConfig puts the CLI config back as the cases start from it, so that one
// accepted case does not break the next.
func (b *berth) restoreCLIConfig() {
	if baseCLIConfig == nil {
		_ = os.Remove(b.cliConfigPath())
		return
	}
	_ = os.WriteFile(b.cliConfigPath(), baseCLIConfig, 0o600)
}

// flagCases substitutes each payload for the value of flag in base (appending the flag
// when base has none), or for the positional argument at index pos when flag is
// "arg:<pos>".
func flagCases(prefix string, base []string, flag string, ps []payload, wantIn string) []cliCase {
	var out []cliCase
	for _, p := range ps {
		args := append([]string(nil), base...)
		var idx int
		if n, ok := strings.CutPrefix(flag, "arg:"); ok {
			fmt.Sscan(n, &idx)
			args[idx] = p.value
		} else if idx = indexOf(args, flag); idx >= 0 && idx+1 < len(args) {
			args[idx+1] = p.value
		} else {
			args = append(args, flag, p.value)
		}
		// The error must be clear, but it is often the API's, which names the field as the
		// API does (strategy.health_gate.deadline for --health-deadline): wantIn is only
		// documentation here.
		_ = wantIn
		out = append(out, cliCase{name: prefix + " " + flag + "=" + p.name, args: args})
	}
	return out
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// markKnownCLI marks the cases of one command's flag ("agent step --task") with the given
// payloads as a known defect.
func markKnownCLI(cases []cliCase, why, slot string, payloads ...string) {
	for i := range cases {
		for _, p := range payloads {
			if cases[i].name == slot+"="+p {
				cases[i].known = why
			}
		}
	}
}

// pick keeps the payloads with the given names.
func pick(ps []payload, names ...string) []payload {
	var out []payload
	for _, p := range ps {
		for _, n := range names {
			if p.name == n {
				out = append(out, p)
			}
		}
	}
	return out
}

// badUints are values no unsigned count flag takes.
var badUints = []payload{{"negative", "-1"}, {"word", "many"}, {"huge", "99999999999999999999"}, {"float", "1.5"}, {"subst", "1$(touch x)"}}

// TestCLIRefusesHostileInput runs every CLI command that takes user input with hostile
// arguments and flags.
func TestCLIRefusesHostileInput(t *testing.T) {
	b := shared
	s := b.sentinel
	// The HTTP matrix sends every identifier payload to every field; the CLI passes most
	// values on to those APIs, so here a cross-section of them is enough to see how the
	// CLI itself copes (no NUL: the kernel cuts an argument there).
	ident := pick(identPayloads(s), "subst", "backticks-bare", "semicolon-bare", "newline", "dotdot", "absolute",
		"encoded-dotdot", "escape", "fullwidth", "upper", "long-300", "long-70k", "empty")
	argIdent := ident
	durations := pick(badDurations(s), "word", "negative", "overflow", "nan", "huge", "subst", "newline")
	urls := []payload{{"subst", "http://$(touch " + s + ")/"}, {"semicolon", "http://a;touch " + s + "/"}, {"ftp-space", "ftp://a b/x"},
		{"scheme", "gopher://127.0.0.1/x"}, {"file-host", "file://evil.example.com/x"}, {"relative", "file://x/../../etc"},
		{"no-host", "http:///x"}, {"newline", "http://127.0.0.1/\ntouch " + s}}
	var cases []cliCase

	// deploy, package mode and container mode.
	dep := []string{"deploy", baseService, "--version", baseVersion, "--package", missingPkg, "--sha256", baseSHA, "--hosts", b.host, "--infra-retries", "0"}
	cases = append(cases, flagCases("deploy", dep, "arg:1", argIdent, "service")...)
	cases = append(cases, flagCases("deploy", dep, "--version", without(argIdent, "upper"), "version")...)
	cases = append(cases, flagCases("deploy", dep, "--package", urls, "")...)
	cases = append(cases, flagCases("deploy", dep, "--sha256", argIdent, "sha256")...)
	cases = append(cases, flagCases("deploy", dep, "--hosts", without(argIdent, "upper", "empty", "blank"), "hosts")...)
	cases = append(cases, flagCases("deploy", dep, "--mode", without(argIdent, "empty"), "mode")...)
	for _, fl := range []string{"--batches", "--pause", "--max-failures"} {
		cases = append(cases, flagCases("deploy", dep, fl, without(argIdent, "empty"), strings.TrimPrefix(fl, "--"))...)
	}
	for _, fl := range []string{"--health-deadline", "--step-timeout", "--progress-deadline", "--min-healthy-time"} {
		cases = append(cases, flagCases("deploy", dep, fl, durations, strings.TrimPrefix(fl, "--"))...)
	}
	for _, fl := range []string{"--max-parallel", "--infra-retries"} {
		cases = append(cases, flagCases("deploy", dep, fl, badUints, strings.TrimPrefix(fl, "--"))...)
	}
	ctr := []string{"deploy", baseService, "--version", baseVersion, "--package", missingPkg, "--sha256", baseSHA, "--mode", "container",
		"--replicas", "1", "--cpu", "0.1", "--memory", "64Mi"}
	cases = append(cases, flagCases("deploy container", ctr, "--memory", []payload{{"word", "lots"}, {"negative", "-1"}, {"zero", "0"},
		{"unit", "1Zi"}, {"tiny", "1Ki"}, {"huge", "99999999Ti"}, {"subst", "64Mi$(touch " + s + ")"}, {"nan", "NaN"}}, "memory")...)
	cases = append(cases, flagCases("deploy container", ctr, "--cpu", []payload{{"word", "two"}, {"negative", "-1"}, {"zero", "0"},
		{"nan", "NaN"}, {"inf", "Inf"}, {"huge", "1e400"}}, "cpu")...)
	cases = append(cases, flagCases("deploy container", ctr, "--replicas", append(badUints, payload{"zero", "0"}), "replicas")...)
	cases = append(cases, flagCases("deploy container", ctr, "--spread", without(argIdent, "empty"), "spread")...)
	cases = append(cases, flagCases("deploy container", ctr, "--constraints", constraintPayloads(s), "constraints")...)
	markKnownCLI(cases, defectConstraints, "deploy container --constraints", constraintsAccepted...)
	files := b.hostileFiles(t)
	for name, path := range files {
		cases = append(cases, cliCase{name: "deploy -f " + name, args: []string{"deploy", "-f", path}})
	}
	// The payload is any JSON document, handed to the plugin as data.
	delete(files, "hostile-json")

	// run.
	run := []string{"run", "--hosts", b.host, "--plugin", echoPlugin, "--detach"}
	cases = append(cases, flagCases("run", run, "--hosts", without(argIdent, "upper", "empty", "blank"), "hosts")...)
	cases = append(cases, flagCases("run", run, "--plugin", argIdent, "plugin")...)
	cases = append(cases, flagCases("run", run, "--action", without(argIdent, "empty"), "action")...)
	cases = append(cases, flagCases("run", run, "--service", without(argIdent, "empty"), "service")...)
	var argKeys []payload
	for _, p := range without(argIdent, "upper", "empty") {
		argKeys = append(argKeys, payload{p.name, p.value + "=v"})
	}
	cases = append(cases, flagCases("run", run, "--arg", append(argKeys, payload{"no-equals", "novalue"}, payload{"no-key", "=v"}), "arg")...)
	cases = append(cases, flagCases("run", run, "--step-timeout", durations, "step-timeout")...)
	cases = append(cases, flagCases("run", run, "--pause", without(argIdent, "empty"), "pause")...)

	// tree.
	treeSet := []string{"tree", "set", "badinput/cli", "--description", "x"}
	cases = append(cases, flagCases("tree set", treeSet, "arg:2", without(argIdent, "empty", "absolute", "double-slash"), "path")...)
	cases = append(cases, flagCases("tree set", treeSet, "--host", without(argIdent, "upper", "empty"), "hosts")...)
	cases = append(cases, flagCases("tree set", treeSet, "--hosts", without(argIdent, "upper", "empty", "blank"), "hosts")...)
	var labelKeys []payload
	for _, p := range without(argIdent, "upper", "empty", "dotdot", "dotdot-only", "dot", "inner-dotdot", "absolute", "double-slash", "dotdot-tail", "overlong-dots") {
		labelKeys = append(labelKeys, payload{p.name, p.value + "=v"})
	}
	cases = append(cases, flagCases("tree set", treeSet, "--label", append(labelKeys, payload{"long-value", "k=" + strings.Repeat("v", 300)}), "label")...)
	cases = append(cases, flagCases("tree set", treeSet, "--owner", []payload{{"escape", "a\x1b[2Jb"}, {"newline", "a\nb"}, {"long", strings.Repeat("o", 300)}}, "owner")...)
	cases = append(cases, flagCases("tree set", treeSet, "--description", []payload{{"long-2k", strings.Repeat("d", 2048)}}, "description")...)
	for _, fl := range []string{"--ttl", "--health-interval", "--health-timeout", "--step-timeout"} {
		cases = append(cases, flagCases("tree set", treeSet, fl, durations, strings.TrimPrefix(fl, "--"))...)
	}
	cases = append(cases, flagCases("tree set", treeSet, "--health-rise", append(badUints, payload{"zero", "0"}, payload{"thousand", "1000"}), "rise")...)
	cases = append(cases, flagCases("tree set", treeSet, "--unset", without(argIdent, "empty"), "unset")...)
	for _, sub := range []string{"get", "rm", "ls"} {
		cases = append(cases, flagCases("tree "+sub, []string{"tree", sub, "x"}, "arg:2", without(argIdent, "empty", "absolute", "double-slash"), "")...)
	}

	// deployments.
	cases = append(cases, flagCases("deployments ls", []string{"deployments", "ls"}, "--service", without(argIdent, "empty"), "service")...)
	cases = append(cases, flagCases("deployments ls", []string{"deployments", "ls"}, "--state", without(argIdent, "empty"), "state")...)
	cases = append(cases, flagCases("deployments ls", []string{"deployments", "ls"}, "--limit", []payload{{"zero", "0"}, {"negative", "-1"}, {"word", "all"}, {"huge", "100000"}}, "limit")...)
	for _, sub := range []string{"show", "pause", "resume", "abort", "rollback"} {
		cases = append(cases, flagCases("deployments "+sub, []string{"deployments", sub, "x"}, "arg:2", without(argIdent, "empty"), "")...)
	}

	// hosts.
	for _, sub := range []string{"show", "drain", "undrain"} {
		cases = append(cases, flagCases("hosts "+sub, []string{"hosts", sub, "x"}, "arg:2", without(argIdent, "empty"), "")...)
	}
	cases = append(cases, flagCases("hosts ls", []string{"hosts", "ls"}, "--state", without(argIdent, "empty"), "state")...)
	cases = append(cases, flagCases("hosts ls", []string{"hosts", "ls"}, "--timeout", durations, "timeout")...)

	// agent step: the flags, and the built-in package-deploy plugin's arguments.
	step := []string{"agent", "step", "--host", b.host, "--plugin", echoPlugin, "--action", "run", "--timeout", "10s"}
	cases = append(cases, flagCases("agent step", step, "--host", without(argIdent, "upper"), "host")...)
	cases = append(cases, flagCases("agent step", step, "--plugin", argIdent, "plugin")...)
	cases = append(cases, flagCases("agent step", step, "--action", argIdent, "action")...)
	// Slashes around a service are trimmed, and upper case is a DNS name's.
	cases = append(cases, flagCases("agent step", step, "--service", without(argIdent, "empty", "absolute", "upper"), "service")...)
	cases = append(cases, flagCases("agent step", step, "--task", without(argIdent, "empty", "upper"), "task")...)
	cases = append(cases, flagCases("agent step", step, "--step", without(argIdent, "empty", "upper"), "step")...)
	cases = append(cases, flagCases("agent step", step, "--arg", append(argKeys, payload{"no-equals", "novalue"}), "arg")...)
	cases = append(cases, flagCases("agent step", step, "--timeout", append(durations, payload{"zero", "0s"}), "timeout")...)
	cases = append(cases, flagCases("agent step", step, "--attempt", badUints, "attempt")...)
	payloads := []payload{{"not-json", "$(touch " + s + ")"}, {"truncated", `{"a":`}}
	for name, path := range files {
		payloads = append(payloads, payload{"file-" + name, "@" + path})
	}
	cases = append(cases, flagCases("agent step", step, "--payload", payloads, "payload")...)
	pd := []string{"agent", "step", "--host", b.host, "--plugin", "package-deploy", "--action", "deploy", "--timeout", "10s",
		"--arg", "url=" + missingPkg, "--arg", "sha256=" + baseSHA, "--arg", "service=" + baseService, "--arg", "version=" + baseVersion}
	for _, arg := range []string{"service", "version", "sha256", "health_deadline"} {
		var ps []payload
		for _, p := range without(ident, "empty", "nul", "upper", "absolute", "double-slash") {
			ps = append(ps, payload{p.name, arg + "=" + p.value})
		}
		idx := indexOf(pd, arg+"="+map[string]string{"service": baseService, "version": baseVersion, "sha256": baseSHA}[arg])
		if idx < 0 {
			for _, p := range ps {
				cases = append(cases, cliCase{name: "agent step package-deploy " + arg + "=" + p.name, args: append(append([]string(nil), pd...), "--arg", p.value)})
			}
			continue
		}
		for _, p := range ps {
			args := append([]string(nil), pd...)
			args[idx] = p.value
			cases = append(cases, cliCase{name: "agent step package-deploy " + arg + "=" + p.name, args: args})
		}
	}
	for _, u := range urls {
		args := append([]string(nil), pd...)
		args[indexOf(args, "url="+missingPkg)] = "url=" + u.value
		cases = append(cases, cliCase{name: "agent step package-deploy url=" + u.name, args: args})
	}
	for _, action := range []string{"rollback", "stop", "start", "status"} {
		for _, p := range without(ident, "empty", "nul", "upper", "absolute", "double-slash") {
			cases = append(cases, cliCase{name: "agent step package-deploy " + action + " service=" + p.name,
				args: []string{"agent", "step", "--host", b.host, "--plugin", "package-deploy", "--action", action, "--timeout", "10s", "--arg", "service=" + p.value}})
		}
	}

	// names: resolve, watch, instances, traffic.
	for _, cmd := range []string{"resolve", "watch", "instances"} {
		cases = append(cases, flagCases(cmd, []string{cmd, "x"}, "arg:1", without(argIdent, "empty", "upper", "absolute", "double-slash"), "")...)
	}
	cases = append(cases, flagCases("resolve", []string{"resolve", baseService}, "--family", without(argIdent, "empty"), "family")...)
	cases = append(cases, flagCases("resolve", []string{"resolve", baseService}, "--dc", without(argIdent, "empty", "upper"), "dc")...)
	for _, sub := range []string{"get", "clear", "set"} {
		cases = append(cases, flagCases("traffic "+sub, []string{"traffic", sub, "x"}, "arg:2", without(argIdent, "empty", "upper", "absolute", "double-slash"), "")...)
	}
	tset := []string{"traffic", "set", baseService, "--replace"}
	var weights []payload
	for _, p := range without(argIdent, "empty", "upper") {
		weights = append(weights, payload{p.name, p.value + "=1"})
	}
	cases = append(cases, flagCases("traffic set", tset, "--weights", append(weights, payload{"negative", "1.0=-1"}, payload{"word", "1.0=lots"}), "")...)
	cases = append(cases, flagCases("traffic set", tset, "--instance-weights", weights, "")...)
	cases = append(cases, flagCases("traffic set", tset, "--pin", without(argIdent, "empty", "upper"), "")...)
	cases = append(cases, flagCases("traffic set", tset, "--exclude", without(argIdent, "empty", "upper"), "")...)
	cases = append(cases, flagCases("traffic set", tset, "--override", append(weights, payload{"unknown-dc", "dev=nowhere"}), "")...)
	cases = append(cases, flagCases("traffic set", tset, "--mode", without(argIdent, "empty"), "mode")...)
	cases = append(cases, flagCases("traffic set", tset, "--panic-threshold", []payload{{"nan", "NaN"}, {"over", "101"}, {"negative", "-1"}, {"word", "half"}}, "panic")...)
	for name, path := range files {
		cases = append(cases, cliCase{name: "traffic set --from-file " + name, args: []string{"traffic", "set", baseService, "--from-file", path}})
	}

	// events, images, status.
	cases = append(cases, flagCases("events", []string{"events"}, "--since", without(argIdent, "empty"), "since")...)
	cases = append(cases, flagCases("events", []string{"events"}, "--service", without(argIdent, "empty", "absolute", "upper"), "service")...)
	cases = append(cases, flagCases("events", []string{"events"}, "--type", without(argIdent, "empty"), "type")...)
	build := []string{"images", "build", baseService, "--version", baseVersion, "--package", missingPkg, "--sha256", baseSHA, "--timeout", "3s"}
	cases = append(cases, flagCases("images build", build, "arg:2", without(argIdent, "empty", "absolute"), "service")...)
	cases = append(cases, flagCases("images build", build, "--timeout", append(durations, payload{"zero", "0s"}), "timeout")...)
	cases = append(cases, flagCases("images ls", []string{"images", "ls", "x"}, "arg:2", without(argIdent, "empty", "absolute", "double-slash"), "")...)
	for _, fl := range []string{"--controller", "--names"} {
		cases = append(cases, flagCases("status", []string{"status"}, fl, append(urls, payload{"subst-bare", "$(touch " + s + ")"}), "")...)
	}
	cases = append(cases, flagCases("status", []string{"status"}, "--coord", []payload{{"subst", "$(touch " + s + "):1"}, {"semicolon", "a;touch:1"}, {"port", "127.0.0.1:99999"}}, "")...)
	cases = append(cases, flagCases("status", []string{"status"}, "--timeout", durations, "timeout")...)

	// context, certs, token.
	cases = append(cases, flagCases("context set", []string{"context", "set", "x", "--controller", "http://127.0.0.1:1"}, "arg:2", without(argIdent, "upper"), "context")...)
	for _, fl := range []string{"--controller", "--names"} {
		cases = append(cases, flagCases("context set", []string{"context", "set", "x"}, fl, append(urls, payload{"subst-bare", "$(touch " + s + ")"}, payload{"js", "javascript:alert(1)"}), "")...)
	}
	cases = append(cases, flagCases("context set", []string{"context", "set", "x"}, "--nats", []payload{{"subst", "$(touch " + s + ")"}, {"http", "http://127.0.0.1:4222"}, {"semicolon", "nats://a;b"}}, "nats")...)
	cases = append(cases, flagCases("context set", []string{"context", "set", "x"}, "--coord", []payload{{"subst", "$(touch " + s + "):1"}, {"semicolon", "a;touch${IFS}x:1"}, {"port-0", "127.0.0.1:0"}, {"no-port", "host"}}, "coord")...)
	for _, fl := range []string{"--ca-file", "--nats-nkey-seed-file"} {
		cases = append(cases, flagCases("context set", []string{"context", "set", "x"}, fl, []payload{{"missing", "/nonexistent/ca.crt"}, {"dotdot", "../../../../nonexistent"}, {"dir", "/"}, {"subst", "$(touch " + s + ")"}}, strings.TrimPrefix(fl, "--"))...)
	}
	cases = append(cases, flagCases("context set", []string{"context", "set", "x"}, "--token", []payload{{"space", "a b"}, {"newline", "a\nb"}, {"escape", "a\x1bb"}}, "token")...)
	cases = append(cases, flagCases("context set", []string{"context", "set", "x"}, "--unset", []payload{{"unknown", "everything"}, {"subst", "$(touch " + s + ")"}}, "unset")...)
	for _, sub := range []string{"use", "rm"} {
		cases = append(cases, flagCases("context "+sub, []string{"context", sub, "x"}, "arg:2", argIdent, "")...)
	}
	certs := []string{"certs", "init", "--dir", filepath.Join(b.dir, "certs-refused")}
	cases = append(cases, flagCases("certs init", certs, "--hosts", without(argIdent, "empty", "upper"), "host")...)
	cases = append(cases, flagCases("certs init", certs, "--services", without(argIdent, "empty"), "")...)
	cases = append(cases, flagCases("certs init", certs, "--days", []payload{{"zero", "0"}, {"negative", "-1"}, {"huge", "100000000"}, {"word", "year"}}, "days")...)
	if code, out, errOut, err := b.runCLI(t.Context(), cliCase{args: []string{"certs", "init", "--dir", filepath.Join(b.dir, "certs")}}); code != 0 || err != nil {
		t.Fatalf("berth certs init: exit %d (%v)\n%s%s", code, err, out, errOut)
	}
	nats := []string{"certs", "nats-config", "--dir", filepath.Join(b.dir, "certs")}
	cases = append(cases, flagCases("certs nats-config", nats, "--agent-hosts", without(argIdent, "empty", "blank", "upper"), "")...)
	cases = append(cases, flagCases("certs nats-config", nats, "--listen", []payload{{"newline", "0.0.0.0:4222\ninclude /etc/passwd"}, {"subst", "$(touch " + s + "):4222"},
		{"port", "0.0.0.0:99999"}, {"brace", "0.0.0.0:4222 }\nauthorization { users = [] }"}}, "listen")...)
	// The store directory and the path go in as quoted strings: a brace or a relative path
	// is a legitimate value there; a quote, a backslash or a newline is not.
	cases = append(cases, flagCases("certs nats-config", nats, "--store-dir", []payload{{"newline", "/data\ninclude /etc/passwd"}, {"quote", "/data\"\ninclude x"}, {"backslash", "/data\\"}}, "store")...)
	cases = append(cases, flagCases("certs nats-config", nats, "--path", []payload{{"newline", "/etc\ninclude x"}, {"quote", "/x\"y"}}, "path")...)
	tok := []string{"token", "new", "--name", "ci", "--role", "deployer", "--scope", baseService}
	cases = append(cases, flagCases("token new", tok, "--name", without(argIdent, "upper"), "name")...)
	cases = append(cases, flagCases("token new", tok, "--role", without(argIdent, "empty"), "role")...)
	cases = append(cases, flagCases("token new", tok, "--scope", without(argIdent, "empty", "absolute", "dotdot-tail"), "scope")...)

	// coord: paths, and a member add that must never reach Raft.
	for _, sub := range []string{"get", "del", "ls"} {
		cases = append(cases, flagCases("coord "+sub, []string{"coord", sub, "/x"}, "arg:2", without(argIdent, "empty", "upper", "absolute", "fullwidth", "bidi", "long-300", "home", "encoded-dotdot",
			"subst-bare", "backticks-bare", "semicolon-bare", "pipe-bare", "amp-bare", "redirect-bare"), "path")...)
	}
	// Coord paths may hold any byte but NUL, so only the path rules are tried.
	cases = append(cases, flagCases("coord put", []string{"coord", "put", "/x", "v"}, "arg:2", []payload{{"relative", "x"}, {"dotdot", "/a/../b"}, {"trailing", "/a/"}, {"long", "/" + strings.Repeat("p", 70<<10)}}, "path")...)
	cases = append(cases, flagCases("coord", []string{"coord", "get", "/x"}, "--timeout", durations, "timeout")...)

	// dev: refused before anything starts (every port is 0 should one pass).
	devCoord, err := freePort(true)
	if err != nil {
		t.Fatal(err)
	}
	devBase := []string{"dev", "--ephemeral", "--nats-port", "0", "--coord-port", fmt.Sprint(devCoord), "--admin-port", "0", "--controller-port", "0", "--dns-port", "0",
		"--names-port", "0", "--artifacts-port", "0", "--ftp-port", "0", "--resolver-port", "-1", "--agent-api-port", "-1", "--registry-port", "-1",
		"--docker-host", "unix:///nonexistent/docker.sock"}
	for _, fl := range []string{"--nats-port", "--admin-port", "--controller-port", "--dns-port", "--names-port"} {
		cases = append(cases, flagCases("dev", devBase, fl, []payload{{"negative", "-5"}, {"big", "70000"}, {"word", "http"}}, strings.TrimPrefix(fl, "--"))...)
	}
	cases = append(cases, flagCases("dev", devBase, "--coord-port", []payload{{"zero", "0"}, {"top", "65535"}, {"word", "x"}}, "coord-port")...)

	tokenIDs := append([]string{"absolute"}, tokenAccepted...)
	markKnownCLI(cases, defectTokenIDs, "agent step --task", tokenIDs...)
	markKnownCLI(cases, defectTokenIDs, "agent step --step", tokenIDs...)
	markKnownCLI(cases, defectTokenIDs, "events --type", append([]string{"upper", "long-300"}, tokenIDs...)...)
	markKnownCLI(cases, defectScopes, "token new --scope", "subst-bare", "backticks-bare", "semicolon-bare", "encoded-dotdot", "escape", "fullwidth", "upper", "long-300", "long-70k")
	b.runCLIRefused(t, cases)
}

// hostileFiles writes the files the CLI's file arguments are tried with and returns them
// by name, with a few that exist on every machine.
func (b *berth) hostileFiles(t *testing.T) map[string]string {
	t.Helper()
	dir := filepath.Join(b.dir, "files")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := map[string]string{
		"bad-yaml":     "service: [\n",
		"unknown-key":  "service: " + baseService + "\nversion: '1.0'\npackage: " + missingPkg + "\nsha256: " + baseSHA + "\nrun: $(touch " + b.sentinel + ")\n",
		"yaml-bomb":    "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n",
		"hostile-json": `{"service":"$(touch ` + b.sentinel + `)","version":"1.0;touch x","mode":"ANSWER_MODE_ALL","x":1}`,
		"big":          strings.Repeat("#", 2<<20),
	}
	out := map[string]string{"dev-zero": "/dev/zero", "etc-passwd": "/etc/passwd", "directory": "/", "missing": "/nonexistent/f.yaml",
		"dotdot": "../../../../../../nonexistent", "proc-environ": "/proc/self/environ"}
	for name, body := range write {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	return out
}

// TestCLIArbitraryTextIsKeptVerbatim covers the CLI's free-text values: a task's
// arguments (after --), a drain reason, a node's description and owner. Each is accepted,
// stored or passed on exactly, and runs nothing.
func TestCLIArbitraryTextIsKeptVerbatim(t *testing.T) {
	b := shared
	b.mu.Lock()
	defer b.mu.Unlock()
	ok := func(t *testing.T, args ...string) string {
		t.Helper()
		cliTried.Add(1)
		code, stdout, stderr, err := b.runCLI(t.Context(), cliCase{args: args})
		if err != nil || code != 0 {
			t.Fatalf("berth %q: exit %d (%v)\n%s%s", args, code, err, stdout, stderr)
		}
		return stdout
	}
	noSentinel := func(t *testing.T, what string) {
		t.Helper()
		if s := b.sentinels(); len(s) > 0 {
			t.Errorf("%s: a command ran: sentinel %s exists", what, strings.Join(s, ", "))
			for _, p := range s {
				_ = os.Remove(p)
			}
		}
	}
	for _, p := range without(shellPayloads(b.sentinel), "newline", "crlf") {
		clearDir(t, b.echoOut)
		ok(t, "run", "--hosts", b.host, "--plugin", echoPlugin, "--arg", "k="+p.value, "--", p.value, "--x="+p.value)
		argv, stdin := echoRecord(t, b.echoOut)
		if len(argv) != 2 || argv[1] != "run" {
			t.Errorf("berth run -- %q: the plugin's argv was %q, want only its action", p.value, argv)
		}
		var req struct {
			Arguments map[string]string `json:"arguments"`
			Payload   struct {
				Args []string `json:"args"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(stdin, &req); err != nil || req.Arguments["k"] != p.value || !slices.Equal(req.Payload.Args, []string{p.value, "--x=" + p.value}) {
			t.Errorf("berth run -- %q: the plugin's request %s does not hold the values verbatim (%v)", p.value, stdin, err)
		}
		noSentinel(t, "run "+p.name)

		ok(t, "hosts", "drain", b.host, "--reason", p.value)
		if out := ok(t, "hosts", "show", b.host, "--json"); !holdsValue(out, p.value) {
			t.Errorf("drain reason %q: hosts show does not hold it verbatim:\n%.600s", p.value, out)
		}
		ok(t, "hosts", "undrain", b.host)
		noSentinel(t, "drain "+p.name)

		ok(t, "tree", "set", baseService, "--description", p.value, "--owner", p.value)
		if out := ok(t, "tree", "get", baseService, "--json"); !holdsValue(out, p.value) {
			t.Errorf("description %q: tree get does not hold it verbatim:\n%.600s", p.value, out)
		}
		noSentinel(t, "tree set "+p.name)
	}
	ok(t, "tree", "set", baseService, "--description", "baseline", "--owner", "badinput")
	if err := b.waitQuiet(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// holdsValue reports whether the JSON document out holds the string v as a value,
// anywhere (it decodes escapes such as protojson's \u003e for '>').
func holdsValue(out, v string) bool {
	var doc any
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.Decode(&doc) == nil {
		if walkStrings(doc, v) {
			return true
		}
	}
	return false
}

func walkStrings(node any, v string) bool {
	switch x := node.(type) {
	case string:
		return x == v
	case map[string]any:
		for _, e := range x {
			if walkStrings(e, v) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if walkStrings(e, v) {
				return true
			}
		}
	}
	return false
}
