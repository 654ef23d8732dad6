package tree

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
	"unsafe"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// cmdType is the first byte of every Raft entry the store proposes. Values are persisted in
// the log: they are never reused or renumbered, only appended.
type cmdType byte

const (
	cmdPut           cmdType = 1
	cmdDelete        cmdType = 2
	cmdTxn           cmdType = 3
	cmdSessionOpen   cmdType = 4
	cmdSessionClose  cmdType = 5
	cmdSessionExpire cmdType = 6
	cmdTTLCheckpoint cmdType = 7
	cmdMemberAttrs   cmdType = 8
	cmdMemberAdd     cmdType = 9
	cmdMemberRemove  cmdType = 10
	// cmdSessionOpenAt is a session open that carries the proposer's clock: [unix ms]
	// [SessionOpenRequest]. It replaces cmdSessionOpen, which is still applied.
	cmdSessionOpenAt cmdType = 11
	// cmdDeadlineCheckpoint records sessions' absolute deadlines. It replaces
	// cmdTTLCheckpoint (remaining times), which is still decoded and then ignored.
	cmdDeadlineCheckpoint cmdType = 12
)

// maxRequestIDBytes bounds a request id.
const maxRequestIDBytes = 256

// MaxRequestBytes bounds the encoded size of one write request: a 4 MiB value plus room
// for the path and the other fields. Larger requests are refused before they are proposed.
const MaxRequestBytes = MaxValueBytes + 64<<10

var marshalOpts = proto.MarshalOptions{Deterministic: true}

func encodeMsg(t cmdType, m proto.Message) ([]byte, error) {
	size := marshalOpts.Size(m)
	if size > MaxRequestBytes {
		return nil, newError(ErrValueTooLarge, "request is %d bytes encoded, over the %d-byte limit", size, MaxRequestBytes)
	}
	b := make([]byte, 1, 1+size)
	b[0] = byte(t)
	b, err := marshalOpts.MarshalAppend(b, m)
	if err != nil {
		return nil, fmt.Errorf("encode command %d: %w", t, err)
	}
	return b, nil
}

// EncodePut encodes a Put request as a Raft entry.
func EncodePut(r *coordv1.PutRequest) ([]byte, error) { return encodeMsg(cmdPut, r) }

// EncodeDelete encodes a Delete request as a Raft entry.
func EncodeDelete(r *coordv1.DeleteRequest) ([]byte, error) { return encodeMsg(cmdDelete, r) }

// EncodeTxn encodes a Txn request as a Raft entry.
func EncodeTxn(r *coordv1.TxnRequest) ([]byte, error) { return encodeMsg(cmdTxn, r) }

// EncodeSessionOpen encodes a SessionOpen request as a Raft entry; nowMs is the
// proposer's wall clock (unix ms). The session's first deadline is nowMs plus its TTL: no
// later than the client can count on, since the client counts from before its request.
func EncodeSessionOpen(r *coordv1.SessionOpenRequest, nowMs int64) ([]byte, error) {
	size := marshalOpts.Size(r)
	if size > MaxRequestBytes {
		return nil, newError(ErrValueTooLarge, "request is %d bytes encoded, over the %d-byte limit", size, MaxRequestBytes)
	}
	b := make([]byte, 1, 1+binary.MaxVarintLen64+size)
	b[0] = byte(cmdSessionOpenAt)
	b = binary.AppendVarint(b, nowMs)
	b, err := marshalOpts.MarshalAppend(b, r)
	if err != nil {
		return nil, fmt.Errorf("encode session open: %w", err)
	}
	return b, nil
}

// EncodeSessionClose encodes a SessionClose request as a Raft entry.
func EncodeSessionClose(r *coordv1.SessionCloseRequest) ([]byte, error) {
	return encodeMsg(cmdSessionClose, r)
}

// EncodeSessionExpire encodes the expiry of sessions, decided by the leader of term on its
// clock. The entry is ignored when it is committed in another term (a deposed leader's
// decision forwarded to its successor must not expire anything).
func EncodeSessionExpire(term uint64, ids []int64) []byte {
	b := []byte{byte(cmdSessionExpire)}
	b = binary.AppendUvarint(b, term)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = binary.AppendVarint(b, id)
	}
	return b
}

// Checkpoint records one session's deadline.
type Checkpoint struct {
	// ID is the session.
	ID int64
	// DeadlineMs is the session's deadline (unix ms on the leader's clock): when the leader
	// renewed it, plus its TTL.
	DeadlineMs int64
}

