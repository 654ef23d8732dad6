package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The write-ahead log lives in <DataDir>/wal as segment files named
// <seq>-<first index>.wal (16 hex digits each). A segment is created whole (header,
// latest snapshot marker, latest HardState) under a temporary name, synced and renamed,
// so every segment file starts with a valid header. Appends go to the last segment; it
// is rolled once it grows past the segment size. Segments whose entries are all covered
// by a snapshot are removed.

const (
	walFormatVersion  = 1
	walHeaderSize     = 4 + 8*4
	walSnapshotSize   = 8 + 8 + 1
	walSnapshotReset  = 1 << 0
	walSegmentSuffix  = ".wal"
	walTempSuffix     = ".wal.tmp"
	defaultWALSegment = 64 << 20
)

// errNoWAL is returned by openWAL when the directory holds no segment.
var errNoWAL = errors.New("no wal")

// walHeader is the payload of the record that opens every segment.
type walHeader struct {
	Version    uint32
	ClusterID  uint64
	NodeID     uint64
	Seq        uint64
	FirstIndex uint64
}

func (h walHeader) marshal() []byte {
	b := make([]byte, walHeaderSize)
	binary.LittleEndian.PutUint32(b[0:4], h.Version)
	binary.LittleEndian.PutUint64(b[4:12], h.ClusterID)
	binary.LittleEndian.PutUint64(b[12:20], h.NodeID)
	binary.LittleEndian.PutUint64(b[20:28], h.Seq)
	binary.LittleEndian.PutUint64(b[28:36], h.FirstIndex)
	return b
}

func parseWALHeader(b []byte) (walHeader, error) {
	if len(b) < walHeaderSize {
		return walHeader{}, fmt.Errorf("wal header: %d bytes, want at least %d", len(b), walHeaderSize)
	}
	h := walHeader{
		Version:    binary.LittleEndian.Uint32(b[0:4]),
		ClusterID:  binary.LittleEndian.Uint64(b[4:12]),
		NodeID:     binary.LittleEndian.Uint64(b[12:20]),
		Seq:        binary.LittleEndian.Uint64(b[20:28]),
		FirstIndex: binary.LittleEndian.Uint64(b[28:36]),
	}
	if h.Version == 0 || h.Version > walFormatVersion {
		return walHeader{}, fmt.Errorf("wal header: format version %d, this build reads up to %d", h.Version, walFormatVersion)
	}
	return h, nil
}

// walSnapshot records that the snapshot file of (Index, Term) is durable. Reset means the
// snapshot replaced the whole log (it came from the leader), so entries before the record
// are void.
type walSnapshot struct {
	Index, Term uint64
	Reset       bool
}

func (s walSnapshot) marshal() []byte {
	b := make([]byte, walSnapshotSize)
	binary.LittleEndian.PutUint64(b[0:8], s.Index)
	binary.LittleEndian.PutUint64(b[8:16], s.Term)
	if s.Reset {
		b[16] = walSnapshotReset
	}
	return b
}

func parseWALSnapshot(b []byte) (walSnapshot, error) {
	if len(b) < walSnapshotSize {
		return walSnapshot{}, fmt.Errorf("snapshot record: %d bytes, want at least %d", len(b), walSnapshotSize)
	}
	return walSnapshot{
		Index: binary.LittleEndian.Uint64(b[0:8]),
		Term:  binary.LittleEndian.Uint64(b[8:16]),
		Reset: b[16]&walSnapshotReset != 0,
	}, nil
}

// walSegment is one segment file.
type walSegment struct {
	seq, firstIndex uint64
	path            string
}

func segmentName(seq, firstIndex uint64) string {
	return fmt.Sprintf("%016x-%016x%s", seq, firstIndex, walSegmentSuffix)
}

func parseSegmentName(name string) (seq, firstIndex uint64, ok bool) {
	base, found := strings.CutSuffix(name, walSegmentSuffix)
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(base, "-")
	if !found || len(a) != 16 || len(b) != 16 {
		return 0, 0, false
	}
	seq, err1 := strconv.ParseUint(a, 16, 64)
	firstIndex, err2 := strconv.ParseUint(b, 16, 64)
	return seq, firstIndex, err1 == nil && err2 == nil
}

// walState is what recovery found in the WAL.
type walState struct {
	// hardState is the last HardState written, or nil.
	hardState *raftpb.HardState
	// snapshot is the last snapshot marker written (zero Index when none).
	snapshot walSnapshot
	// entries are the live entries after snapshot.Index, contiguous.
	entries []*raftpb.Entry
}

