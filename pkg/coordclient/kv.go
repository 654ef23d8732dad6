package coordclient

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// Node is one node of the tree.
type Node struct {
	// Path is the node's full path.
	Path string
	// Value is the node's data; nil when the read asked for keys only.
	Value []byte
	// Version counts the writes to the node since it was created: 1 at creation. 0 marks
	// an implicit node in a children listing (a path with descendants that is not itself
	// a node).
	Version int64
	// CreateRev is the revision that created the node.
	CreateRev int64
	// ModRev is the revision of the last write to the node.
	ModRev int64
	// Session is the id of the session that owns the node when it is ephemeral, else 0.
	Session int64
}

func nodeFromProto(n *coordv1.Node) Node {
	if n == nil {
		return Node{}
	}
	return Node{
		Path:      n.GetPath(),
		Value:     n.GetValue(),
		Version:   n.GetVersion(),
		CreateRev: n.GetCreateRev(),
		ModRev:    n.GetModRev(),
		Session:   n.GetSession(),
	}
}

// ListResult is the answer of List.
type ListResult struct {
	// Nodes are in path order ("/" sorts before every other byte, so a node is followed by
	// its subtree). In a children listing, implicit nodes have Version 0 and no value.
	Nodes []Node
	// More is true when Limit cut the listing short.
	More bool
	// Revision is the store's revision the listing saw; watch from Revision+1 to follow the
	// listed paths without a gap.
	Revision int64
}

// PutResult is the answer of Put.
type PutResult struct {
	// Path is the node's path; for a sequential put, the created path.
	Path string
	// Revision is the revision of the put.
	Revision int64
	// Version is the node's version after the put.
	Version int64
	// CreateRev is the revision that created the node.
	CreateRev int64
}

// DeleteResult is the answer of Delete.
type DeleteResult struct {
	// Revision is the revision of the delete.
	Revision int64
	// Deleted is the number of nodes deleted, at least 1.
	Deleted int64
}

// Get returns the node at path; ErrNotFound when there is none. Reads are linearizable
// unless Serializable is given.
func (c *Client) Get(ctx context.Context, path string, opts ...GetOption) (*Node, error) {
	n, _, err := c.get(ctx, path, opts...)
	return n, err
}

// get is Get that also returns the revision the read saw.
func (c *Client) get(ctx context.Context, path string, opts ...GetOption) (*Node, int64, error) {
	req, err := buildGet(path, opts)
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", path, err)
	}
	var resp *coordv1.GetResponse
	err = c.do(ctx, callOpts{preferLeader: !req.GetSerializable()}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		var err error
		resp, err = api.Get(ctx, req, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", path, err)
	}
	n := nodeFromProto(resp.GetNode())
	return &n, resp.GetHeader().GetRevision(), nil
}

func buildGet(path string, opts []GetOption) (*coordv1.GetRequest, error) {
	if err := ValidatePath(path, false); err != nil {
		return nil, err
	}
	var o getOptions
	for _, opt := range opts {
		opt.applyGet(&o)
	}
	return &coordv1.GetRequest{Path: path, Serializable: o.serializable, KeysOnly: o.keysOnly}, nil
}

// List returns the direct children of path ("/" lists from the root), or with Recursive
// the node at path and its whole subtree, in path order.
func (c *Client) List(ctx context.Context, path string, opts ...ListOption) (*ListResult, error) {
	req, err := buildList(path, opts)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", path, err)
	}
	var resp *coordv1.ListResponse
	err = c.do(ctx, callOpts{preferLeader: !req.GetSerializable()}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		var err error
		resp, err = api.List(ctx, req, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", path, err)
	}
	res := &ListResult{More: resp.GetMore(), Revision: resp.GetHeader().GetRevision()}
	res.Nodes = make([]Node, 0, len(resp.GetNodes()))
	for _, n := range resp.GetNodes() {
		res.Nodes = append(res.Nodes, nodeFromProto(n))
	}
	return res, nil
}

