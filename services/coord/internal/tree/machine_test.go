package tree

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness applies commands to a machine with increasing indexes, recording events.
type harness struct {
	t      *testing.T
	m      *Machine
	index  uint64
	term   uint64
	events map[int64][]*coordv1.Event
	obs    *recordingObserver
}

type recordingObserver struct {
	opened, removed []int64
}

func (o *recordingObserver) SessionOpened(id, _, _ int64)  { o.opened = append(o.opened, id) }
func (o *recordingObserver) SessionRemoved(id int64)       { o.removed = append(o.removed, id) }
func (o *recordingObserver) SessionsReset(_ []SessionInfo) {}
func (h *harness) Publish(rev int64, evs []*coordv1.Event) { h.events[rev] = evs }
func (h *harness) Reset(int64)                             { clear(h.events) }
func newHarness(t *testing.T) *harness {
	h := &harness{t: t, term: 1, events: map[int64][]*coordv1.Event{}, obs: &recordingObserver{}}
	h.m = New(Options{Publisher: h, Sessions: h.obs})
	return h
}

func (h *harness) apply(data []byte, err error) any {
	h.t.Helper()
	if err != nil {
		h.t.Fatalf("encode: %v", err)
	}
	h.index++
	return h.m.Apply(raftstore.Entry{Index: h.index, Term: h.term, Data: data})
}

func (h *harness) put(r *coordv1.PutRequest) (*coordv1.PutResponse, error) {
	h.t.Helper()
	res := h.apply(EncodePut(r))
	if err, ok := res.(error); ok {
		return nil, err
	}
	if pr, ok := res.(*PutResult); ok {
		return pr.Response(), nil
	}
	return res.(*coordv1.PutResponse), nil // a retry answered from the request-id table
}

func TestPutResultEncodingIsTheResponses(t *testing.T) {
	for _, n := range []*coordv1.Node{
		{Path: "/a", Value: []byte("v"), Version: 1, CreateRev: 5, ModRev: 5},
		{Path: "/q/job-0000000042", Version: 3, CreateRev: 2, ModRev: 9, Session: 7},
		{Path: "/neg", Version: 1, CreateRev: 1, ModRev: 1, Session: -1},
		{Path: ""},
	} {
		for _, rev := range []int64{0, 1, 1 << 40} {
			r := &PutResult{Revision: rev, Node: n}
			want, err := marshalOpts.Marshal(r.Response())
			if err != nil {
				t.Fatal(err)
			}
			if got := r.appendEncoded(nil); !bytes.Equal(got, want) {
				t.Errorf("revision %d node %v: got %x, want %x (proto)", rev, n, got, want)
			}
		}
	}
}

func (h *harness) mustPut(path, value string) *coordv1.PutResponse {
	h.t.Helper()
	r, err := h.put(&coordv1.PutRequest{Path: path, Value: []byte(value)})
	if err != nil {
		h.t.Fatalf("put %s: %v", path, err)
	}
	return r
}

func (h *harness) openSession(ttlMs int64) int64 {
	h.t.Helper()
	res := h.apply(EncodeSessionOpen(&coordv1.SessionOpenRequest{TtlMs: ttlMs}, testNowMs))
	r, ok := res.(*coordv1.SessionOpenResponse)
	if !ok {
		h.t.Fatalf("session open: got %v, want a response", res)
	}
	return r.SessionId
}

func ptr[T any](v T) *T { return &v }

// testNowMs is the proposer's clock in the session opens of the tests.
const testNowMs = 1_700_000_000_000

// encodeLegacySessionOpen and encodeLegacyCheckpoint write the entries of versions that
// recorded remaining times, which logs may still hold.
func encodeLegacySessionOpen(r *coordv1.SessionOpenRequest) ([]byte, error) {
	return encodeMsg(cmdSessionOpen, r)
}

func encodeLegacyCheckpoint(term uint64, id, remainingMs int64) []byte {
	b := []byte{byte(cmdTTLCheckpoint)}
	b = binary.AppendUvarint(b, term)
	b = binary.AppendUvarint(b, 1)
	b = binary.AppendVarint(b, id)
	b = binary.AppendVarint(b, remainingMs)
	return append(b, 1)
}

