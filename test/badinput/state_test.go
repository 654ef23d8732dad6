package badinput

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
)

// Names of the seeded state the cases aim at.
const (
	baseService = "badinput/base"
	baseVersion = "1.0"
	missingPkg  = "file:///nonexistent/badinput-1.0.tar.gz"
	baseSHA     = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	baseFile    = "badinput-base.tar.gz"
	echoPlugin  = "badinput-echo"
)

// seeded ids of runs that exist (and have ended), for the cases that need one.
var seededDeployment, seededTask string

// seed writes the state the cases run against: a service node bound to the agent's host,
// a deployment of it and a task that both failed at once (their package and plugin do not
// exist), and one artifact. It returns once coord is quiet.
func (b *berth) seed(ctx context.Context) error {
	post := func(method, base, path, body string, want int) (map[string]any, error) {
		code, _, out, err := b.do(ctx, method, base, path, "", http.Header{"Content-Type": {"application/json"}}, strings.NewReader(body))
		if err != nil {
			return nil, err
		}
		if code != want {
			return nil, fmt.Errorf("%s %s: %d %s", method, path, code, out)
		}
		var m map[string]any
		_ = json.Unmarshal(out, &m)
		return m, nil
	}
	if _, err := post("PUT", b.controller, "/v1/tree/"+baseService, `{"hosts":["`+b.host+`"],"description":"baseline","owners":["badinput"],"labels":{"tier":"test"}}`, 201); err != nil {
		return err
	}
	d, err := post("POST", b.controller, "/v1/deployments", `{"service":"`+baseService+`","version":"`+baseVersion+`","artifact":{"url":"`+missingPkg+`","sha256":"`+baseSHA+`"},"strategy":{"infra_retries":0}}`, 201)
	if err != nil {
		return err
	}
	seededDeployment, _ = d["id"].(string)
	t, err := post("POST", b.controller, "/v1/tasks", `{"hosts":["`+b.host+`"],"plugin":"badinput-missing","strategy":{"infra_retries":0}}`, 201)
	if err != nil {
		return err
	}
	seededTask, _ = t["id"].(string)
	if _, err := post("PUT", b.artifacts, "/"+baseFile, "not really a package\n", 201); err != nil {
		return err
	}
	for _, run := range []string{"/v1/deployments/" + seededDeployment, "/v1/tasks/" + seededTask} {
		if err := b.waitEnded(ctx, run); err != nil {
			return err
		}
	}
	return b.waitQuiet(ctx)
}

