package engine

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestPullReference(t *testing.T) {
	cases := []struct {
		ref, digest, want, err string
	}{
		{"127.0.0.1:5000/hotel/search:1.4.2", digest, "127.0.0.1:5000/hotel/search@" + digest, ""},
		{"registry/hotel/search", digest, "registry/hotel/search@" + digest, ""},
		{"127.0.0.1:5000/hotel/search:1.4.2@sha256:ffff", digest, "127.0.0.1:5000/hotel/search@" + digest, ""},
		{"127.0.0.1:5000/hotel/search:1", "sha256:abc", "", "digest"},
		{"127.0.0.1:5000/hotel/search:1", "md5:" + strings.Repeat("a", 64), "", "digest"},
		{"", digest, "", "reference"},
	}
	for _, tc := range cases {
		got, err := pullReference(tc.ref, tc.digest)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("pullReference(%q, %q): got %q, %v; want an error about %s", tc.ref, tc.digest, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("pullReference(%q, %q): got %q, %v; want %q", tc.ref, tc.digest, got, err, tc.want)
		}
	}
}

func TestRolloutOrderSpreadsBatchesOverHosts(t *testing.T) {
	var in []*inventoryv1.Allocation
	for i, h := range []string{"h2", "h2", "h2", "h1", "h3", "h1"} {
		in = append(in, &inventoryv1.Allocation{Id: fmt.Sprintf("a%d", i), Host: h})
	}
	var got []string
	for _, a := range rolloutOrder(in) {
		got = append(got, a.GetHost()+"/"+a.GetId())
	}
	want := "h1/a3 h2/a0 h3/a4 h1/a5 h2/a1 h2/a2"
	if strings.Join(got, " ") != want {
		t.Errorf("rolloutOrder: got %s, want %s", strings.Join(got, " "), want)
	}
}

func TestPreviousVersion(t *testing.T) {
	a := func(v, dep string) *controllerv1.ContainerAllocation {
		return &controllerv1.ContainerAllocation{Version: v, DeploymentId: dep}
	}
	cases := []struct {
		olds []*controllerv1.ContainerAllocation
		want string
	}{
		{nil, ""},
		{[]*controllerv1.ContainerAllocation{a("1.0", "d-1"), a("1.0", "d-1"), a("2.0", "d-2")}, "1.0"},
		{[]*controllerv1.ContainerAllocation{a("1.0", "d-1"), a("2.0", "d-2")}, "2.0"},
		{[]*controllerv1.ContainerAllocation{a("", "d-3"), a("1.0", "d-1")}, "1.0"},
	}
	for i, tc := range cases {
		if got := previousVersion(tc.olds); got != tc.want {
			t.Errorf("case %d: previousVersion: got %q, want %q", i, got, tc.want)
		}
	}
}

func TestRetireDue(t *testing.T) {
	cases := []struct {
		m, n, end int
		last      bool
		want      int
	}{
		{3, 3, 1, false, 1},
		{3, 3, 2, false, 2},
		{3, 3, 3, true, 3},
		{2, 5, 1, false, 1},
		{2, 5, 3, false, 2},
		{5, 2, 1, false, 3},
		{5, 2, 2, true, 5},
		{0, 3, 1, false, 0},
		// More old allocations than new ones are all gone after the last batch, whatever
		// the ramp said.
		{4, 3, 3, true, 4},
	}
	for _, tc := range cases {
		if got := retireDue(tc.m, tc.n, tc.end, tc.last); got != tc.want {
			t.Errorf("retireDue(%d, %d, %d, %t): got %d, want %d", tc.m, tc.n, tc.end, tc.last, got, tc.want)
		}
	}
}