func TestPutGetVersions(t *testing.T) {
	h := newHarness(t)
	r1 := h.mustPut("/a/b", "1")
	r2 := h.mustPut("/a/b", "2")
	h.mustPut("/c", "x")
	n, rev, err := h.m.Get("/a/b", false)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got, want := string(n.Value), "2"; got != want {
		t.Errorf("value: got %q, want %q", got, want)
	}
	if n.Version != 2 || n.CreateRev != 1 || n.ModRev != 2 {
		t.Errorf("node: got version %d create_rev %d mod_rev %d, want 2 1 2", n.Version, n.CreateRev, n.ModRev)
	}
	if rev != 3 {
		t.Errorf("revision: got %d, want 3", rev)
	}
	if r1.Header.Revision != 1 || r2.Header.Revision != 2 || r2.Node.Value != nil {
		t.Errorf("put responses: got revisions %d, %d and value %q, want 1, 2 and none", r1.Header.Revision, r2.Header.Revision, r2.Node.Value)
	}
	if _, _, err := h.m.Get("/nope", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("get /nope: got %v, want ErrNotFound", err)
	}
}

func TestPutRejectsBadInputWithoutApplying(t *testing.T) {
	tests := []struct {
		name string
		req  *coordv1.PutRequest
		want error
	}{
		{"relative path", &coordv1.PutRequest{Path: "a/b"}, ErrInvalidPath},
		{"empty segment", &coordv1.PutRequest{Path: "/a//b"}, ErrInvalidPath},
		{"dot dot", &coordv1.PutRequest{Path: "/a/../b"}, ErrInvalidPath},
		{"root", &coordv1.PutRequest{Path: "/"}, ErrInvalidPath},
		{"value over 4 MiB", &coordv1.PutRequest{Path: "/big", Value: make([]byte, MaxValueBytes+1)}, ErrValueTooLarge},
		{"unknown session", &coordv1.PutRequest{Path: "/e", SessionId: 99}, ErrSessionNotFound},
		{"cas on absent", &coordv1.PutRequest{Path: "/x", ExpectedVersion: ptr[int64](1)}, ErrVersionMismatch},
		{"create on existing", &coordv1.PutRequest{Path: "/exists", ExpectedVersion: ptr[int64](0)}, ErrVersionMismatch},
		{"cas wrong version", &coordv1.PutRequest{Path: "/exists", ExpectedVersion: ptr[int64](7)}, ErrVersionMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.mustPut("/exists", "v")
			before := h.m.Stats()
			var err error
			if len(tt.req.Value) > MaxValueBytes {
				// The encoder itself refuses oversized requests; the machine must too.
				data, _ := marshalOpts.Marshal(tt.req)
				res := h.m.Apply(raftstore.Entry{Index: 100, Term: 1, Data: append([]byte{byte(cmdPut)}, data...)})
				err, _ = res.(error)
			} else {
				_, err = h.put(tt.req)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got error %v, want %v", err, tt.want)
			}
			after := h.m.Stats()
			if after.Revision != before.Revision || after.Nodes != before.Nodes {
				t.Errorf("state changed: got revision %d nodes %d, want %d %d", after.Revision, after.Nodes, before.Revision, before.Nodes)
			}
		})
	}
}

func TestCASSucceeds(t *testing.T) {
	h := newHarness(t)
	if _, err := h.put(&coordv1.PutRequest{Path: "/l", Value: []byte("a"), ExpectedVersion: ptr[int64](0)}); err != nil {
		t.Fatalf("create-only put: %v", err)
	}
	if _, err := h.put(&coordv1.PutRequest{Path: "/l", Value: []byte("b"), ExpectedVersion: ptr[int64](1)}); err != nil {
		t.Fatalf("cas put at version 1: %v", err)
	}
	n, _, _ := h.m.Get("/l", false)
	if string(n.Value) != "b" || n.Version != 2 {
		t.Errorf("got %q version %d, want \"b\" version 2", n.Value, n.Version)
	}
}

func TestSequentialNames(t *testing.T) {
	h := newHarness(t)
	var paths []string
	for range 3 {
		r, err := h.put(&coordv1.PutRequest{Path: "/q/job-", Sequential: true})
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, r.Node.Path)
	}
	r, err := h.put(&coordv1.PutRequest{Path: "/other/", Sequential: true})
	if err != nil {
		t.Fatal(err)
	}
	paths = append(paths, r.Node.Path)
	want := []string{"/q/job-0000000001", "/q/job-0000000002", "/q/job-0000000003", "/other/0000000004"}
	if fmt.Sprint(paths) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", paths, want)
	}
}