// waitEnded polls a run until it is in a terminal state.
func (b *berth) waitEnded(ctx context.Context, path string) error {
	for {
		code, _, out, err := b.do(ctx, "GET", b.controller, path, "targets=false", nil, nil)
		if err == nil && code == 200 {
			var r struct {
				Status struct {
					State string `json:"state"`
				} `json:"status"`
			}
			_ = json.Unmarshal(out, &r)
			switch r.Status.State {
			case "succeeded", "failed", "aborted", "rolled_back":
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not end: %w (last %d %s)", path, ctx.Err(), code, out)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitQuiet returns once coord's revision has not moved for 150 ms (the leader records a
// run's last transitions a moment after its state says it ended).
func (b *berth) waitQuiet(ctx context.Context) error {
	last, err := b.revision(ctx)
	if err != nil {
		return err
	}
	stable := time.Now()
	for time.Since(stable) < 150*time.Millisecond {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		rev, err := b.revision(ctx)
		if err != nil {
			return err
		}
		if rev != last {
			last, stable = rev, time.Now()
		}
	}
	return nil
}

// revision is coord's current revision: it moves with every committed write.
func (b *berth) revision(ctx context.Context) (int64, error) {
	st, err := b.coord.Status(ctx, "")
	if err != nil {
		return 0, err
	}
	return st.Revision, nil
}

// state is what a refused input must leave alone.
type state struct {
	revision int64
	// reads are the API answers, by what was read.
	reads map[string][]byte
	// cliConfig is the CLI's configuration file (absent: nil).
	cliConfig []byte
}

// stateReads are the API reads compared before and after each case.
func (b *berth) stateReads() map[string][2]string {
	return map[string][2]string{
		"deployments":       {b.controller, "/v1/deployments?limit=10000"},
		"tasks":             {b.controller, "/v1/tasks?limit=10000"},
		"tree":              {b.controller, "/v1/tree"},
		"hosts":             {b.controller, "/v1/hosts"},
		"names services":    {b.names, "/v1/services"},
		"agent callbacks":   {b.agentAPI, "/v1/callbacks"},
		"artifacts":         {b.artifacts, "/"},
		"traffic of base":   {b.names, "/v1/traffic/" + baseService},
		"effective of base": {b.controller, "/v1/tree/" + baseService + "?effective=true"},
	}
}

// snapshot reads the state.
func (b *berth) snapshot(ctx context.Context) (state, error) {
	s := state{reads: map[string][]byte{}}
	var err error
	if s.revision, err = b.revision(ctx); err != nil {
		return s, fmt.Errorf("coord revision: %w", err)
	}
	type res struct {
		name string
		body []byte
		err  error
	}
	reads := b.stateReads()
	ch := make(chan res, len(reads))
	for name, r := range reads {
		go func() {
			path, q, _ := strings.Cut(r[1], "?")
			code, _, body, err := b.do(ctx, "GET", r[0], path, q, nil, nil)
			if err == nil && code >= 500 {
				err = fmt.Errorf("GET %s: %d %s", r[1], code, body)
			}
			if name == "hosts" && err == nil {
				body = withoutAgentFacts(body)
			}
			ch <- res{name, append([]byte(fmt.Sprintf("%d ", code)), body...), err}
		}()
	}
	for range reads {
		r := <-ch
		if r.err != nil && err == nil {
			err = fmt.Errorf("read %s: %w", r.name, r.err)
		}
		s.reads[r.name] = r.body
	}
	s.cliConfig, _ = os.ReadFile(b.cliConfigPath())
	s.reads["files the CLI writes"] = b.listFiles(filepath.Join(b.dir, "certs"), filepath.Join(b.dir, "certs-refused"), b.cwd)
	return s, err
}

// ownWrite reports whether a coord write is Berth's own and not a case's: the agent
// rewriting its liveness node when its facts change (free disk, say), or the controller
// recording, late, a step of a run that had ended before the case (a step sent to a host
// with no agent is settled only at its deadline). Anything else a case writes shows.
func ownWrite(path string, earlierRuns map[string]bool) bool {
	if strings.HasPrefix(path, "/berth/alive/") {
		return true
	}
	for _, prefix := range []string{"/berth/tasks/", "/berth/deployments/"} {
		if rest, ok := strings.CutPrefix(path, prefix); ok {
			id, sub, _ := strings.Cut(rest, "/")
			return sub != "" && earlierRuns[id]
		}
	}
	return false
}

// runIDs are the ids of the deployments and tasks in a state's lists.
func runIDs(s state) map[string]bool {
	ids := map[string]bool{}
	for _, key := range []string{"deployments", "tasks"} {
		var list map[string][]struct {
			ID string `json:"id"`
		}
		body := bytes.TrimLeft(s.reads[key], "0123456789 ")
		if json.Unmarshal(body, &list) != nil {
			continue
		}
		for _, r := range list[key] {
			ids[r.ID] = true
		}
	}
	return ids
}

// withoutAgentFacts drops each host's agent facts from GET /v1/hosts: the agent
// refreshes them by itself (free disk, say). Whether the agent is alive stays.
func withoutAgentFacts(body []byte) []byte {
	var v struct {
		Hosts []map[string]any `json:"hosts"`
		DCs   []string         `json:"dcs"`
	}
	if json.Unmarshal(body, &v) != nil {
		return body
	}
	for _, h := range v.Hosts {
		delete(h, "agent")
	}
	out, err := json.Marshal(v)
	if err != nil {
		return body
	}
	return out
}

// diff says how after differs from before, "" when it does not.
func (b *berth) diff(ctx context.Context, before, after state) string {
	var out []string
	if after.revision != before.revision {
		msg := fmt.Sprintf("coord revision moved from %d to %d", before.revision, after.revision)
		benign := false
		if res, err := b.coord.List(ctx, "/", coordclient.Recursive(), coordclient.KeysOnly()); err == nil {
			var changed []string
			own := 0
			earlier := runIDs(before)
			for _, n := range res.Nodes {
				if n.ModRev > before.revision {
					changed = append(changed, n.Path)
					if ownWrite(n.Path, earlier) {
						own++
					}
				}
			}
			if len(changed) > 0 {
				msg += fmt.Sprintf(" (written: %s)", strings.Join(changed, ", "))
			}
			benign = own > 0 && own == len(changed)
		}
		if !benign {
			out = append(out, msg)
		}
	}
	for name, was := range before.reads {
		if now := after.reads[name]; !bytes.Equal(was, now) {
			out = append(out, fmt.Sprintf("%s changed:\n  before: %.600s\n  after:  %.600s", name, was, now))
		}
	}
	if !bytes.Equal(before.cliConfig, after.cliConfig) {
		out = append(out, fmt.Sprintf("CLI config changed:\n  before: %.400q\n  after:  %.400q", before.cliConfig, after.cliConfig))
	}
	return strings.Join(out, "\n")
}

// listFiles lists the files below dirs with their sizes and modification times.
func (b *berth) listFiles(dirs ...string) []byte {
	var out bytes.Buffer
	for _, root := range dirs {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if fi, err := d.Info(); err == nil {
				fmt.Fprintf(&out, "%s %d %s\n", p, fi.Size(), fi.ModTime().Format(time.RFC3339Nano))
			}
			return nil
		})
	}
	return out.Bytes()
}

// sentinels returns every sentinel file that exists: in the sentinel directory, the data
// directory, the test's directory and the system's temporary directory root.
func (b *berth) sentinels() []string {
	var found []string
	for _, root := range []string{b.dir, b.dataDir} {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Name() == sentinelName {
				found = append(found, p)
			}
			return nil
		})
	}
	for _, p := range []string{filepath.Join(os.TempDir(), sentinelName), filepath.Join("/", sentinelName)} {
		if _, err := os.Lstat(p); err == nil {
			found = append(found, p)
		}
	}
	return found
}

