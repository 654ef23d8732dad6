// Package tree is berth-coord's replicated state machine: the tree of nodes, the global
// revision, sessions and their ephemeral nodes, and the table of recent request ids. It
// implements raftstore.StateMachine; every change arrives as a committed Raft entry through
// Apply, so every member computes the same state. Reads (Get, List, Stats) may run on any
// goroutine concurrently with Apply.
package tree

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"github.com/tidwall/btree"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Limits of a session's time to live.
const (
	MinSessionTTLMs = 1000
	MaxSessionTTLMs = 24 * 3600 * 1000
	// MaxTxnOps bounds the compares and the ops of each branch of a Txn.
	MaxTxnOps = 128
)

// Publisher receives the events of every revision, in order, from Apply. It must not block.
type Publisher interface {
	// Publish hands over the events of revision rev. The events are never modified later.
	Publish(rev int64, events []*coordv1.Event)
	// Reset says the state was replaced by a snapshot at revision rev: no event before it
	// will ever be published.
	Reset(rev int64)
}

// SessionObserver is told, from Apply, when sessions appear and disappear, so the leader's
// in-memory expiry clock (internal/session) tracks the replicated session table. Calls are
// made with the machine's lock held: they must be quick and must not call back.
type SessionObserver interface {
	// SessionOpened reports a new session and its deadline (unix ms on the proposing
	// member's clock; 0 when the open entry carries none).
	SessionOpened(id, ttlMs, deadlineMs int64)
	// SessionRemoved reports a session closed or expired.
	SessionRemoved(id int64)
	// SessionsReset reports that a snapshot replaced the whole session table.
	SessionsReset(sessions []SessionInfo)
}

// SessionInfo is the replicated state of one session.
type SessionInfo struct {
	// ID is the session id.
	ID int64
	// TTLMs is its time to live.
	TTLMs int64
	// DeadlineMs is its deadline (unix ms): the open, or the last renewal a leader
	// recorded, plus the TTL. 0 when none is recorded (state written by an older version).
	DeadlineMs int64
	// Nodes is the number of ephemeral nodes it owns.
	Nodes int
}

// Options configure a Machine.
type Options struct {
	// DedupeEntries bounds the request-id table by count (default 100000).
	DedupeEntries int
	// DedupeBytes bounds the request-id table by the size of the results it keeps
	// (default 64 MiB).
	DedupeBytes int
	// Publisher receives the events; nil drops them.
	Publisher Publisher
	// Sessions observes the session table; nil ignores it.
	Sessions SessionObserver
}

type session struct {
	id         int64
	ttlMs      int64
	deadlineMs int64
	nodes      map[string]struct{}
}

// Machine is the state machine. Construct it with New.
type Machine struct {
	pub Publisher
	obs SessionObserver

	// mu guards everything below. Apply and Snapshot take it for writing, reads for reading.
	mu          sync.RWMutex
	nodes       *btree.BTreeG[item]
	rev         int64
	seq         int64
	lastSession int64
	applied     uint64
	sessions    map[int64]*session
	dedupe      *dedupeTable
	members     map[uint64]MemberAttrs
	dedupeHits  uint64
}

// Stats is a summary of the state for metrics and Status.
type Stats struct {
	Revision      int64
	AppliedIndex  uint64
	Nodes         int
	Sessions      int
	DedupeEntries int
	DedupeHits    uint64
}

var _ raftstore.StateMachine = (*Machine)(nil)

// item is an entry of the node tree: the path is kept inline next to the node pointer, so
// that a search compares paths without loading every node it passes (a cache miss each).
type item struct {
	path string
	n    *coordv1.Node
}

func itemLess(a, b item) bool { return PathLess(a.path, b.path) }

func newNodes() *btree.BTreeG[item] {
	return btree.NewBTreeGOptions(itemLess, btree.Options{NoLocks: true})
}

// key is the tree item that finds path.
func key(path string) item { return item{path: path} }