// empty reports whether nothing but segment headers was ever made durable.
func (s *walState) empty() bool {
	return raft.IsEmptyHardState(s.hardState) && len(s.entries) == 0 && s.snapshot.Index == 0
}

// wal is the write-ahead log. It is used by one goroutine at a time (the node's loop).
type wal struct {
	dir          string
	clusterID    uint64
	nodeID       uint64
	segmentBytes int64
	metrics      *metrics
	logger       *slog.Logger

	segs      []walSegment // sorted by seq; the last is open for appends
	f         *os.File
	size      int64
	dirty     bool // bytes written since the last sync
	lastIndex uint64
	hardState *raftpb.HardState
	snap      walSnapshot
	buf       []byte
}

func newWALHandle(dir string, clusterID, nodeID uint64, segmentBytes int64, m *metrics, logger *slog.Logger) *wal {
	if segmentBytes <= 0 {
		segmentBytes = defaultWALSegment
	}
	return &wal{dir: dir, clusterID: clusterID, nodeID: nodeID, segmentBytes: segmentBytes, metrics: m, logger: logger}
}

// createWAL makes a new, empty WAL in dir.
func createWAL(dir string, clusterID, nodeID uint64, segmentBytes int64, m *metrics, logger *slog.Logger) (*wal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create wal %s: %w", dir, err)
	}
	w := newWALHandle(dir, clusterID, nodeID, segmentBytes, m, logger)
	if err := w.newSegment(0, 1); err != nil {
		return nil, err
	}
	return w, nil
}

// openWAL recovers the WAL in dir: it checks every segment, truncates a torn tail of the
// last one, refuses corruption anywhere else, and returns the recovered state with the
// WAL open for appends. It returns errNoWAL when dir holds no segment.
func openWAL(dir string, clusterID, nodeID uint64, segmentBytes int64, m *metrics, logger *slog.Logger) (*wal, *walState, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return nil, nil, err
	}
	if len(segs) == 0 {
		return nil, nil, errNoWAL
	}
	w := newWALHandle(dir, clusterID, nodeID, segmentBytes, m, logger)
	st := &walState{}
	var ents []*raftpb.Entry
	var first, lastIndex uint64
	for i, seg := range segs {
		if i > 0 && seg.seq != segs[i-1].seq+1 {
			return nil, nil, &CorruptError{File: seg.path, Offset: -1, Reason: fmt.Sprintf("segment %d follows segment %d: a segment is missing", seg.seq, segs[i-1].seq)}
		}
		data, err := os.ReadFile(seg.path)
		if err != nil {
			return nil, nil, fmt.Errorf("read wal segment %s: %w", seg.path, err)
		}
		last := i == len(segs)-1
		n := 0
		var mismatch error
		end, torn, err := scanSegment(data, last, func(_ int64, typ recordType, payload []byte) error {
			defer func() { n++ }()
			if n == 0 {
				if typ != recordWALHeader {
					return fmt.Errorf("segment starts with record type %d, want a header", typ)
				}
				h, err := parseWALHeader(payload)
				if err != nil {
					return err
				}
				if h.ClusterID != clusterID || h.NodeID != nodeID {
					mismatch = fmt.Errorf("open wal %s: %w: written by cluster %x member %x, this is cluster %x member %x", seg.path, ErrClusterMismatch, h.ClusterID, h.NodeID, clusterID, nodeID)
					return mismatch
				}
				if h.Seq != seg.seq || h.FirstIndex != seg.firstIndex {
					return fmt.Errorf("header says segment %d first index %d, the file name says %d and %d", h.Seq, h.FirstIndex, seg.seq, seg.firstIndex)
				}
				return nil
			}
			switch typ {
			case recordEntry:
				e := &raftpb.Entry{}
				if err := proto.Unmarshal(payload, e); err != nil {
					return fmt.Errorf("decode entry: %w", err)
				}
				idx := e.GetIndex()
				switch {
				case idx == 0:
					return errors.New("entry with index 0")
				case len(ents) == 0 || idx < first:
					first, ents = idx, append(ents[:0], e)
				case idx <= first+uint64(len(ents)):
					ents = append(ents[:idx-first], e)
				default:
					return fmt.Errorf("entry %d follows entry %d: entries are missing", idx, first+uint64(len(ents))-1)
				}
				lastIndex = idx
			case recordHardState:
				hs := &raftpb.HardState{}
				if err := proto.Unmarshal(payload, hs); err != nil {
					return fmt.Errorf("decode hard state: %w", err)
				}
				st.hardState = hs
			case recordSnapshot:
				s, err := parseWALSnapshot(payload)
				if err != nil {
					return err
				}
				st.snapshot = s
				if s.Reset {
					ents = ents[:0]
					lastIndex = s.Index
				}
			case recordWALHeader:
				return errors.New("second header in one segment")
			default:
				return fmt.Errorf("unknown record type %d (written by a newer version?)", typ)
			}
			return nil
		})
		if mismatch != nil {
			return nil, nil, mismatch
		}
		if err != nil {
			var ce *CorruptError
			if errors.As(err, &ce) {
				ce.File = seg.path
			}
			return nil, nil, fmt.Errorf("open wal: %w", err)
		}
		if n == 0 {
			return nil, nil, &CorruptError{File: seg.path, Offset: 0, Reason: "segment has no header"}
		}
		if torn {
			logger.Warn("wal: truncating torn tail", "file", seg.path, "offset", end, "dropped_bytes", int64(len(data))-end)
			if err := truncateSync(seg.path, end); err != nil {
				return nil, nil, err
			}
		}
		if last {
			w.size = end
		}
	}
	// Keep only the entries after the snapshot; they must follow it without a gap.
	snapIdx := st.snapshot.Index
	for len(ents) > 0 && ents[0].GetIndex() <= snapIdx {
		ents = ents[1:]
	}
	if len(ents) > 0 && ents[0].GetIndex() != snapIdx+1 {
		return nil, nil, &CorruptError{File: dir, Offset: -1, Reason: fmt.Sprintf("log starts at entry %d but the snapshot is at %d: entries are missing", ents[0].GetIndex(), snapIdx)}
	}
	st.entries = ents
	w.segs = segs
	w.lastIndex = max(lastIndex, snapIdx)
	if len(ents) > 0 {
		w.lastIndex = ents[len(ents)-1].GetIndex()
	}
	w.hardState = st.hardState
	w.snap = st.snapshot
	f, err := os.OpenFile(segs[len(segs)-1].path, os.O_WRONLY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open wal segment %s: %w", segs[len(segs)-1].path, err)
	}
	if w.size < w.segmentBytes {
		if err := preallocate(f, w.segmentBytes); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("preallocate wal segment %s: %w", f.Name(), err)
		}
	}
	w.f = f
	return w, st, nil
}

