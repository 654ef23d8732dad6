package containers_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
)

// load sends requests to a service without pause, each to an address the name service
// answered (cached for the answer's TTL, as a DNS client would), and counts what failed.
type load struct {
	total, failed atomic.Int64
	mu            sync.Mutex
	failures      []string
	seen          map[string]int
	stop          chan struct{}
	wg            sync.WaitGroup
}

func (e *env) startLoad(service string, workers int) *load {
	l := &load{seen: map[string]int{}, stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var addrs []string
			var until time.Time
			for n := w; ; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				var err error
				if time.Now().After(until) {
					var ttl time.Duration
					addrs, ttl, err = e.resolved(service)
					until = time.Now().Add(ttl)
					if err == nil && len(addrs) == 0 {
						err = fmt.Errorf("the name service answered no address for %s", service)
					}
				}
				v := ""
				if err == nil {
					v, err = get(addrs[n%len(addrs)])
				}
				l.total.Add(1)
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					if len(l.failures) < 10 {
						l.failures = append(l.failures, time.Now().Format("15:04:05.000")+" "+err.Error())
					}
					until = time.Time{}
				} else {
					l.seen[v]++
				}
				l.mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	return l
}

// end stops the load and reports it.
func (l *load) end(t *testing.T, what string) map[string]int {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	t.Logf("%s: %d requests through the name service, %d failed; versions answered %v", what, l.total.Load(), l.failed.Load(), l.seen)
	if l.failed.Load() != 0 {
		t.Errorf("%s: %d of %d requests failed: %v", what, l.failed.Load(), l.total.Load(), l.failures)
	}
	return l.seen
}

// checkPlaced checks that a deployment's targets are its allocations, each with an address
// of its host's pool that its container has on the test's network.
func (e *env) checkPlaced(d *controllerv1.Deployment, replicas int) {
	e.t.Helper()
	pools := map[string][2]netip.Addr{}
	for _, h := range e.hosts {
		lo, hi, _ := strings.Cut(h.pool, "-")
		pools[h.id] = [2]netip.Addr{netip.MustParseAddr(lo), netip.MustParseAddr(hi)}
	}
	if d.GetImage().GetDigest() == "" || !strings.Contains(d.GetImage().GetPull(), "@sha256:") {
		e.t.Errorf("deployment %s: image %v, want a digest and a pull reference pinned by it", d.GetId(), d.GetImage())
	}
	hosts := map[string]int{}
	ips := map[string]bool{}
	n := 0
	for _, t := range d.GetTargets() {
		if t.GetRetire() {
			continue
		}
		n++
		hosts[t.GetHost()]++
		ip, err := netip.ParseAddr(t.GetIp())
		p, ok := pools[t.GetHost()]
		if err != nil || !ok || ip.Less(p[0]) || p[1].Less(ip) {
			e.t.Errorf("target %s on %s has address %q, want one of the host's pool", t.GetAllocation(), t.GetHost(), t.GetIp())
		}
		if ips[t.GetIp()] {
			e.t.Errorf("address %s given twice", t.GetIp())
		}
		ips[t.GetIp()] = true
		if got := e.containerIP(t.GetAllocation()); got != t.GetIp() {
			e.t.Errorf("container of allocation %s has address %q on %s, want %s", t.GetAllocation(), got, e.network, t.GetIp())
		}
	}
	if n != replicas || len(hosts) != 2 {
		e.t.Errorf("deployment %s: %d targets on hosts %v, want %d over both hosts", d.GetId(), n, hosts, replicas)
	}
}