// New returns an empty machine.
func New(opts Options) *Machine {
	if opts.DedupeEntries <= 0 {
		opts.DedupeEntries = 100000
	}
	if opts.DedupeBytes <= 0 {
		opts.DedupeBytes = 64 << 20
	}
	return &Machine{
		pub:      opts.Publisher,
		obs:      opts.Sessions,
		nodes:    newNodes(),
		sessions: map[int64]*session{},
		dedupe:   newDedupeTable(opts.DedupeEntries, opts.DedupeBytes),
		members:  map[uint64]MemberAttrs{},
	}
}

// Apply applies one committed entry and returns its result: a response message with
// header.revision set (or a *PutResult for a fresh put), which the caller owns (the
// request-id table keeps an encoded copy), or an error wrapping one of the package's
// sentinels.
func (m *Machine) Apply(e raftstore.Entry) any {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Index > m.applied {
		m.applied = e.Index
	}
	if len(e.Data) == 0 {
		return nil
	}
	body := e.Data[1:]
	switch cmdType(e.Data[0]) {
	case cmdPut:
		req, err := decodePut(body)
		if err != nil {
			return newError(ErrCorrupt, "decode put: %v", err)
		}
		return m.deduped(req.RequestId, e.Data, func() any { return m.applyPut(req) })
	case cmdDelete:
		req := &coordv1.DeleteRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			return newError(ErrCorrupt, "decode delete: %v", err)
		}
		return m.deduped(req.RequestId, e.Data, func() any { return m.applyDelete(req) })
	case cmdTxn:
		req := &coordv1.TxnRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			return newError(ErrCorrupt, "decode txn: %v", err)
		}
		return m.deduped(req.RequestId, e.Data, func() any { return m.applyTxn(req) })
	case cmdSessionOpen:
		req := &coordv1.SessionOpenRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			return newError(ErrCorrupt, "decode session open: %v", err)
		}
		return m.deduped(req.RequestId, e.Data, func() any { return m.applySessionOpen(req, 0) })
	case cmdSessionOpenAt:
		d := decoder{b: body}
		at := d.varint()
		if d.err != nil {
			return newError(ErrCorrupt, "decode session open: %v", d.err)
		}
		req := &coordv1.SessionOpenRequest{}
		if err := proto.Unmarshal(d.b, req); err != nil {
			return newError(ErrCorrupt, "decode session open: %v", err)
		}
		// A retry of the open is proposed with another clock reading: the request id table
		// compares the request alone, as the older encoding was.
		key := make([]byte, 0, 1+len(d.b))
		key = append(append(key, byte(cmdSessionOpen)), d.b...)
		return m.deduped(req.RequestId, key, func() any { return m.applySessionOpen(req, at) })
	case cmdSessionClose:
		req := &coordv1.SessionCloseRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			return newError(ErrCorrupt, "decode session close: %v", err)
		}
		return m.deduped(req.RequestId, e.Data, func() any { return m.applySessionClose(req) })
	case cmdSessionExpire:
		return m.applyExpire(e.Term, body)
	case cmdTTLCheckpoint:
		return m.applyLegacyCheckpoint(e.Term, body)
	case cmdDeadlineCheckpoint:
		return m.applyCheckpoint(e.Term, body)
	case cmdMemberAdd, cmdMemberRemove:
		var req interface {
			proto.Message
			GetRequestId() string
		} = &coordv1.MemberAddRequest{}
		if cmdType(e.Data[0]) == cmdMemberRemove {
			req = &coordv1.MemberRemoveRequest{}
		}
		if err := proto.Unmarshal(body, req); err != nil {
			return newError(ErrCorrupt, "decode member request: %v", err)
		}
		if req.GetRequestId() == "" {
			return newFieldError(ErrInvalidArgument, "request_id", "member request record without a request id")
		}
		res := m.deduped(req.GetRequestId(), e.Data, func() any { return memberMark{index: e.Index} })
		if mark, ok := res.(memberMark); ok {
			return MemberRequestResult{Repeat: mark.index != e.Index}
		}
		return res
	case cmdMemberAttrs:
		d := decoder{b: body}
		a := MemberAttrs{ID: d.uvarint(), Name: d.string(), ClientAddr: d.string()}
		if d.err != nil {
			return newError(ErrCorrupt, "decode member attributes: %v", d.err)
		}
		m.members[a.ID] = a
		return nil
	default:
		return newError(ErrCorrupt, "unknown command type %d at index %d", e.Data[0], e.Index)
	}
}

