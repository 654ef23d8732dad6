package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthdev/berth/pkg/coordclient"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// workload issues Get, Put, CAS and Delete from concurrent clients and records them. Keys
// belong to the current fault round (keysPerRound of them, so that each key's history is
// short enough to check) or to a small global set that lives through every fault, so
// that a stale read or a lost write after a restart shows up across rounds too.
type workload struct {
	c   *coordCluster
	rec *recorder
	// round is the current fault round; clients pick its keys.
	round atomic.Int64
	// opTimeout bounds one attempt of a pinned client; retryFor bounds the retries of a
	// write of unknown outcome.
	opTimeout time.Duration
	retryFor  time.Duration
	// think is the longest pause between two operations of a client.
	think time.Duration
	// usedKeys are every key any operation touched, for the final reads.
	mu       sync.Mutex
	usedKeys map[string]bool
}

const (
	keysPerRound = 8
	globalKeys   = 2
)

func newWorkload(c *coordCluster, rec *recorder) *workload {
	return &workload{c: c, rec: rec, opTimeout: time.Second, retryFor: 10 * time.Second, think: 20 * time.Millisecond, usedKeys: map[string]bool{}}
}

func (w *workload) key(rng *rand.Rand) string {
	var k string
	if rng.IntN(20) == 0 {
		k = fmt.Sprintf("/chaos/global/k%d", rng.IntN(globalKeys))
	} else {
		k = fmt.Sprintf("/chaos/round-%03d/k%d", w.round.Load(), rng.IntN(keysPerRound))
	}
	w.mu.Lock()
	w.usedKeys[k] = true
	w.mu.Unlock()
	return k
}

func (w *workload) keys() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.usedKeys))
	for k := range w.usedKeys {
		out = append(out, k)
	}
	return out
}

// client is one workload client; it remembers what it last saw of each key so that its
// compare-and-swaps often match.
type client struct {
	w    *workload
	name string
	id   int
	seq  int
	rng  *rand.Rand
	seen map[string]kvState
	// retryFor bounds the retries of a write of unknown outcome (0: none).
	retryFor time.Duration
	do       func(ctx context.Context, in opInput, reqID string, attempt int) (opOutput, error)
}

// run issues operations until ctx ends.
func (cl *client) run(ctx context.Context) {
	for ctx.Err() == nil {
		cl.one(ctx)
		if cl.w.think > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(cl.rng.Int64N(int64(cl.w.think)))):
			}
		}
	}
}

