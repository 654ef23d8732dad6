package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/berthdev/berth/pkg/coordclient"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// The Raft timings of the chaos clusters: short, so that each fault costs little time.
const (
	heartbeat = 50 * time.Millisecond
	election  = 500 * time.Millisecond
)

// fault is one kind of failure the nemesis injects; inject starts it and returns what
// ends it.
type fault struct {
	name string
	// hold is how long the fault lasts.
	hold   time.Duration
	inject func(c *coordCluster, leader int, rng *rand.Rand) (heal func(context.Context) error, what string)
}

// faults are injected in this order by -short runs: the ones that restart members come
// first, so that the members' event histories compared at the end (which start at the
// latest restart) cover the rest of the run.
var faults = []fault{
	{name: "kill-leader", hold: 1500 * time.Millisecond, inject: func(c *coordCluster, l int, _ *rand.Rand) (func(context.Context) error, string) {
		c.kill(l)
		return func(ctx context.Context) error { return c.start(ctx, l) }, "kill -9 " + c.members[l].name
	}},
	{name: "kill-follower", hold: 1500 * time.Millisecond, inject: func(c *coordCluster, l int, rng *rand.Rand) (func(context.Context) error, string) {
		f := c.follower(l, rng)
		c.kill(f)
		return func(ctx context.Context) error { return c.start(ctx, f) }, "kill -9 " + c.members[f].name
	}},
	{name: "crash-all", hold: 500 * time.Millisecond, inject: func(c *coordCluster, _ int, _ *rand.Rand) (func(context.Context) error, string) {
		var wg sync.WaitGroup
		for i := range c.members {
			wg.Add(1)
			go func() { defer wg.Done(); c.kill(i) }()
		}
		wg.Wait()
		return func(ctx context.Context) error {
			errs := make(chan error, len(c.members))
			for i := range c.members {
				go func() { errs <- c.start(ctx, i) }()
			}
			var first error
			for range c.members {
				if err := <-errs; err != nil && first == nil {
					first = err
				}
			}
			return first
		}, "kill -9 every member"
	}},
	{name: "pause-leader", hold: 3 * election, inject: func(c *coordCluster, l int, _ *rand.Rand) (func(context.Context) error, string) {
		c.pause(l)
		return func(context.Context) error { return c.resume(l) }, "SIGSTOP " + c.members[l].name
	}},
	{name: "pause-follower", hold: 3 * election, inject: func(c *coordCluster, l int, rng *rand.Rand) (func(context.Context) error, string) {
		f := c.follower(l, rng)
		c.pause(f)
		return func(context.Context) error { return c.resume(f) }, "SIGSTOP " + c.members[f].name
	}},
	{name: "partition-leader", hold: 2 * time.Second, inject: func(c *coordCluster, l int, _ *rand.Rand) (func(context.Context) error, string) {
		c.isolate(l, linkBlackhole)
		return func(context.Context) error { c.heal(); return nil }, "blackhole every link of " + c.members[l].name
	}},
	{name: "partition-follower", hold: 2 * time.Second, inject: func(c *coordCluster, l int, rng *rand.Rand) (func(context.Context) error, string) {
		f := c.follower(l, rng)
		c.isolate(f, linkBlackhole)
		return func(context.Context) error { c.heal(); return nil }, "blackhole every link of " + c.members[f].name
	}},
	{name: "cut-link", hold: 2 * time.Second, inject: func(c *coordCluster, l int, rng *rand.Rand) (func(context.Context) error, string) {
		f := c.follower(l, rng)
		c.cut(l, f, linkBlackhole)
		return func(context.Context) error { c.heal(); return nil }, fmt.Sprintf("blackhole %s<->%s", c.members[l].name, c.members[f].name)
	}},
	{name: "slow-member", hold: 2 * time.Second, inject: func(c *coordCluster, _ int, rng *rand.Rand) (func(context.Context) error, string) {
		i := rng.IntN(len(c.members))
		d := time.Duration(50+rng.IntN(200)) * time.Millisecond
		c.slow(i, d)
		return func(context.Context) error { c.heal(); return nil }, fmt.Sprintf("delay every link of %s by %v", c.members[i].name, d)
	}},
}

func faultByName(name string) fault {
	for _, f := range faults {
		if f.name == name {
			return f
		}
	}
	panic("no fault " + name)
}

// chaosRun is one run of the coord suite.
type chaosRun struct {
	binary   string
	schedule func(round int, rng *rand.Rand) (fault, bool) // false: stop
	pinned   int
	library  int
}