// deduped answers a retried request from the request-id table, or applies it and records
// the result. id "" turns dedupe off.
func (m *Machine) deduped(id string, data []byte, apply func() any) any {
	if id == "" {
		return apply()
	}
	if len(id) > maxRequestIDBytes {
		return newFieldError(ErrInvalidArgument, "request_id", "request id is %d bytes, over the %d-byte limit", len(id), maxRequestIDBytes)
	}
	sum := sha256.Sum256(data)
	if ent, ok := m.dedupe.get(id); ok {
		if ent.hash != sum {
			return newError(ErrRequestIDReused, "request id %q was already used for a different request", id)
		}
		m.dedupeHits++
		d := decoder{b: ent.enc}
		res := decodeResult(&d)
		if d.err != nil {
			return newError(ErrCorrupt, "request id %q: remembered result: %v", id, d.err)
		}
		return res
	}
	res := apply()
	if err, ok := res.(error); ok {
		res = asApplyError(err)
	}
	enc, err := appendResult(nil, res)
	if err != nil {
		return newError(ErrCorrupt, "request id %q: %v", id, err)
	}
	m.dedupe.put(id, sum, enc)
	return res
}

// txn collects the writes of one revision.
type txn struct {
	m      *Machine
	rev    int64
	events []*coordv1.Event
}

func (m *Machine) begin() *txn { return &txn{m: m, rev: m.rev + 1} }

// commit makes the revision visible when it wrote anything and returns the revision the
// response reports.
func (t *txn) commit() int64 {
	if len(t.events) == 0 {
		return t.m.rev
	}
	t.m.rev = t.rev
	if t.m.pub != nil {
		t.m.pub.Publish(t.rev, t.events)
	}
	return t.rev
}

func (t *txn) put(path string, value []byte, sess int64) *coordv1.Node {
	m := t.m
	n := &coordv1.Node{Path: path, Value: value, Version: 1, CreateRev: t.rev, ModRev: t.rev, Session: sess}
	// One descent: Set returns the node it replaced, and n is completed from it before
	// anyone can read it (readers and snapshots wait for Apply's lock; no snapshot taken
	// before holds n).
	prev, replaced := m.nodes.Set(item{path: path, n: n})
	var old *coordv1.Node
	if replaced {
		old = prev.n
		n.Version = old.Version + 1
		n.CreateRev = old.CreateRev
		if old.Session != 0 && old.Session != sess {
			if s := m.sessions[old.Session]; s != nil {
				delete(s.nodes, path)
			}
		}
	}
	if sess != 0 {
		m.sessions[sess].nodes[path] = struct{}{}
	}
	t.events = append(t.events, &coordv1.Event{Type: coordv1.EventType_EVENT_TYPE_PUT, Node: n, PrevNode: old, Revision: t.rev})
	return n
}

func (t *txn) delete(old *coordv1.Node) {
	m := t.m
	m.nodes.Delete(key(old.Path))
	if old.Session != 0 {
		if s := m.sessions[old.Session]; s != nil {
			delete(s.nodes, old.Path)
		}
	}
	t.events = append(t.events, &coordv1.Event{
		Type:     coordv1.EventType_EVENT_TYPE_DELETE,
		Node:     &coordv1.Node{Path: old.Path, ModRev: t.rev},
		PrevNode: old,
		Revision: t.rev,
	})
}

// seqPath returns the path a sequential put creates and advances the counter.
func (t *txn) seqPath(prefix string) string {
	t.m.seq++
	return fmt.Sprintf("%s%010d", prefix, t.m.seq)
}

// checkPutTarget validates the path of a put (or the prefix of a sequential put).
func checkPutTarget(path string, sequential bool) error {
	if sequential {
		return ValidatePath(path+"0000000000", false)
	}
	return ValidatePath(path, false)
}

