package tree

import (
	"bytes"
	"errors"
	"strconv"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// fuzzBase is the state every FuzzApply input is applied to: a few nodes, one of them
// ephemeral in session 1, a sequential node, and a dedupe record, so that decoded commands
// have something to compare with, delete, expire and repeat.
func fuzzBase(t testing.TB) (*Machine, uint64) {
	m := New(Options{})
	var idx uint64
	apply := func(data []byte, err error) {
		if err != nil {
			t.Fatalf("encode base entry: %v", err)
		}
		idx++
		if res, ok := m.Apply(raftstore.Entry{Index: idx, Term: 1, Data: data}).(error); ok {
			t.Fatalf("apply base entry %d: %v", idx, res)
		}
	}
	apply(EncodeSessionOpen(&coordv1.SessionOpenRequest{TtlMs: 5000, RequestId: "s1"}, testNowMs))
	apply(EncodePut(&coordv1.PutRequest{Path: "/a", Value: []byte("1"), RequestId: "r1"}))
	apply(EncodePut(&coordv1.PutRequest{Path: "/a/b", Value: []byte("2")}))
	apply(EncodePut(&coordv1.PutRequest{Path: "/e", Value: []byte("eph"), SessionId: 1}))
	apply(EncodePut(&coordv1.PutRequest{Path: "/q/item-", Sequential: true}))
	apply(EncodeMemberAttrs(MemberAttrs{ID: 7, Name: "n1", ClientAddr: "127.0.0.1:7379"}), nil)
	return m, idx
}

// fuzzSeeds are valid entries of every command type and a few damaged ones.
func fuzzSeeds() [][]byte {
	must := func(b []byte, err error) []byte {
		if err != nil {
			panic(err)
		}
		return b
	}
	ev := int64(1)
	zero := int64(0)
	txn := &coordv1.TxnRequest{
		RequestId: "t1",
		Compares:  []*coordv1.Compare{{Path: "/a", Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Version{Version: 1}}},
		Success: []*coordv1.Op{
			{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: "/a", Value: []byte("3")}}},
			{Op: &coordv1.Op_Delete{Delete: &coordv1.DeleteOp{Path: "/a/b"}}},
			{Op: &coordv1.Op_Get{Get: &coordv1.GetOp{Path: "/a"}}},
		},
		Failure: []*coordv1.Op{{Op: &coordv1.Op_Get{Get: &coordv1.GetOp{Path: "/e"}}}},
	}
	put := must(EncodePut(&coordv1.PutRequest{Path: "/a", Value: []byte("x"), ExpectedVersion: &ev, RequestId: "p2"}))
	seeds := [][]byte{
		put,
		must(EncodePut(&coordv1.PutRequest{Path: "/a", Value: []byte("x"), RequestId: "r1"})), // reused id
		must(EncodePut(&coordv1.PutRequest{Path: "/new", ExpectedVersion: &zero})),
		must(EncodePut(&coordv1.PutRequest{Path: "/eph2", SessionId: 1})),
		must(EncodePut(&coordv1.PutRequest{Path: "/eph3", SessionId: 9})),
		must(EncodePut(&coordv1.PutRequest{Path: "/bad/"})),
		must(EncodeDelete(&coordv1.DeleteRequest{Path: "/a", Recursive: true, RequestId: "d1"})),
		must(EncodeDelete(&coordv1.DeleteRequest{Path: "/a", ExpectedVersion: &ev})),
		must(EncodeTxn(txn)),
		must(EncodeSessionOpen(&coordv1.SessionOpenRequest{TtlMs: 1000}, testNowMs)),
		must(EncodeSessionOpen(&coordv1.SessionOpenRequest{TtlMs: 1}, testNowMs)),
		must(encodeLegacySessionOpen(&coordv1.SessionOpenRequest{TtlMs: 1000})),
		must(EncodeSessionClose(&coordv1.SessionCloseRequest{SessionId: 1, RequestId: "c1"})),
		EncodeSessionExpire(1, []int64{1, 2}),
		EncodeSessionExpire(2, []int64{1}),
		EncodeDeadlineCheckpoint(1, []Checkpoint{{ID: 1, DeadlineMs: testNowMs + 100}}),
		encodeLegacyCheckpoint(1, 1, 100),
		EncodeMemberAttrs(MemberAttrs{ID: 8, Name: "n2", ClientAddr: "127.0.0.1:1"}),
		must(EncodeMemberAdd(&coordv1.MemberAddRequest{Name: "n4", PeerAddr: "127.0.0.1:9", RequestId: "m1"})),
		must(EncodeMemberRemove(&coordv1.MemberRemoveRequest{RequestId: "m2"})),
		{},
		{0},
		{byte(cmdPut), 0xff},
		{byte(cmdSessionExpire), 1, 0xff, 0xff, 0xff, 0xff, 0x0f},
		{byte(cmdTTLCheckpoint)},
		{byte(cmdDeadlineCheckpoint), 1, 0xff},
		{byte(cmdSessionOpenAt), 0x80},
		{255, 1, 2, 3},
	}
	seeds = append(seeds, put[:len(put)/2])
	return seeds
}