func TestClassifyStageFailures(t *testing.T) {
	status := func(code commonv1.Code, msg string, details map[string]string) error {
		return fmt.Errorf("request x: %w", natsbus.FromStatus(&commonv1.Status{Code: code, Message: msg, Details: details}))
	}
	cases := []struct {
		name     string
		err      error
		classify func(error) error
		class    string
		msg      string
	}{
		{"builder down", fmt.Errorf("request: %w", natsbus.ErrNoResponders), classifyBuild, model.ClassInfrastructure, "image builder is unreachable"},
		{"builder slow", fmt.Errorf("request: %w after 5m", natsbus.ErrTimeout), classifyBuild, model.ClassInfrastructure, "did not answer in time"},
		{"registry down", status(commonv1.Code_CODE_UNAVAILABLE, "push: registry unreachable", map[string]string{"failure_class": "infrastructure"}), classifyBuild,
			model.ClassInfrastructure, "registry unreachable"},
		{"broken package", status(commonv1.Code_CODE_FAILED_PRECONDITION, "berth.yaml: line 3: unknown field colour",
			map[string]string{"failure_class": "application", "build_log": "step 1\nstep 2 failed"}), classifyBuild, model.ClassApplication, "unknown field colour (build log: step 2 failed)"},
		{"bad sha", status(commonv1.Code_CODE_INVALID_ARGUMENT, "checksum mismatch", nil), classifyBuild, model.ClassApplication, "checksum mismatch"},
		{"scheduler down", fmt.Errorf("request: %w", natsbus.ErrNoResponders), classifyPlace, model.ClassInfrastructure, "scheduler is unreachable"},
		{"no capacity", status(commonv1.Code_CODE_RESOURCE_EXHAUSTED, "placed 1 of 3: of 2 hosts, 2 lack memory", nil), classifyPlace,
			model.ClassInfrastructure, "no capacity: placed 1 of 3: of 2 hosts, 2 lack memory"},
		{"bad constraints", status(commonv1.Code_CODE_INVALID_ARGUMENT, "constraints: unexpected '('", map[string]string{"field": "constraints"}), classifyPlace,
			model.ClassApplication, "refused the placement (constraints)"},
		{"conflicts", status(commonv1.Code_CODE_UNAVAILABLE, "gave up after 16 lost transactions", nil), classifyPlace, model.ClassInfrastructure, "16 lost"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var oe *opError
			err := tc.classify(tc.err)
			if !errors.As(err, &oe) {
				t.Fatalf("got %v, want an opError", err)
			}
			if oe.class != tc.class || !strings.Contains(oe.msg, tc.msg) {
				t.Errorf("got %s %q, want %s containing %q", oe.class, oe.msg, tc.class, tc.msg)
			}
		})
	}
}

// containerRunner is a runner of a container deployment with the given targets, for the
// decisions that need no coord or bus.
func containerRunner(prevImage string, targets ...*controllerv1.Target) *runner {
	d := &controllerv1.Deployment{Id: "d-20260102-150405-aaaaaa", Service: "acc/web", Version: "2.0", Mode: model.ModeContainer,
		Placement: &controllerv1.Placement{Replicas: 2, CpuMillis: 250, MemoryBytes: 64 << 20},
		Image:     &controllerv1.ContainerImage{Pull: "reg/acc/web@" + digest}, PreviousVersion: "1.0", PreviousImage: prevImage,
		Status: &controllerv1.RunStatus{}}
	for _, t := range targets {
		ca := &controllerv1.ContainerAllocation{Id: t.GetAllocation(), Host: t.GetHost(), Ip: t.GetIp()}
		if t.GetRetire() {
			d.Retire = append(d.Retire, ca)
		} else {
			d.Allocations = append(d.Allocations, ca)
		}
	}
	r := &runner{kind: model.KindDeployment, id: d.GetId(), dep: d, st: d.Status, service: d.GetService(), targets: targets, idx: map[string]int{}}
	for i, t := range targets {
		r.idx[model.TargetKey(t)] = i
	}
	return r
}