// checkPutArgs validates a put; field is the prefix of the put's fields in the request
// ("" for PutRequest, "success[1].put." for a Txn op).
func (m *Machine) checkPutArgs(op, field, path string, value []byte, sess int64, sequential bool) error {
	if err := checkPutTarget(path, sequential); err != nil {
		return newFieldError(ErrInvalidPath, field+"path", "%s %q: %v", op, path, err)
	}
	if len(value) > MaxValueBytes {
		return newError(ErrValueTooLarge, "%s %s: value is %d bytes, over the %d-byte limit", op, path, len(value), MaxValueBytes)
	}
	if sess < 0 {
		return newFieldError(ErrInvalidArgument, field+"session_id", "%s %s: session id %d is negative", op, path, sess)
	}
	if sess != 0 && m.sessions[sess] == nil {
		return newError(ErrSessionNotFound, "%s %s: session %d does not exist or has expired", op, path, sess)
	}
	return nil
}

func (m *Machine) get(path string) *coordv1.Node {
	it, _ := m.nodes.Get(key(path))
	return it.n
}

func versionOf(n *coordv1.Node) int64 {
	if n == nil {
		return 0
	}
	return n.Version
}

func metaOnly(n *coordv1.Node) *coordv1.Node {
	return &coordv1.Node{Path: n.Path, Version: n.Version, CreateRev: n.CreateRev, ModRev: n.ModRev, Session: n.Session}
}

func (m *Machine) applyPut(req *coordv1.PutRequest) any {
	if err := m.checkPutArgs("put", "", req.Path, req.Value, req.SessionId, req.Sequential); err != nil {
		return err
	}
	t := m.begin()
	path := req.Path
	if req.ExpectedVersion != nil {
		want := *req.ExpectedVersion
		if want < 0 {
			return newFieldError(ErrInvalidArgument, "expected_version", "put %s: expected version %d is negative", path, want)
		}
		cur := int64(0)
		if !req.Sequential {
			cur = versionOf(m.get(path))
		}
		if cur != want {
			return newError(ErrVersionMismatch, "put %s: expected version %d, node has version %d%s", path, want, cur, absentNote(cur))
		}
	}
	if req.Sequential {
		path = t.seqPath(path)
	}
	n := t.put(path, req.Value, req.SessionId)
	return &PutResult{Revision: t.commit(), Node: n}
}

// PutResult is what Apply returns for a put that succeeded. Only the member that proposed
// the put makes a response of it (Response); every member records its encoding in the
// request-id table without making one.
type PutResult struct {
	// Revision is the revision of the put.
	Revision int64
	// Node is the node written; it must not be modified.
	Node *coordv1.Node
}

// Response returns the PutResponse: header.revision and the node without its value.
func (r *PutResult) Response() *coordv1.PutResponse {
	return &coordv1.PutResponse{Header: &coordv1.ResponseHeader{Revision: r.Revision}, Node: metaOnly(r.Node)}
}

// appendEncoded appends the encoding of Response() (deterministic protobuf) without making
// it.
func (r *PutResult) appendEncoded(b []byte) []byte {
	var hdr [1 + binary.MaxVarintLen64]byte
	h := hdr[:0]
	if r.Revision != 0 {
		h = protowire.AppendTag(h, 1, protowire.VarintType)
		h = protowire.AppendVarint(h, uint64(r.Revision))
	}
	n := r.Node
	size := 0
	if n.Path != "" {
		size += protowire.SizeTag(1) + protowire.SizeBytes(len(n.Path))
	}
	for _, v := range []int64{n.Version, n.CreateRev, n.ModRev, n.Session} {
		if v != 0 {
			size += protowire.SizeTag(3) + protowire.SizeVarint(uint64(v))
		}
	}
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, h)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	if n.Path != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, n.Path)
	}
	for i, v := range []int64{n.Version, n.CreateRev, n.ModRev, n.Session} {
		if v != 0 {
			b = protowire.AppendTag(b, protowire.Number(3+i), protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(v))
		}
	}
	return b
}

func absentNote(v int64) string {
	if v == 0 {
		return " (absent)"
	}
	return ""
}

// subtree returns the node at p (when it exists) and its descendants, in path order.
func (m *Machine) subtree(p string) []*coordv1.Node {
	var out []*coordv1.Node
	if p != "/" {
		if n := m.get(p); n != nil {
			out = append(out, n)
		}
	}
	prefix := subtreePrefix(p)
	m.nodes.Ascend(key(prefix), func(it item) bool {
		if !strings.HasPrefix(it.path, prefix) {
			return false
		}
		out = append(out, it.n)
		return true
	})
	return out
}