// chaosReport is what a run measured.
type chaosReport struct {
	check       checkResult
	faults      map[string]int
	injected    int
	maxRecovery time.Duration
	noLeader    []string
	hashes      []string
	rev         int64
	nodes       int
	// eventHashes are each member's hash of the events it serves to a watch from
	// eventsFrom to rev: the members' whole histories must be identical, not only their
	// final states.
	eventHashes []string
	eventsFrom  int64
	events      int
}

func (r chaosReport) faultSummary() string {
	names := make([]string, 0, len(r.faults))
	for n := range r.faults {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s=%d", n, r.faults[n]))
	}
	return strings.Join(parts, " ")
}

// runChaos starts a cluster, runs the workload while the schedule's faults come and go,
// heals everything, reads every key once more, and checks the history and the members'
// states.
func runChaos(t *testing.T, run chaosRun) chaosReport {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed(t), 7))
	c := startCoordCluster(t, clusterConfig{binary: run.binary, dir: t.TempDir(), heartbeat: heartbeat, election: election, requestTimeout: 2 * time.Second})
	rec := newRecorder()
	w := newWorkload(c, rec)
	cc, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: c.clientEndpoints(), RequestTimeout: 3 * time.Second, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var clients []*client
	for i := range run.pinned {
		clients = append(clients, w.pinnedClient(i, rng.Uint64()))
	}
	for i := range run.library {
		clients = append(clients, w.libraryClient(i, rng.Uint64(), cc))
	}
	wctx, stopClients := context.WithCancel(t.Context())
	wait := runClients(wctx, clients)
	defer func() { stopClients(); wait() }()

	rep := chaosReport{faults: map[string]int{}}
	for round := 0; ; round++ {
		f, ok := run.schedule(round, rng)
		if !ok {
			break
		}
		w.round.Store(int64(round))
		time.Sleep(time.Second)
		lctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		l, err := c.waitLeader(lctx)
		cancel()
		if err != nil {
			rep.noLeader = append(rep.noLeader, fmt.Sprintf("before round %d", round))
			l = 0
		}
		heal, what := f.inject(c, l, rng)
		rep.faults[f.name]++
		rep.injected++
		t.Logf("round %d: %s: %s for %v", round, f.name, what, f.hold)
		time.Sleep(f.hold)
		hctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		healed := time.Now()
		if err := heal(hctx); err != nil {
			t.Errorf("round %d: end %s: %v", round, f.name, err)
		}
		if _, err := c.waitLeader(hctx); err != nil {
			rep.noLeader = append(rep.noLeader, fmt.Sprintf("after %s (round %d)", f.name, round))
		} else if d := time.Since(healed); d > rep.maxRecovery {
			rep.maxRecovery = d
		}
		cancel()
	}
	w.round.Store(-1)
	time.Sleep(time.Second)
	stopClients()
	wait()

	// Heal whatever is left, then read every key once more: the final state is part of
	// the history, so an acknowledged write lost by the end shows as a violation.
	c.heal()
	for i := range c.members {
		if !c.running(i) {
			if err := c.start(t.Context(), i); err != nil {
				t.Fatal(err)
			}
		}
	}
	fctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := c.waitLeader(fctx); err != nil {
		t.Fatalf("no leader after healing: %v", err)
	}
	final := rec.newClient()
	keys := w.keys()
	sort.Strings(keys)
	for _, k := range keys {
		in := opInput{kind: opGet, key: k}
		for {
			call := rec.now()
			gctx, gcancel := context.WithTimeout(fctx, 3*time.Second)
			out, err := doLibraryGet(gctx, cc, k)
			gcancel()
			if err != nil {
				t.Fatalf("final read of %s: %v", k, err)
			}
			if out.out != outUnknown {
				rec.add(porcupine.Operation{ClientId: final, Input: in, Call: call, Output: out, Return: rec.now()})
				break
			}
			if fctx.Err() != nil {
				t.Fatalf("final read of %s: %v", k, fctx.Err())
			}
		}
	}

	rep.hashes, rep.rev, rep.nodes = convergedHashes(t, fctx, c)
	rep.eventHashes, rep.eventsFrom, rep.events = eventHashes(t, fctx, c, rep.rev)
	rec.mu.Lock()
	bad := slices.Clone(rec.bad)
	rec.mu.Unlock()
	for _, b := range bad {
		t.Errorf("unexpected answer: %s", b)
	}
	rep.check = rec.check(time.Minute, artifactDir(t.Name()))
	return rep
}