func TestListChildrenAndSubtree(t *testing.T) {
	h := newHarness(t)
	for _, p := range []string{"/a", "/a/b", "/a/b/c", "/a-x", "/a/d/e/f", "/a/c", "/b"} {
		h.mustPut(p, p)
	}
	paths := func(ns []*coordv1.Node) string {
		var s []string
		for _, n := range ns {
			s = append(s, fmt.Sprintf("%s@%d", n.Path, n.Version))
		}
		return fmt.Sprint(s)
	}
	tests := []struct {
		path      string
		recursive bool
		limit     int
		want      string
		more      bool
	}{
		{"/a", false, 0, "[/a/b@1 /a/c@1 /a/d@0]", false},
		{"/a", true, 0, "[/a@1 /a/b@1 /a/b/c@1 /a/c@1 /a/d/e/f@1]", false},
		{"/", false, 0, "[/a@1 /a-x@1 /b@1]", false},
		{"/", true, 0, "[/a@1 /a/b@1 /a/b/c@1 /a/c@1 /a/d/e/f@1 /a-x@1 /b@1]", false},
		{"/a", true, 2, "[/a@1 /a/b@1]", true},
		{"/a/d", false, 0, "[/a/d/e@0]", false},
		{"/zzz", true, 0, "[]", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s recursive=%v limit=%d", tt.path, tt.recursive, tt.limit), func(t *testing.T) {
			ns, more, _, err := h.m.List(tt.path, tt.recursive, true, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if got := paths(ns); got != tt.want || more != tt.more {
				t.Errorf("got %s more=%v, want %s more=%v", got, more, tt.want, tt.more)
			}
		})
	}
}

func TestDeleteRecursiveOneRevision(t *testing.T) {
	h := newHarness(t)
	for _, p := range []string{"/s", "/s/a", "/s/a/b", "/s-x", "/t"} {
		h.mustPut(p, "v")
	}
	res := h.apply(EncodeDelete(&coordv1.DeleteRequest{Path: "/s", Recursive: true}))
	r, ok := res.(*coordv1.DeleteResponse)
	if !ok {
		t.Fatalf("got %v, want a DeleteResponse", res)
	}
	if r.Deleted != 3 || r.Header.Revision != 6 {
		t.Errorf("got deleted %d at revision %d, want 3 at 6", r.Deleted, r.Header.Revision)
	}
	if evs := h.events[6]; len(evs) != 3 {
		t.Errorf("events at revision 6: got %d, want 3", len(evs))
	}
	if _, _, err := h.m.Get("/s-x", false); err != nil {
		t.Errorf("sibling /s-x: %v, want kept", err)
	}
	res = h.apply(EncodeDelete(&coordv1.DeleteRequest{Path: "/s"}))
	if err, _ := res.(error); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete of deleted node: got %v, want ErrNotFound", res)
	}
	res = h.apply(EncodeDelete(&coordv1.DeleteRequest{Path: "/t", ExpectedVersion: ptr[int64](2)}))
	if err, _ := res.(error); !errors.Is(err, ErrVersionMismatch) {
		t.Errorf("delete with wrong version: got %v, want ErrVersionMismatch", res)
	}
}

