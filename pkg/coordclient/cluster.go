package coordclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// Member is one member of the cluster.
type Member struct {
	// ID is the member id (FNV-64a of its name).
	ID uint64
	// Name is the member's name.
	Name string
	// PeerAddr is where the member serves Raft peers.
	PeerAddr string
	// ClientAddr is where the member serves clients; empty until it has announced it.
	ClientAddr string
	// IsLeader is true for the leader.
	IsLeader bool
}

func membersFromProto(ms []*coordv1.Member) []Member {
	out := make([]Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, memberFromProto(m))
	}
	return out
}

func memberFromProto(m *coordv1.Member) Member {
	return Member{
		ID: m.GetId(), Name: m.GetName(), PeerAddr: m.GetPeerAddr(), ClientAddr: m.GetClientAddr(), IsLeader: m.GetIsLeader(),
	}
}

// Members lists the members of the cluster, ordered by id.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var resp *coordv1.MembersResponse
	err := c.do(ctx, callOpts{}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		var err error
		resp, err = api.Members(ctx, &coordv1.MembersRequest{}, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	c.learnMembers(resp.GetMembers())
	return membersFromProto(resp.GetMembers()), nil
}

// MemberAddResult is the answer of MemberAdd.
type MemberAddResult struct {
	// Member is the new member.
	Member Member
	// Members is the member list after the change.
	Members []Member
	// ClusterID is the cluster's id.
	ClusterID uint64
}

// MemberAdd adds a member named name that will serve Raft peers at peerAddr (host:port).
// Start it afterwards with --initial-cluster-state existing. The proto has no request id
// for membership changes, so a retry after an ambiguous failure may meet ErrAlreadyExists
// for its own first attempt; MemberAdd then checks the member list and reports success
// when the member is there with peerAddr.
func (c *Client) MemberAdd(ctx context.Context, name, peerAddr string) (*MemberAddResult, error) {
	if name == "" || strings.ContainsAny(name, "=, \t\n") {
		return nil, fmt.Errorf("add member: %w: name %q: want a non-empty name without '=', ',' or spaces", ErrInvalidArgument, name)
	}
	if err := validateEndpoint(peerAddr); err != nil {
		return nil, fmt.Errorf("add member %s: peer address: %w", name, err)
	}
	req := &coordv1.MemberAddRequest{Name: name, PeerAddr: peerAddr}
	var resp *coordv1.MemberAddResponse
	attempts := 0
	err := c.do(ctx, callOpts{preferLeader: true}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		attempts++
		var err error
		resp, err = api.MemberAdd(ctx, req, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if errors.Is(err, ErrAlreadyExists) && attempts > 1 {
		ms, lerr := c.Members(ctx)
		if lerr == nil {
			for _, m := range ms {
				if m.Name == name && m.PeerAddr == peerAddr {
					return &MemberAddResult{Member: m, Members: ms}, nil
				}
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("add member %s: %w", name, err)
	}
	c.learnMembers(resp.GetMembers())
	return &MemberAddResult{
		Member: memberFromProto(resp.GetMember()), Members: membersFromProto(resp.GetMembers()), ClusterID: resp.GetClusterId(),
	}, nil
}

// MemberRemove removes the member with this id and returns the member list after the
// change. A retry that meets ErrNotFound after an ambiguous first attempt counts as done.
func (c *Client) MemberRemove(ctx context.Context, id uint64) ([]Member, error) {
	if id == 0 {
		return nil, fmt.Errorf("remove member: %w: id 0", ErrInvalidArgument)
	}
	var resp *coordv1.MemberRemoveResponse
	attempts := 0
	err := c.do(ctx, callOpts{preferLeader: true, precondition: ErrLastMember}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		attempts++
		var err error
		resp, err = api.MemberRemove(ctx, &coordv1.MemberRemoveRequest{Id: id}, grpc.Trailer(tr))
		return resp.GetHeader(), err
	})
	if errors.Is(err, ErrNotFound) && attempts > 1 {
		return c.Members(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("remove member %x: %w", id, err)
	}
	return membersFromProto(resp.GetMembers()), nil
}

// Status is one member's view of the cluster and its store.
type Status struct {
	// Endpoint is the address the status came from.
	Endpoint string
	// Name and ID identify the member.
	Name string
	ID   uint64
	// LeaderID is the leader as the member knows it, 0 when there is none.
	LeaderID uint64
	// IsLeader is true when the member leads.
	IsLeader bool
	// RaftTerm is the member's Raft term.
	RaftTerm uint64
	// Revision is the store's revision.
	Revision int64
	// CommitIndex and AppliedIndex are the Raft log positions committed and applied.
	CommitIndex, AppliedIndex uint64
	// CompactRevision is the highest revision whose watch events are gone.
	CompactRevision int64
	// Nodes, Sessions and Watchers count the tree's nodes, the open sessions and this
	// member's watches.
	Nodes, Sessions, Watchers int64
	// ClusterID is the cluster's id.
	ClusterID uint64
}

// Status returns the status of the member at endpoint (any address, not only a
// configured one), or of any member when endpoint is "".
func (c *Client) Status(ctx context.Context, endpoint string) (*Status, error) {
	if endpoint != "" {
		if err := validateEndpoint(endpoint); err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
	}
	var resp *coordv1.StatusResponse
	served := endpoint
	err := c.do(ctx, callOpts{pin: endpoint}, func(ctx context.Context, api coordv1.CoordServiceClient, tr *metadata.MD) (*coordv1.ResponseHeader, error) {
		var err error
		var p peer.Peer
		resp, err = api.Status(ctx, &coordv1.StatusRequest{}, grpc.Trailer(tr), grpc.Peer(&p))
		if p.Addr != nil && endpoint == "" {
			served = p.Addr.String()
		}
		return resp.GetHeader(), err
	})
	if err != nil {
		if endpoint != "" {
			return nil, fmt.Errorf("status of %s: %w", endpoint, err)
		}
		return nil, fmt.Errorf("status: %w", err)
	}
	h := resp.GetHeader()
	return &Status{
		Endpoint:        served,
		Name:            resp.GetName(),
		ID:              h.GetMemberId(),
		LeaderID:        h.GetLeaderId(),
		IsLeader:        resp.GetIsLeader(),
		RaftTerm:        h.GetRaftTerm(),
		Revision:        h.GetRevision(),
		CommitIndex:     resp.GetCommitIndex(),
		AppliedIndex:    resp.GetAppliedIndex(),
		CompactRevision: resp.GetCompactRevision(),
		Nodes:           resp.GetNodes(),
		Sessions:        resp.GetSessions(),
		Watchers:        resp.GetWatchers(),
		ClusterID:       resp.GetClusterId(),
	}, nil
}

// Snapshot streams a point-in-time copy of a member's store to w and returns the
// snapshot's revision. It fails over to another member only before the first byte was
// written; a failure after that returns the error and w holds a partial copy (write to a
// temporary file and rename it on success).
func (c *Client) Snapshot(ctx context.Context, w io.Writer) (revision int64, err error) {
	var started bool
	err = c.doStream(ctx, func(ctx context.Context, api coordv1.CoordServiceClient) error {
		st, err := api.Snapshot(ctx, &coordv1.SnapshotRequest{})
		if err != nil {
			return mapError(err, nil, nil)
		}
		for {
			resp, err := st.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				err = mapError(err, st.Trailer(), nil)
				if started {
					return &permanent{err}
				}
				return err
			}
			if h := resp.GetHeader(); h != nil && !started {
				revision = h.GetRevision()
			}
			if len(resp.GetBlob()) == 0 {
				continue
			}
			started = true
			if _, err := w.Write(resp.GetBlob()); err != nil {
				return &permanent{fmt.Errorf("write: %w", err)}
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("snapshot: %w", err)
	}
	if !started {
		return 0, fmt.Errorf("snapshot: %w: the member sent no data", errBadResponse)
	}
	return revision, nil
}

// permanent marks a stream error that must not be retried.
type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

// doStream runs a server-streaming call with failover: fn is retried on another member
// while it fails with a retryable error that is not permanent, for at most RequestTimeout
// (a stream that runs is not bounded by it) and until ctx ends.
func (c *Client) doStream(ctx context.Context, fn func(ctx context.Context, api coordv1.CoordServiceClient) error) error {
	var lastErr error
	giveUpAt := time.Now().Add(c.cfg.RequestTimeout)
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return giveUp(ctx, lastErr, attempt)
		}
		addr := c.pick(false)
		api, err := c.api(addr)
		if err != nil {
			return err
		}
		err = fn(ctx, api)
		if err == nil {
			return nil
		}
		var p *permanent
		if errors.As(err, &p) {
			return p.err
		}
		if !retryable(ctx, err) {
			return err
		}
		if time.Now().After(giveUpAt) {
			return fmt.Errorf("%w (gave up after %d attempts in %s)", err, attempt+1, c.cfg.RequestTimeout)
		}
		lastErr = err
		if !c.failed(addr, err) && !sleep(ctx, retryDelay(attempt, len(c.endpoints))) {
			return giveUp(ctx, lastErr, attempt+1)
		}
	}
}
