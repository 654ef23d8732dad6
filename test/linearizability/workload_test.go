package linearizability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// binDir holds the berth-coord binaries built for this test run; TestMain removes it.
var binDir string

// builds holds one build per set of tags; the first call of coordBinary starts the builds
// of both the real and the unsafe binary at once, so that they overlap.
var (
	buildMu sync.Mutex
	builds  = map[string]*build{}
)

type build struct {
	done chan struct{}
	path string
	err  error
}

func startBuild(tags string) *build {
	if b, ok := builds[tags]; ok {
		return b
	}
	name := "berth-coord"
	if tags != "" {
		name += "-" + tags
	}
	b := &build{done: make(chan struct{}), path: filepath.Join(binDir, name)}
	builds[tags] = b
	go func() {
		defer close(b.done)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		b.err = BuildCoord(ctx, filepath.Join("..", "..", "services", "coord"), b.path, tags)
	}()
	return b
}

// coordBinary returns the path of berth-coord built with tags, building it once per test
// run.
func coordBinary(t *testing.T, tags string) string {
	t.Helper()
	buildMu.Lock()
	b := startBuild(tags)
	startBuild("")
	startBuild(unsafeTag)
	buildMu.Unlock()
	<-b.done
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// startCluster starts a 3-member cluster of bin and waits for its first leader.
func startCluster(t *testing.T, bin string, tweak func(*ClusterConfig)) *Cluster {
	t.Helper()
	cfg := ClusterConfig{Binary: bin, Dir: t.TempDir()}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := StartCluster(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if t.Failed() {
			for _, m := range c.Members {
				keepLog(t, m.LogFile)
			}
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// artifactDir is a directory that outlives the test, for visualizations and logs.
var artifactDir = sync.OnceValues(func() (string, error) {
	return os.MkdirTemp("", "coord-linearizability-*")
})

// keepLog copies a member's log to the artifact dir and names it in the test log.
func keepLog(t *testing.T, file string) {
	dir, err := artifactDir()
	if err != nil {
		return
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return
	}
	dst := filepath.Join(dir, t.Name()+"-"+filepath.Base(file))
	os.MkdirAll(filepath.Dir(dst), 0o755)
	if os.WriteFile(dst, b, 0o644) == nil {
		t.Logf("member log kept at %s", dst)
	}
}

// recorder collects the operations of a history with timestamps from one monotonic clock.
type recorder struct {
	start   time.Time
	clients atomic.Int64

	// mu guards the fields below.
	mu      sync.Mutex
	ops     []porcupine.Operation
	unknown int
	dropped int
	counts  map[string]int
	bad     []string
}

func newRecorder() *recorder { return &recorder{start: time.Now(), counts: map[string]int{}} }

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

// newClient returns a fresh porcupine client id.
func (r *recorder) newClient() int { return int(r.clients.Add(1) - 1) }

func (r *recorder) add(op porcupine.Operation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := op.Output.(Output)
	r.counts[op.Input.(Input).Kind.String()+"/"+out.Code.String()]++
	if out.Code == CodeUnknown {
		r.unknown++
		op.Return = -1 // set to the end of the history by history()
	}
	r.ops = append(r.ops, op)
}

func (r *recorder) drop() {
	r.mu.Lock()
	r.dropped++
	r.mu.Unlock()
}

// unexpected records an answer the workload never expects (the test fails on it).
func (r *recorder) unexpected(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) < 20 {
		r.bad = append(r.bad, fmt.Sprintf(format, args...))
	}
}

// history returns the operations, those of unknown outcome returning at the end.
func (r *recorder) history() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := int64(0)
	for _, op := range r.ops {
		end = max(end, op.Return, op.Call)
	}
	out := make([]porcupine.Operation, len(r.ops))
	for i, op := range r.ops {
		if op.Return < 0 {
			op.Return = end + 1
		}
		out[i] = op
	}
	return out
}

func (r *recorder) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, len(r.counts))
	for k := range r.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := fmt.Sprintf("%d ops (%d unknown outcome, %d failed reads dropped):", len(r.ops), r.unknown, r.dropped)
	for _, k := range keys {
		s += fmt.Sprintf(" %s=%d", k, r.counts[k])
	}
	return s
}