// listSegments returns the segments in dir sorted by sequence, removing leftovers of
// interrupted segment creation.
func listSegments(dir string) ([]walSegment, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list wal %s: %w", dir, err)
	}
	var segs []walSegment
	for _, de := range des {
		name := de.Name()
		if strings.HasSuffix(name, walTempSuffix) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("remove wal leftover %s: %w", name, err)
			}
			continue
		}
		seq, firstIndex, ok := parseSegmentName(name)
		if !ok {
			continue
		}
		segs = append(segs, walSegment{seq: seq, firstIndex: firstIndex, path: filepath.Join(dir, name)})
	}
	slices.SortFunc(segs, func(a, b walSegment) int { return compareUint64(a.seq, b.seq) })
	return segs, nil
}

func compareUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// newSegment creates segment seq, starting with a header, the latest snapshot marker and
// the latest HardState, and makes it the open segment.
func (w *wal) newSegment(seq, firstIndex uint64) error {
	var b []byte
	b = appendRecord(b, recordWALHeader, walHeader{Version: walFormatVersion, ClusterID: w.clusterID, NodeID: w.nodeID, Seq: seq, FirstIndex: firstIndex}.marshal())
	if w.snap.Index > 0 {
		b = appendRecord(b, recordSnapshot, walSnapshot{Index: w.snap.Index, Term: w.snap.Term}.marshal())
	}
	if !raft.IsEmptyHardState(w.hardState) {
		hs, err := proto.Marshal(w.hardState)
		if err != nil {
			return fmt.Errorf("encode hard state: %w", err)
		}
		b = appendRecord(b, recordHardState, hs)
	}
	name := segmentName(seq, firstIndex)
	path := filepath.Join(w.dir, name)
	tmp := filepath.Join(w.dir, strings.TrimSuffix(name, walSegmentSuffix)+walTempSuffix)
	if err := writeFileSync(tmp, b); err != nil {
		return fmt.Errorf("create wal segment %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("create wal segment %s: %w", path, err)
	}
	if err := syncDir(w.dir); err != nil {
		return fmt.Errorf("create wal segment %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open wal segment %s: %w", path, err)
	}
	// Records are written at w.size into preallocated space (see preallocate); the space
	// past the last record reads as zeros, which recovery takes for the end.
	if err := preallocate(f, w.segmentBytes); err != nil {
		f.Close()
		return fmt.Errorf("preallocate wal segment %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("preallocate wal segment %s: %w", path, err)
	}
	w.f = f
	w.size = int64(len(b))
	w.dirty = false
	w.segs = append(w.segs, walSegment{seq: seq, firstIndex: firstIndex, path: path})
	w.metrics.walBytes.Add(float64(len(b)))
	return nil
}

// save appends, in this order, a snapshot marker (when snap is not nil), the entries and
// the HardState (when not empty), in one write. It syncs when sync is true or a snapshot
// marker was written: everything passed to one save costs at most one fsync.
func (w *wal) save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *walSnapshot, sync bool) error {
	b := w.buf[:0]
	if snap != nil {
		b = appendRecord(b, recordSnapshot, snap.marshal())
	}
	var err error
	for _, e := range ents {
		b, err = appendRecordFunc(b, recordEntry, func(dst []byte) ([]byte, error) {
			return proto.MarshalOptions{}.MarshalAppend(dst, e)
		})
		if err != nil {
			return fmt.Errorf("encode entry %d: %w", e.GetIndex(), err)
		}
	}
	if !raft.IsEmptyHardState(hs) {
		b, err = appendRecordFunc(b, recordHardState, func(dst []byte) ([]byte, error) {
			return proto.MarshalOptions{}.MarshalAppend(dst, hs)
		})
		if err != nil {
			return fmt.Errorf("encode hard state: %w", err)
		}
	}
	if cap(b) <= 4<<20 {
		w.buf = b[:0]
	}
	if len(b) == 0 {
		return nil
	}
	if _, err := w.f.WriteAt(b, w.size); err != nil {
		return fmt.Errorf("write wal %s: %w", w.f.Name(), err)
	}
	w.size += int64(len(b))
	w.dirty = true
	w.metrics.walBytes.Add(float64(len(b)))
	if snap != nil {
		w.snap = walSnapshot{Index: snap.Index, Term: snap.Term}
		if snap.Reset {
			w.lastIndex = snap.Index
		}
	}
	if len(ents) > 0 {
		w.lastIndex = ents[len(ents)-1].GetIndex()
	}
	if !raft.IsEmptyHardState(hs) {
		w.hardState = proto.Clone(hs).(*raftpb.HardState)
	}
	if sync || snap != nil {
		if err := w.sync(); err != nil {
			return err
		}
	}
	if w.size >= w.segmentBytes {
		return w.roll()
	}
	return nil
}

// sync makes everything written durable.
func (w *wal) sync() error {
	if !w.dirty {
		return nil
	}
	start := time.Now()
	if err := fdatasync(w.f); err != nil {
		return fmt.Errorf("sync wal %s: %w", w.f.Name(), err)
	}
	w.metrics.fsyncDuration.Observe(time.Since(start).Seconds())
	w.dirty = false
	return nil
}

// roll closes the open segment and starts the next one.
func (w *wal) roll() error {
	if err := w.trimAndSync(); err != nil {
		return err
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("close wal segment %s: %w", w.f.Name(), err)
	}
	w.f = nil
	last := w.segs[len(w.segs)-1]
	return w.newSegment(last.seq+1, w.lastIndex+1)
}

// releaseTo removes the segments whose entries are all at or below index (covered by a
// durable snapshot). The open segment is never removed.
func (w *wal) releaseTo(index uint64) error {
	n := 0
	for n < len(w.segs)-1 && w.segs[n+1].firstIndex-1 <= index {
		n++
	}
	return w.removeFirst(n)
}

// releaseAll removes every segment but the open one: after a snapshot that reset the log
// (recorded in the open segment) nothing before it is needed.
func (w *wal) releaseAll() error {
	return w.removeFirst(len(w.segs) - 1)
}

func (w *wal) removeFirst(n int) error {
	if n <= 0 {
		return nil
	}
	for _, s := range w.segs[:n] {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove wal segment %s: %w", s.path, err)
		}
	}
	w.segs = append(w.segs[:0], w.segs[n:]...)
	return syncDir(w.dir)
}

// trimAndSync cuts the open segment's unused preallocated space and makes everything
// durable: a closed segment ends with its last record.
func (w *wal) trimAndSync() error {
	if err := w.f.Truncate(w.size); err != nil {
		return fmt.Errorf("trim wal segment %s: %w", w.f.Name(), err)
	}
	w.dirty = true // the size changed
	return w.sync()
}

// close trims, syncs and closes the open segment.
func (w *wal) close() error {
	if w.f == nil {
		return nil
	}
	err := w.trimAndSync()
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close wal segment %s: %w", w.f.Name(), cerr)
	}
	w.f = nil
	return err
}

// writeFileSync writes b to a new file at path and syncs it.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// truncateSync cuts the file at path to size and syncs it.
func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	return nil
}

// syncDir makes the entries of dir (created, renamed, removed files) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