// treeState is everything a client can observe of the machine: the nodes, the revision
// and the sessions.
func treeState(t *testing.T, m *Machine) []byte {
	t.Helper()
	nodes, _, rev, err := m.List("/", true, false, 0)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var b bytes.Buffer
	for _, n := range nodes {
		enc, err := proto.MarshalOptions{Deterministic: true}.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(enc)
		b.WriteByte(0)
	}
	out := strconv.AppendInt(b.Bytes(), rev, 10)
	for _, s := range m.Sessions() {
		out = strconv.AppendInt(append(out, ';'), s.ID, 10)
	}
	return out
}

func snapshotBytes(t *testing.T, m *Machine) []byte {
	t.Helper()
	src, err := m.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	defer src.Close()
	var b bytes.Buffer
	if _, err := src.WriteTo(&b); err != nil {
		t.Fatalf("write snapshot: %v", err)
	}
	return b.Bytes()
}

// FuzzApply feeds arbitrary Raft entries — coord's command encoding: a type byte, then the
// protobuf of a client request or the varint encoding of a leader command — to the state
// machine, as a damaged log or a buggy proposer would. It checks that Apply never panics;
// that a command refused with an error changes nothing a client can see; that applying is
// deterministic (two machines in the same state end in byte-identical snapshots, which is
// what keeps members in step); and that the state survives a snapshot and restore.
func FuzzApply(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s, uint64(1))
	}
	f.Fuzz(func(t *testing.T, data []byte, term uint64) {
		m, idx := fuzzBase(t)
		twin, _ := fuzzBase(t)
		before := treeState(t, m)
		e := raftstore.Entry{Index: idx + 1, Term: term, Data: data}
		res := m.Apply(e)
		if err, ok := res.(error); ok {
			kinds := 0
			for _, k := range errorKinds {
				if errors.Is(err, k) {
					kinds++
				}
			}
			if kinds != 1 {
				t.Fatalf("Apply returned %v, which wraps %d of the package's sentinels, want exactly 1", err, kinds)
			}
			if after := treeState(t, m); !bytes.Equal(before, after) {
				t.Fatalf("Apply refused the entry (%v) but changed the tree", err)
			}
		}
		twin.Apply(e)
		snap := snapshotBytes(t, m)
		if twinSnap := snapshotBytes(t, twin); !bytes.Equal(snap, twinSnap) {
			t.Fatal("two machines in the same state applied the same entry and diverged")
		}
		restored := New(Options{})
		if err := restored.Restore(bytes.NewReader(snap)); err != nil {
			t.Fatalf("restore the snapshot taken after the entry: %v", err)
		}
		if got, want := treeState(t, restored), treeState(t, m); !bytes.Equal(got, want) {
			t.Fatal("the restored machine differs from the one snapshotted")
		}
		if got := snapshotBytes(t, restored); !bytes.Equal(got, snap) {
			t.Fatal("a snapshot of the restored machine differs from the snapshot it was restored from")
		}
		// The machine goes on working after whatever it was given.
		if res := m.Apply(raftstore.Entry{Index: idx + 2, Term: term, Data: mustEncode(EncodePut(&coordv1.PutRequest{Path: "/after", Value: []byte("z")}))}); res != nil {
			if err, ok := res.(error); ok {
				t.Fatalf("a put after the fuzzed entry: %v", err)
			}
		}
	})
}

func mustEncode(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
