package linearizability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// unsafeTag is the build tag that makes berth-coord serve linearizable reads from local
// state (services/coord/unsafe_reads_on.go).
const unsafeTag = "berth_unsafe_local_reads"

// nemesis injects one fault after another into c until ctx ends, always healing and
// restarting what it broke before the next fault, and logs what it did.
func nemesis(ctx context.Context, t *testing.T, c *Cluster) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	sleep := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	leader := func() int {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		l, err := c.WaitLeader(lctx)
		if err != nil {
			return rng.IntN(len(c.Members))
		}
		return l
	}
	other := func(not int) int { return (not + 1 + rng.IntN(len(c.Members)-1)) % len(c.Members) }
	restart := func(i int) {
		// Restart with a context of its own: a member must come back even as the workload
		// ends.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Start(sctx, i); err != nil {
			t.Errorf("nemesis: restart %s: %v", c.Members[i].Name, err)
		}
	}
	faults := []struct {
		name string
		do   func() string
	}{
		{"kill the leader", func() string {
			l := leader()
			c.Kill(l)
			sleep(time.Duration(1000+rng.IntN(1000)) * time.Millisecond)
			restart(l)
			return c.Members[l].Name
		}},
		{"blackhole the leader", func() string {
			l := leader()
			c.Isolate(l, Blackhole)
			sleep(time.Duration(1500+rng.IntN(1500)) * time.Millisecond)
			c.Heal()
			return c.Members[l].Name
		}},
		{"drop the leader's links", func() string {
			l := leader()
			c.Isolate(l, Drop)
			sleep(time.Duration(1500+rng.IntN(1000)) * time.Millisecond)
			c.Heal()
			return c.Members[l].Name
		}},
		{"isolate a follower", func() string {
			f := other(leader())
			c.Isolate(f, Blackhole)
			sleep(time.Duration(1000+rng.IntN(1000)) * time.Millisecond)
			c.Heal()
			return c.Members[f].Name
		}},
		{"cut one leader link", func() string {
			l := leader()
			f := other(l)
			c.Cut(l, f, Blackhole)
			sleep(time.Duration(1500+rng.IntN(1000)) * time.Millisecond)
			c.Heal()
			return c.Members[l].Name + "-" + c.Members[f].Name
		}},
		{"kill a follower", func() string {
			f := other(leader())
			c.Kill(f)
			sleep(time.Duration(500+rng.IntN(1000)) * time.Millisecond)
			restart(f)
			return c.Members[f].Name
		}},
	}
	for i := 0; ctx.Err() == nil; i++ {
		if !sleep(time.Duration(300+rng.IntN(500)) * time.Millisecond) {
			return
		}
		// Cycle through every fault first, then pick at random.
		f := faults[i%len(faults)]
		if i >= len(faults) {
			f = faults[rng.IntN(len(faults))]
		}
		start := time.Now()
		who := f.do()
		t.Logf("nemesis: %s (%s) for %v", f.name, who, time.Since(start).Round(time.Millisecond))
	}
}

// TestLinearizableUnderFaults records concurrent Get, Put, CAS, Delete and Txn histories
// against a 3-member cluster while leaders are killed and restarted and peer links are
// dropped or blackholed, and checks them with porcupine.
func TestLinearizableUnderFaults(t *testing.T) {
	t.Parallel()
	dur := 60 * time.Second
	if testing.Short() {
		dur = 10 * time.Second
	}
	c := startCluster(t, coordBinary(t, ""), nil)
	rec := newRecorder()
	// Writes whose outcome is unknown (their client gave up during a fault) stay open to
	// the end of the history, and the checker's search grows with the number open on one
	// key at a time; 64 keys keep each key's history small enough to check well within the
	// checker's timeout on a busy 2-core machine, while 8 clients still race on every key.
	w := &workload{c: c, rec: rec, keys: keys(64), kinds: allKinds, opTimeout: 2 * time.Second, attempts: 3, settle: 8 * time.Second}
	ctx, cancel := context.WithTimeout(t.Context(), dur)
	defer cancel()
	wait := w.runClients(ctx, 8)
	nemesis(ctx, t, c)
	wait()
	c.Heal()
	for i := range c.Members {
		if !c.Running(i) {
			if err := c.Start(t.Context(), i); err != nil {
				t.Fatal(err)
			}
		}
	}
	check(t, rec, porcupine.Ok)
	checkConverged(t, c)
}

// checkConverged waits until every member has applied the same revision and holds the
// same nodes.
func checkConverged(t *testing.T, c *Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A write through the leader makes every member's applied state comparable.
	if _, err := c.Members[l].API.Put(ctx, &coordv1.PutRequest{Path: "/converged"}); err != nil {
		t.Fatalf("put after the faults: %v", err)
	}
	var last string
	for {
		var views []string
		for _, m := range c.Members {
			r, err := m.API.List(ctx, &coordv1.ListRequest{Path: "/", Recursive: true, Serializable: true})
			if err != nil {
				views = append(views, err.Error())
				continue
			}
			views = append(views, fmt.Sprint(r.Header.Revision, r.Nodes))
		}
		if views[0] == views[1] && views[1] == views[2] {
			return
		}
		last = fmt.Sprint(views)
		select {
		case <-ctx.Done():
			t.Fatalf("members did not converge: %s", last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func keys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("/lin/k%d", i)
	}
	return out
}

// staleReadScenario runs clients that read only from the leader while other clients write
// through the followers, and isolates the leader (blackhole) for a while: a member that
// answers linearizable reads from its own state then serves stale values.
func staleReadScenario(t *testing.T, bin string) *recorder {
	c := startCluster(t, bin, nil)
	ctx := t.Context()
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(lctx)
	if err != nil {
		t.Fatal(err)
	}
	var followers []int
	for i := range c.Members {
		if i != l {
			followers = append(followers, i)
		}
	}
	rec := newRecorder()
	ks := keys(2)
	readers := &workload{c: c, rec: rec, keys: ks, kinds: []Kind{KindGet}, members: []int{l}, opTimeout: 2 * time.Second, attempts: 1}
	writers := &workload{c: c, rec: rec, keys: ks, kinds: []Kind{KindPut, KindPut, KindCAS, KindTxnPut}, members: followers, opTimeout: 2 * time.Second, attempts: 3}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	waitR := readers.runClients(wctx, 3)
	waitW := writers.runClients(wctx, 3)
	time.Sleep(500 * time.Millisecond)
	c.Isolate(l, Blackhole)
	t.Logf("isolated the leader %s", c.Members[l].Name)
	time.Sleep(2500 * time.Millisecond)
	c.Heal()
	time.Sleep(500 * time.Millisecond)
	stop()
	waitR()
	waitW()
	return rec
}

// TestStaleReadScenarioIsLinearizable is the control for TestCheckerCatchesStaleReads: the
// same workload against the real build is linearizable.
func TestStaleReadScenarioIsLinearizable(t *testing.T) {
	t.Parallel()
	rec := staleReadScenario(t, coordBinary(t, ""))
	check(t, rec, porcupine.Ok)
}

// TestCheckerCatchesStaleReads proves that the checker bites: with the test-only build
// that serves linearizable reads from local state, the isolated old leader answers stale
// reads and porcupine must report a violation.
func TestCheckerCatchesStaleReads(t *testing.T) {
	t.Parallel()
	if os.Getenv("BERTH_SKIP_UNSAFE_BUILD") != "" {
		t.Skip("BERTH_SKIP_UNSAFE_BUILD is set")
	}
	rec := staleReadScenario(t, coordBinary(t, unsafeTag))
	check(t, rec, porcupine.Illegal)
}
