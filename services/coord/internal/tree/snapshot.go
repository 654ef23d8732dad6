package tree

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"maps"
	"slices"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"github.com/tidwall/btree"
	"google.golang.org/protobuf/proto"
)

// The snapshot format: the 8-byte magic, then records of [type byte][uvarint length]
// [payload], ending with a trailer record holding the CRC-32C of every byte before it.
// Record types are persisted and only ever appended.
const snapMagic = "BCOORD\x00\x01"

const (
	recHeader  byte = 1
	recNode    byte = 2
	recSession byte = 3
	recDedupe  byte = 4
	recMember  byte = 5
	// recSessionDeadline replaces recSession (remaining time), which is still read.
	recSessionDeadline byte = 6
	recTrailer         byte = 0xFF

	maxRecordBytes = MaxRequestBytes * 2
)

// Response kinds stored in the request-id table.
const (
	resPut          byte = 1
	resDelete       byte = 2
	resTxn          byte = 3
	resSessionOpen  byte = 4
	resSessionClose byte = 5
	resMemberMark   byte = 6
	resError        byte = 0x80
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// snapshot is a point-in-time copy of the machine. The node tree is a copy-on-write clone
// (O(1) to take: the live tree copies a B-tree node the first time it writes to it after the
// clone), the other tables are small and copied; nodes and results are immutable and shared.
type snapshot struct {
	nodes       *btree.BTreeG[item]
	rev         int64
	seq         int64
	lastSession int64
	sessions    []SessionInfo
	dedupe      []dedupeEntry
	members     []MemberAttrs
}

// Snapshot captures the state as of the last applied entry. It is cheap (no node is
// copied) and the result can be written on another goroutine while Apply continues.
func (m *Machine) Snapshot() (raftstore.SnapshotSource, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &snapshot{
		nodes: m.nodes.Copy(), rev: m.rev, seq: m.seq, lastSession: m.lastSession,
		sessions: m.sessionInfosLocked(), dedupe: m.dedupe.entries(),
	}
	for _, id := range slices.Sorted(maps.Keys(m.members)) {
		s.members = append(s.members, m.members[id])
	}
	return s, nil
}

// Revision is the revision the snapshot holds.
func (s *snapshot) Revision() int64 { return s.rev }

// Close releases the snapshot.
func (s *snapshot) Close() error { s.nodes = nil; return nil }

type countingWriter struct {
	w   io.Writer
	n   int64
	crc hash.Hash32
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.crc.Write(p[:n])
	return n, err
}

// WriteTo writes the snapshot in the format above.
func (s *snapshot) WriteTo(w io.Writer) (int64, error) {
	if s.nodes == nil {
		return 0, errors.New("write snapshot: snapshot is closed")
	}
	cw := &countingWriter{w: w, crc: crc32.New(crcTable)}
	bw := bufio.NewWriterSize(cw, 256<<10)
	var buf []byte
	var err error
	rec := func(t byte, payload []byte) {
		if err != nil {
			return
		}
		var hdr [binary.MaxVarintLen64 + 1]byte
		hdr[0] = t
		n := binary.PutUvarint(hdr[1:], uint64(len(payload)))
		if _, err = bw.Write(hdr[:1+n]); err != nil {
			return
		}
		_, err = bw.Write(payload)
	}
	if _, err = bw.WriteString(snapMagic); err != nil {
		return cw.n, fmt.Errorf("write snapshot: %w", err)
	}
	buf = binary.AppendVarint(buf[:0], s.rev)
	buf = binary.AppendVarint(buf, s.seq)
	buf = binary.AppendVarint(buf, s.lastSession)
	buf = binary.AppendUvarint(buf, uint64(s.nodes.Len()))
	rec(recHeader, buf)
	s.nodes.Scan(func(it item) bool {
		buf, err = marshalOpts.MarshalAppend(buf[:0], it.n)
		rec(recNode, buf)
		return err == nil
	})
	for _, si := range s.sessions {
		buf = binary.AppendVarint(buf[:0], si.ID)
		buf = binary.AppendVarint(buf, si.TTLMs)
		buf = binary.AppendVarint(buf, si.DeadlineMs)
		rec(recSessionDeadline, buf)
	}
	for _, e := range s.dedupe {
		buf = appendString(buf[:0], e.id)
		buf = append(buf, e.hash[:]...)
		buf = append(buf, e.enc...)
		rec(recDedupe, buf)
	}
	for _, a := range s.members {
		buf = binary.AppendUvarint(buf[:0], a.ID)
		buf = appendString(buf, a.Name)
		buf = appendString(buf, a.ClientAddr)
		rec(recMember, buf)
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return cw.n, fmt.Errorf("write snapshot: %w", err)
	}
	var trailer [6]byte
	trailer[0] = recTrailer
	trailer[1] = 4
	binary.BigEndian.PutUint32(trailer[2:], cw.crc.Sum32())
	if _, err := cw.w.Write(trailer[:]); err != nil {
		return cw.n, fmt.Errorf("write snapshot trailer: %w", err)
	}
	return cw.n + int64(len(trailer)), nil
}

// appendResult encodes a result of the request-id table: a kind byte, then the response
// message, or an error's kind, message and field.
func appendResult(b []byte, res any) ([]byte, error) {
	var kind byte
	switch r := res.(type) {
	case *applyError:
		b = append(b, resError)
		b = binary.AppendUvarint(b, uint64(kindIndex(r.kind)))
		b = appendString(b, r.msg)
		return appendString(b, r.field), nil
	case memberMark:
		b = append(b, resMemberMark)
		return binary.AppendUvarint(b, r.index), nil
	case *PutResult:
		if b == nil {
			b = make([]byte, 0, 32+len(r.Node.Path))
		}
		return r.appendEncoded(append(b, resPut)), nil
	case *coordv1.PutResponse:
		kind = resPut
	case *coordv1.DeleteResponse:
		kind = resDelete
	case *coordv1.TxnResponse:
		kind = resTxn
	case *coordv1.SessionOpenResponse:
		kind = resSessionOpen
	case *coordv1.SessionCloseResponse:
		kind = resSessionClose
	default:
		return b, fmt.Errorf("encode result: unexpected type %T", res)
	}
	m := res.(proto.Message)
	if b == nil {
		b = make([]byte, 0, 1+marshalOpts.Size(m))
	}
	b = append(b, kind)
	return marshalOpts.MarshalAppend(b, m)
}

func decodeResult(d *decoder) any {
	kind := d.byte1()
	if d.err != nil {
		return nil
	}
	if kind == resError {
		idx := d.uvarint()
		msg := d.string()
		var field string
		if len(d.b) > 0 { // written since the field is kept
			field = d.string()
		}
		if idx >= uint64(len(errorKinds)) {
			d.err = fmt.Errorf("%w: error kind %d", ErrCorrupt, idx)
			return nil
		}
		return &applyError{kind: errorKinds[idx], msg: msg, field: field}
	}
	if kind == resMemberMark {
		return memberMark{index: d.uvarint()}
	}
	var m proto.Message
	switch kind {
	case resPut:
		m = &coordv1.PutResponse{}
	case resDelete:
		m = &coordv1.DeleteResponse{}
	case resTxn:
		m = &coordv1.TxnResponse{}
	case resSessionOpen:
		m = &coordv1.SessionOpenResponse{}
	case resSessionClose:
		m = &coordv1.SessionCloseResponse{}
	default:
		d.err = fmt.Errorf("%w: result kind %d", ErrCorrupt, kind)
		return nil
	}
	if err := proto.Unmarshal(d.b, m); err != nil {
		d.err = fmt.Errorf("%w: result: %v", ErrCorrupt, err)
		return nil
	}
	d.b = nil
	return m
}

type crcReader struct {
	r   *bufio.Reader
	crc hash.Hash32
}

func (c *crcReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.crc.Write([]byte{b})
	}
	return b, err
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.crc.Write(p[:n])
	return n, err
}