func (m *Machine) applyDelete(req *coordv1.DeleteRequest) any {
	if err := ValidatePath(req.Path, false); err != nil {
		return newFieldError(ErrInvalidPath, "path", "delete %q: %v", req.Path, err)
	}
	node := m.get(req.Path)
	if req.ExpectedVersion != nil {
		want := *req.ExpectedVersion
		if want <= 0 {
			return newFieldError(ErrInvalidArgument, "expected_version", "delete %s: expected version %d is not positive", req.Path, want)
		}
		if cur := versionOf(node); cur != want {
			return newError(ErrVersionMismatch, "delete %s: expected version %d, node has version %d%s", req.Path, want, cur, absentNote(cur))
		}
	}
	var victims []*coordv1.Node
	if req.Recursive {
		victims = m.subtree(req.Path)
	} else if node != nil {
		victims = []*coordv1.Node{node}
	}
	if len(victims) == 0 {
		return newError(ErrNotFound, "delete %s: node not found", req.Path)
	}
	t := m.begin()
	for _, n := range victims {
		t.delete(n)
	}
	rev := t.commit()
	return &coordv1.DeleteResponse{Header: &coordv1.ResponseHeader{Revision: rev}, Deleted: int64(len(victims))}
}

func (m *Machine) checkCompare(i int, c *coordv1.Compare) error {
	if err := ValidatePath(c.Path, false); err != nil {
		return newFieldError(ErrInvalidPath, fmt.Sprintf("compares[%d].path", i), "txn compare %d %q: %v", i, c.Path, err)
	}
	switch c.Result {
	case coordv1.CompareResult_COMPARE_RESULT_EQUAL, coordv1.CompareResult_COMPARE_RESULT_NOT_EQUAL:
	case coordv1.CompareResult_COMPARE_RESULT_LESS, coordv1.CompareResult_COMPARE_RESULT_GREATER:
		if _, ok := c.Target.(*coordv1.Compare_Exists); ok {
			return newFieldError(ErrInvalidArgument, fmt.Sprintf("compares[%d].result", i), "txn compare %d %s: exists takes only EQUAL or NOT_EQUAL", i, c.Path)
		}
	default:
		return newFieldError(ErrInvalidArgument, fmt.Sprintf("compares[%d].result", i), "txn compare %d %s: result %v is not a valid relation", i, c.Path, c.Result)
	}
	if c.Target == nil {
		return newFieldError(ErrInvalidArgument, fmt.Sprintf("compares[%d].target", i), "txn compare %d %s: no target (version, mod_rev, create_rev, value or exists)", i, c.Path)
	}
	if v, ok := c.Target.(*coordv1.Compare_Value); ok && len(v.Value) > MaxValueBytes {
		return newError(ErrValueTooLarge, "txn compare %d %s: value is %d bytes, over the %d-byte limit", i, c.Path, len(v.Value), MaxValueBytes)
	}
	return nil
}