// doLibraryGet reads key through pkg/coordclient; a failed read is outUnknown (to be
// retried), any error but unavailability is returned.
func doLibraryGet(ctx context.Context, cc *coordclient.Client, key string) (opOutput, error) {
	n, err := cc.Get(ctx, key)
	switch {
	case err == nil:
		return opOutput{out: outOK, value: string(n.Value), version: n.Version}, nil
	case errors.Is(err, coordclient.ErrNotFound):
		return opOutput{out: outNotFound}, nil
	case errors.Is(err, coordclient.ErrUnavailable), errors.Is(err, coordclient.ErrNoLeader),
		errors.Is(err, context.DeadlineExceeded):
		return opOutput{out: outUnknown}, nil
	}
	return opOutput{out: outUnknown}, err
}

// convergedHashes waits until every member has applied the same index, then hashes each
// member's whole tree read from its own state (a serializable List of "/"), so that a
// member whose state machine diverged shows up even when the reads through the leader
// looked right.
func convergedHashes(t *testing.T, ctx context.Context, c *coordCluster) (hashes []string, rev int64, nodes int) {
	t.Helper()
	var last []uint64
	for {
		var applied []uint64
		for i := range c.members {
			st, err := c.status(ctx, i)
			if err != nil {
				applied = nil
				break
			}
			applied = append(applied, st.GetAppliedIndex())
		}
		if len(applied) == len(c.members) && slices.Min(applied) == slices.Max(applied) && slices.Equal(applied, last) {
			break
		}
		last = applied
		select {
		case <-ctx.Done():
			t.Fatalf("members did not converge: applied indexes %v", applied)
		case <-time.After(200 * time.Millisecond):
		}
	}
	for i, m := range c.members {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := m.api.List(lctx, &coordv1.ListRequest{Path: "/", Recursive: true, Serializable: true})
		cancel()
		if err != nil {
			t.Fatalf("list member %s: %v", m.name, err)
		}
		h := sha256.New()
		var b [8]byte
		for _, n := range resp.GetNodes() {
			h.Write([]byte(n.GetPath()))
			h.Write([]byte{0})
			h.Write(n.GetValue())
			for _, v := range []int64{n.GetVersion(), n.GetCreateRev(), n.GetModRev(), n.GetSession()} {
				binary.BigEndian.PutUint64(b[:], uint64(v))
				h.Write(b[:])
			}
		}
		binary.BigEndian.PutUint64(b[:], uint64(resp.GetHeader().GetRevision()))
		h.Write(b[:])
		hashes = append(hashes, hex.EncodeToString(h.Sum(nil))[:16])
		if i == 0 {
			rev, nodes = resp.GetHeader().GetRevision(), len(resp.GetNodes())
		}
	}
	return hashes, rev, nodes
}

// eventHashes hashes the events every member serves to a watch of the whole tree, from
// the oldest revision all of them still hold (their watch windows start at their last
// restart) to rev; it returns the hashes, the first revision compared and the number of
// events.
func eventHashes(t *testing.T, ctx context.Context, c *coordCluster, rev int64) (hashes []string, from int64, events int) {
	t.Helper()
	for i := range c.members {
		st, err := c.status(ctx, i)
		if err != nil {
			t.Fatalf("status of %s: %v", c.members[i].name, err)
		}
		from = max(from, st.GetCompactRevision()+1)
	}
	if from > rev {
		return nil, from, 0
	}
	for _, m := range c.members {
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		stream, err := m.api.Watch(wctx, &coordv1.WatchRequest{Path: "/", Recursive: true, StartRevision: from})
		if err != nil {
			cancel()
			t.Fatalf("watch %s from %d: %v", m.name, from, err)
		}
		h := sha256.New()
		n, last := 0, int64(0)
		var b [8]byte
		for last < rev {
			resp, err := stream.Recv()
			if err != nil {
				cancel()
				t.Fatalf("watch %s from %d: after revision %d: %v", m.name, from, last, err)
			}
			for _, ev := range resp.GetEvents() {
				if ev.GetRevision() > rev {
					continue
				}
				n++
				last = ev.GetRevision()
				nd := ev.GetNode()
				h.Write([]byte(ev.GetType().String()))
				h.Write([]byte(nd.GetPath()))
				h.Write([]byte{0})
				h.Write(nd.GetValue())
				for _, v := range []int64{ev.GetRevision(), nd.GetVersion(), nd.GetCreateRev(), nd.GetModRev(), nd.GetSession()} {
					binary.BigEndian.PutUint64(b[:], uint64(v))
					h.Write(b[:])
				}
			}
			if len(resp.GetEvents()) == 0 && resp.GetHeader().GetRevision() >= rev && !resp.GetCreated() {
				break
			}
		}
		cancel()
		hashes = append(hashes, hex.EncodeToString(h.Sum(nil))[:16])
		events = n
	}
	return hashes, from, events
}

