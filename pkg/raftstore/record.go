package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The WAL is a sequence of records. A record is a 13-byte header and a payload:
//
//	+0  uint32 LE  payload length
//	+4  uint8      record type
//	+5  uint32 LE  CRC-32C of bytes +0..+5 (length and type)
//	+9  uint32 LE  CRC-32C of the payload
//	+13 payload
//
// The header has its own checksum so that a damaged length is never trusted: a record
// that claims to run past the end of the file is a torn write only when its header is
// intact.

// crcTable is the CRC-32C (Castagnoli) table used by the WAL and snapshot files.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

// recordType says what a WAL record holds. Values are persisted and never reused.
type recordType byte

const (
	// recordWALHeader opens every segment: format version, cluster, member, sequence.
	recordWALHeader recordType = 1
	// recordEntry is one marshalled raftpb.Entry.
	recordEntry recordType = 2
	// recordHardState is one marshalled raftpb.HardState; the last one wins.
	recordHardState recordType = 3
	// recordSnapshot marks a snapshot file that is durable (index, term, flags).
	recordSnapshot recordType = 4
)

const (
	recordHeaderSize = 13
	// maxRecordBytes bounds one record; a larger length is damage, not data.
	maxRecordBytes = 512 << 20
)

var (
	errShortHeader    = errors.New("record header cut short")
	errShortPayload   = errors.New("record payload cut short")
	errHeaderChecksum = errors.New("record header checksum mismatch")
	errPayloadCRC     = errors.New("record payload checksum mismatch")
	errRecordTooLarge = errors.New("record length over the limit")
)

// appendRecord appends one record with the given payload to dst.
func appendRecord(dst []byte, typ recordType, payload []byte) []byte {
	out, _ := appendRecordFunc(dst, typ, func(b []byte) ([]byte, error) { return append(b, payload...), nil })
	return out
}

// appendRecordFunc appends one record whose payload fill appends to its argument, so that
// a marshaller can write straight into the WAL buffer.
func appendRecordFunc(dst []byte, typ recordType, fill func([]byte) ([]byte, error)) ([]byte, error) {
	start := len(dst)
	dst = append(dst, make([]byte, recordHeaderSize)...)
	out, err := fill(dst)
	if err != nil {
		return dst[:start], err
	}
	n := len(out) - start - recordHeaderSize
	if n > maxRecordBytes {
		return out[:start], fmt.Errorf("encode record: %d bytes: %w", n, errRecordTooLarge)
	}
	h := out[start : start+recordHeaderSize]
	binary.LittleEndian.PutUint32(h[0:4], uint32(n))
	h[4] = byte(typ)
	binary.LittleEndian.PutUint32(h[5:9], crc32.Checksum(h[0:5], crcTable))
	binary.LittleEndian.PutUint32(h[9:13], crc32.Checksum(out[start+recordHeaderSize:], crcTable))
	return out, nil
}

// decodeRecord decodes the record at the start of b. It returns the record's type, its
// payload (aliasing b) and its total size. The errors say which part is damaged or missing.
func decodeRecord(b []byte) (recordType, []byte, int, error) {
	if len(b) < recordHeaderSize {
		return 0, nil, 0, errShortHeader
	}
	if crc32.Checksum(b[0:5], crcTable) != binary.LittleEndian.Uint32(b[5:9]) {
		return 0, nil, 0, errHeaderChecksum
	}
	n := binary.LittleEndian.Uint32(b[0:4])
	if n > maxRecordBytes {
		return 0, nil, 0, errRecordTooLarge
	}
	size := recordHeaderSize + int(n)
	if len(b) < size {
		return 0, nil, 0, errShortPayload
	}
	payload := b[recordHeaderSize:size]
	if crc32.Checksum(payload, crcTable) != binary.LittleEndian.Uint32(b[9:13]) {
		return 0, nil, 0, errPayloadCRC
	}
	return recordType(b[4]), payload, size, nil
}

// scanSegment walks the records of one segment's bytes and calls fn for each valid one.
// It returns the length of the valid prefix. In the last segment (last true) a damaged
// record that is the tail of the file is a torn write: the scan stops there and reports
// torn. Anywhere else a damaged record is corruption, returned as a *CorruptError with
// the offset (File is left for the caller to fill). An error from fn is returned the same
// way, at the offset of the record fn was given.
func scanSegment(data []byte, last bool, fn func(off int64, typ recordType, payload []byte) error) (end int64, torn bool, err error) {
	off := 0
	for off < len(data) {
		typ, payload, size, derr := decodeRecord(data[off:])
		if derr != nil {
			if allZero(data[off:]) {
				// Preallocated space never written (no record has an all-zero header: its
				// checksum would not match): the clean end of the segment.
				return int64(off), false, nil
			}
			if last && isTornTail(data, off, derr) {
				return int64(off), true, nil
			}
			return int64(off), false, &CorruptError{Offset: int64(off), Reason: derr.Error()}
		}
		if err := fn(int64(off), typ, payload); err != nil {
			return int64(off), false, &CorruptError{Offset: int64(off), Reason: err.Error()}
		}
		off += size
	}
	return int64(off), false, nil
}

// isTornTail reports whether a damaged record at off is what an interrupted append leaves
// behind: a record cut off by the end of the file, or a damaged record followed by nothing
// but zeros (space the file system extended but never wrote). A damaged record with data
// after it is corruption.
func isTornTail(data []byte, off int, derr error) bool {
	switch {
	case errors.Is(derr, errShortHeader), errors.Is(derr, errShortPayload):
		return true
	case errors.Is(derr, errHeaderChecksum):
		return allZero(data[min(len(data), off+recordHeaderSize):])
	case errors.Is(derr, errPayloadCRC):
		n := int(binary.LittleEndian.Uint32(data[off : off+4]))
		return allZero(data[off+recordHeaderSize+n:])
	}
	return false
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
