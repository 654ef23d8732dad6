package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
)

// opKind is the kind of one operation of a history; each touches one key.
type opKind int

const (
	opGet    opKind = iota // linearizable Get
	opPut                  // unconditional Put
	opCAS                  // Put with an expected version (0 = create only)
	opDelete               // unconditional Delete
)

func (k opKind) String() string {
	return [...]string{"get", "put", "cas", "delete"}[k]
}

// opInput is what a client asked for.
type opInput struct {
	kind opKind
	key  string
	// value is written by put and cas; unique in a history.
	value string
	// expected is cas's expected version.
	expected int64
}

// outcome is the class of an answer.
type outcome int

const (
	outOK       outcome = iota
	outNotFound         // NOT_FOUND: get or delete of a missing node
	outConflict         // ABORTED: cas with the wrong version
	// outUnknown is a timeout, UNAVAILABLE or a lost connection: the write may or may not
	// have taken effect. Its return is the end of the history, so porcupine may order it
	// anywhere after its call, including after everything ("never applied").
	outUnknown
)

func (o outcome) String() string {
	return [...]string{"ok", "not-found", "conflict", "unknown"}[o]
}

// opOutput is what the store answered: for a get, the node read; for put and cas, the
// version written.
type opOutput struct {
	out     outcome
	value   string
	version int64
}

// kvState is one key's state: absent (version 0) or a value at a version.
type kvState struct {
	version int64
	value   string
}

// step is the sequential specification of one key of the store: whether in, answered
// with out, can happen in state s, and the state after it.
func step(s kvState, in opInput, out opOutput) (bool, kvState) {
	unknown := out.out == outUnknown
	written := kvState{version: s.version + 1, value: in.value}
	switch in.kind {
	case opGet:
		if s.version == 0 {
			return out.out == outNotFound, s
		}
		return out.out == outOK && out.value == s.value && out.version == s.version, s
	case opPut:
		return unknown || (out.out == outOK && out.version == written.version), written
	case opCAS:
		if s.version != in.expected {
			return unknown || out.out == outConflict, s
		}
		return unknown || (out.out == outOK && out.version == written.version), written
	case opDelete:
		if s.version == 0 {
			return unknown || out.out == outNotFound, s
		}
		return unknown || out.out == outOK, kvState{}
	}
	return false, s
}

func describe(in opInput, out opOutput) string {
	var call string
	switch in.kind {
	case opGet, opDelete:
		call = fmt.Sprintf("%s(%s)", in.kind, in.key)
	case opPut:
		call = fmt.Sprintf("put(%s, %s)", in.key, in.value)
	case opCAS:
		call = fmt.Sprintf("cas(%s, v%d → %s)", in.key, in.expected, in.value)
	}
	res := out.out.String()
	if out.out == outOK && in.kind == opGet {
		res = fmt.Sprintf("%s v%d", out.value, out.version)
	} else if out.out == outOK && in.kind != opDelete {
		res = fmt.Sprintf("ok v%d", out.version)
	}
	return call + " → " + res
}

// kvModel is the porcupine model of one key. Histories are split by key before they are
// checked (linearizability is local: a history is linearizable iff each object's is).
var kvModel = porcupine.Model{
	Init: func() any { return kvState{} },
	Step: func(state, input, output any) (bool, any) {
		return step(state.(kvState), input.(opInput), output.(opOutput))
	},
	Equal:             func(a, b any) bool { return a.(kvState) == b.(kvState) },
	DescribeOperation: func(in, out any) string { return describe(in.(opInput), out.(opOutput)) },
	DescribeState: func(s any) string {
		st := s.(kvState)
		if st.version == 0 {
			return "absent"
		}
		return fmt.Sprintf("%s v%d", st.value, st.version)
	},
}

// recorder collects the operations of a history, timed on one monotonic clock.
type recorder struct {
	start   time.Time
	clients atomic.Int64

	// mu guards the fields below.
	mu      sync.Mutex
	ops     []porcupine.Operation
	counts  map[string]int
	dropped int
	bad     []string
}