// summarize logs the report and fails the test on what must not happen.
func summarize(t *testing.T, name string, rep chaosReport, wantViolations bool) {
	t.Helper()
	t.Logf("faults injected: %d (%s); longest time from the end of a fault to a leader: %v", rep.injected, rep.faultSummary(), rep.maxRecovery.Round(time.Millisecond))
	t.Logf("history: %s", rep.check)
	t.Logf("member state hashes at revision %d (%d nodes): %v", rep.rev, rep.nodes, rep.hashes)
	t.Logf("member event-history hashes of revisions %d..%d (%d events): %v", rep.eventsFrom, rep.rev, rep.events, rep.eventHashes)
	for i, v := range rep.check.visualizations {
		if i == 3 {
			t.Logf("... and %d more visualizations in %s", len(rep.check.visualizations)-3, filepath.Dir(v))
			break
		}
		t.Logf("visualization of a violation: %s", v)
	}
	same := len(rep.hashes) > 0
	for _, h := range rep.hashes {
		same = same && h == rep.hashes[0]
	}
	sameEvents := true
	for _, h := range rep.eventHashes {
		sameEvents = sameEvents && h == rep.eventHashes[0]
	}
	fmt.Fprintf(os.Stderr, "chaos summary: %s: %d faults (%s), %d histories, %d operations (%d unknown outcome), %d violations, %d checker timeouts, member states identical: %t, member histories identical: %t (%d events)\n",
		name, rep.injected, rep.faultSummary(), rep.check.histories, rep.check.operations, rep.check.unknown, len(rep.check.violations), len(rep.check.timeouts), same, sameEvents, rep.events)
	if !same {
		t.Errorf("members' states differ after convergence: %v", rep.hashes)
	}
	if !sameEvents {
		t.Errorf("members' event histories of revisions %d..%d differ: %v", rep.eventsFrom, rep.rev, rep.eventHashes)
	}
	if len(rep.noLeader) > 0 {
		t.Errorf("no leader within 15-20s: %v", rep.noLeader)
	}
	if len(rep.check.timeouts) > 0 {
		t.Logf("checker timeouts (histories not verified): %v", rep.check.timeouts)
	}
	switch {
	case wantViolations && len(rep.check.violations) == 0:
		t.Errorf("got no violation, want the checker to catch the broken build")
	case !wantViolations && len(rep.check.violations) > 0:
		t.Errorf("linearizability violations on keys %v", rep.check.violations)
	}
}

// TestCoordChaos runs the coord workload against three berth-coord processes while the
// nemesis kills, pauses, partitions and slows members. -short injects every fault twice
// (about a minute); otherwise faults are drawn at random for CHAOS_DURATION (default 5m).
func TestCoordChaos(t *testing.T) {
	run := chaosRun{binary: coordBin, pinned: 5, library: 3}
	if testing.Short() {
		// Every fault once in order, then once more in a random order.
		order := rand.Perm(len(faults))
		run.schedule = func(round int, _ *rand.Rand) (fault, bool) {
			switch {
			case round < len(faults):
				return faults[round], true
			case round < 2*len(faults):
				return faults[order[round-len(faults)]], true
			}
			return fault{}, false
		}
	} else {
		end := time.Now().Add(duration(t, 5*time.Minute))
		run.schedule = func(round int, rng *rand.Rand) (fault, bool) {
			if round < len(faults) {
				return faults[round], true
			}
			return faults[rng.IntN(len(faults))], time.Now().Before(end)
		}
	}
	rep := runChaos(t, run)
	summarize(t, "coord", rep, false)
}

// TestCoordChaosCatchesStaleReads runs the same suite against berth-coord built with
// berth_unsafe_local_reads (linearizable reads answered from local state without
// ReadIndex) under partitions, and requires the checker to find a violation: the suite
// can fail. It runs without -short, or with CHAOS_BROKEN=1.
func TestCoordChaosCatchesStaleReads(t *testing.T) {
	if testing.Short() && os.Getenv("CHAOS_BROKEN") == "" {
		t.Skip("builds a second berth-coord; runs without -short or with CHAOS_BROKEN=1")
	}
	bin, err := unsafeCoordBin()
	if err != nil {
		t.Fatal(err)
	}
	schedule := []string{"partition-follower", "partition-leader", "partition-follower", "partition-leader"}
	rep := runChaos(t, chaosRun{binary: bin, pinned: 6, library: 0, schedule: func(round int, _ *rand.Rand) (fault, bool) {
		if round >= len(schedule) {
			return fault{}, false
		}
		return faultByName(schedule[round]), true
	}})
	summarize(t, "coord (broken: unsafe local reads)", rep, true)
}
