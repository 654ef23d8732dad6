package coordclient

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// MaxTxnCompares and MaxTxnOps are the store's limits per Txn: compares, and ops per branch.
const (
	MaxTxnCompares = 128
	MaxTxnOps      = 128
)

// Cmp is one condition of a Txn on one node. Make it with Version, ModRev, CreateRev,
// Value, Exists or Missing. An absent node has version, create and mod revisions 0 and an
// empty value.
type Cmp struct {
	pb  *coordv1.Compare
	err error
}

// IntTarget is a numeric field of a node, to be compared.
type IntTarget struct {
	path  string
	field func(c *coordv1.Compare, v int64)
}

// Version is the node's version (0 when absent).
func Version(path string) IntTarget {
	return IntTarget{path: path, field: func(c *coordv1.Compare, v int64) { c.Target = &coordv1.Compare_Version{Version: v} }}
}

// ModRev is the revision of the node's last write (0 when absent).
func ModRev(path string) IntTarget {
	return IntTarget{path: path, field: func(c *coordv1.Compare, v int64) { c.Target = &coordv1.Compare_ModRev{ModRev: v} }}
}

// CreateRev is the revision that created the node (0 when absent).
func CreateRev(path string) IntTarget {
	return IntTarget{path: path, field: func(c *coordv1.Compare, v int64) { c.Target = &coordv1.Compare_CreateRev{CreateRev: v} }}
}

func (t IntTarget) cmp(r coordv1.CompareResult, v int64) Cmp {
	if err := ValidatePath(t.path, false); err != nil {
		return Cmp{err: err}
	}
	c := &coordv1.Compare{Path: t.path, Result: r}
	t.field(c, v)
	return Cmp{pb: c}
}

// Equal holds when the field equals v.
func (t IntTarget) Equal(v int64) Cmp { return t.cmp(coordv1.CompareResult_COMPARE_RESULT_EQUAL, v) }

// NotEqual holds when the field differs from v.
func (t IntTarget) NotEqual(v int64) Cmp {
	return t.cmp(coordv1.CompareResult_COMPARE_RESULT_NOT_EQUAL, v)
}

// Less holds when the field is less than v.
func (t IntTarget) Less(v int64) Cmp { return t.cmp(coordv1.CompareResult_COMPARE_RESULT_LESS, v) }

// Greater holds when the field is greater than v.
func (t IntTarget) Greater(v int64) Cmp {
	return t.cmp(coordv1.CompareResult_COMPARE_RESULT_GREATER, v)
}

// ValueTarget is the value of a node, to be compared byte-wise.
type ValueTarget struct{ path string }

// Value is the node's value (empty when absent).
func Value(path string) ValueTarget { return ValueTarget{path: path} }

func (t ValueTarget) cmp(r coordv1.CompareResult, v []byte) Cmp {
	if err := ValidatePath(t.path, false); err != nil {
		return Cmp{err: err}
	}
	return Cmp{pb: &coordv1.Compare{Path: t.path, Result: r, Target: &coordv1.Compare_Value{Value: v}}}
}

// Equal holds when the value equals v.
func (t ValueTarget) Equal(v []byte) Cmp { return t.cmp(coordv1.CompareResult_COMPARE_RESULT_EQUAL, v) }

// NotEqual holds when the value differs from v.
func (t ValueTarget) NotEqual(v []byte) Cmp {
	return t.cmp(coordv1.CompareResult_COMPARE_RESULT_NOT_EQUAL, v)
}

// Less holds when the value sorts before v.
func (t ValueTarget) Less(v []byte) Cmp { return t.cmp(coordv1.CompareResult_COMPARE_RESULT_LESS, v) }

// Greater holds when the value sorts after v.
func (t ValueTarget) Greater(v []byte) Cmp {
	return t.cmp(coordv1.CompareResult_COMPARE_RESULT_GREATER, v)
}

// Exists holds when the node exists.
func Exists(path string) Cmp { return existsCmp(path, true) }

// Missing holds when the node does not exist.
func Missing(path string) Cmp { return existsCmp(path, false) }

func existsCmp(path string, exists bool) Cmp {
	if err := ValidatePath(path, false); err != nil {
		return Cmp{err: err}
	}
	return Cmp{pb: &coordv1.Compare{
		Path: path, Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Exists{Exists: exists},
	}}
}

// Op is one operation of a Txn: OpPut, OpDelete or OpGet.
type Op struct {
	pb  *coordv1.Op
	err error
}

