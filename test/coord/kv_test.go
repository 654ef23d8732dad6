package coord_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
)

func TestCRUDAndErrors(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()

	put, err := cl.Put(ctx, "/berth/config/a", []byte("v1"), coordclient.ExpectVersion(0))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if put.Version != 1 || put.Revision == 0 || put.CreateRev != put.Revision {
		t.Fatalf("create: got %+v, want version 1 created at its revision", put)
	}
	if _, err := cl.Put(ctx, "/berth/config/a", []byte("v2"), coordclient.ExpectVersion(0)); !errors.Is(err, coordclient.ErrConflict) {
		t.Fatalf("create again: got %v, want ErrConflict", err)
	}
	upd, err := cl.Put(ctx, "/berth/config/a", []byte("v2"), coordclient.ExpectVersion(1))
	if err != nil || upd.Version != 2 {
		t.Fatalf("cas update: got %+v, %v; want version 2", upd, err)
	}
	n, err := cl.Get(ctx, "/berth/config/a")
	if err != nil || string(n.Value) != "v2" || n.Version != 2 || n.ModRev != upd.Revision {
		t.Fatalf("get: got %+v, %v; want v2 version 2 mod rev %d", n, err, upd.Revision)
	}
	// A serializable read may lag behind on a follower, but catches up.
	wait(t, 5*time.Second, "serializable read sees v2", func() bool {
		n, err := cl.Get(ctx, "/berth/config/a", coordclient.Serializable())
		return err == nil && string(n.Value) == "v2"
	})
	if _, err := cl.Get(ctx, "/berth/config/none"); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("get missing: got %v, want ErrNotFound", err)
	}
	for _, p := range []string{"/berth/config/b", "/berth/config/c/d", "/berth/config-x"} {
		if _, err := cl.Put(ctx, p, []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := cl.List(ctx, "/berth/config", coordclient.KeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range ls.Nodes {
		got = append(got, fmt.Sprintf("%s@%d", n.Path, n.Version))
	}
	if want := "/berth/config/a@2 /berth/config/b@1 /berth/config/c@0"; strings.Join(got, " ") != want {
		t.Fatalf("list children: got %v, want %s", got, want)
	}
	ls, err = cl.List(ctx, "/berth/config", coordclient.Recursive(), coordclient.Limit(2))
	if err != nil || len(ls.Nodes) != 2 || !ls.More {
		t.Fatalf("list limit 2: got %+v, %v; want 2 nodes and more", ls, err)
	}
	del, err := cl.Delete(ctx, "/berth/config", coordclient.Recursive())
	if err != nil || del.Deleted != 3 {
		t.Fatalf("delete recursive: got %+v, %v; want 3 deleted", del, err)
	}
	if _, err := cl.Delete(ctx, "/berth/config/a"); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("delete missing: got %v, want ErrNotFound", err)
	}

	// The largest value the store takes, and one byte more. Replicating 4 MiB three times
	// with the race detector on a busy machine takes a while: give it time.
	bigCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	big := bytes.Repeat([]byte("x"), coordclient.MaxValueBytes)
	if _, err := cl.Put(bigCtx, "/big", big); err != nil {
		t.Fatalf("put 4 MiB: %v", err)
	}
	if n, err := cl.Get(bigCtx, "/big"); err != nil || len(n.Value) != coordclient.MaxValueBytes {
		t.Fatalf("get 4 MiB: got %v", err)
	}
	if _, err := cl.Put(bigCtx, "/big", append(big, 'x')); !errors.Is(err, coordclient.ErrTooLarge) {
		t.Fatalf("put 4 MiB + 1: got %v, want ErrTooLarge", err)
	}
	if _, err := cl.Put(ctx, "/a//b", nil); !errors.Is(err, coordclient.ErrInvalidPath) {
		t.Fatalf("put /a//b: got %v, want ErrInvalidPath", err)
	}
	if _, err := cl.Put(ctx, "/e", nil, coordclient.Ephemeral(987654)); !errors.Is(err, coordclient.ErrSessionExpired) {
		t.Fatalf("put with unknown session: got %v, want ErrSessionExpired", err)
	}
}

func TestTxn(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()
	if _, err := cl.Put(ctx, "/h/1", []byte("free")); err != nil {
		t.Fatal(err)
	}
	res, err := cl.Txn().
		If(coordclient.Version("/h/1").Equal(1), coordclient.Missing("/alloc/1")).
		Then(coordclient.OpPut("/h/1", []byte("busy")), coordclient.OpPut("/alloc/1", []byte("x")), coordclient.OpGet("/h/1")).
		Else(coordclient.OpGet("/h/1")).
		Commit(ctx)
	if err != nil || !res.Succeeded || len(res.Results) != 3 {
		t.Fatalf("txn: got %+v, %v; want success with 3 results", res, err)
	}
	if res.Results[0].Put.ModRev != res.Revision || res.Results[1].Put.ModRev != res.Revision || string(res.Results[2].Get.Value) != "busy" {
		t.Fatalf("txn results: got %+v, want both puts at the txn's revision and the get seeing busy", res.Results)
	}
	res, err = cl.Txn().
		If(coordclient.Version("/h/1").Equal(1)).
		Then(coordclient.OpDelete("/h/1")).
		Else(coordclient.OpGet("/h/1"), coordclient.OpGet("/missing")).
		Commit(ctx)
	if err != nil || res.Succeeded || string(res.Results[0].Get.Value) != "busy" || res.Results[1].Get != nil {
		t.Fatalf("failed txn: got %+v, %v; want the else branch reading busy and nothing", res, err)
	}
}

// TestRequestIDDedupe shows that the store applies a write once per request id: the
// second put with the same id is answered from the dedupe table (same revision, version
// 1), and a sequential put retried with its id creates one node, not two.
func TestRequestIDDedupe(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()
	first, err := cl.Put(ctx, "/d/a", []byte("1"), coordclient.RequestID("req-1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := cl.Put(ctx, "/d/a", []byte("1"), coordclient.RequestID("req-1"))
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision != first.Revision || again.Version != 1 {
		t.Fatalf("retried put: got revision %d version %d, want revision %d version 1", again.Revision, again.Version, first.Revision)
	}
	seq1, err := cl.Put(ctx, "/d/q/", nil, coordclient.Sequential(), coordclient.RequestID("req-2"))
	if err != nil {
		t.Fatal(err)
	}
	seq2, err := cl.Put(ctx, "/d/q/", nil, coordclient.Sequential(), coordclient.RequestID("req-2"))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := cl.List(ctx, "/d/q")
	if err != nil {
		t.Fatal(err)
	}
	if seq1.Path != seq2.Path || len(ls.Nodes) != 1 {
		t.Fatalf("retried sequential put: got paths %s and %s and %d nodes, want one node", seq1.Path, seq2.Path, len(ls.Nodes))
	}
	if _, err := cl.Put(ctx, "/d/other", nil, coordclient.RequestID("req-1")); !errors.Is(err, coordclient.ErrRequestIDReused) {
		t.Fatalf("request id reused for another write: got %v, want ErrRequestIDReused", err)
	}
	txn := func() (*coordclient.TxnResult, error) {
		return cl.Txn().Then(coordclient.OpPut("/d/t/", nil, coordclient.Sequential())).RequestID("req-3").Commit(ctx)
	}
	t1, err := txn()
	if err != nil {
		t.Fatal(err)
	}
	t2, err := txn()
	if err != nil || t2.Revision != t1.Revision || t2.Results[0].Put.Path != t1.Results[0].Put.Path {
		t.Fatalf("retried txn: got %+v, %v; want the first answer %+v", t2, err, t1)
	}
}

// TestLeaderKilled writes through a client while the leader is stopped: the client fails
// over to the remaining members, and every write it acknowledged is applied exactly once
// (sequential puts would leave an extra node for a write applied twice).
func TestLeaderKilled(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()
	var (
		mu    sync.Mutex
		paths []string
	)
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			res, err := cl.Put(ctx, "/k/", []byte(fmt.Sprint(i)), coordclient.Sequential())
			if err != nil {
				writerDone <- fmt.Errorf("put %d: %w", i, err)
				return
			}
			mu.Lock()
			paths = append(paths, res.Path)
			mu.Unlock()
		}
	}()
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(paths)
	}
	wait(t, 10*time.Second, "first writes", func() bool { return count() >= 20 })
	old := c.leader()
	c.stop(old)
	before := count()
	start := time.Now()
	wait(t, 15*time.Second, "writes after the leader stopped", func() bool { return count() >= before+20 })
	t.Logf("writes resumed %s after the leader stopped", time.Since(start).Round(time.Millisecond))
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	ls, err := cl.List(ctx, "/k", coordclient.KeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ls.Nodes) != len(paths) {
		t.Fatalf("got %d nodes for %d acknowledged puts, want one each", len(ls.Nodes), len(paths))
	}
	for i, n := range ls.Nodes {
		if n.Path != paths[i] {
			t.Fatalf("node %d: got %s, want %s", i, n.Path, paths[i])
		}
	}
	// The old leader comes back and catches up; a client that only knows it reads the
	// latest write.
	c.start(old)
	only := c.client(old.clientAddr)
	wait(t, 10*time.Second, "restarted member serves linearizable reads", func() bool {
		ls, err := only.List(ctx, "/k", coordclient.KeysOnly())
		return err == nil && len(ls.Nodes) == len(paths)
	})
}
