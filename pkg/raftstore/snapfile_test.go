package raftstore

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func testSnapshot(t *testing.T, dir string) (string, *kvSM, *raftpb.Snapshot) {
	t.Helper()
	sm := newKVSM()
	for i := uint64(1); i <= 100; i++ {
		sm.Apply(Entry{Index: i, Term: 1, Data: fmt.Appendf(nil, "key%03d=value%d", i, i)})
	}
	mem := newMembership()
	mem.members[1] = "127.0.0.1:1"
	mem.members[2] = "127.0.0.1:2"
	mem.removed[3] = true
	data, err := mem.marshal()
	if err != nil {
		t.Fatal(err)
	}
	meta := &raftpb.Snapshot{
		Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(100), Term: proto.Uint64(4), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}}},
		Data:     data,
	}
	src, err := sm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	path, size, err := writeSnapshotFile(dir, meta, src)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		t.Fatalf("snapshot file size: got %v (%v), want %d", fi.Size(), err, size)
	}
	return path, sm, meta
}

func TestSnapshotFileRoundTrip(t *testing.T) {
	path, sm, meta := testSnapshot(t, t.TempDir())
	sf, err := readSnapshotFile(path)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !proto.Equal(sf.meta, meta) {
		t.Fatalf("metadata: got %v, want %v", sf.meta, meta)
	}
	restored := newKVSM()
	if err := sf.restore(restored); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got, want := restored.hash(), sm.hash(); got != want {
		t.Fatalf("restored hash: got %s, want %s", got, want)
	}
	mem, err := unmarshalMembership(sf.meta.GetData())
	if err != nil || len(mem.members) != 2 || !mem.removed[3] {
		t.Fatalf("membership: got %+v (%v), want members 1 and 2, 3 removed", mem, err)
	}
}

func TestSnapshotFileDamage(t *testing.T) {
	tests := []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"body byte flipped", func(b []byte) []byte { b[len(b)/2] ^= 1; return b }},
		{"metadata byte flipped", func(b []byte) []byte { b[snapHeaderSize+2] ^= 1; return b }},
		{"magic changed", func(b []byte) []byte { b[0] = 'X'; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }},
		{"byte appended", func(b []byte) []byte { return append(b, 0) }},
		{"too short", func(b []byte) []byte { return b[:10] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, _, _ := testSnapshot(t, t.TempDir())
			b, _ := os.ReadFile(path)
			if err := os.WriteFile(path, tt.damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := readSnapshotFile(path)
			var ce *CorruptError
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.File != path {
				t.Fatalf("read damaged snapshot: got %v, want ErrCorrupt naming %s", err, path)
			}
		})
	}
}

func TestPruneSnapshots(t *testing.T) {
	dir := t.TempDir()
	for _, idx := range []uint64{10, 20, 30, 40} {
		if err := os.WriteFile(dir+"/"+snapshotName(1, idx), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := pruneSnapshots(dir, 30); err != nil {
		t.Fatal(err)
	}
	snaps, _ := listSnapshots(dir)
	var got []uint64
	for _, s := range snaps {
		got = append(got, s.index)
	}
	if fmt.Sprint(got) != "[20 30 40]" {
		t.Fatalf("kept snapshots: got %v, want [20 30 40] (two newest up to 30, and the one above)", got)
	}
}