// OpPut writes a node inside a Txn. Ephemeral and Sequential apply; ExpectVersion and
// RequestID do not (guard the op with a Version compare; give the Txn a RequestID).
func OpPut(path string, value []byte, opts ...PutOption) Op {
	var o putOptions
	for _, opt := range opts {
		opt.applyPut(&o)
	}
	switch {
	case o.err != nil:
		return Op{err: o.err}
	case o.expectVersion != nil:
		return Op{err: fmt.Errorf("%w: OpPut %s: ExpectVersion does not apply inside a Txn, use If(Version(path).Equal(v))", ErrInvalidArgument, path)}
	case o.requestID != "":
		return Op{err: fmt.Errorf("%w: OpPut %s: RequestID does not apply to an op, use Txn.RequestID", ErrInvalidArgument, path)}
	}
	validate := ValidatePath(path, false)
	if o.sequential {
		validate = validateSequentialPrefix(path)
	}
	if validate != nil {
		return Op{err: validate}
	}
	return Op{pb: &coordv1.Op{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{
		Path: path, Value: value, SessionId: o.session, Sequential: o.sequential,
	}}}}
}

// OpDelete deletes a node (or with Recursive its subtree) inside a Txn; deleting nothing is
// not an error there. ExpectVersion and RequestID do not apply.
func OpDelete(path string, opts ...DeleteOption) Op {
	var o deleteOptions
	for _, opt := range opts {
		opt.applyDelete(&o)
	}
	switch {
	case o.err != nil:
		return Op{err: o.err}
	case o.expectVersion != nil:
		return Op{err: fmt.Errorf("%w: OpDelete %s: ExpectVersion does not apply inside a Txn, use If(Version(path).Equal(v))", ErrInvalidArgument, path)}
	case o.requestID != "":
		return Op{err: fmt.Errorf("%w: OpDelete %s: RequestID does not apply to an op, use Txn.RequestID", ErrInvalidArgument, path)}
	}
	if err := ValidatePath(path, false); err != nil {
		return Op{err: err}
	}
	return Op{pb: &coordv1.Op{Op: &coordv1.Op_Delete{Delete: &coordv1.DeleteOp{Path: path, Recursive: o.recursive}}}}
}

// OpGet reads a node inside a Txn; it sees the effect of the ops before it. KeysOnly
// applies; Serializable does not (a Txn is always linearizable).
func OpGet(path string, opts ...GetOption) Op {
	var o getOptions
	for _, opt := range opts {
		opt.applyGet(&o)
	}
	if o.serializable {
		return Op{err: fmt.Errorf("%w: OpGet %s: Serializable does not apply inside a Txn", ErrInvalidArgument, path)}
	}
	if err := ValidatePath(path, false); err != nil {
		return Op{err: err}
	}
	return Op{pb: &coordv1.Op{Op: &coordv1.Op_Get{Get: &coordv1.GetOp{Path: path, KeysOnly: o.keysOnly}}}}
}

// OpResult is the result of one op, in the op's position.
type OpResult struct {
	// Put is the node an OpPut wrote, without its value (its Path is the created path of a
	// sequential put); nil for other ops.
	Put *Node
	// Get is the node an OpGet read; nil for other ops and when the node does not exist.
	Get *Node
	// Deleted is the number of nodes an OpDelete removed (0 is fine inside a Txn).
	Deleted int64
}

// TxnResult is the answer of Txn.Commit.
type TxnResult struct {
	// Succeeded tells whether every compare held, so that the Then ops ran (else the Else
	// ops ran).
	Succeeded bool
	// Revision is the revision of the Txn's writes, or the current revision when it wrote
	// nothing.
	Revision int64
	// Results holds one result per op of the branch that ran.
	Results []OpResult
}

// Txn is an atomic multi-node transaction under construction: if every compare holds, the
// Then ops are applied in order, else the Else ops; all writes share one revision. Build it
// with Client.Txn, then If, Then, Else (each may be called several times, appending), and
// Commit it once.
type Txn struct {
	c         *Client
	cmps      []Cmp
	then, els []Op
	requestID string
	fence     *fence
	err       error
}

// fence is the guard of a fenced Txn: the node at path must exist with this create revision.
type fence struct {
	path      string
	createRev int64
}

// Txn starts a transaction.
func (c *Client) Txn() *Txn { return &Txn{c: c} }

// If appends compares; all must hold for the Then branch to run.
func (t *Txn) If(cmps ...Cmp) *Txn {
	t.cmps = append(t.cmps, cmps...)
	return t
}

// Then appends ops to run when every compare holds.
func (t *Txn) Then(ops ...Op) *Txn {
	t.then = append(t.then, ops...)
	return t
}

// Else appends ops to run when a compare fails.
func (t *Txn) Else(ops ...Op) *Txn {
	t.els = append(t.els, ops...)
	return t
}

// RequestID sets the Txn's request id instead of a random one; see the RequestID option.
func (t *Txn) RequestID(id string) *Txn {
	if err := (RequestIDOption{id: id}).check(); err != nil {
		t.err = err
	}
	t.requestID = id
	return t
}