func TestTxnAtomicOneRevision(t *testing.T) {
	h := newHarness(t)
	h.mustPut("/acct/a", "10")
	h.mustPut("/acct/b", "20")
	txn := func(cmp *coordv1.Compare, success []*coordv1.Op) (*coordv1.TxnResponse, error) {
		res := h.apply(EncodeTxn(&coordv1.TxnRequest{Compares: []*coordv1.Compare{cmp}, Success: success,
			Failure: []*coordv1.Op{{Op: &coordv1.Op_Get{Get: &coordv1.GetOp{Path: "/acct/a"}}}}}))
		if err, ok := res.(error); ok {
			return nil, err
		}
		return res.(*coordv1.TxnResponse), nil
	}
	ops := []*coordv1.Op{
		{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: "/acct/a", Value: []byte("5")}}},
		{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: "/acct/b", Value: []byte("25")}}},
		{Op: &coordv1.Op_Delete{Delete: &coordv1.DeleteOp{Path: "/missing"}}},
		{Op: &coordv1.Op_Get{Get: &coordv1.GetOp{Path: "/acct/a"}}},
	}
	r, err := txn(&coordv1.Compare{Path: "/acct/a", Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Version{Version: 1}}, ops)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Succeeded || r.Header.Revision != 3 || len(h.events[3]) != 2 {
		t.Fatalf("got succeeded=%v revision %d events %d, want true 3 2", r.Succeeded, r.Header.Revision, len(h.events[3]))
	}
	if got := string(r.Results[3].GetGet().Value); got != "5" {
		t.Errorf("get after put in txn: got %q, want \"5\"", got)
	}
	a, _, _ := h.m.Get("/acct/a", false)
	b, _, _ := h.m.Get("/acct/b", false)
	if a.ModRev != 3 || b.ModRev != 3 {
		t.Errorf("mod revs: got %d %d, want 3 3", a.ModRev, b.ModRev)
	}
	// A failed compare runs the failure branch and writes nothing.
	r, err = txn(&coordv1.Compare{Path: "/acct/a", Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Value{Value: []byte("10")}}, ops)
	if err != nil {
		t.Fatal(err)
	}
	if r.Succeeded || r.Header.Revision != 3 || string(r.Results[0].GetGet().Value) != "5" {
		t.Errorf("failed compare: got succeeded=%v revision %d, want false 3", r.Succeeded, r.Header.Revision)
	}
	// An invalid op anywhere refuses the whole txn: nothing applied.
	bad := append([]*coordv1.Op{{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: "/acct/c", Value: []byte("1")}}}},
		&coordv1.Op{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: "/acct/e", SessionId: 42}}})
	_, err = txn(&coordv1.Compare{Path: "/acct/a", Result: coordv1.CompareResult_COMPARE_RESULT_GREATER, Target: &coordv1.Compare_ModRev{ModRev: 0}}, bad)
	if !errors.Is(err, ErrSessionNotFound) {
		t.Fatalf("txn with unknown session: got %v, want ErrSessionNotFound", err)
	}
	if _, _, err := h.m.Get("/acct/c", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("/acct/c after refused txn: got %v, want ErrNotFound", err)
	}
	if rev := h.m.Revision(); rev != 3 {
		t.Errorf("revision after refused txn: got %d, want 3", rev)
	}
	// exists compares.
	r, err = txn(&coordv1.Compare{Path: "/nope", Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Exists{Exists: false}},
		[]*coordv1.Op{{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: "/nope", Value: []byte("1")}}}})
	if err != nil || !r.Succeeded {
		t.Errorf("create-if-absent txn: got %v %v, want success", r, err)
	}
}

func TestEphemeralsRemovedInOneRevision(t *testing.T) {
	for _, how := range []string{"expire", "close"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t)
			s1 := h.openSession(5000)
			s2 := h.openSession(5000)
			for i := range 3 {
				if _, err := h.put(&coordv1.PutRequest{Path: fmt.Sprintf("/alive/h%d", i), SessionId: s1}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := h.put(&coordv1.PutRequest{Path: "/alive/other", SessionId: s2}); err != nil {
				t.Fatal(err)
			}
			// Rewriting an ephemeral as persistent detaches it from the session.
			h.mustPut("/alive/h2", "persistent now")
			rev := h.m.Revision()
			switch how {
			case "expire":
				res := h.apply(EncodeSessionExpire(h.term, []int64{s1}), nil)
				if r, ok := res.(ExpireResult); !ok || r.Deleted != 2 {
					t.Fatalf("expire: got %+v, want 2 nodes deleted", res)
				}
			case "close":
				res := h.apply(EncodeSessionClose(&coordv1.SessionCloseRequest{SessionId: s1}))
				if r, ok := res.(*coordv1.SessionCloseResponse); !ok || r.Deleted != 2 {
					t.Fatalf("close: got %+v, want 2 nodes deleted", res)
				}
			}
			if got := h.m.Revision(); got != rev+1 {
				t.Errorf("revision: got %d, want %d (one revision for the whole session)", got, rev+1)
			}
			if got := len(h.events[rev+1]); got != 2 {
				t.Errorf("events at the expiry revision: got %d, want 2", got)
			}
			ns, _, _, _ := h.m.List("/alive", false, true, 0)
			var got []string
			for _, n := range ns {
				got = append(got, n.Path)
			}
			if want := "[/alive/h2 /alive/other]"; fmt.Sprint(got) != want {
				t.Errorf("remaining: got %v, want %s", got, want)
			}
			if h.m.HasSession(s1) || !h.m.HasSession(s2) {
				t.Errorf("sessions: got s1=%v s2=%v, want false true", h.m.HasSession(s1), h.m.HasSession(s2))
			}
			if _, err := h.put(&coordv1.PutRequest{Path: "/alive/late", SessionId: s1}); !errors.Is(err, ErrSessionNotFound) {
				t.Errorf("put in ended session: got %v, want ErrSessionNotFound", err)
			}
		})
	}
}

