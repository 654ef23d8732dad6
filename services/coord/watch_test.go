package coord

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/grpc"
)

// rawRevision reads a raw watch stream until it has every event of revision rev, and
// returns them with the number of responses that carried them and the number flagged as
// fragments.
func rawRevision(ctx context.Context, st grpc.ServerStreamingClient[coordv1.WatchResponse], rev int64) (evs []*coordv1.Event, responses, fragments int, err error) {
	for {
		r, err := st.Recv()
		if err != nil {
			return evs, responses, fragments, err
		}
		if len(r.Events) == 0 {
			continue
		}
		responses++
		if r.Fragment {
			fragments++
		}
		for _, e := range r.Events {
			if e.Revision != rev {
				return evs, responses, fragments, fmt.Errorf("event of revision %d in a response, want only %d", e.Revision, rev)
			}
		}
		evs = append(evs, r.Events...)
		if !r.Fragment {
			return evs, responses, fragments, nil
		}
	}
}

// TestWatchRevisionLargerThanBuffer expires a session whose ephemerals fill one revision
// far beyond the watcher buffer and a watch response: every watcher of the subtree must
// get the whole revision (before the fix, each was cancelled with RESOURCE_EXHAUSTED and
// resuming overflowed again forever). Raw streams that ask for fragments get it in several
// responses; those that do not get it in one; pkg/coordclient delivers it as one batch.
func TestWatchRevisionLargerThanBuffer(t *testing.T) {
	const n = 600
	c := startCluster(t, 3, func(cfg *Config) {
		cfg.WatcherBuffer = 100
		cfg.watchResponseBytes = 8 << 10
	})
	ctx := t.Context()
	l := c.leader()
	open, err := l.api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: 60000, RequestId: "big"})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, m := range c.members {
		addrs = append(addrs, m.cfg.ClientListener.Addr().String())
	}
	// 600 ephemerals in 6 transactions of 100.
	for i := range n / 100 {
		var ops []*coordv1.Op
		for j := range 100 {
			ops = append(ops, &coordv1.Op{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{
				Path: fmt.Sprintf("/svc/big/instance-%04d", i*100+j), Value: []byte("10.0.0.1:8080"), SessionId: open.SessionId}}})
		}
		if _, err := l.api.Txn(ctx, &coordv1.TxnRequest{Success: ops}); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := c.follower()
	var raw []grpc.ServerStreamingClient[coordv1.WatchResponse]
	for _, tt := range []struct {
		m        *member
		fragment bool
		prev     bool
	}{{l, true, true}, {f, true, false}, {l, false, true}, {f, false, false}} {
		st, err := tt.m.api.Watch(wctx, &coordv1.WatchRequest{Path: "/svc", Recursive: true, Fragment: tt.fragment, PrevNode: tt.prev})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := st.Recv(); err != nil || !r.Created {
			t.Fatalf("watch: got %v %v, want created", r, err)
		}
		raw = append(raw, st)
	}
	cl, err := coordclient.New(ctx, coordclient.Config{Endpoints: addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ch := cl.Watch(wctx, "/svc", 0, coordclient.Recursive())
	// Let the client's stream be created before the expiry.
	time.Sleep(200 * time.Millisecond)

	closed, err := l.api.SessionClose(ctx, &coordv1.SessionCloseRequest{SessionId: open.SessionId, RequestId: "close-big"})
	if err != nil || closed.Deleted != n {
		t.Fatalf("session close: got %v %v, want %d deleted", closed, err, n)
	}
	rev := closed.Header.Revision
	for i, st := range raw {
		evs, responses, fragments, err := rawRevision(wctx, st, rev)
		if err != nil {
			t.Fatalf("raw watcher %d: %v", i, err)
		}
		if len(evs) != n {
			t.Errorf("raw watcher %d: got %d events of revision %d, want %d", i, len(evs), rev, n)
		}
		fragmented := i < 2
		switch {
		case fragmented && (responses < 2 || fragments != responses-1):
			t.Errorf("raw watcher %d (fragments): got %d responses, %d flagged; want several, all but the last flagged", i, responses, fragments)
		case !fragmented && responses != 1:
			t.Errorf("raw watcher %d (no fragments): got the revision in %d responses, want 1", i, responses)
		}
		t.Logf("raw watcher %d: %d events of revision %d in %d responses", i, len(evs), rev, responses)
	}
	select {
	case r, ok := <-ch:
		if !ok || r.Err != nil {
			t.Fatalf("coordclient watch: got %v (open %v)", r.Err, ok)
		}
		if len(r.Events) != n || r.Revision != rev {
			t.Errorf("coordclient watch: got %d events up to revision %d in one batch, want %d of revision %d", len(r.Events), r.Revision, n, rev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("coordclient watch: nothing within 10s")
	}
	// Every watcher goes on after it.
	put, err := l.api.Put(ctx, &coordv1.PutRequest{Path: "/svc/after", Value: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range raw {
		if evs, _, _, err := rawRevision(wctx, st, put.Header.Revision); err != nil || len(evs) != 1 {
			t.Errorf("raw watcher %d after the big revision: got %v %v", i, evs, err)
		}
	}
	select {
	case r := <-ch:
		if r.Err != nil || len(r.Events) != 1 || r.Revision != put.Header.Revision {
			t.Errorf("coordclient watch after the big revision: got %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("coordclient watch: nothing after the big revision within 10s")
	}
	cancel()
	for _, st := range raw {
		for {
			if _, err := st.Recv(); err != nil {
				if !errors.Is(err, io.EOF) && ctx.Err() != nil {
					t.Error(err)
				}
				break
			}
		}
	}
	for range ch {
	}
}