// Fence guards the Txn with a fencing token: it commits only while the node at path exists
// with create revision createRev (a leadership's or lock's node and token). When the
// guard fails, Commit returns ErrFenced and runs neither branch's ops. A Txn has one fence;
// a later call replaces it.
func (t *Txn) Fence(path string, createRev int64) *Txn {
	if err := ValidatePath(path, false); err != nil {
		t.err = err
	}
	if createRev <= 0 {
		t.err = fmt.Errorf("%w: Fence(%s, %d): want a create revision > 0", ErrInvalidArgument, path, createRev)
	}
	t.fence = &fence{path: path, createRev: createRev}
	return t
}

// build makes the request. A fenced Txn puts the fence first among the compares and an
// OpGet of the fence node first among the failure ops, so that a failure tells a lost fence
// from a failed compare of the caller.
func (t *Txn) build() (*coordv1.TxnRequest, error) {
	if t.err != nil {
		return nil, t.err
	}
	req := &coordv1.TxnRequest{RequestId: t.requestID}
	if req.RequestId == "" {
		req.RequestId = newRequestID()
	}
	if t.fence != nil {
		req.Compares = append(req.Compares, CreateRev(t.fence.path).Equal(t.fence.createRev).pb)
		req.Failure = append(req.Failure, OpGet(t.fence.path, KeysOnly()).pb)
	}
	for _, c := range t.cmps {
		if c.err != nil {
			return nil, c.err
		}
		if c.pb == nil {
			return nil, fmt.Errorf("%w: zero Cmp: make compares with Version, ModRev, CreateRev, Value, Exists or Missing", ErrInvalidArgument)
		}
		req.Compares = append(req.Compares, c.pb)
	}
	add := func(dst *[]*coordv1.Op, ops []Op) error {
		for _, op := range ops {
			if op.err != nil {
				return op.err
			}
			if op.pb == nil {
				return fmt.Errorf("%w: zero Op: make ops with OpPut, OpDelete or OpGet", ErrInvalidArgument)
			}
			*dst = append(*dst, op.pb)
		}
		return nil
	}
	if err := add(&req.Success, t.then); err != nil {
		return nil, err
	}
	if err := add(&req.Failure, t.els); err != nil {
		return nil, err
	}
	switch {
	case len(req.Compares) > MaxTxnCompares:
		return nil, fmt.Errorf("%w: %d compares, over the limit of %d", ErrInvalidArgument, len(req.Compares), MaxTxnCompares)
	case len(req.Success) > MaxTxnOps:
		return nil, fmt.Errorf("%w: %d Then ops, over the limit of %d", ErrInvalidArgument, len(req.Success), MaxTxnOps)
	case len(req.Failure) > MaxTxnOps:
		return nil, fmt.Errorf("%w: %d Else ops, over the limit of %d", ErrInvalidArgument, len(req.Failure), MaxTxnOps)
	}
	return req, nil
}

// Commit sends the Txn, retrying with one request id until the call's context ends. It
// returns ErrFenced when the Txn's fence failed.
func (t *Txn) Commit(ctx context.Context) (*TxnResult, error) {
	req, err := t.build()
	if err != nil {
		return nil, fmt.Errorf("txn: %w", err)
	}
	var resp *coordv1.TxnResponse
	err = t.c.do(ctx, callOpts{preferLeader: true, precondition: sessionPrecondition(txnNamesSession(req))}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		var err error
		resp, err = api.Txn(ctx, req, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if err != nil {
		return nil, fmt.Errorf("txn: %w", err)
	}
	res := &TxnResult{Succeeded: resp.GetSucceeded(), Revision: resp.GetHeader().GetRevision()}
	results := resp.GetResults()
	if t.fence != nil && !res.Succeeded {
		if len(results) == 0 {
			return nil, fmt.Errorf("txn: %w: the fence's read is missing from the failure results", errBadResponse)
		}
		got := results[0].GetGet()
		if got.GetVersion() == 0 || got.GetCreateRev() != t.fence.createRev {
			return nil, fmt.Errorf("txn: %w: %s has create revision %d, want %d", ErrFenced, t.fence.path, got.GetCreateRev(), t.fence.createRev)
		}
		results = results[1:]
	}
	res.Results = make([]OpResult, 0, len(results))
	for _, r := range results {
		var or OpResult
		switch x := r.GetResult().(type) {
		case *coordv1.OpResult_Put:
			n := nodeFromProto(x.Put)
			or.Put = &n
		case *coordv1.OpResult_Get:
			if x.Get.GetVersion() != 0 {
				n := nodeFromProto(x.Get)
				or.Get = &n
			}
		case *coordv1.OpResult_Deleted:
			or.Deleted = x.Deleted
		}
		res.Results = append(res.Results, or)
	}
	return res, nil
}

// errBadResponse is a response that breaks the API's contract.
var errBadResponse = errors.New("coord: malformed response")

func txnNamesSession(req *coordv1.TxnRequest) bool {
	for _, ops := range [][]*coordv1.Op{req.GetSuccess(), req.GetFailure()} {
		for _, op := range ops {
			if op.GetPut().GetSessionId() != 0 {
				return true
			}
		}
	}
	return false
}
