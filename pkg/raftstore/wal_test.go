package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

const (
	testClusterID = 0xc1
	testNodeID    = 0x1
)

func crc32Checksum(b []byte) uint32 { return crc32.Checksum(b, crcTable) }

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testMetrics(t *testing.T) *metrics {
	t.Helper()
	m, err := newMetrics(nil, "raft")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ent(index, term uint64, data string) *raftpb.Entry {
	return &raftpb.Entry{Index: proto.Uint64(index), Term: proto.Uint64(term), Type: raftpb.EntryNormal.Enum(), Data: []byte(data)}
}

func hardState(term, vote, commit uint64) *raftpb.HardState {
	return &raftpb.HardState{Term: proto.Uint64(term), Vote: proto.Uint64(vote), Commit: proto.Uint64(commit)}
}

func newTestWAL(t *testing.T, dir string, segmentBytes int64) *wal {
	t.Helper()
	w, err := createWAL(dir, testClusterID, testNodeID, segmentBytes, testMetrics(t), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func openTestWAL(t *testing.T, dir string) (*wal, *walState, error) {
	t.Helper()
	w, st, err := openWAL(dir, testClusterID, testNodeID, 64<<20, testMetrics(t), discardLogger())
	if err == nil {
		t.Cleanup(func() { w.close() })
	}
	return w, st, err
}

// entryIndexes renders entries as "index/term" for comparisons.
func entryIndexes(ents []*raftpb.Entry) string {
	var b strings.Builder
	for i, e := range ents {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d/%d", e.GetIndex(), e.GetTerm())
	}
	return b.String()
}

func span(from, to, term uint64) []*raftpb.Entry {
	var out []*raftpb.Entry
	for i := from; i <= to; i++ {
		out = append(out, ent(i, term, fmt.Sprintf("k%d=v%d", i, i)))
	}
	return out
}

func TestRecordRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		typ     recordType
		payload []byte
	}{
		{"empty payload", recordEntry, nil},
		{"small", recordHardState, []byte("hello")},
		{"header type", recordWALHeader, walHeader{Version: 1, ClusterID: 7, NodeID: 9, Seq: 3, FirstIndex: 100}.marshal()},
		{"one MiB", recordEntry, bytes.Repeat([]byte{0xab}, 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := appendRecord([]byte("prefix"), tt.typ, tt.payload)
			typ, payload, size, err := decodeRecord(b[len("prefix"):])
			if err != nil {
				t.Fatalf("decode: got error %v, want nil", err)
			}
			if typ != tt.typ || !bytes.Equal(payload, tt.payload) || size != recordHeaderSize+len(tt.payload) {
				t.Fatalf("got type %d, %d payload bytes, size %d; want type %d, %d bytes, size %d", typ, len(payload), size, tt.typ, len(tt.payload), recordHeaderSize+len(tt.payload))
			}
		})
	}
}

func TestRecordDecodeErrors(t *testing.T) {
	good := appendRecord(nil, recordEntry, []byte("payload-bytes"))
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	huge := make([]byte, recordHeaderSize)
	binary.LittleEndian.PutUint32(huge[0:4], maxRecordBytes+1)
	huge[4] = byte(recordEntry)
	binary.LittleEndian.PutUint32(huge[5:9], crc32Checksum(huge[0:5]))
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"short header", good[:recordHeaderSize-1], errShortHeader},
		{"short payload", good[:len(good)-1], errShortPayload},
		{"length flipped", flip(0), errHeaderChecksum},
		{"type flipped", flip(4), errHeaderChecksum},
		{"payload flipped", flip(recordHeaderSize + 2), errPayloadCRC},
		{"payload checksum flipped", flip(10), errPayloadCRC},
		{"length over limit", huge, errRecordTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := decodeRecord(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("decode: got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestWALSaveAndRecover(t *testing.T) {
	dir := t.TempDir()
	w := newTestWAL(t, dir, 0)
	if err := w.save(hardState(1, 1, 5), span(1, 10, 1), nil, true); err != nil {
		t.Fatal(err)
	}
	// A new leader overwrites entries 8.. with term 2.
	if err := w.save(hardState(2, 2, 7), span(8, 12, 2), nil, true); err != nil {
		t.Fatal(err)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	_, st, err := openTestWAL(t, dir)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if got, want := entryIndexes(st.entries), "1/1 2/1 3/1 4/1 5/1 6/1 7/1 8/2 9/2 10/2 11/2 12/2"; got != want {
		t.Errorf("entries: got %s, want %s", got, want)
	}
	if !proto.Equal(st.hardState, hardState(2, 2, 7)) {
		t.Errorf("hard state: got %v, want term 2 vote 2 commit 7", st.hardState)
	}
}

// recordOffsets returns the offsets of the records in a segment file.
func recordOffsets(t *testing.T, path string) []int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	if _, _, err := scanSegment(data, false, func(off int64, _ recordType, _ []byte) error {
		offs = append(offs, off)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return offs
}

func onlySegment(t *testing.T, dir string) string {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments: got %d (%v), want 1", len(segs), err)
	}
	return segs[0].path
}

func TestWALTornTail(t *testing.T) {
	// Each case damages the end of a WAL whose last record is entry 6 (written alone).
	tests := []struct {
		name   string
		damage func(data []byte, lastOff int64) []byte
		want   string
	}{
		{"cut inside the last payload", func(d []byte, _ int64) []byte { return d[:len(d)-3] }, "1/1 2/1 3/1 4/1 5/1"},
		{"cut inside the last header", func(d []byte, off int64) []byte { return d[:off+5] }, "1/1 2/1 3/1 4/1 5/1"},
		{"cut at the record start", func(d []byte, off int64) []byte { return d[:off] }, "1/1 2/1 3/1 4/1 5/1"},
		{"zeros after the last record", func(d []byte, _ int64) []byte { return append(d, make([]byte, 4096)...) }, "1/1 2/1 3/1 4/1 5/1 6/1"},
		{"last payload zeroed", func(d []byte, off int64) []byte {
			clear(d[off+recordHeaderSize+4:])
			return d
		}, "1/1 2/1 3/1 4/1 5/1"},
		{"last header zeroed", func(d []byte, off int64) []byte {
			clear(d[off:])
			return d
		}, "1/1 2/1 3/1 4/1 5/1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			w := newTestWAL(t, dir, 0)
			if err := w.save(hardState(1, 1, 3), span(1, 5, 1), nil, true); err != nil {
				t.Fatal(err)
			}
			if err := w.save(nil, span(6, 6, 1), nil, true); err != nil {
				t.Fatal(err)
			}
			w.close()
			path := onlySegment(t, dir)
			offs := recordOffsets(t, path)
			data, _ := os.ReadFile(path)
			damaged := tt.damage(data, offs[len(offs)-1])
			if err := os.WriteFile(path, damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			w2, st, err := openTestWAL(t, dir)
			if err != nil {
				t.Fatalf("open: got %v, want the torn tail accepted", err)
			}
			if got := entryIndexes(st.entries); got != tt.want {
				t.Fatalf("entries: got %s, want %s", got, tt.want)
			}
			// The WAL goes on from the truncated tail.
			next := uint64(len(st.entries)) + 1
			if err := w2.save(nil, span(next, next, 2), nil, true); err != nil {
				t.Fatal(err)
			}
			w2.close()
			_, st, err = openTestWAL(t, dir)
			if err != nil {
				t.Fatalf("reopen after append: %v", err)
			}
			if got, want := st.entries[len(st.entries)-1].GetIndex(), next; got != want || st.entries[len(st.entries)-1].GetTerm() != 2 {
				t.Fatalf("last entry after append: got %d/%d, want %d/2", got, st.entries[len(st.entries)-1].GetTerm(), want)
			}
		})
	}
}

func TestWALCorruptMiddle(t *testing.T) {
	// Record 0 is the segment header, 1..10 are the entries, 11 is the hard state.
	tests := []struct {
		name   string
		record int
		byteAt int // offset inside the record
	}{
		{"payload of a middle entry", 4, recordHeaderSize + 3},
		{"length of a middle entry", 5, 1},
		{"payload checksum of a middle entry", 6, 10},
		{"segment header", 0, recordHeaderSize + 5},
		{"entry before the last record", 10, recordHeaderSize + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			w := newTestWAL(t, dir, 0)
			if err := w.save(hardState(1, 1, 9), span(1, 10, 1), nil, true); err != nil {
				t.Fatal(err)
			}
			w.close()
			path := onlySegment(t, dir)
			offs := recordOffsets(t, path)
			data, _ := os.ReadFile(path)
			at := offs[tt.record] + int64(tt.byteAt)
			data[at] ^= 0x01
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := openTestWAL(t, dir)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open: got %v, want ErrCorrupt", err)
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.File != path || ce.Offset != offs[tt.record] {
				t.Fatalf("corrupt error: got %#v, want file %s offset %d", ce, path, offs[tt.record])
			}
			if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, fmt.Sprintf("offset %d", offs[tt.record])) {
				t.Fatalf("message %q does not name the file and offset %d", msg, offs[tt.record])
			}
			// Nothing was truncated: the operator still has the evidence.
			after, _ := os.ReadFile(path)
			if len(after) != len(data) {
				t.Fatalf("file size after refused open: got %d, want %d", len(after), len(data))
			}
		})
	}
}

func TestWALTornNonLastSegmentIsCorrupt(t *testing.T) {
	dir := t.TempDir()
	w := newTestWAL(t, dir, 4096)
	for i := uint64(1); i <= 60; i++ {
		if err := w.save(nil, []*raftpb.Entry{ent(i, 1, strings.Repeat("x", 200))}, nil, true); err != nil {
			t.Fatal(err)
		}
	}
	w.close()
	segs, _ := listSegments(dir)
	if len(segs) < 3 {
		t.Fatalf("segments: got %d, want at least 3", len(segs))
	}
	data, _ := os.ReadFile(segs[0].path)
	if err := os.WriteFile(segs[0].path, data[:len(data)-7], 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := openTestWAL(t, dir)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.File != segs[0].path {
		t.Fatalf("open: got %v, want a CorruptError naming %s", err, segs[0].path)
	}
}

func TestWALClusterMismatch(t *testing.T) {
	dir := t.TempDir()
	w := newTestWAL(t, dir, 0)
	w.close()
	tests := []struct {
		name            string
		cluster, member uint64
	}{
		{"other cluster", testClusterID + 1, testNodeID},
		{"other member", testClusterID, testNodeID + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := openWAL(dir, tt.cluster, tt.member, 0, testMetrics(t), discardLogger())
			if !errors.Is(err, ErrClusterMismatch) {
				t.Fatalf("open as cluster %x member %x: got %v, want ErrClusterMismatch", tt.cluster, tt.member, err)
			}
		})
	}
}

func TestWALSegmentsRollAndRelease(t *testing.T) {
	dir := t.TempDir()
	w := newTestWAL(t, dir, 4096)
	for i := uint64(1); i <= 200; i++ {
		if err := w.save(hardState(1, 1, i), []*raftpb.Entry{ent(i, 1, strings.Repeat("y", 100))}, nil, i%10 == 0); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := listSegments(dir)
	if len(before) < 5 {
		t.Fatalf("segments after 200 entries of 100 bytes with 4 KiB segments: got %d, want at least 5", len(before))
	}
	if err := w.save(nil, nil, &walSnapshot{Index: 150, Term: 1}, true); err != nil {
		t.Fatal(err)
	}
	if err := w.releaseTo(150); err != nil {
		t.Fatal(err)
	}
	w.close()
	after, _ := listSegments(dir)
	if len(after) >= len(before) {
		t.Fatalf("segments after release: got %d, want fewer than %d", len(after), len(before))
	}
	if after[0].firstIndex > 151 {
		t.Fatalf("first kept segment starts at %d, want at most 151 (entries after the snapshot must stay)", after[0].firstIndex)
	}
	_, st, err := openTestWAL(t, dir)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if st.snapshot.Index != 150 || len(st.entries) != 50 || st.entries[0].GetIndex() != 151 {
		t.Fatalf("recovered: snapshot %d, %d entries from %s; want snapshot 150, 50 entries from 151", st.snapshot.Index, len(st.entries), entryIndexes(st.entries[:1]))
	}
	if st.hardState.GetCommit() != 200 {
		t.Fatalf("hard state commit: got %d, want 200", st.hardState.GetCommit())
	}
}

func TestWALSnapshotReset(t *testing.T) {
	tests := []struct {
		name   string
		snap   walSnapshot
		after  []*raftpb.Entry
		want   string
		wantSn uint64
	}{
		{"snapshot beyond the log", walSnapshot{Index: 20, Term: 3, Reset: true}, span(21, 22, 3), "21/3 22/3", 20},
		{"snapshot inside the log voids later entries", walSnapshot{Index: 5, Term: 3, Reset: true}, nil, "", 5},
		{"local snapshot keeps later entries", walSnapshot{Index: 5, Term: 1}, nil, "6/1 7/1 8/1 9/1 10/1", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			w := newTestWAL(t, dir, 0)
			if err := w.save(hardState(1, 1, 4), span(1, 10, 1), nil, true); err != nil {
				t.Fatal(err)
			}
			snap := tt.snap
			if err := w.save(nil, tt.after, &snap, true); err != nil {
				t.Fatal(err)
			}
			w.close()
			_, st, err := openTestWAL(t, dir)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if got := entryIndexes(st.entries); got != tt.want || st.snapshot.Index != tt.wantSn {
				t.Fatalf("got snapshot %d entries %q, want snapshot %d entries %q", st.snapshot.Index, got, tt.wantSn, tt.want)
			}
		})
	}
}

func TestWALLeftoverTempSegmentIgnored(t *testing.T) {
	dir := t.TempDir()
	w := newTestWAL(t, dir, 0)
	if err := w.save(hardState(1, 1, 2), span(1, 2, 1), nil, true); err != nil {
		t.Fatal(err)
	}
	w.close()
	tmp := filepath.Join(dir, "0000000000000001-0000000000000003"+walTempSuffix)
	if err := os.WriteFile(tmp, []byte("half a segment"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, st, err := openTestWAL(t, dir)
	if err != nil || len(st.entries) != 2 {
		t.Fatalf("open: got %v with %d entries, want 2 entries", err, len(st.entries))
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("leftover temp segment: got %v, want it removed", err)
	}
}

func TestWALPreallocatedSegments(t *testing.T) {
	dir := t.TempDir()
	const segBytes = 1 << 20
	w := newTestWAL(t, dir, segBytes)
	if err := w.save(hardState(1, 1, 3), span(1, 5, 1), nil, true); err != nil {
		t.Fatal(err)
	}
	path := onlySegment(t, dir)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != segBytes || w.size >= segBytes {
		t.Fatalf("open segment: file size %d, written %d; want the file preallocated to %d", fi.Size(), w.size, segBytes)
	}
	// A crash leaves the preallocated zeros after the last record: recovery takes them
	// for the end, not for damage, and keeps the space.
	w.f.Close()
	w2, st, err := openWAL(dir, testClusterID, testNodeID, segBytes, testMetrics(t), discardLogger())
	if err != nil {
		t.Fatalf("open after a crash: %v", err)
	}
	if got := entryIndexes(st.entries); got != "1/1 2/1 3/1 4/1 5/1" {
		t.Fatalf("entries after a crash: got %s", got)
	}
	if fi, _ := os.Stat(path); fi.Size() != segBytes {
		t.Errorf("file size after recovery: got %d, want %d (still preallocated)", fi.Size(), segBytes)
	}
	// Appends land after the last record, and a full segment is trimmed when it closes.
	big := make([]*raftpb.Entry, 0, 200)
	for i := uint64(6); i < 206; i++ {
		big = append(big, ent(i, 2, strings.Repeat("x", 8<<10)))
	}
	if err := w2.save(nil, big, nil, true); err != nil {
		t.Fatal(err)
	}
	segs, err := listSegments(dir)
	if err != nil || len(segs) < 2 {
		t.Fatalf("segments after 1.6 MiB in 1 MiB segments: got %d (%v), want at least 2", len(segs), err)
	}
	closed := segs[len(segs)-2].path
	data, err := os.ReadFile(closed)
	if err != nil {
		t.Fatal(err)
	}
	if end, torn, err := scanSegment(data, false, func(int64, recordType, []byte) error { return nil }); err != nil || torn || end != int64(len(data)) {
		t.Errorf("closed segment: valid records end at %d of %d bytes (torn %v, %v), want it to end with its last record", end, len(data), torn, err)
	}
	if err := w2.close(); err != nil {
		t.Fatal(err)
	}
	_, st, err = openTestWAL(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.entries); n != 205 || st.entries[n-1].GetIndex() != 205 {
		t.Fatalf("entries after reopen: got %d ending at %d, want 205", n, st.entries[n-1].GetIndex())
	}
}