func TestExpiryFromStaleTermIgnored(t *testing.T) {
	h := newHarness(t)
	s := h.openSession(5000)
	if _, err := h.put(&coordv1.PutRequest{Path: "/e", SessionId: s}); err != nil {
		t.Fatal(err)
	}
	h.term = 3
	res := h.apply(EncodeSessionExpire(2, []int64{s}), nil)
	if err, _ := res.(error); !errors.Is(err, ErrStaleTerm) {
		t.Fatalf("got %v, want ErrStaleTerm", res)
	}
	if !h.m.HasSession(s) {
		t.Error("session expired by a stale leader's entry")
	}
	if got, want := h.m.Sessions()[0].DeadlineMs, int64(testNowMs+5000); got != want {
		t.Errorf("deadline at open: got %d, want %d (the proposer's clock + TTL)", got, want)
	}
	res = h.apply(EncodeDeadlineCheckpoint(2, []Checkpoint{{ID: s, DeadlineMs: testNowMs + 9000}}), nil)
	if err, _ := res.(error); !errors.Is(err, ErrStaleTerm) {
		t.Fatalf("checkpoint of a stale term: got %v, want ErrStaleTerm", res)
	}
	tests := []struct {
		name       string
		deadlineMs int64
		want       int64
	}{
		{"later deadline", testNowMs + 7000, testNowMs + 7000},
		{"earlier deadline never moves it back", testNowMs + 6000, testNowMs + 7000},
	}
	for _, tt := range tests {
		h.apply(EncodeDeadlineCheckpoint(3, []Checkpoint{{ID: s, DeadlineMs: tt.deadlineMs}}), nil)
		if got := h.m.Sessions()[0].DeadlineMs; got != tt.want {
			t.Errorf("%s: got deadline %d, want %d", tt.name, got, tt.want)
		}
	}
	// Entries of older versions still apply; their sessions have no deadline.
	old := h.apply(encodeLegacySessionOpen(&coordv1.SessionOpenRequest{TtlMs: 4000})).(*coordv1.SessionOpenResponse)
	if res := h.apply(encodeLegacyCheckpoint(3, old.SessionId, 1200), nil); res != nil {
		t.Fatalf("legacy checkpoint: got %v, want nil", res)
	}
	if got := h.m.Sessions()[1]; got.ID != old.SessionId || got.DeadlineMs != 0 || got.TTLMs != 4000 {
		t.Errorf("legacy session: got %+v, want id %d, ttl 4000, no deadline", got, old.SessionId)
	}
}

func TestDedupeRetriedRequest(t *testing.T) {
	h := newHarness(t)
	req := &coordv1.PutRequest{Path: "/d", Value: []byte("1"), RequestId: "req-1"}
	r1, err := h.put(req)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := h.put(req)
	if err != nil {
		t.Fatal(err)
	}
	n, rev, _ := h.m.Get("/d", false)
	if n.Version != 1 || rev != 1 || !proto.Equal(r1, r2) {
		t.Errorf("retry applied twice: got version %d revision %d, same response %v; want 1 1 true", n.Version, rev, proto.Equal(r1, r2))
	}
	if hits := h.m.Stats().DedupeHits; hits != 1 {
		t.Errorf("dedupe hits: got %d, want 1", hits)
	}
	// A failed CAS is remembered too: the retry gets the same error even though the state
	// now matches.
	cas := &coordv1.PutRequest{Path: "/d", ExpectedVersion: ptr[int64](2), RequestId: "req-2"}
	if _, err := h.put(cas); !errors.Is(err, ErrVersionMismatch) {
		t.Fatalf("cas: got %v, want ErrVersionMismatch", err)
	}
	h.mustPut("/d", "2")
	if _, err := h.put(cas); !errors.Is(err, ErrVersionMismatch) {
		t.Errorf("retried cas: got %v, want the remembered ErrVersionMismatch", err)
	}
	// Reusing an id for another request is refused.
	if _, err := h.put(&coordv1.PutRequest{Path: "/other", RequestId: "req-1"}); !errors.Is(err, ErrRequestIDReused) {
		t.Errorf("reused id: got %v, want ErrRequestIDReused", err)
	}
	// Sessions: a retried open returns the same session, not a second one.
	open := &coordv1.SessionOpenRequest{TtlMs: 3000, RequestId: "open-1"}
	a := h.apply(EncodeSessionOpen(open, testNowMs)).(*coordv1.SessionOpenResponse)
	// A retry is proposed later, with another clock reading.
	b := h.apply(EncodeSessionOpen(open, testNowMs+1500)).(*coordv1.SessionOpenResponse)
	if a.SessionId != b.SessionId || len(h.m.Sessions()) != 1 {
		t.Errorf("retried open: got sessions %d and %d (%d open), want one", a.SessionId, b.SessionId, len(h.m.Sessions()))
	}
}