// serving waits until the name service answers exactly the addresses of d's targets that
// succeeded, each answering version.
func (e *env) serving(service string, d *controllerv1.Deployment, version string) {
	e.t.Helper()
	var want []string
	for _, t := range d.GetTargets() {
		if !t.GetRetire() {
			want = append(want, net.JoinHostPort(t.GetIp(), "8080"))
		}
	}
	slices.Sort(want)
	var last string
	deadline := time.Now().Add(15 * time.Second)
	for {
		addrs, _, err := e.resolved(service)
		vs, verr := e.versions(service)
		ok := err == nil && verr == nil && slices.Equal(addrs, want)
		for _, v := range vs {
			ok = ok && v == version
		}
		if ok {
			return
		}
		last = fmt.Sprintf("addresses %v (%v), versions %v (%v)", addrs, err, vs, verr)
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: want %v answering %s; last: %s", service, want, version, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestContainerMode(t *testing.T) {
	e := newEnv(t)
	svc := e.service("web")
	e.tree(svc, time.Second)
	u1, s1 := e.webPackage(svc, "1.0", nil)
	u2, s2 := e.webPackage(svc, "2.0", nil)

	// v1: three containers over the two hosts.
	start := time.Now()
	id1 := e.deploy(containerBody(svc, "1.0", u1, s1, 3, nil))
	d1 := e.wait(id1, 3*time.Minute, ended("succeeded"))
	t.Logf("v1: 3 containers in %s (image built)", time.Since(start).Round(time.Millisecond))
	e.checkPlaced(d1, 3)
	e.serving(svc, d1, "1.0")
	if evs := strings.Join(e.deployEvents(svc), "\n"); !strings.Contains(evs, "placed "+id1+": placed 3 containers on 2 hosts") {
		t.Errorf("no deploy.placed event of %s; events:\n%s", id1, evs)
	}

	// v2 under load, paused after its first batch, then rolled back: not one request fails.
	l := e.startLoad(svc, 4)
	id2 := e.deploy(containerBody(svc, "2.0", u2, s2, 3, map[string]any{"batches": []any{1, "100%"}, "pause": "manual"}))
	d2 := e.wait(id2, 3*time.Minute, func(d *controllerv1.Deployment) bool { return d.GetStatus().GetState() == "paused" })
	var retired, deployed int
	for _, tg := range d2.GetTargets() {
		switch {
		case tg.GetRetire() && tg.GetState() == "succeeded" && tg.GetReleased():
			retired++
		case !tg.GetRetire() && tg.GetState() == "succeeded":
			deployed++
		}
	}
	if deployed != 1 || retired != 1 || d2.GetPreviousVersion() != "1.0" {
		t.Errorf("after the first batch of v2: %d new containers, %d old ones retired, previous version %q; want 1, 1, 1.0: %s",
			deployed, retired, d2.GetPreviousVersion(), dump(d2))
	}
	time.Sleep(2 * time.Second) // both versions answer meanwhile
	if code, b := e.call("POST", "/v1/deployments/"+id2+"/rollback", nil); code != 202 {
		t.Fatalf("rollback: %d %s", code, b)
	}
	d2 = e.wait(id2, 2*time.Minute, ended("rolled_back"))
	rolledBack := 0
	for _, tg := range d2.GetTargets() {
		if tg.GetRetire() {
			continue
		}
		if tg.GetState() == "succeeded" {
			if tg.GetRollback() != "succeeded" {
				t.Errorf("target %s: rollback %q, want succeeded", tg.GetAllocation(), tg.GetRollback())
			}
			rolledBack++
		} else if !tg.GetReleased() {
			t.Errorf("target %s %s was never deployed, but its allocation was not released", tg.GetAllocation(), tg.GetState())
		}
	}
	for _, a := range e.allocations(svc) {
		if a.GetVersion() != "1.0" {
			t.Errorf("after the rollback, allocation %s (deployment %s) is for version %s, want 1.0", a.GetId(), a.GetDeploymentId(), a.GetVersion())
		}
	}
	if rolledBack == 0 {
		t.Errorf("no target of v2 was deployed and rolled back, want the first batch's")
	}
	if n := len(e.allocations(svc)); n != 3 {
		t.Errorf("after the rollback: %d allocations of %s, want 3", n, svc)
	}
	e.eventually(15*time.Second, "every container answering 1.0", func() bool {
		vs, err := e.versions(svc)
		if err != nil || len(vs) != 3 {
			return false
		}
		for _, v := range vs {
			if v != "1.0" {
				return false
			}
		}
		return true
	})
	seen := l.end(t, "v2 paused, then rolled back to v1")
	if seen["1.0"] == 0 || seen["2.0"] == 0 {
		t.Errorf("versions answered while v2 was paused: %v, want both", seen)
	}

	// v2 rolled out under load: the old containers go as the new ones serve.
	l = e.startLoad(svc, 4)
	start = time.Now()
	id3 := e.deploy(containerBody(svc, "2.0", u2, s2, 3, map[string]any{"batches": []any{1, "100%"}}))
	d3 := e.wait(id3, 3*time.Minute, ended("succeeded"))
	took := time.Since(start)
	if d3.GetImage().GetCached() != true {
		t.Errorf("the image of 2.0 was built twice: %v", d3.GetImage())
	}
	e.checkPlaced(d3, 3)
	e.serving(svc, d3, "2.0")
	seen = l.end(t, fmt.Sprintf("rolling v1 -> v2 (%s)", took.Round(time.Millisecond)))
	if seen["1.0"] == 0 || seen["2.0"] == 0 {
		t.Errorf("versions answered during the rollout: %v, want both", seen)
	}
	allocs := e.allocations(svc)
	for _, a := range allocs {
		if a.GetDeploymentId() != id3 {
			t.Errorf("after v2: allocation %s of deployment %s is left, want only %s's", a.GetId(), a.GetDeploymentId(), id3)
		}
	}
	retiredN := 0
	for _, tg := range d3.GetTargets() {
		if tg.GetRetire() {
			retiredN++
			if tg.GetState() != "succeeded" || !tg.GetReleased() {
				t.Errorf("old allocation %s: %s, released %t; want succeeded and released", tg.GetAllocation(), tg.GetState(), tg.GetReleased())
			}
		}
	}
	if retiredN != 3 {
		t.Errorf("v2 retired %d old allocations, want 3", retiredN)
	}

	// h2 dies: its allocations are placed again on h1 and the controller deploys them.
	onH2 := 0
	for _, a := range allocs {
		if a.GetHost() == "h2" {
			onH2++
		}
	}
	e.stopAgent("h2")
	e.putHost(e.hosts[1], inventoryv1.HostState_HOST_STATE_DOWN)
	var reps []*controllerv1.Deployment
	e.eventually(2*time.Minute, fmt.Sprintf("%d replacement runs succeeded", onH2), func() bool {
		code, b := e.call("GET", "/v1/deployments?service="+svc, nil)
		if code != 200 {
			return false
		}
		var list struct {
			Deployments []map[string]any `json:"deployments"`
		}
		_ = json.Unmarshal(b, &list)
		reps = nil
		done := 0
		for _, m := range list.Deployments {
			if r, _ := m["requested_by"].(string); !strings.Contains(r, "rescheduled") {
				continue
			}
			d := e.deployment(m["id"].(string))
			reps = append(reps, d)
			if terminal(d) {
				if d.GetStatus().GetState() != "succeeded" {
					t.Fatalf("replacement run %s ended %s: %s", d.GetId(), d.GetStatus().GetState(), dump(d))
				}
				done++
			}
		}
		return done == onH2 && len(reps) == onH2
	})
	for _, d := range reps {
		tg := d.GetTargets()[0]
		if d.GetVersion() != "2.0" || tg.GetHost() != "h1" || d.GetReplacement().GetHost() != "h2" {
			t.Errorf("replacement run %s: version %s on %s replacing an allocation of %s; want 2.0 on h1 replacing h2's: %s",
				d.GetId(), d.GetVersion(), tg.GetHost(), d.GetReplacement().GetHost(), dump(d))
		}
		if got := e.containerIP(tg.GetAllocation()); got != tg.GetIp() {
			t.Errorf("replacement container %s has address %q, want %s: %s", tg.GetAllocation(), got, tg.GetIp(), dump(d))
		}
	}
	var last string
	e.eventually(20*time.Second, "three containers of 2.0 on h1 answering", func() bool {
		vs, err := e.versions(svc)
		if last != fmt.Sprint(vs, err) {
			last = fmt.Sprint(vs, err)
			t.Logf("after h2 died: %s; instances in coord: %s", last, e.instances(svc))
		}
		if err != nil || len(vs) != 3 {
			return false
		}
		for a, v := range vs {
			if v != "2.0" || !strings.HasPrefix(a, e.subnet+".1") {
				return false
			}
		}
		return true
	})
}

func TestContainerModeFailures(t *testing.T) {
	e := newEnv(t)

	t.Run("broken package", func(t *testing.T) {
		svc := e.service("broken")
		e.tree(svc, time.Second)
		u, s := e.webPackage(svc, "1.0", map[string]string{"berth.yaml": ""})
		id := e.deploy(containerBody(svc, "1.0", u, s, 2, nil))
		d := e.wait(id, time.Minute, ended("failed"))
		st := d.GetStatus()
		t.Logf("broken package: %s: %s", st.GetFailureClass(), st.GetMessage())
		if st.GetFailureClass() != "application" || !strings.Contains(st.GetMessage(), "berth.yaml") || len(d.GetAllocations()) != 0 {
			t.Errorf("broken package: got %s %q with %d allocations, want an application failure naming berth.yaml and nothing placed",
				st.GetFailureClass(), st.GetMessage(), len(d.GetAllocations()))
		}
		if n := len(e.allocations(svc)); n != 0 {
			t.Errorf("broken package: %d allocations left", n)
		}
	})

	t.Run("no capacity", func(t *testing.T) {
		svc := e.service("huge")
		e.tree(svc, time.Second)
		u, s := e.webPackage(svc, "1.0", nil)
		body := containerBody(svc, "1.0", u, s, 2, map[string]any{"infra_retries": 2})
		body["placement"].(map[string]any)["memory_bytes"] = 64 << 30
		id := e.deploy(body)
		d := e.wait(id, time.Minute, ended("failed"))
		st := d.GetStatus()
		t.Logf("no capacity: %s: %s", st.GetFailureClass(), st.GetMessage())
		if st.GetFailureClass() != "infrastructure" || !strings.Contains(st.GetMessage(), "no capacity") ||
			!strings.Contains(st.GetMessage(), "gave up after 2 retries") || !strings.Contains(st.GetMessage(), "memory") {
			t.Errorf("no capacity: got %s %q, want an infrastructure failure with the scheduler's explanation after 2 retries",
				st.GetFailureClass(), st.GetMessage())
		}
		if n := len(e.allocations(svc)); n != 0 {
			t.Errorf("no capacity: %d allocations left", n)
		}
	})

	t.Run("scheduler down", func(t *testing.T) {
		svc := e.service("nosched")
		e.tree(svc, time.Second)
		u, s := e.webPackage(svc, "1.0", nil)
		e.stopScheduler()
		id := e.deploy(containerBody(svc, "1.0", u, s, 1, map[string]any{"infra_retries": 1}))
		d := e.wait(id, time.Minute, ended("failed"))
		st := d.GetStatus()
		t.Logf("scheduler down: %s: %s", st.GetFailureClass(), st.GetMessage())
		if st.GetFailureClass() != "infrastructure" || !strings.Contains(st.GetMessage(), "placement: gave up after 1 retries: the scheduler is unreachable") {
			t.Errorf("scheduler down: got %s %q, want an infrastructure failure of the placement naming the scheduler", st.GetFailureClass(), st.GetMessage())
		}
	})

	t.Run("builder down", func(t *testing.T) {
		svc := e.service("nobuild")
		e.tree(svc, time.Second)
		u, s := e.webPackage(svc, "1.0", nil)
		e.stopBuilder()
		id := e.deploy(containerBody(svc, "1.0", u, s, 1, map[string]any{"infra_retries": 1}))
		d := e.wait(id, time.Minute, ended("failed"))
		st := d.GetStatus()
		t.Logf("builder down: %s: %s", st.GetFailureClass(), st.GetMessage())
		if st.GetFailureClass() != "infrastructure" || !strings.Contains(st.GetMessage(), "image: gave up after 1 retries: the image builder is unreachable") {
			t.Errorf("builder down: got %s %q, want an infrastructure failure of the image stage naming the builder", st.GetFailureClass(), st.GetMessage())
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		svc := e.service("web")
		e.tree(svc, time.Second)
		u, s := e.webPackage(svc, "1.0", nil)
		for _, tc := range []struct {
			name  string
			tweak func(map[string]any)
			field string
		}{
			{"hosts", func(b map[string]any) { b["hosts"] = []string{"h1"} }, "hosts"},
			{"memory", func(b map[string]any) { b["placement"].(map[string]any)["memory_bytes"] = 1 << 20 }, "placement.memory_bytes"},
			{"replicas", func(b map[string]any) { b["placement"].(map[string]any)["replicas"] = 0 }, "placement.replicas"},
			{"spread", func(b map[string]any) { b["placement"].(map[string]any)["spread"] = "zone" }, "placement.spread"},
			{"package mode", func(b map[string]any) { delete(b, "mode") }, "placement"},
		} {
			b := containerBody(svc, "1.0", u, s, 1, nil)
			tc.tweak(b)
			code, body := e.call("POST", "/v1/deployments", b)
			var ae struct {
				Field string `json:"field"`
			}
			_ = json.Unmarshal(body, &ae)
			if code != 400 || ae.Field != tc.field {
				t.Errorf("%s: got %d %s, want 400 naming %s", tc.name, code, body, tc.field)
			}
		}
	})
}

// instances lists the instance nodes of service in coord, for failure messages.
func (e *env) instances(service string) string {
	res, err := e.coord.List(e.t.Context(), "/berth/instances/"+service)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, n := range res.Nodes {
		out = append(out, string(n.Value))
	}
	return strings.Join(out, "\n")
}
