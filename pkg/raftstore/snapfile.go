package raftstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// A snapshot file lives in <DataDir>/snap as <term>-<index>.snap (16 hex digits each):
//
//	+0   "BRTHSNAP"
//	+8   uint32 LE  format version
//	+12  uint32 LE  length of the raftpb.Snapshot that follows
//	+16  raftpb.Snapshot: metadata (index, term, conf state) and membership as Data
//	     state machine bytes, as written by the SnapshotSource
//	-12  uint64 LE  length of the state machine bytes
//	-4   uint32 LE  CRC-32C of everything before it
//
// The same bytes are what the peer transport streams to a follower.

const (
	snapMagic         = "BRTHSNAP"
	snapVersion       = 1
	snapHeaderSize    = 16
	snapTrailerSize   = 12
	snapSuffix        = ".snap"
	snapTempSuffix    = ".snap.tmp"
	maxSnapshotMeta   = 64 << 20
	snapshotsToRetain = 2
)

func snapshotName(term, index uint64) string {
	return fmt.Sprintf("%016x-%016x%s", term, index, snapSuffix)
}

func parseSnapshotName(name string) (term, index uint64, ok bool) {
	base, found := strings.CutSuffix(name, snapSuffix)
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(base, "-")
	if !found || len(a) != 16 || len(b) != 16 {
		return 0, 0, false
	}
	term, err1 := strconv.ParseUint(a, 16, 64)
	index, err2 := strconv.ParseUint(b, 16, 64)
	return term, index, err1 == nil && err2 == nil
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeSnapshotFile writes the snapshot file of meta with the state machine bytes from
// src, synced and renamed into place. It returns the final path and the file size.
func writeSnapshotFile(dir string, meta *raftpb.Snapshot, src io.WriterTo) (string, int64, error) {
	md := meta.GetMetadata()
	path := filepath.Join(dir, snapshotName(md.GetTerm(), md.GetIndex()))
	mb, err := proto.Marshal(meta)
	if err != nil {
		return "", 0, fmt.Errorf("write snapshot %s: encode metadata: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "*"+snapTempSuffix)
	if err != nil {
		return "", 0, fmt.Errorf("write snapshot %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) (string, int64, error) {
		f.Close()
		os.Remove(tmp)
		return "", 0, fmt.Errorf("write snapshot %s: %w", path, err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	h := crc32.New(crcTable)
	out := &countingWriter{w: io.MultiWriter(bw, h)}
	var hdr [snapHeaderSize]byte
	copy(hdr[:8], snapMagic)
	binary.LittleEndian.PutUint32(hdr[8:12], snapVersion)
	binary.LittleEndian.PutUint32(hdr[12:16], uint32(len(mb)))
	if _, err := out.Write(hdr[:]); err != nil {
		return fail(err)
	}
	if _, err := out.Write(mb); err != nil {
		return fail(err)
	}
	bodyStart := out.n
	if _, err := src.WriteTo(out); err != nil {
		return fail(fmt.Errorf("state machine: %w", err))
	}
	var tr [snapTrailerSize]byte
	binary.LittleEndian.PutUint64(tr[0:8], uint64(out.n-bodyStart))
	if _, err := out.Write(tr[0:8]); err != nil {
		return fail(err)
	}
	binary.LittleEndian.PutUint32(tr[8:12], h.Sum32())
	if _, err := bw.Write(tr[8:12]); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", 0, fmt.Errorf("write snapshot %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", 0, fmt.Errorf("write snapshot %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return "", 0, err
	}
	return path, out.n + 4, nil
}

// snapshotFile is a verified snapshot file.
type snapshotFile struct {
	path    string
	meta    *raftpb.Snapshot
	bodyOff int64
	bodyLen int64
	size    int64
}

// readSnapshotFile checks the checksum and the layout of the snapshot file at path and
// decodes its metadata. Damage is reported as a *CorruptError.
func readSnapshotFile(path string) (*snapshotFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	size := fi.Size()
	corrupt := func(reason string, args ...any) error {
		return &CorruptError{File: path, Offset: -1, Reason: fmt.Sprintf(reason, args...)}
	}
	if size < snapHeaderSize+snapTrailerSize {
		return nil, corrupt("%d bytes, shorter than header and trailer", size)
	}
	h := crc32.New(crcTable)
	if _, err := io.Copy(h, bufio.NewReaderSize(io.NewSectionReader(f, 0, size-4), 1<<20)); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	var tail [snapTrailerSize]byte
	if _, err := f.ReadAt(tail[:], size-snapTrailerSize); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if got, want := h.Sum32(), binary.LittleEndian.Uint32(tail[8:12]); got != want {
		return nil, corrupt("checksum %08x, the file says %08x", got, want)
	}
	var hdr [snapHeaderSize]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if string(hdr[:8]) != snapMagic {
		return nil, corrupt("bad magic %q", hdr[:8])
	}
	if v := binary.LittleEndian.Uint32(hdr[8:12]); v == 0 || v > snapVersion {
		return nil, corrupt("format version %d, this build reads up to %d", v, snapVersion)
	}
	metaLen := int64(binary.LittleEndian.Uint32(hdr[12:16]))
	bodyLen := int64(binary.LittleEndian.Uint64(tail[0:8]))
	if metaLen > maxSnapshotMeta || bodyLen < 0 || snapHeaderSize+metaLen+bodyLen+snapTrailerSize != size {
		return nil, corrupt("lengths (metadata %d, body %d) do not add up to the file size %d", metaLen, bodyLen, size)
	}
	mb := make([]byte, metaLen)
	if _, err := f.ReadAt(mb, snapHeaderSize); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	meta := &raftpb.Snapshot{}
	if err := proto.Unmarshal(mb, meta); err != nil {
		return nil, corrupt("decode metadata: %v", err)
	}
	if meta.GetMetadata().GetIndex() == 0 {
		return nil, corrupt("metadata has index 0")
	}
	return &snapshotFile{path: path, meta: meta, bodyOff: snapHeaderSize + metaLen, bodyLen: bodyLen, size: size}, nil
}

// restore hands the state machine bytes of the file to sm.Restore.
func (sf *snapshotFile) restore(sm StateMachine) error {
	f, err := os.Open(sf.path)
	if err != nil {
		return fmt.Errorf("restore snapshot %s: %w", sf.path, err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(io.NewSectionReader(f, sf.bodyOff, sf.bodyLen), 1<<20)
	if err := sm.Restore(r); err != nil {
		return fmt.Errorf("restore snapshot %s: state machine: %w", sf.path, err)
	}
	return nil
}

// snapEntry is a snapshot file found in the snapshot dir.
type snapEntry struct {
	term, index uint64
	path        string
}

// listSnapshots returns the snapshot files in dir sorted by index, removing temporary
// files left by interrupted writes or transfers.
func listSnapshots(dir string) ([]snapEntry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list snapshots %s: %w", dir, err)
	}
	var out []snapEntry
	for _, de := range des {
		name := de.Name()
		if strings.HasSuffix(name, snapTempSuffix) {
			continue
		}
		term, index, ok := parseSnapshotName(name)
		if !ok {
			continue
		}
		out = append(out, snapEntry{term: term, index: index, path: filepath.Join(dir, name)})
	}
	slices.SortFunc(out, func(a, b snapEntry) int { return compareUint64(a.index, b.index) })
	return out, nil
}

// removeSnapshotTemps removes the temporary files of interrupted snapshot writes.
func removeSnapshotTemps(dir string) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list snapshots %s: %w", dir, err)
	}
	for _, de := range des {
		if strings.HasSuffix(de.Name(), snapTempSuffix) {
			if err := os.Remove(filepath.Join(dir, de.Name())); err != nil {
				return fmt.Errorf("remove snapshot leftover %s: %w", de.Name(), err)
			}
		}
	}
	return nil
}

// pruneSnapshots removes the snapshot files at or below current except the newest
// snapshotsToRetain. Files above current are left alone: they may be transfers that raft
// has not taken yet.
func pruneSnapshots(dir string, current uint64) error {
	snaps, err := listSnapshots(dir)
	if err != nil {
		return err
	}
	var keep int
	for i := len(snaps) - 1; i >= 0; i-- {
		s := snaps[i]
		if s.index > current {
			continue
		}
		if keep < snapshotsToRetain {
			keep++
			continue
		}
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove snapshot %s: %w", s.path, err)
		}
	}
	return nil
}