// check runs porcupine on the history. On a result other than want it writes the
// visualization to a temp dir and fails the test with the path; it always logs the path
// of an Illegal history's visualization.
func check(t *testing.T, r *recorder, want porcupine.CheckResult) {
	t.Helper()
	r.mu.Lock()
	bad := r.bad
	r.mu.Unlock()
	for _, b := range bad {
		t.Errorf("unexpected answer: %s", b)
	}
	h := r.history()
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(Model(), h, time.Minute)
	t.Logf("%s; porcupine: %s in %v", r.summary(), res, time.Since(start).Round(time.Millisecond))
	if res == want && res != porcupine.Illegal {
		return
	}
	dir, err := artifactDir()
	if err != nil {
		t.Fatalf("porcupine: got %s, want %s (no dir for the visualization: %v)", res, want, err)
	}
	file := filepath.Join(dir, filepath.Base(t.Name())+".html")
	if err := porcupine.VisualizePath(Model(), info, file); err != nil {
		t.Errorf("write visualization: %v", err)
	}
	if res != want {
		t.Fatalf("porcupine: got %s, want %s; visualization: %s", res, want, file)
	}
	t.Logf("porcupine found the expected violation; visualization: %s", file)
}

// workload issues operations on a set of keys from several clients and records them.
type workload struct {
	c    *Cluster
	rec  *recorder
	keys []string
	// kinds are the operation kinds to issue, repeated to weight them.
	kinds []Kind
	// members are the members a client may send to (all when nil).
	members []int
	// opTimeout bounds one attempt; attempts bounds the tries of one write.
	opTimeout time.Duration
	attempts  int
	// settle, when set, keeps retrying a write of unknown outcome (same request id) past
	// attempts until it gets a definite answer or settle has passed since its call, even
	// after the workload's end: each write left unknown stays concurrent with everything
	// after it, and enough of them on one key make the check's search explode. A definite
	// answer ends the write's interval; the interval still holds the instant it took effect.
	settle time.Duration
}

// allKinds weights reads and every kind of write.
var allKinds = []Kind{
	KindGet, KindGet, KindGet, KindGet, KindGet, KindGet,
	KindPut, KindPut, KindPut, KindCAS, KindCAS, KindCAS,
	KindDelete, KindCASDelete, KindTxnPut, KindTxnPut, KindTxnPut, KindTxnDelete, KindTxnDelete,
}

// client is one workload client; it remembers what it last saw of each key so that its
// compare-and-swaps often match.
type client struct {
	w    *workload
	n    int
	id   int
	seq  int
	rng  *rand.Rand
	seen map[string]State
}

// run issues operations until ctx ends.
func (w *workload) run(ctx context.Context, n int) {
	cl := &client{w: w, n: n, id: w.rec.newClient(), rng: rand.New(rand.NewPCG(uint64(n), uint64(time.Now().UnixNano()))), seen: map[string]State{}}
	for ctx.Err() == nil {
		cl.one(ctx)
	}
}

func (cl *client) member() *Member {
	w := cl.w
	pool := w.members
	if pool == nil {
		for i := range w.c.Members {
			pool = append(pool, i)
		}
	}
	for range 10 {
		i := pool[cl.rng.IntN(len(pool))]
		if w.c.Running(i) {
			return w.c.Members[i]
		}
	}
	return w.c.Members[pool[cl.rng.IntN(len(pool))]]
}

// one issues and records one operation.
func (cl *client) one(ctx context.Context) {
	w := cl.w
	key := w.keys[cl.rng.IntN(len(w.keys))]
	in := Input{Kind: w.kinds[cl.rng.IntN(len(w.kinds))], Key: key}
	cl.seq++
	in.Value = fmt.Sprintf("c%d-%d", cl.n, cl.seq)
	seen := cl.seen[key]
	in.Expected = seen.Version
	if cl.rng.IntN(4) == 0 {
		in.Expected = max(0, seen.Version+int64(cl.rng.IntN(3))-1)
	}
	if in.Kind == KindCASDelete && in.Expected == 0 {
		in.Expected = 1
	}
	in.Cond = seen.Value
	reqID := fmt.Sprintf("c%d-%d-%d", cl.n, cl.seq, w.rec.start.UnixNano())

	call := w.rec.now()
	settleBy := time.Now().Add(w.settle)
	var out Output
	for attempt := 0; ; attempt++ {
		m := cl.member()
		actx, cancel := context.WithTimeout(ctx, w.opTimeout)
		if w.settle > 0 {
			actx, cancel = context.WithTimeout(context.WithoutCancel(ctx), w.opTimeout)
		}
		var err error
		out, err = do(actx, m.API, in, reqID)
		cancel()
		if err != nil {
			w.rec.unexpected("%s on %s: %v", Describe(in, out), m.Name, err)
		}
		if out.Code != CodeUnknown || in.Kind == KindGet {
			break
		}
		if w.settle > 0 && attempt+1 >= w.attempts && time.Now().Before(settleBy) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if attempt+1 >= w.attempts || ctx.Err() != nil {
			break
		}
		// A write of unknown outcome is retried with the same request id: the store answers
		// a retry of an applied write from its request-id table.
	}
	ret := w.rec.now()
	if out.Code == CodeUnknown && in.Kind == KindGet {
		w.rec.drop() // a read that failed had no effect
		return
	}
	w.rec.add(porcupine.Operation{ClientId: cl.id, Input: in, Call: call, Output: out, Return: ret})
	if out.Code == CodeUnknown {
		// Porcupine draws one client's operations on one line; a client whose operation
		// may still be in flight goes on under a new id.
		cl.id = w.rec.newClient()
		delete(cl.seen, key)
		return
	}
	cl.learn(in, out)
}