// Restore replaces the whole state with a snapshot written by Snapshot. Nothing changes
// when the snapshot is corrupt or truncated.
func (m *Machine) Restore(r io.Reader) error {
	st, err := readSnapshot(r)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st.dedupe.maxEntries, st.dedupe.maxBytes = m.dedupe.maxEntries, m.dedupe.maxBytes
	m.nodes, m.rev, m.seq, m.lastSession = st.nodes, st.rev, st.seq, st.lastSession
	m.sessions, m.dedupe, m.members = st.sessions, st.dedupe, st.members
	if m.pub != nil {
		m.pub.Reset(m.rev)
	}
	if m.obs != nil {
		m.obs.SessionsReset(m.sessionInfosLocked())
	}
	return nil
}

// ReadSnapshotInfo checks a snapshot file and returns its revision and node count.
func ReadSnapshotInfo(r io.Reader) (rev int64, nodes int, err error) {
	st, err := readSnapshot(r)
	if err != nil {
		return 0, 0, err
	}
	return st.rev, st.nodes.Len(), nil
}

type restored struct {
	nodes       *btree.BTreeG[item]
	rev         int64
	seq         int64
	lastSession int64
	sessions    map[int64]*session
	dedupe      *dedupeTable
	members     map[uint64]MemberAttrs
}