func newRecorder() *recorder { return &recorder{start: time.Now(), counts: map[string]int{}} }

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

func (r *recorder) newClient() int { return int(r.clients.Add(1) - 1) }

// add records a completed operation; one of unknown outcome returns at the end.
func (r *recorder) add(op porcupine.Operation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := op.Output.(opOutput)
	r.counts[op.Input.(opInput).kind.String()+"/"+out.out.String()]++
	if out.out == outUnknown {
		op.Return = -1
	}
	r.ops = append(r.ops, op)
}

// drop counts a read that failed: it had no effect and is left out.
func (r *recorder) drop() {
	r.mu.Lock()
	r.dropped++
	r.mu.Unlock()
}

// unexpected records an answer the workload never expects; the test fails on it.
func (r *recorder) unexpected(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) < 20 {
		r.bad = append(r.bad, fmt.Sprintf(format, args...))
	}
}

// histories returns the operations split by key, those of unknown outcome returning
// after every other operation.
func (r *recorder) histories() map[string][]porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := int64(0)
	for _, op := range r.ops {
		end = max(end, op.Return, op.Call)
	}
	out := map[string][]porcupine.Operation{}
	for _, op := range r.ops {
		if op.Return < 0 {
			op.Return = end + 1
		}
		k := op.Input.(opInput).key
		out[k] = append(out[k], op)
	}
	return out
}

// checkResult sums up the check of a recorder's histories.
type checkResult struct {
	histories, operations, unknown, dropped int
	counts                                  string
	violations                              []string // keys whose history is not linearizable
	timeouts                                []string // keys the checker gave up on
	visualizations                          []string
	took                                    time.Duration
}

func (c checkResult) String() string {
	return fmt.Sprintf("%d histories, %d operations (%d of unknown outcome, %d failed reads left out), %d violations, %d checker timeouts, checked in %v; %s",
		c.histories, c.operations, c.unknown, c.dropped, len(c.violations), len(c.timeouts), c.took.Round(time.Millisecond), c.counts)
}

// check runs porcupine on every key's history with a time budget each, two at a time,
// and writes a visualization of every illegal history to the directory artifacts returns
// (called only when there is one).
func (r *recorder) check(budget time.Duration, artifacts func() string) checkResult {
	start := time.Now()
	hs := r.histories()
	r.mu.Lock()
	res := checkResult{histories: len(hs), operations: len(r.ops), dropped: r.dropped}
	keys := make([]string, 0, len(r.counts))
	for k := range r.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.counts[k]))
		if strings.HasSuffix(k, "/unknown") {
			res.unknown += r.counts[k]
		}
	}
	res.counts = strings.Join(parts, " ")
	r.mu.Unlock()

	var mu sync.Mutex
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for key, ops := range hs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out, info := porcupine.CheckOperationsVerbose(kvModel, ops, budget)
			mu.Lock()
			defer mu.Unlock()
			switch out {
			case porcupine.Illegal:
				res.violations = append(res.violations, key)
				if dir := artifacts(); dir != "" {
					file := filepath.Join(dir, strings.ReplaceAll(strings.Trim(key, "/"), "/", "_")+".html")
					if err := porcupine.VisualizePath(kvModel, info, file); err == nil {
						res.visualizations = append(res.visualizations, file)
					}
				}
			case porcupine.Unknown:
				res.timeouts = append(res.timeouts, key)
			}
		}()
	}
	wg.Wait()
	sort.Strings(res.violations)
	sort.Strings(res.timeouts)
	res.took = time.Since(start)
	return res
}

// artifactDir returns a function that makes, on its first call, a directory that
// outlives the test for visualizations, and returns it ("" when it cannot be made).
func artifactDir(name string) func() string {
	return sync.OnceValue(func() string {
		dir, err := os.MkdirTemp("", "berth-chaos-"+strings.ReplaceAll(name, "/", "_")+"-*")
		if err != nil {
			return ""
		}
		return dir
	})
}