func buildList(path string, opts []ListOption) (*coordv1.ListRequest, error) {
	if err := ValidatePath(path, true); err != nil {
		return nil, err
	}
	var o listOptions
	for _, opt := range opts {
		opt.applyList(&o)
	}
	if o.err != nil {
		return nil, o.err
	}
	return &coordv1.ListRequest{
		Path: path, Recursive: o.recursive, KeysOnly: o.keysOnly, Limit: o.limit, Serializable: o.serializable,
	}, nil
}

// Put creates or replaces the node at path with value (at most MaxValueBytes; the store
// refuses more with ErrTooLarge). ExpectVersion makes it a compare-and-swap (ErrConflict on
// mismatch), Ephemeral ties the node to a session, Sequential appends a number to path.
// A put that fails to reach a member is retried with the same request id, so it is applied
// at most once.
func (c *Client) Put(ctx context.Context, path string, value []byte, opts ...PutOption) (*PutResult, error) {
	req, err := buildPut(path, value, opts)
	if err != nil {
		return nil, fmt.Errorf("put %s: %w", path, err)
	}
	var resp *coordv1.PutResponse
	err = c.do(ctx, callOpts{preferLeader: true, precondition: sessionPrecondition(req.GetSessionId() != 0)}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		var err error
		resp, err = api.Put(ctx, req, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if err != nil {
		return nil, fmt.Errorf("put %s: %w", path, err)
	}
	n := resp.GetNode()
	return &PutResult{
		Path:      n.GetPath(),
		Revision:  resp.GetHeader().GetRevision(),
		Version:   n.GetVersion(),
		CreateRev: n.GetCreateRev(),
	}, nil
}

func buildPut(path string, value []byte, opts []PutOption) (*coordv1.PutRequest, error) {
	var o putOptions
	for _, opt := range opts {
		opt.applyPut(&o)
	}
	if o.err != nil {
		return nil, o.err
	}
	if o.sequential {
		if err := validateSequentialPrefix(path); err != nil {
			return nil, err
		}
	} else if err := ValidatePath(path, false); err != nil {
		return nil, err
	}
	if o.requestID == "" {
		o.requestID = newRequestID()
	}
	return &coordv1.PutRequest{
		Path:            path,
		Value:           value,
		ExpectedVersion: o.expectVersion,
		SessionId:       o.session,
		Sequential:      o.sequential,
		RequestId:       o.requestID,
	}, nil
}

// Delete removes the node at path (ErrNotFound when there is none), or with Recursive the
// node and its whole subtree (ErrNotFound when there was nothing to delete), in one
// revision. ExpectVersion makes it conditional (ErrConflict on mismatch).
func (c *Client) Delete(ctx context.Context, path string, opts ...DeleteOption) (*DeleteResult, error) {
	req, err := buildDelete(path, opts)
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", path, err)
	}
	var resp *coordv1.DeleteResponse
	err = c.do(ctx, callOpts{preferLeader: true}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		var err error
		resp, err = api.Delete(ctx, req, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", path, err)
	}
	return &DeleteResult{Revision: resp.GetHeader().GetRevision(), Deleted: resp.GetDeleted()}, nil
}

func buildDelete(path string, opts []DeleteOption) (*coordv1.DeleteRequest, error) {
	var o deleteOptions
	for _, opt := range opts {
		opt.applyDelete(&o)
	}
	if o.err != nil {
		return nil, o.err
	}
	if err := ValidatePath(path, false); err != nil {
		return nil, err
	}
	if o.requestID == "" {
		o.requestID = newRequestID()
	}
	return &coordv1.DeleteRequest{
		Path: path, ExpectedVersion: o.expectVersion, Recursive: o.recursive, RequestId: o.requestID,
	}, nil
}

// sessionPrecondition is what FAILED_PRECONDITION means for a write: a session when the
// write names one.
func sessionPrecondition(namesSession bool) error {
	if namesSession {
		return ErrSessionExpired
	}
	return nil
}