// noSideEffect runs fn, which sends one hostile input, and fails t when fn reports a
// problem, a command ran or the state changed. Cases run one at a time so that a change is
// the case's own. A case listed as a known defect (known != "") is skipped with the
// defect named when it shows a problem, and fails when it no longer does (so that the
// entry is removed once the defect is fixed).
func (b *berth) noSideEffect(t *testing.T, what, known string, fn func() error) {
	t.Helper()
	problems := b.sideEffects(t, what, fn)
	switch {
	case known != "" && len(problems) > 0:
		t.Skipf("known defect: %s\n%s", known, strings.Join(problems, "\n"))
	case known != "":
		t.Errorf("%s: listed as a known defect (%s) but refused cleanly now: remove it from the list", what, known)
	default:
		for _, p := range problems {
			t.Error(p)
		}
	}
}

// sideEffects runs fn and returns what went wrong: fn's error, a changed state, a
// sentinel. After a change it settles Berth (ends the runs the case started) so that the
// next case starts from quiet.
func (b *berth) sideEffects(t *testing.T, what string, fn func() error) []string {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	ctx := t.Context()
	before, err := b.snapshot(ctx)
	if err != nil {
		t.Fatalf("%s: state before: %v", what, err)
	}
	var problems []string
	if err := fn(); err != nil {
		problems = append(problems, fmt.Sprintf("%s: %v", what, err))
	}
	after, err := b.snapshot(ctx)
	if err != nil {
		t.Fatalf("%s: state after: %v", what, err)
	}
	if d := b.diff(ctx, before, after); d != "" {
		problems = append(problems, fmt.Sprintf("%s: side effect: %s", what, d))
		if err := b.settle(ctx); err != nil {
			t.Fatalf("settle after %s: %v", what, err)
		}
	}
	if s := b.sentinels(); len(s) > 0 {
		problems = append(problems, fmt.Sprintf("%s: a command ran: sentinel %s exists", what, strings.Join(s, ", ")))
		for _, p := range s {
			_ = os.Remove(p)
		}
	}
	return problems
}

// settle aborts every run that has not ended (a hostile input that was accepted may have
// started one) and waits for coord to be quiet.
func (b *berth) settle(ctx context.Context) error {
	for _, list := range []struct{ path, key string }{{"/v1/deployments", "deployments"}, {"/v1/tasks", "tasks"}} {
		code, _, out, err := b.do(ctx, "GET", b.controller, list.path, "limit=10000", nil, nil)
		if err != nil || code != 200 {
			return fmt.Errorf("list %s: %d %v", list.path, code, err)
		}
		var runs map[string][]struct {
			ID     string `json:"id"`
			Status struct {
				State string `json:"state"`
			} `json:"status"`
		}
		if err := json.Unmarshal(out, &runs); err != nil {
			return fmt.Errorf("list %s: %w", list.path, err)
		}
		for _, r := range runs[list.key] {
			switch r.Status.State {
			case "succeeded", "failed", "aborted", "rolled_back":
				continue
			}
			_, _, _, _ = b.do(ctx, "POST", b.controller, list.path+"/"+r.ID+"/abort", "", nil, nil)
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := b.waitEnded(wctx, list.path+"/"+r.ID)
			cancel()
			if err != nil {
				return err
			}
		}
	}
	// A deployment's service lock outlives its abort until the steps it sent out are
	// settled; the next deployment of the service would be refused for it.
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := b.coord.List(ctx, "/berth/controller/locks", coordclient.KeysOnly())
		if err != nil {
			return fmt.Errorf("list the service locks: %w", err)
		}
		held := 0
		for _, n := range res.Nodes {
			if n.Version > 0 {
				held++
			}
		}
		if held == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d service locks still held 60 s after every run ended", held)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return b.waitQuiet(ctx)
}

// cliConfigPath is the CLI configuration file the CLI cases use ($BERTH_CONFIG_FILE).
func (b *berth) cliConfigPath() string { return filepath.Join(b.dir, "home", "berth-config.yaml") }
