package controller_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// stepMonitor records when step requests are sent (by any controller), with their
// fencing tokens.
type stepMonitor struct {
	mu     sync.Mutex
	times  []time.Time
	tokens []uint64
	sub    *nats.Subscription
}

func (e *env) monitorSteps() *stepMonitor {
	e.t.Helper()
	m := &stepMonitor{}
	sub, err := e.bus.Conn().Subscribe("berth.v1.agent.*.step", func(msg *nats.Msg) {
		now := time.Now()
		req := &agentv1.StepRequest{}
		_ = proto.Unmarshal(msg.Data, req)
		m.mu.Lock()
		m.times = append(m.times, now)
		m.tokens = append(m.tokens, req.GetFencingToken())
		m.mu.Unlock()
	})
	if err != nil {
		e.t.Fatal(err)
	}
	m.sub = sub
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return m
}

// firstAfter returns the first step request sent after t by a leader whose token is
// above token (a step of the killed leader may still be on its way to the monitor).
func (m *stepMonitor) firstAfter(t time.Time, token uint64) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, x := range m.times {
		if x.After(t) && m.tokens[i] > token {
			return x, true
		}
	}
	return time.Time{}, false
}

// failoverRun deploys n services at once over three agents with three controller
// replicas, crashes the leader kills times while they run, and checks that every
// deployment succeeded and every deploy step ran exactly once on its host (the start
// script's sentinel). It returns the time from each kill to the next step sent.
func failoverRun(t testing.TB, n, kills int, every time.Duration) []time.Duration {
	e := newEnv(t)
	hosts := hostNames("h", 4)
	for _, h := range hosts {
		e.startAgent(h)
	}
	sentinel := filepath.Join(e.dir, "sentinel")
	for i := range 3 {
		e.startController(fmt.Sprintf("c%d", i+1))
	}
	lead := e.leader(10 * time.Second)
	mon := e.monitorSteps()
	var ids []string
	for i := range n {
		svc := fmt.Sprintf("fo/s%d", i)
		a := e.api(lead)
		a.must(201, "PATCH", "/v1/tree/"+svc, map[string]any{"hosts": hosts}, nil)
		p := e.makePkg(svc, "1.0.0", pkgOpts{start: `echo "$BERTH_SERVICE $BERTH_HOST_ID" >> ` + sentinel + "\nsleep 1"})
		d := &controllerv1.Deployment{}
		a.must(201, "POST", "/v1/deployments", map[string]any{"service": svc, "version": "1.0.0",
			"artifact": map[string]string{"url": p.url, "sha256": p.sha},
			"strategy": map[string]any{"batches": []any{1, "100%"}, "max_parallel": 1, "health_gate": map[string]any{"deadline": "5s"}}}, d)
		ids = append(ids, d.GetId())
	}
	agents := map[string]*agentProc{}
	for _, h := range hosts {
		agents[h] = e.agents[h]
	}
	var resume []time.Duration
	for k := range kills {
		time.Sleep(every)
		// The election node and the replicas' own view agree once a campaign settled (on a
		// loaded machine a session may lapse in between): read both until they do.
		var li *coordclient.LeaderInfo
		for deadline := time.Now().Add(15 * time.Second); ; {
			lead = e.leader(10 * time.Second)
			var err error
			if li, err = e.cc.Leader(t.Context(), "controller"); err == nil && string(li.Value) == lead.name {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("leader controller: replicas say %s, the election says %v (%v)", lead.name, li, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		killed := time.Now()
		e.crashController(lead)
		// The replacement replica keeps three in the race.
		e.startController(fmt.Sprintf("c%d", 4+k))
		next := e.leader(10 * time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for {
			if at, ok := mon.firstAfter(killed, li.Token); ok {
				resume = append(resume, at.Sub(killed))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: no step sent within 10s after killing %s (new leader %s)", k+1, lead.name, next.name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	a := e.api(e.leader(10 * time.Second))
	for _, id := range ids {
		d := a.waitDeployment(id, 60*time.Second, terminal)
		if got := d.GetStatus().GetState(); got != "succeeded" {
			t.Errorf("deployment %s of %s: got %s, want succeeded: %s", id, d.GetService(), got, d.GetStatus().GetMessage())
		}
	}
	counts := map[string]int{}
	f, err := os.Open(sentinel)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		counts[strings.TrimSpace(sc.Text())]++
	}
	lost, twice := 0, 0
	for i := range n {
		for _, h := range hosts {
			switch c := counts[fmt.Sprintf("fo/s%d %s", i, h)]; {
			case c == 0:
				lost++
			case c > 1:
				twice++
				t.Errorf("fo/s%d on %s: the deploy step ran %d times, want once", i, h, c)
			}
		}
	}
	// The agents' own count of plugin runs: one deploy step per service and host.
	for _, h := range hosts {
		if got := agents[h].stepsRun(t, "package-deploy"); got != n {
			t.Errorf("agent %s ran %d package-deploy steps, want %d (one per deployment)", h, got, n)
			if got > n {
				twice += got - n
			}
		}
	}
	if lost > 0 || twice > 0 {
		t.Errorf("steps: %d lost, %d executed twice; want 0 and 0", lost, twice)
	}
	return resume
}

// TestFailoverEveryStepOnce crashes the leader three times during 20 concurrent
// deployments; every step must end exactly once. It reports the time from each kill to
// the next step sent (the session TTL is 1s).
func TestFailoverEveryStepOnce(t *testing.T) {
	resume := failoverRun(t, 20, 3, time.Second)
	sort.Slice(resume, func(i, j int) bool { return resume[i] < resume[j] })
	t.Logf("time from leader kill to the next step sent: %v", resume)
	for _, d := range resume {
		if d > 5*time.Second {
			t.Errorf("resume took %s after a kill, want under 5s", d)
		}
	}
}

// TestProgressDeadlineAcrossFailover starts a deployment whose step never ends within
// the progress deadline, crashes the leader, and checks that the new leader ends it on
// time: the deadline is kept in coord, not in the old leader's memory.
func TestProgressDeadlineAcrossFailover(t *testing.T) {
	e := newEnv(t)
	e.startAgent("h1")
	c1 := e.startController("c1")
	lead := e.leader(10 * time.Second)
	e.startController("c2")
	a := e.api(c1)
	a.must(201, "PATCH", "/v1/tree/acc/slow", nil, nil)
	// Health never passes within the 60s health deadline, so the step outlasts the
	// progress deadline of 4s.
	p := e.makePkg("acc/slow", "1.0.0", pkgOpts{health: "exit 1"})
	d := &controllerv1.Deployment{}
	a.must(201, "POST", "/v1/deployments", deploymentBody("acc/slow", "1.0.0", p, []string{"h1"},
		map[string]any{"progress_deadline": "4s", "health_gate": map[string]any{"deadline": "60s"}}), d)
	id := d.GetId()
	a.waitDeployment(id, 10*time.Second, func(d *controllerv1.Deployment) bool { return d.GetTargets()[0].GetState() == "running" })
	// The crash comes a second in, so that a new leader that restarted the clock would end
	// the deployment a second (and a session TTL) late.
	time.Sleep(time.Second)
	e.crashController(lead)
	other := e.leader(10 * time.Second)
	if other == lead {
		t.Fatalf("the crashed replica still leads")
	}
	a = e.api(other)
	d = a.waitDeployment(id, 15*time.Second, stateIs("failed", "succeeded", "aborted", "rolled_back"))
	if got := d.GetStatus().GetState(); got != "failed" {
		t.Fatalf("got state %s, want failed: %s", got, dump(d))
	}
	if !strings.Contains(d.GetStatus().GetMessage(), "progress deadline") {
		t.Errorf("message %q does not name the progress deadline", d.GetStatus().GetMessage())
	}
	took := d.GetStatus().GetEndedAt().AsTime().Sub(d.GetStatus().GetStartedAt().AsTime())
	if took < 4*time.Second || took > 5500*time.Millisecond {
		t.Errorf("ended %s after it started, want 4s to 5.5s (deadline 4s, checked every tick)", took)
	}
	if got := d.GetStatus().GetLeaderToken(); got == 0 {
		t.Errorf("leader token not recorded")
	}
}
