package namesagent_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
)

// pkgFile writes a .tar.gz package of files and returns its path and sha256.
func pkgFile(t *testing.T, dir, name string, files map[string]string) (string, string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range []string{"berth.yaml", "start.sh", "stop.sh", "health.sh"} {
		body, ok := files[f]
		if !ok {
			continue
		}
		mode := int64(0o644)
		if strings.HasSuffix(f, ".sh") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: f, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte(body))
	}
	_ = tw.Close()
	_ = gz.Close()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return p, hex.EncodeToString(sum[:])
}

// step sends a package-deploy step to host and waits for its result.
func (e *env) step(host, task string, args map[string]string) *agentv1.StepResult {
	e.t.Helper()
	results := make(chan *agentv1.StepResult, 1)
	rs, _ := subjects.AgentResultFor(task)
	ctx, cancel := context.WithCancel(e.t.Context())
	defer cancel()
	if _, err := natsbus.SubscribeTyped(ctx, e.bus, rs, "", func(_ context.Context, r *agentv1.StepResult) error {
		results <- r
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	subject, _ := subjects.AgentStep(host)
	req := &agentv1.StepRequest{TaskId: task, StepId: "s1", Attempt: 1, FencingToken: 1, Host: host,
		Plugin: "package-deploy", Action: "deploy", Arguments: args, Timeout: durationpb.New(time.Minute)}
	var reply agentv1.StepReply
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if err := e.bus.Request(rctx, subject, req, &reply); err != nil {
		e.t.Fatalf("step %s: %v", task, err)
	}
	if reply.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
		e.t.Fatalf("step %s: got %v", task, reply.GetDisposition())
	}
	select {
	case r := <-results:
		return r
	case <-time.After(time.Minute):
		e.t.Fatalf("step %s: no result", task)
		return nil
	}
}

// nodeEvent is one change to an instance node, with when the test saw it.
type nodeEvent struct {
	at    time.Time
	del   bool
	state namesv1.InstanceState
	ver   string
}

// watchInstances records the changes under /berth/instances/<service>/.
func (e *env) watchInstances(service string) func() []nodeEvent {
	var mu sync.Mutex
	var evs []nodeEvent
	ctx, cancel := context.WithCancel(context.Background())
	res, err := e.coord.List(e.t.Context(), "/berth", coordclient.Limit(1))
	if err != nil {
		e.t.Fatal(err)
	}
	ch := e.coord.Watch(ctx, "/berth/instances/"+service, res.Revision+1, coordclient.Recursive())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for r := range ch {
			for _, ev := range r.Events {
				ne := nodeEvent{at: time.Now(), del: ev.Type == coordclient.EventDelete}
				if !ne.del {
					var in namesv1.Instance
					_ = protojson.Unmarshal(ev.Node.Value, &in)
					ne.state, ne.ver = in.GetState(), in.GetVersion()
				}
				mu.Lock()
				evs = append(evs, ne)
				mu.Unlock()
			}
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	return func() []nodeEvent {
		mu.Lock()
		defer mu.Unlock()
		return append([]nodeEvent(nil), evs...)
	}
}

func TestDeployDrainsBeforeStop(t *testing.T) {
	e := startEnv(t)
	const ttl = time.Second
	e.tree("app/drain", ttl)
	cfg := e.agentCfg("h-d")
	e.startAgent(cfg)
	port := freePort(t)
	files := func(v string) map[string]string {
		return map[string]string{
			"berth.yaml": fmt.Sprintf("service: app/drain\nport: %d\nscripts:\n  start: start.sh\n  stop: stop.sh\n  health: health.sh\nhealth:\n  interval: 100ms\n  timeout: 50ms\n  rise: 2\n", port),
			"start.sh":   "#!/bin/sh\ntouch running\n",
			"stop.sh":    "#!/bin/sh\necho \"stop $BERTH_VERSION $(date +%s%N)\" >> ../../events.log\nrm -f running\n",
			"health.sh":  "#!/bin/sh\ntest -f running\n",
		}
	}
	p1, s1 := pkgFile(t, e.dir, "app-drain-1.0.tar.gz", files("1.0"))
	p2, s2 := pkgFile(t, e.dir, "app-drain-2.0.tar.gz", files("2.0"))
	id := "h-d-" + strconv.Itoa(port)

	if r := e.step("h-d", "deploy-1", map[string]string{"url": "file://" + p1, "sha256": s1, "version": "1.0"}); r.GetState() != agentv1.StepState_STEP_STATE_OK {
		t.Fatalf("deploy 1.0: %v %s", r.GetState(), r.GetMessage())
	}
	// The deploy registered the instance once its health passed.
	if in := e.instance("app/drain", id); in == nil || in.GetVersion() != "1.0" || in.GetHealth() != namesv1.Health_HEALTH_HEALTHY {
		t.Fatalf("after deploying 1.0: instance %v, want 1.0 healthy", in)
	}
	seen := e.watchInstances("app/drain")
	if r := e.step("h-d", "deploy-2", map[string]string{"url": "file://" + p2, "sha256": s2, "version": "2.0"}); r.GetState() != agentv1.StepState_STEP_STATE_OK {
		t.Fatalf("deploy 2.0: %v %s", r.GetState(), r.GetMessage())
	}
	evs := seen()
	// Draining put, delete, then the new version's registration.
	var drainAt, delAt time.Time
	var newVer string
	for _, ev := range evs {
		switch {
		case !ev.del && ev.state == namesv1.InstanceState_INSTANCE_STATE_DRAINING && drainAt.IsZero():
			drainAt = ev.at
		case ev.del && !drainAt.IsZero() && delAt.IsZero():
			delAt = ev.at
		case !ev.del && !delAt.IsZero() && newVer == "":
			newVer = ev.ver
		}
	}
	if drainAt.IsZero() || delAt.IsZero() || newVer != "2.0" {
		t.Fatalf("instance node changes during the deploy: got %+v; want draining, deleted, then 2.0 registered", evs)
	}
	// The old release's stop script ran only after the drain barrier (the tree's TTL).
	stopAt := stopTime(t, filepath.Join(cfg.DataDir, "apps", "app", "drain", "events.log"), "1.0")
	if wait := stopAt.Sub(delAt); wait < ttl-100*time.Millisecond {
		t.Errorf("stop of 1.0 ran %s after its instance was deregistered; want at least the DNS TTL %s", wait, ttl)
	} else {
		t.Logf("stop of 1.0 ran %s after deregistration (TTL %s)", wait.Round(time.Millisecond), ttl)
	}
	if in := e.instance("app/drain", id); in == nil || in.GetVersion() != "2.0" || in.GetState() != namesv1.InstanceState_INSTANCE_STATE_ACTIVE {
		t.Errorf("after deploying 2.0: instance %v", in)
	}
}

func stopTime(t *testing.T, path, version string) time.Time {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Fields(sc.Text())
		if len(parts) == 3 && parts[0] == "stop" && parts[1] == version {
			ns, err := strconv.ParseInt(parts[2], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return time.Unix(0, ns)
		}
	}
	t.Fatalf("no stop of %s in %s", version, path)
	return time.Time{}
}