func (m *Machine) evalCompare(c *coordv1.Compare) bool {
	n := m.get(c.Path)
	var cmp int
	switch t := c.Target.(type) {
	case *coordv1.Compare_Version:
		cmp = cmpInt(versionOf(n), t.Version)
	case *coordv1.Compare_ModRev:
		var v int64
		if n != nil {
			v = n.ModRev
		}
		cmp = cmpInt(v, t.ModRev)
	case *coordv1.Compare_CreateRev:
		var v int64
		if n != nil {
			v = n.CreateRev
		}
		cmp = cmpInt(v, t.CreateRev)
	case *coordv1.Compare_Value:
		var v []byte
		if n != nil {
			v = n.Value
		}
		cmp = bytes.Compare(v, t.Value)
	case *coordv1.Compare_Exists:
		if (n != nil) == t.Exists {
			cmp = 0
		} else {
			cmp = 1
		}
	}
	switch c.Result {
	case coordv1.CompareResult_COMPARE_RESULT_EQUAL:
		return cmp == 0
	case coordv1.CompareResult_COMPARE_RESULT_NOT_EQUAL:
		return cmp != 0
	case coordv1.CompareResult_COMPARE_RESULT_LESS:
		return cmp < 0
	case coordv1.CompareResult_COMPARE_RESULT_GREATER:
		return cmp > 0
	}
	return false
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (m *Machine) checkOps(branch string, ops []*coordv1.Op) error {
	if len(ops) > MaxTxnOps {
		return newFieldError(ErrInvalidArgument, branch, "txn %s: %d ops, over the limit of %d", branch, len(ops), MaxTxnOps)
	}
	for i, op := range ops {
		name := fmt.Sprintf("txn %s op %d: put", branch, i)
		field := fmt.Sprintf("%s[%d].", branch, i)
		switch o := op.GetOp().(type) {
		case *coordv1.Op_Put:
			if err := m.checkPutArgs(name, field+"put.", o.Put.GetPath(), o.Put.GetValue(), o.Put.GetSessionId(), o.Put.GetSequential()); err != nil {
				return err
			}
		case *coordv1.Op_Delete:
			if err := ValidatePath(o.Delete.GetPath(), false); err != nil {
				return newFieldError(ErrInvalidPath, field+"delete.path", "txn %s op %d: delete %q: %v", branch, i, o.Delete.GetPath(), err)
			}
		case *coordv1.Op_Get:
			if err := ValidatePath(o.Get.GetPath(), false); err != nil {
				return newFieldError(ErrInvalidPath, field+"get.path", "txn %s op %d: get %q: %v", branch, i, o.Get.GetPath(), err)
			}
		default:
			return newFieldError(ErrInvalidArgument, field+"op", "txn %s op %d: no operation set", branch, i)
		}
	}
	return nil
}

func (m *Machine) applyTxn(req *coordv1.TxnRequest) any {
	if len(req.Compares) > MaxTxnOps {
		return newFieldError(ErrInvalidArgument, "compares", "txn: %d compares, over the limit of %d", len(req.Compares), MaxTxnOps)
	}
	for i, c := range req.Compares {
		if err := m.checkCompare(i, c); err != nil {
			return err
		}
	}
	if err := m.checkOps("success", req.Success); err != nil {
		return err
	}
	if err := m.checkOps("failure", req.Failure); err != nil {
		return err
	}
	ok := true
	for _, c := range req.Compares {
		if !m.evalCompare(c) {
			ok = false
			break
		}
	}
	ops := req.Success
	if !ok {
		ops = req.Failure
	}
	t := m.begin()
	results := make([]*coordv1.OpResult, 0, len(ops))
	for _, op := range ops {
		switch o := op.GetOp().(type) {
		case *coordv1.Op_Put:
			path := o.Put.Path
			if o.Put.Sequential {
				path = t.seqPath(path)
			}
			n := t.put(path, o.Put.Value, o.Put.SessionId)
			results = append(results, &coordv1.OpResult{Result: &coordv1.OpResult_Put{Put: metaOnly(n)}})
		case *coordv1.Op_Delete:
			var victims []*coordv1.Node
			if o.Delete.Recursive {
				victims = m.subtree(o.Delete.Path)
			} else if n := m.get(o.Delete.Path); n != nil {
				victims = []*coordv1.Node{n}
			}
			for _, n := range victims {
				t.delete(n)
			}
			results = append(results, &coordv1.OpResult{Result: &coordv1.OpResult_Deleted{Deleted: int64(len(victims))}})
		case *coordv1.Op_Get:
			n := m.get(o.Get.Path)
			switch {
			case n == nil:
				n = &coordv1.Node{Path: o.Get.Path}
			case o.Get.KeysOnly:
				n = metaOnly(n)
			}
			results = append(results, &coordv1.OpResult{Result: &coordv1.OpResult_Get{Get: n}})
		}
	}
	rev := t.commit()
	return &coordv1.TxnResponse{Header: &coordv1.ResponseHeader{Revision: rev}, Succeeded: ok, Results: results}
}

// applySessionOpen opens a session; at is the proposer's clock (unix ms), 0 when the
// entry carries none.
func (m *Machine) applySessionOpen(req *coordv1.SessionOpenRequest, at int64) any {
	if req.TtlMs < MinSessionTTLMs || req.TtlMs > MaxSessionTTLMs {
		return newFieldError(ErrInvalidArgument, "ttl_ms", "session open: ttl %d ms is outside [%d, %d] ms", req.TtlMs, MinSessionTTLMs, MaxSessionTTLMs)
	}
	m.lastSession++
	s := &session{id: m.lastSession, ttlMs: req.TtlMs, nodes: map[string]struct{}{}}
	if at > 0 {
		s.deadlineMs = at + req.TtlMs
	}
	m.sessions[s.id] = s
	if m.obs != nil {
		m.obs.SessionOpened(s.id, s.ttlMs, s.deadlineMs)
	}
	return &coordv1.SessionOpenResponse{Header: &coordv1.ResponseHeader{Revision: m.rev}, SessionId: s.id, TtlMs: s.ttlMs}
}

// endSession deletes the session and its ephemeral nodes in one revision; it returns the
// number of nodes deleted and the revision to report.
func (m *Machine) endSession(s *session) (int64, int64) {
	paths := make([]string, 0, len(s.nodes))
	for p := range s.nodes {
		paths = append(paths, p)
	}
	slices.SortFunc(paths, func(a, b string) int {
		if PathLess(a, b) {
			return -1
		}
		if a == b {
			return 0
		}
		return 1
	})
	t := m.begin()
	for _, p := range paths {
		if n := m.get(p); n != nil {
			t.delete(n)
		}
	}
	delete(m.sessions, s.id)
	if m.obs != nil {
		m.obs.SessionRemoved(s.id)
	}
	return int64(len(t.events)), t.commit()
}

func (m *Machine) applySessionClose(req *coordv1.SessionCloseRequest) any {
	s := m.sessions[req.SessionId]
	if s == nil {
		return newError(ErrSessionNotFound, "session close: session %d does not exist or has expired", req.SessionId)
	}
	deleted, rev := m.endSession(s)
	return &coordv1.SessionCloseResponse{Header: &coordv1.ResponseHeader{Revision: rev}, Deleted: deleted}
}

// ExpireResult is what Apply returns for a session-expiry entry.
type ExpireResult struct {
	// Expired are the sessions that ended.
	Expired []int64
	// Deleted is the number of ephemeral nodes deleted.
	Deleted int64
}

func (m *Machine) applyExpire(term uint64, body []byte) any {
	d := decoder{b: body}
	want := d.uvarint()
	n := d.count(1)
	ids := make([]int64, 0, n)
	for range n {
		ids = append(ids, d.varint())
	}
	if d.err != nil {
		return newError(ErrCorrupt, "decode session expiry: %v", d.err)
	}
	if want != term {
		return newError(ErrStaleTerm, "session expiry decided in term %d, committed in term %d: ignored", want, term)
	}
	res := ExpireResult{}
	for _, id := range ids {
		s := m.sessions[id]
		if s == nil {
			if m.obs != nil {
				m.obs.SessionRemoved(id)
			}
			continue
		}
		deleted, _ := m.endSession(s)
		res.Expired = append(res.Expired, id)
		res.Deleted += deleted
	}
	return res
}

func (m *Machine) applyCheckpoint(term uint64, body []byte) any {
	d := decoder{b: body}
	want := d.uvarint()
	n := d.count(2)
	cps := make([]Checkpoint, 0, n)
	for range n {
		cps = append(cps, Checkpoint{ID: d.varint(), DeadlineMs: d.varint()})
	}
	if d.err != nil {
		return newError(ErrCorrupt, "decode deadline checkpoint: %v", d.err)
	}
	if want != term {
		return newError(ErrStaleTerm, "deadline checkpoint decided in term %d, committed in term %d: ignored", want, term)
	}
	for _, c := range cps {
		if s := m.sessions[c.ID]; s != nil && c.DeadlineMs > s.deadlineMs {
			s.deadlineMs = c.DeadlineMs
		}
	}
	return nil
}

// applyLegacyCheckpoint decodes a checkpoint of remaining times written by an older
// version. Remaining times relative to an unknown moment say nothing about a deadline, so
// it changes nothing: a session without a recorded deadline gets one from the next leader.
func (m *Machine) applyLegacyCheckpoint(term uint64, body []byte) any {
	d := decoder{b: body}
	want := d.uvarint()
	n := d.count(3)
	for range n {
		d.varint()
		d.varint()
		d.byte1()
	}
	if d.err != nil {
		return newError(ErrCorrupt, "decode ttl checkpoint: %v", d.err)
	}
	if want != term {
		return newError(ErrStaleTerm, "ttl checkpoint decided in term %d, committed in term %d: ignored", want, term)
	}
	return nil
}

// Get returns the node at path and the revision read. keysOnly leaves the value out.
func (m *Machine) Get(path string, keysOnly bool) (*coordv1.Node, int64, error) {
	if err := ValidatePath(path, false); err != nil {
		return nil, 0, newFieldError(ErrInvalidPath, "path", "get %q: %v", path, err)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	n := m.get(path)
	if n == nil {
		return nil, m.rev, newError(ErrNotFound, "get %s: node not found", path)
	}
	if keysOnly {
		n = metaOnly(n)
	}
	return n, m.rev, nil
}

// List returns the direct children of path (with implicit children, version 0, for paths
// that only have descendants), or with recursive the node at path and its whole subtree,
// in path order, at most limit nodes (0: all). more reports a cut listing.
func (m *Machine) List(path string, recursive, keysOnly bool, limit int) (nodes []*coordv1.Node, more bool, rev int64, err error) {
	if err := ValidatePath(path, true); err != nil {
		return nil, false, 0, newFieldError(ErrInvalidPath, "path", "list %q: %v", path, err)
	}
	if limit < 0 {
		return nil, false, 0, newFieldError(ErrInvalidArgument, "limit", "list %s: limit %d is negative", path, limit)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	add := func(n *coordv1.Node) bool {
		if limit > 0 && len(nodes) == limit {
			more = true
			return false
		}
		if keysOnly {
			n = metaOnly(n)
		}
		nodes = append(nodes, n)
		return true
	}
	if recursive {
		for _, n := range m.subtree(path) {
			if !add(n) {
				break
			}
		}
		return nodes, more, m.rev, nil
	}
	prefix := subtreePrefix(path)
	pivot := prefix
	for {
		var found *coordv1.Node
		m.nodes.Ascend(key(pivot), func(it item) bool {
			found = it.n
			return false
		})
		if found == nil || len(found.Path) <= len(prefix) || found.Path[:len(prefix)] != prefix {
			break
		}
		rest := found.Path[len(prefix):]
		child := found.Path
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			child = prefix + rest[:i]
			found = &coordv1.Node{Path: child}
			if n := m.get(child); n != nil {
				found = n
			}
		}
		if !add(found) {
			break
		}
		// The NUL byte sorts after "/" and before every other byte, and no path holds one,
		// so child+"\x00" is the first key past child's whole subtree.
		pivot = child + "\x00"
	}
	return nodes, more, m.rev, nil
}

// Revision returns the current revision.
func (m *Machine) Revision() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.rev
}

// Stats summarises the state.
func (m *Machine) Stats() Stats {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return Stats{
		Revision: m.rev, AppliedIndex: m.applied, Nodes: m.nodes.Len(), Sessions: len(m.sessions),
		DedupeEntries: m.dedupe.len(), DedupeHits: m.dedupeHits,
	}
}

// HasSession reports whether a session is open.
func (m *Machine) HasSession(id int64) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.sessions[id] != nil
}

// Sessions returns the replicated session table, ordered by id.
func (m *Machine) Sessions() []SessionInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.sessionInfosLocked()
}

func (m *Machine) sessionInfosLocked() []SessionInfo {
	out := make([]SessionInfo, 0, len(m.sessions))
	for _, s := range m.sessions {
		out = append(out, SessionInfo{ID: s.id, TTLMs: s.ttlMs, DeadlineMs: s.deadlineMs, Nodes: len(s.nodes)})
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return cmpInt(a.ID, b.ID) })
	return out
}

// WithSessions calls fn with the session table while no entry is being applied, so that fn
// and the SessionObserver calls that follow see one consistent sequence.
func (m *Machine) WithSessions(fn func([]SessionInfo)) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	fn(m.sessionInfosLocked())
}

// Members returns the attributes members announced, by id.
func (m *Machine) Members() map[uint64]MemberAttrs {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[uint64]MemberAttrs, len(m.members))
	for k, v := range m.members {
		out[k] = v
	}
	return out
}