func TestDedupeTableBounded(t *testing.T) {
	m := New(Options{DedupeEntries: 3})
	for i := range 5 {
		data, _ := EncodePut(&coordv1.PutRequest{Path: "/k", RequestId: fmt.Sprint("id-", i)})
		m.Apply(raftstore.Entry{Index: uint64(i + 1), Term: 1, Data: data})
	}
	if got := m.Stats().DedupeEntries; got != 3 {
		t.Errorf("entries: got %d, want 3", got)
	}
	if _, ok := m.dedupe.get("id-0"); ok {
		t.Error("oldest id still remembered, want evicted first")
	}
	if _, ok := m.dedupe.get("id-4"); !ok {
		t.Error("newest id forgotten")
	}
}

func TestSnapshotRestoreEqual(t *testing.T) {
	h := newHarness(t)
	s := h.openSession(4000)
	h.mustPut("/a", "1")
	h.mustPut("/a/b", "2")
	if _, err := h.put(&coordv1.PutRequest{Path: "/eph", Value: []byte("e"), SessionId: s, RequestId: "r1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.put(&coordv1.PutRequest{Path: "/seq-", Sequential: true}); err != nil {
		t.Fatal(err)
	}
	h.apply(EncodeMemberAttrs(MemberAttrs{ID: 7, Name: "n1", ClientAddr: "127.0.0.1:1"}), nil)
	src, err := h.m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Writes after the snapshot was taken must not appear in it.
	h.mustPut("/after", "x")
	var buf bytes.Buffer
	if _, err := src.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	src.Close()
	h2 := newHarness(t)
	if err := h2.m.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h2.m.Get("/after", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("/after in snapshot: got %v, want ErrNotFound", err)
	}
	all, _, _, _ := h.m.List("/", true, false, 0)
	var want []*coordv1.Node
	for _, n := range all {
		if n.Path != "/after" {
			want = append(want, n)
		}
	}
	got, _, _, _ := h2.m.List("/", true, false, 0)
	if len(got) != len(want) {
		t.Fatalf("nodes: got %d, want %d", len(got), len(want))
	}
	for i := range got {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("node %d: got %v, want %v", i, got[i], want[i])
		}
	}
	if got, want := h2.m.Sessions(), h.m.Sessions(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("sessions: got %v, want %v", got, want)
	}
	if h2.m.Members()[7].ClientAddr != "127.0.0.1:1" {
		t.Errorf("members: got %v", h2.m.Members())
	}
	// The restored machine continues identically: same sequence counter, same dedupe table,
	// same ephemeral ownership.
	h2.index, h.index = 100, 100
	for _, hh := range []*harness{h, h2} {
		hh.apply(EncodeSessionExpire(hh.term, []int64{s}), nil)
	}
	if _, _, err := h2.m.Get("/eph", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("ephemeral after expiry on restored machine: got %v, want ErrNotFound", err)
	}
	r, err := h2.put(&coordv1.PutRequest{Path: "/seq-", Sequential: true})
	if err != nil || r.Node.Path != "/seq-0000000002" {
		t.Errorf("sequential after restore: got %v %v, want /seq-0000000002", r, err)
	}
	if _, err := h2.put(&coordv1.PutRequest{Path: "/eph", Value: []byte("e"), SessionId: s, RequestId: "r1"}); err != nil {
		t.Errorf("retry of a remembered request after restore: got %v, want the remembered success", err)
	}
}

func TestRestoreRejectsCorruption(t *testing.T) {
	h := newHarness(t)
	h.mustPut("/a", "1")
	src, _ := h.m.Snapshot()
	var buf bytes.Buffer
	if _, err := src.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x40
	for name, data := range map[string][]byte{"truncated": good[:len(good)-3], "flipped": flipped, "empty": nil} {
		t.Run(name, func(t *testing.T) {
			m := New(Options{})
			if err := m.Restore(bytes.NewReader(data)); !errors.Is(err, ErrCorrupt) {
				t.Errorf("got %v, want ErrCorrupt", err)
			}
		})
	}
}
