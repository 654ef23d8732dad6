package raftstore

import (
	"bytes"
	"errors"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// FuzzWALDecode feeds arbitrary bytes to the segment scanner. It must never panic, its
// valid prefix must re-encode to exactly the input bytes, a clean scan reads everything
// but a tail of zeros (preallocated space), a torn tail is only accepted in the last
// segment, and damage is reported as ErrCorrupt at the offset where the valid prefix ends.
// Seeds: testdata/fuzz/FuzzWALDecode.
func FuzzWALDecode(f *testing.F) {
	var seg []byte
	seg = appendRecord(seg, recordWALHeader, walHeader{Version: 1, ClusterID: 1, NodeID: 1, Seq: 0, FirstIndex: 1}.marshal())
	eb, _ := proto.Marshal(ent(1, 1, "k=v"))
	seg = appendRecord(seg, recordEntry, eb)
	hb, _ := proto.Marshal(hardState(1, 1, 1))
	seg = appendRecord(seg, recordHardState, hb)
	seg = appendRecord(seg, recordSnapshot, walSnapshot{Index: 1, Term: 1, Reset: true}.marshal())
	f.Add(seg)
	f.Add(seg[:len(seg)-3])
	f.Add(append(bytes.Clone(seg), make([]byte, 64)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, last := range []bool{false, true} {
			type rec struct {
				typ     recordType
				payload []byte
			}
			var recs []rec
			end, torn, err := scanSegment(data, last, func(_ int64, typ recordType, payload []byte) error {
				recs = append(recs, rec{typ, payload})
				// The payload decoders must not panic either.
				switch typ {
				case recordWALHeader:
					parseWALHeader(payload)
				case recordSnapshot:
					parseWALSnapshot(payload)
				case recordEntry:
					proto.Unmarshal(payload, &raftpb.Entry{})
				case recordHardState:
					proto.Unmarshal(payload, &raftpb.HardState{})
				}
				return nil
			})
			if end < 0 || end > int64(len(data)) {
				t.Fatalf("last=%v: end %d outside 0..%d", last, end, len(data))
			}
			if torn && !last {
				t.Fatalf("torn tail accepted in a segment that is not the last")
			}
			if err == nil && !torn && end != int64(len(data)) && !allZero(data[end:]) {
				t.Fatalf("last=%v: clean scan stopped at %d of %d, before bytes that are not all zero", last, end, len(data))
			}
			var ce *CorruptError
			if err != nil && (!errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.Offset != end) {
				t.Fatalf("last=%v: got error %v at end %d, want a CorruptError at that offset", last, err, end)
			}
			var re []byte
			for _, r := range recs {
				re = appendRecord(re, r.typ, r.payload)
			}
			if !bytes.Equal(re, data[:end]) {
				t.Fatalf("last=%v: the %d valid records do not re-encode to the first %d bytes", last, len(recs), end)
			}
		}
	})
}