func (cl *client) one(ctx context.Context) {
	w := cl.w
	in := opInput{key: w.key(cl.rng)}
	switch r := cl.rng.IntN(10); {
	case r < 4:
		in.kind = opGet
	case r < 6:
		in.kind = opPut
	case r < 9:
		in.kind = opCAS
	default:
		in.kind = opDelete
	}
	cl.seq++
	in.value = fmt.Sprintf("%s-%d", cl.name, cl.seq)
	in.expected = cl.seen[in.key].version
	if cl.rng.IntN(4) == 0 {
		in.expected = max(0, in.expected+int64(cl.rng.IntN(3))-1)
	}
	reqID := fmt.Sprintf("%s-%d-%d", cl.name, cl.seq, w.rec.start.UnixNano())
	call := w.rec.now()
	var out opOutput
	for attempt := 0; ; attempt++ {
		var err error
		out, err = cl.do(ctx, in, reqID, attempt)
		if err != nil {
			w.rec.unexpected("%s by %s: %v", describe(in, out), cl.name, err)
		}
		// A write of unknown outcome is retried with the same request id, for up to
		// retryFor: the store answers a retry of an applied write from its request-id
		// table, so most writes caught by a fault still get a definite answer. (Each write
		// left unknown can be ordered anywhere after its call, which makes the history
		// exponentially harder to check.)
		if out.out != outUnknown || in.kind == opGet || time.Since(w.rec.start.Add(time.Duration(call))) > cl.retryFor {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
	}
	ret := w.rec.now()
	if out.out == outUnknown && in.kind == opGet {
		w.rec.drop()
		return
	}
	w.rec.add(porcupine.Operation{ClientId: cl.id, Input: in, Call: call, Output: out, Return: ret})
	if out.out == outUnknown {
		// The operation may still take effect: go on as a new porcupine client, knowing
		// nothing of the key.
		cl.id = w.rec.newClient()
		delete(cl.seen, in.key)
		return
	}
	switch {
	case in.kind == opGet && out.out == outOK:
		cl.seen[in.key] = kvState{version: out.version, value: out.value}
	case (in.kind == opPut || in.kind == opCAS) && out.out == outOK:
		cl.seen[in.key] = kvState{version: out.version, value: in.value}
	case out.out == outNotFound || in.kind == opDelete && out.out == outOK:
		cl.seen[in.key] = kvState{}
	}
}

// pinnedClient sends each operation straight to one member's API, a random serving one
// each time (a paused one too, now and then): it reads from followers and from members
// cut off from the others, where a stale read would show.
func (w *workload) pinnedClient(n int, seed uint64) *client {
	cl := &client{w: w, name: fmt.Sprintf("p%d", n), id: w.rec.newClient(), rng: rand.New(rand.NewPCG(seed, uint64(n))), seen: map[string]kvState{}, retryFor: w.retryFor}
	cl.do = func(ctx context.Context, in opInput, reqID string, _ int) (opOutput, error) {
		m := w.c.members[cl.pick()]
		actx, cancel := context.WithTimeout(ctx, w.opTimeout)
		defer cancel()
		return doAPI(actx, m.api, in, reqID)
	}
	return cl
}

func (cl *client) pick() int {
	c := cl.w.c
	for range 10 {
		i := cl.rng.IntN(len(c.members))
		if c.serving(i) || (c.running(i) && cl.rng.IntN(10) == 0) {
			return i
		}
	}
	return cl.rng.IntN(len(c.members))
}

// doAPI performs one operation on a member's API.
func doAPI(ctx context.Context, api coordv1.CoordServiceClient, in opInput, reqID string) (opOutput, error) {
	var out opOutput
	var err error
	switch in.kind {
	case opGet:
		var r *coordv1.GetResponse
		if r, err = api.Get(ctx, &coordv1.GetRequest{Path: in.key}); err == nil {
			out = opOutput{value: string(r.GetNode().GetValue()), version: r.GetNode().GetVersion()}
		}
	case opPut, opCAS:
		req := &coordv1.PutRequest{Path: in.key, Value: []byte(in.value), RequestId: reqID}
		if in.kind == opCAS {
			req.ExpectedVersion = &in.expected
		}
		var r *coordv1.PutResponse
		if r, err = api.Put(ctx, req); err == nil {
			out = opOutput{version: r.GetNode().GetVersion()}
		}
	case opDelete:
		_, err = api.Delete(ctx, &coordv1.DeleteRequest{Path: in.key, RequestId: reqID})
	}
	switch code := status.Code(err); code {
	case codes.OK:
		out.out = outOK
	case codes.NotFound:
		out.out = outNotFound
	case codes.Aborted:
		out.out = outConflict
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		out.out = outUnknown
	default:
		out.out = outUnknown
		return out, fmt.Errorf("code %v: %w", code, err)
	}
	return validOutcome(in, out)
}

// validOutcome refuses codes an operation cannot get.
func validOutcome(in opInput, out opOutput) (opOutput, error) {
	switch {
	case out.out == outNotFound && in.kind != opGet && in.kind != opDelete:
		return opOutput{out: outUnknown}, fmt.Errorf("%s got NOT_FOUND", in.kind)
	case out.out == outConflict && in.kind != opCAS:
		return opOutput{out: outUnknown}, fmt.Errorf("%s got ABORTED", in.kind)
	}
	return out, nil
}

// libraryClient goes through pkg/coordclient as Berth's services do: it follows the
// leader and retries on its own (writes with one request id per call) for up to 3 s; a
// call that fails after that is left of unknown outcome, so that the history holds some
// writes the checker must consider both applied and not.
func (w *workload) libraryClient(n int, seed uint64, cc *coordclient.Client) *client {
	cl := &client{w: w, name: fmt.Sprintf("l%d", n), id: w.rec.newClient(), rng: rand.New(rand.NewPCG(seed, uint64(100+n))), seen: map[string]kvState{}}
	cl.do = func(ctx context.Context, in opInput, reqID string, attempt int) (opOutput, error) {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		// The library retries internally; a retry of ours reuses the request id so that it
		// still applies at most once.
		id := coordclient.RequestID(reqID)
		var out opOutput
		var err error
		switch in.kind {
		case opGet:
			var n *coordclient.Node
			if n, err = cc.Get(ctx, in.key); err == nil {
				out = opOutput{value: string(n.Value), version: n.Version}
			}
		case opPut:
			var r *coordclient.PutResult
			if r, err = cc.Put(ctx, in.key, []byte(in.value), id); err == nil {
				out = opOutput{version: r.Version}
			}
		case opCAS:
			var r *coordclient.PutResult
			if r, err = cc.Put(ctx, in.key, []byte(in.value), id, coordclient.ExpectVersion(in.expected)); err == nil {
				out = opOutput{version: r.Version}
			}
		case opDelete:
			_, err = cc.Delete(ctx, in.key, id)
		}
		switch {
		case err == nil:
			out.out = outOK
		case errors.Is(err, coordclient.ErrNotFound):
			out.out = outNotFound
		case errors.Is(err, coordclient.ErrConflict):
			out.out = outConflict
		case errors.Is(err, coordclient.ErrUnavailable), errors.Is(err, coordclient.ErrNoLeader),
			errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
			out.out = outUnknown
		default:
			return opOutput{out: outUnknown}, err
		}
		return validOutcome(in, out)
	}
	return cl
}

// runClients runs the clients until ctx ends and returns a function that waits for them.
func runClients(ctx context.Context, clients []*client) (wait func()) {
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func() { defer wg.Done(); cl.run(ctx) }()
	}
	return wg.Wait
}