func TestToRelease(t *testing.T) {
	tg := func(alloc, state, class, rollback string, touched, retire, released bool) *controllerv1.Target {
		return &controllerv1.Target{Allocation: alloc, Host: "h1", State: state, FailureClass: class, Rollback: rollback,
			Touched: touched, Retire: retire, Released: released}
	}
	targets := []*controllerv1.Target{
		tg("ok", model.TargetSucceeded, "", "", true, false, false),
		tg("never", model.TargetSkipped, "", "", false, false, false),
		tg("failed", model.TargetFailed, model.ClassApplication, "", true, false, false),
		tg("rolledback", model.TargetSucceeded, "", model.TargetSucceeded, true, false, false),
		tg("unreachable", model.TargetUnreachable, model.ClassInfrastructure, "", true, false, false),
		tg("timedout", model.TargetTimedOut, model.ClassApplication, "", true, false, false),
		tg("old-stopped", model.TargetSucceeded, "", "", true, true, false),
		tg("old-gone", model.TargetUnreachable, model.ClassInfrastructure, "", true, true, false),
		tg("old-failed", model.TargetFailed, model.ClassApplication, "", true, true, false),
		tg("old-pending", model.TargetPending, "", "", false, true, false),
		tg("old-released", model.TargetSucceeded, "", "", true, true, true),
	}
	cases := []struct {
		prevImage string
		ended     bool
		want      string
	}{
		// While rolling out, only the retired allocations.
		{"reg/acc/web@" + digest, false, "old-stopped old-gone"},
		// Once ended: also the allocations without a container.
		{"reg/acc/web@" + digest, true, "never failed old-stopped old-gone"},
		// Without a previous image a rollback stopped the container: released too.
		{"", true, "never failed rolledback old-stopped old-gone"},
	}
	for _, tc := range cases {
		r := containerRunner(tc.prevImage, targets...)
		if got := strings.Join(r.toRelease(tc.ended), " "); got != tc.want {
			t.Errorf("toRelease(ended %t, previous image %q): got %q, want %q", tc.ended, tc.prevImage, got, tc.want)
		}
	}
}

func TestContainerStepRequests(t *testing.T) {
	newT := &controllerv1.Target{Allocation: "a1", Host: "h1", Ip: "172.30.0.11"}
	oldT := &controllerv1.Target{Allocation: "o1", Host: "h2", Ip: "172.30.0.21", Retire: true}
	cases := []struct {
		name      string
		prevImage string
		target    *controllerv1.Target
		kind      string
		action    string
		args      map[string]string
	}{
		{"deploy", "", newT, KindDeploy, "deploy", map[string]string{"service": "acc/web", "version": "2.0", "deployment": "d-20260102-150405-aaaaaa",
			"allocation": "a1", "image": "reg/acc/web@" + digest, "ip": "172.30.0.11", "cpu_millis": "250", "memory_bytes": "67108864", "health_deadline": "30s"}},
		{"rollback", "reg/acc/web@sha256:prev", newT, KindRollback, "deploy", map[string]string{"service": "acc/web", "version": "1.0",
			"deployment": "d-20260102-150405-aaaaaa", "allocation": "a1", "image": "reg/acc/web@sha256:prev", "ip": "172.30.0.11", "cpu_millis": "250",
			"memory_bytes": "67108864", "health_deadline": "30s"}},
		{"rollback without a previous image", "", newT, KindRollback, "stop", map[string]string{"service": "acc/web", "allocation": "a1"}},
		{"retire", "", oldT, KindRetire, "stop", map[string]string{"service": "acc/web", "allocation": "o1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := containerRunner(tc.prevImage, newT, oldT)
			req := &agentv1.StepRequest{}
			r.containerStep(req, tc.target, &controllerv1.StepRecord{Kind: tc.kind}, 30e9)
			if req.GetPlugin() != ContainerDeployPlugin || req.GetAction() != tc.action || fmt.Sprint(req.GetArguments()) != fmt.Sprint(tc.args) {
				t.Errorf("got %s %s %v, want %s %s %v", req.GetPlugin(), req.GetAction(), req.GetArguments(), ContainerDeployPlugin, tc.action, tc.args)
			}
		})
	}
}

func TestLookupByStepID(t *testing.T) {
	r := containerRunner("", &controllerv1.Target{Allocation: "a1", Host: "h1"}, &controllerv1.Target{Allocation: "a2", Host: "h1"},
		&controllerv1.Target{Allocation: "o1", Host: "h2", Retire: true})
	cases := []struct {
		host, step string
		want       int
		ok         bool
	}{
		{"h1", "deploy-a2", 1, true},
		{"h1", "rollback-a1", 0, true},
		{"h2", "retire-o1", 2, true},
		{"h2", "deploy-a1", 0, false}, // another host answering for a1
		{"h1", "deploy", 0, false},
		{"h1", "deploy-zz", 0, false},
	}
	for _, tc := range cases {
		i, ok := r.lookup(tc.host, tc.step)
		if ok != tc.ok || (ok && i != tc.want) {
			t.Errorf("lookup(%s, %s): got %d %t, want %d %t", tc.host, tc.step, i, ok, tc.want, tc.ok)
		}
	}
}