// EncodeDeadlineCheckpoint encodes the deadlines of sessions renewed by the leader of term.
// Like expiry, it is ignored when committed in another term; a deadline never moves a
// session's recorded deadline back.
func EncodeDeadlineCheckpoint(term uint64, cps []Checkpoint) []byte {
	b := make([]byte, 1, 2+binary.MaxVarintLen64+len(cps)*2*binary.MaxVarintLen64)
	b[0] = byte(cmdDeadlineCheckpoint)
	b = binary.AppendUvarint(b, term)
	b = binary.AppendUvarint(b, uint64(len(cps)))
	for _, c := range cps {
		b = binary.AppendVarint(b, c.ID)
		b = binary.AppendVarint(b, c.DeadlineMs)
	}
	return b
}

// EncodeMemberAdd encodes the record of a MemberAdd request with a request id, proposed
// before the membership change itself so that a retry can tell that an earlier attempt
// was made (see MemberRequestResult).
func EncodeMemberAdd(r *coordv1.MemberAddRequest) ([]byte, error) { return encodeMsg(cmdMemberAdd, r) }

// EncodeMemberRemove encodes the record of a MemberRemove request with a request id.
func EncodeMemberRemove(r *coordv1.MemberRemoveRequest) ([]byte, error) {
	return encodeMsg(cmdMemberRemove, r)
}

// MemberRequestResult is what Apply returns for a member request record.
type MemberRequestResult struct {
	// Repeat is true when the request id was recorded before, with the same request: an
	// earlier attempt of this request was made, and its change may already be in effect.
	Repeat bool
}

// memberMark is what the request-id table remembers of a member request: the index of the
// entry that first recorded it.
type memberMark struct{ index uint64 }

// MemberAttrs are what a member announces about itself through the log.
type MemberAttrs struct {
	// ID is the member id.
	ID uint64
	// Name is the member's name.
	Name string
	// ClientAddr is where it serves the client API.
	ClientAddr string
}

// EncodeMemberAttrs encodes a member's announcement of its name and client address.
func EncodeMemberAttrs(a MemberAttrs) []byte {
	b := []byte{byte(cmdMemberAttrs)}
	b = binary.AppendUvarint(b, a.ID)
	b = appendString(b, a.Name)
	b = appendString(b, a.ClientAddr)
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads the varint encodings above; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: truncated varint", ErrCorrupt)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: truncated varint", ErrCorrupt)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.err = fmt.Errorf("%w: truncated", ErrCorrupt)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) bytesN(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if uint64(len(d.b)) < n {
		d.err = fmt.Errorf("%w: truncated: want %d bytes, have %d", ErrCorrupt, n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytesN(d.uvarint())) }

// count reads a collection length and refuses one that cannot fit in the rest of the input
// (each element takes at least min bytes), so corrupt input cannot make us allocate wildly.
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)/min) {
		d.err = fmt.Errorf("%w: count %d exceeds the input", ErrCorrupt, n)
		return 0
	}
	return int(n)
}

// decodePut decodes the PutRequest of a put entry. It is proto.Unmarshal for this one
// message, by hand, because every put is decoded on every member: the value, the path and
// the request id are not copied but alias the entry, which raftstore never modifies (and
// which lives on in the node as long as they do); no reflection is involved. Unknown
// fields are skipped; strings must be UTF-8, as proto.Unmarshal requires.
func decodePut(b []byte) (*coordv1.PutRequest, error) {
	r := &coordv1.PutRequest{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		if num < protowire.MinValidNumber || num > protowire.MaxValidNumber {
			return nil, fmt.Errorf("invalid field number %d", num)
		}
		b = b[n:]
		var v uint64
		var s []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			s, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			if !utf8.Valid(s) {
				return nil, errors.New("path is not valid UTF-8")
			}
			r.Path = aliasString(s)
		case num == 2 && typ == protowire.BytesType:
			r.Value = s[:len(s):len(s)]
		case num == 3 && typ == protowire.VarintType:
			ev := int64(v)
			r.ExpectedVersion = &ev
		case num == 4 && typ == protowire.VarintType:
			r.SessionId = int64(v)
		case num == 5 && typ == protowire.VarintType:
			r.Sequential = protowire.DecodeBool(v)
		case num == 6 && typ == protowire.BytesType:
			if !utf8.Valid(s) {
				return nil, errors.New("request id is not valid UTF-8")
			}
			r.RequestId = aliasString(s)
		}
	}
	return r, nil
}

// aliasString returns b as a string without copying it; b must never be modified.
func aliasString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}