// learn updates what the client knows of the key from a definite answer.
func (cl *client) learn(in Input, out Output) {
	switch {
	case in.Kind == KindGet || in.Kind == KindTxnPut || in.Kind == KindTxnDelete:
		if out.Found {
			cl.seen[in.Key] = State{Version: out.Version, Value: out.Value}
		} else {
			cl.seen[in.Key] = State{}
		}
	case (in.Kind == KindPut || in.Kind == KindCAS) && out.Code == CodeOK:
		cl.seen[in.Key] = State{Version: out.Version, Value: in.Value}
	case out.Code == CodeNotFound || (in.Kind == KindDelete || in.Kind == KindCASDelete) && out.Code == CodeOK:
		cl.seen[in.Key] = State{}
	}
}

// do performs one operation. It returns an error only for answers the workload never
// expects (those fail the test); timeouts and unavailability are CodeUnknown.
func do(ctx context.Context, api coordv1.CoordServiceClient, in Input, reqID string) (Output, error) {
	var err error
	out := Output{}
	switch in.Kind {
	case KindGet:
		var r *coordv1.GetResponse
		if r, err = api.Get(ctx, &coordv1.GetRequest{Path: in.Key}); err == nil {
			out = Output{Found: true, Value: string(r.Node.Value), Version: r.Node.Version}
		}
	case KindPut, KindCAS:
		req := &coordv1.PutRequest{Path: in.Key, Value: []byte(in.Value), RequestId: reqID}
		if in.Kind == KindCAS {
			req.ExpectedVersion = &in.Expected
		}
		var r *coordv1.PutResponse
		if r, err = api.Put(ctx, req); err == nil {
			out = Output{Version: r.Node.Version}
		}
	case KindDelete, KindCASDelete:
		req := &coordv1.DeleteRequest{Path: in.Key, RequestId: reqID}
		if in.Kind == KindCASDelete {
			req.ExpectedVersion = &in.Expected
		}
		_, err = api.Delete(ctx, req)
	case KindTxnPut, KindTxnDelete:
		req := &coordv1.TxnRequest{RequestId: reqID, Failure: []*coordv1.Op{getOp(in.Key)}}
		if in.Kind == KindTxnPut {
			req.Compares = []*coordv1.Compare{{Path: in.Key, Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Version{Version: in.Expected}}}
			req.Success = []*coordv1.Op{{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: in.Key, Value: []byte(in.Value)}}}, getOp(in.Key)}
		} else {
			req.Compares = []*coordv1.Compare{
				{Path: in.Key, Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Exists{Exists: true}},
				{Path: in.Key, Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Value{Value: []byte(in.Cond)}},
			}
			req.Success = []*coordv1.Op{{Op: &coordv1.Op_Delete{Delete: &coordv1.DeleteOp{Path: in.Key}}}, getOp(in.Key)}
		}
		var r *coordv1.TxnResponse
		if r, err = api.Txn(ctx, req); err == nil {
			res := r.Results[len(r.Results)-1].GetGet()
			out = Output{Succeeded: r.Succeeded, Found: res.GetVersion() > 0, Value: string(res.GetValue()), Version: res.GetVersion()}
		}
	}
	switch code := status.Code(err); code {
	case codes.OK:
		out.Code = CodeOK
	case codes.NotFound:
		out.Code = CodeNotFound
	case codes.Aborted:
		out.Code = CodeAborted
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		out.Code = CodeUnknown
	default:
		out.Code = CodeUnknown
		return out, fmt.Errorf("code %v: %w", code, err)
	}
	if out.Code == CodeNotFound && in.Kind != KindGet && in.Kind != KindDelete {
		return out, errors.New("NOT_FOUND is only expected from Get and Delete")
	}
	if out.Code == CodeAborted && in.Kind != KindCAS && in.Kind != KindCASDelete {
		return out, errors.New("ABORTED is only expected from a compare-and-swap")
	}
	return out, nil
}

func getOp(path string) *coordv1.Op {
	return &coordv1.Op{Op: &coordv1.Op_Get{Get: &coordv1.GetOp{Path: path}}}
}

// runClients runs n clients of w until ctx ends and waits for them.
func (w *workload) runClients(ctx context.Context, n int) (wait func()) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx, i) }()
	}
	return wg.Wait
}