func readSnapshot(r io.Reader) (*restored, error) {
	cr := &crcReader{r: bufio.NewReaderSize(r, 256<<10), crc: crc32.New(crcTable)}
	magic := make([]byte, len(snapMagic))
	if _, err := io.ReadFull(cr, magic); err != nil {
		return nil, fmt.Errorf("%w: read magic: %v", ErrCorrupt, err)
	}
	if string(magic) != snapMagic {
		return nil, fmt.Errorf("%w: not a berth-coord snapshot (bad magic %q)", ErrCorrupt, magic)
	}
	st := &restored{
		nodes: newNodes(), sessions: map[int64]*session{}, members: map[uint64]MemberAttrs{},
		dedupe: newDedupeTable(int(^uint(0)>>1), int(^uint(0)>>1)),
	}
	sawHeader := false
	buf := make([]byte, 0, 4096)
	for {
		before := cr.crc.Sum32() // the CRC covers everything before the trailer
		t, err := cr.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%w: truncated: no trailer", ErrCorrupt)
		}
		if t == recTrailer {
			want := before
			var tr [5]byte
			if _, err := io.ReadFull(cr, tr[:]); err != nil || tr[0] != 4 {
				return nil, fmt.Errorf("%w: truncated trailer", ErrCorrupt)
			}
			if got := binary.BigEndian.Uint32(tr[1:]); got != want {
				return nil, fmt.Errorf("%w: checksum mismatch: file says %08x, content is %08x", ErrCorrupt, got, want)
			}
			if !sawHeader {
				return nil, fmt.Errorf("%w: no header record", ErrCorrupt)
			}
			break
		}
		n, err := binary.ReadUvarint(cr)
		if err != nil || n > maxRecordBytes {
			return nil, fmt.Errorf("%w: bad record length", ErrCorrupt)
		}
		if uint64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(cr, buf); err != nil {
			return nil, fmt.Errorf("%w: truncated record", ErrCorrupt)
		}
		d := decoder{b: buf}
		switch t {
		case recHeader:
			st.rev, st.seq, st.lastSession = d.varint(), d.varint(), d.varint()
			d.uvarint()
			sawHeader = true
		case recNode:
			nd := &coordv1.Node{}
			if err := proto.Unmarshal(buf, nd); err != nil {
				return nil, fmt.Errorf("%w: node: %v", ErrCorrupt, err)
			}
			st.nodes.Load(item{path: nd.Path, n: nd}) // in path order: appended without a search
		case recSession:
			// A remaining time relative to an unknown moment is no deadline.
			s := &session{id: d.varint(), ttlMs: d.varint(), nodes: map[string]struct{}{}}
			d.varint()
			d.byte1()
			st.sessions[s.id] = s
		case recSessionDeadline:
			s := &session{id: d.varint(), ttlMs: d.varint(), deadlineMs: d.varint(), nodes: map[string]struct{}{}}
			st.sessions[s.id] = s
		case recDedupe:
			id := d.string()
			var h [32]byte
			copy(h[:], d.bytesN(32))
			enc := d.b
			decodeResult(&d) // checks it
			if d.err == nil {
				st.dedupe.put(id, h, bytes.Clone(enc)) // buf is reused for the next record
			}
		case recMember:
			a := MemberAttrs{ID: d.uvarint(), Name: d.string(), ClientAddr: d.string()}
			st.members[a.ID] = a
		default:
			return nil, fmt.Errorf("%w: unknown record type %d", ErrCorrupt, t)
		}
		if d.err != nil {
			return nil, fmt.Errorf("record type %d: %w", t, d.err)
		}
	}
	st.nodes.Scan(func(it item) bool {
		if n := it.n; n.Session != 0 {
			if s := st.sessions[n.Session]; s != nil {
				s.nodes[n.Path] = struct{}{}
			}
		}
		return true
	})
	return st, nil
}
