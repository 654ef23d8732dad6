package coord

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"github.com/berthdev/berth/services/coord/internal/session"
	"github.com/berthdev/berth/services/coord/internal/tree"
	"github.com/berthdev/berth/services/coord/internal/watch"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// Trailer keys set on error statuses.
const (
	TrailerMemberID       = "berth-member-id"
	TrailerLeaderID       = "berth-leader-id"
	TrailerCompactRev     = "berth-compact-revision"
	TrailerResumeRevision = "berth-resume-revision"
)

// progressInterval is how often an idle watch stream gets a progress notification.
const progressInterval = 5 * time.Second

func (s *Server) header(rev int64) *coordv1.ResponseHeader {
	return &coordv1.ResponseHeader{Revision: rev, MemberId: s.id, LeaderId: s.leader.Load(), RaftTerm: s.term.Load()}
}

// storeError maps a store error to its gRPC status.
func storeError(err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, tree.ErrInvalidPath), errors.Is(err, tree.ErrInvalidArgument):
		code = codes.InvalidArgument
	case errors.Is(err, tree.ErrValueTooLarge):
		code = codes.ResourceExhausted
	case errors.Is(err, tree.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, tree.ErrVersionMismatch):
		code = codes.Aborted
	case errors.Is(err, tree.ErrSessionNotFound), errors.Is(err, tree.ErrRequestIDReused):
		code = codes.FailedPrecondition
	default:
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}

// clusterError maps an error from the Raft node; parent is the caller's context.
func (s *Server) clusterError(parent context.Context, what string, err error) error {
	switch {
	case parent.Err() != nil:
		return status.FromContextError(parent.Err()).Err()
	case errors.Is(err, raftstore.ErrNoLeader):
		return status.Errorf(codes.Unavailable, "%s: no leader (an election is in progress or there is no quorum); retry", what)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.Unavailable, "%s: not committed within %v (no quorum?); retry with the same request id", what, s.cfg.RequestTimeout)
	case errors.Is(err, raftstore.ErrStopped), errors.Is(err, raftstore.ErrRemoved):
		return status.Errorf(codes.Unavailable, "%s: member is stopping: %v", what, err)
	case errors.Is(err, raftstore.ErrProposalTooLarge):
		return status.Errorf(codes.ResourceExhausted, "%s: %v", what, err)
	case errors.Is(err, raftstore.ErrMemberExists):
		return status.Errorf(codes.AlreadyExists, "%s: %v", what, err)
	case errors.Is(err, raftstore.ErrMemberNotFound):
		return status.Errorf(codes.NotFound, "%s: %v", what, err)
	case errors.Is(err, raftstore.ErrLastMember):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	}
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

// propose replicates a write and returns the machine's response.
func (s *Server) propose(ctx context.Context, what string, data []byte, err error) (proto.Message, error) {
	if err != nil {
		return nil, storeError(err)
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	res, err := s.node.Propose(pctx, data)
	if err != nil {
		return nil, s.clusterError(ctx, what, err)
	}
	switch r := res.(type) {
	case error:
		return nil, storeError(r)
	case proto.Message:
		return r, nil
	}
	return nil, status.Errorf(codes.Internal, "%s: unexpected result %T", what, res)
}

// readBarrier makes a linearizable read see every write acknowledged before it.
func (s *Server) readBarrier(ctx context.Context, what string, serializable bool) error {
	if serializable || s.cfg.localLinearizableReads || forceLocalReads {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.node.ReadIndex(rctx); err != nil {
		return s.clusterError(ctx, what, err)
	}
	return nil
}

// Get implements CoordService.Get.
func (s *Server) Get(ctx context.Context, req *coordv1.GetRequest) (*coordv1.GetResponse, error) {
	if err := tree.ValidatePath(req.Path, false); err != nil {
		return nil, storeError(fmt.Errorf("get %q: %w", req.Path, err))
	}
	if err := s.readBarrier(ctx, "get "+req.Path, req.Serializable); err != nil {
		return nil, err
	}
	n, rev, err := s.machine.Get(req.Path, req.KeysOnly)
	if err != nil {
		return nil, storeError(err)
	}
	return &coordv1.GetResponse{Header: s.header(rev), Node: n}, nil
}

// List implements CoordService.List.
func (s *Server) List(ctx context.Context, req *coordv1.ListRequest) (*coordv1.ListResponse, error) {
	if err := tree.ValidatePath(req.Path, true); err != nil {
		return nil, storeError(fmt.Errorf("list %q: %w", req.Path, err))
	}
	if req.Limit < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "list %s: limit %d is negative", req.Path, req.Limit)
	}
	if err := s.readBarrier(ctx, "list "+req.Path, req.Serializable); err != nil {
		return nil, err
	}
	nodes, more, rev, err := s.machine.List(req.Path, req.Recursive, req.KeysOnly, int(req.Limit))
	if err != nil {
		return nil, storeError(err)
	}
	return &coordv1.ListResponse{Header: s.header(rev), Nodes: nodes, More: more}, nil
}

// Put implements CoordService.Put.
func (s *Server) Put(ctx context.Context, req *coordv1.PutRequest) (*coordv1.PutResponse, error) {
	if len(req.Value) > tree.MaxValueBytes {
		return nil, status.Errorf(codes.ResourceExhausted, "put %s: value is %d bytes, over the %d-byte limit", req.Path, len(req.Value), tree.MaxValueBytes)
	}
	data, err := tree.EncodePut(req)
	res, err := s.propose(ctx, "put "+req.Path, data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.PutResponse)
	return &coordv1.PutResponse{Header: s.header(r.Header.GetRevision()), Node: r.Node}, nil
}

// Delete implements CoordService.Delete.
func (s *Server) Delete(ctx context.Context, req *coordv1.DeleteRequest) (*coordv1.DeleteResponse, error) {
	data, err := tree.EncodeDelete(req)
	res, err := s.propose(ctx, "delete "+req.Path, data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.DeleteResponse)
	return &coordv1.DeleteResponse{Header: s.header(r.Header.GetRevision()), Deleted: r.Deleted}, nil
}

// Txn implements CoordService.Txn.
func (s *Server) Txn(ctx context.Context, req *coordv1.TxnRequest) (*coordv1.TxnResponse, error) {
	data, err := tree.EncodeTxn(req)
	res, err := s.propose(ctx, "txn", data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.TxnResponse)
	return &coordv1.TxnResponse{Header: s.header(r.Header.GetRevision()), Succeeded: r.Succeeded, Results: r.Results}, nil
}

// SessionOpen implements CoordService.SessionOpen.
func (s *Server) SessionOpen(ctx context.Context, req *coordv1.SessionOpenRequest) (*coordv1.SessionOpenResponse, error) {
	data, err := tree.EncodeSessionOpen(req)
	res, err := s.propose(ctx, "session open", data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.SessionOpenResponse)
	return &coordv1.SessionOpenResponse{Header: s.header(r.Header.GetRevision()), SessionId: r.SessionId, TtlMs: r.TtlMs}, nil
}

// SessionClose implements CoordService.SessionClose.
func (s *Server) SessionClose(ctx context.Context, req *coordv1.SessionCloseRequest) (*coordv1.SessionCloseResponse, error) {
	data, err := tree.EncodeSessionClose(req)
	res, err := s.propose(ctx, "session close", data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.SessionCloseResponse)
	return &coordv1.SessionCloseResponse{Header: s.header(r.Header.GetRevision()), Deleted: r.Deleted}, nil
}

// notLeader is the UNAVAILABLE status for a keepalive that reached a follower.
func (s *Server) notLeader() error {
	lead := s.leader.Load()
	d := &coordv1.LeaderDetail{LeaderId: lead, LeaderClientAddr: s.machine.Members()[lead].ClientAddr}
	st := status.Newf(codes.Unavailable, "session keepalive: member %s is not the leader; leader is %s at %q",
		FormatID(s.id), FormatID(lead), d.LeaderClientAddr)
	if wd, err := st.WithDetails(protoadapt.MessageV1Of(d)); err == nil {
		st = wd
	}
	return st.Err()
}

// SessionKeepAlive implements CoordService.SessionKeepAlive.
func (s *Server) SessionKeepAlive(stream grpc.BidiStreamingServer[coordv1.SessionKeepAliveRequest, coordv1.SessionKeepAliveResponse]) error {
	ctx := stream.Context()
	if leader, _ := s.lessor.IsLeader(); !leader {
		return s.notLeader()
	}
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		ttl, err := s.lessor.KeepAlive(req.SessionId)
		if errors.Is(err, session.ErrUnknown) && !s.machine.HasSession(req.SessionId) {
			// The open may be committed but not yet applied here: wait for this member to
			// catch up, then look again.
			if berr := s.readBarrier(ctx, "session keepalive", false); berr == nil {
				ttl, err = s.lessor.KeepAlive(req.SessionId)
			}
		}
		resp := &coordv1.SessionKeepAliveResponse{Header: s.header(s.machine.Revision()), SessionId: req.SessionId}
		switch {
		case errors.Is(err, session.ErrNotLeader):
			return s.notLeader()
		case errors.Is(err, session.ErrUnknown):
			resp.Expired = true
		case err != nil:
			return status.Errorf(codes.Internal, "session keepalive %d: %v", req.SessionId, err)
		default:
			resp.TtlMs = ttl.Milliseconds()
			s.metrics.keepalives.Inc()
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// Watch implements CoordService.Watch.
func (s *Server) Watch(req *coordv1.WatchRequest, stream grpc.ServerStreamingServer[coordv1.WatchResponse]) error {
	if err := tree.ValidatePath(req.Path, true); err != nil {
		return storeError(fmt.Errorf("watch %q: %w", req.Path, err))
	}
	if req.StartRevision < 0 {
		return status.Errorf(codes.InvalidArgument, "watch %s: start revision %d is negative", req.Path, req.StartRevision)
	}
	w, rev, err := s.hub.Watch(req.Path, req.Recursive, req.StartRevision)
	if err != nil {
		return s.watchError(stream, req.Path, err)
	}
	defer w.Close()
	if err := stream.Send(&coordv1.WatchResponse{Header: s.header(rev), Created: true}); err != nil {
		return err
	}
	ctx := stream.Context()
	for {
		wctx, cancel := context.WithTimeout(ctx, progressInterval)
		evs, err := w.Next(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			if errors.Is(err, context.DeadlineExceeded) {
				if prog, ok := w.Progress(); ok {
					if err := stream.Send(&coordv1.WatchResponse{Header: s.header(prog)}); err != nil {
						return err
					}
				}
				continue
			}
			return s.watchError(stream, req.Path, err)
		}
		if !req.PrevNode {
			for i, e := range evs {
				if e.PrevNode != nil {
					evs[i] = &coordv1.Event{Type: e.Type, Node: e.Node, Revision: e.Revision}
				}
			}
		}
		if err := stream.Send(&coordv1.WatchResponse{Header: s.header(evs[len(evs)-1].Revision), Events: evs}); err != nil {
			return err
		}
		s.metrics.watchEventsSent.Add(float64(len(evs)))
	}
}

func (s *Server) watchError(stream grpc.ServerStream, path string, err error) error {
	var ce *watch.CompactedError
	var oe *watch.OverflowError
	switch {
	case errors.As(err, &ce):
		stream.SetTrailer(metadata.Pairs(TrailerCompactRev, strconv.FormatInt(ce.CompactRevision, 10)))
		st := status.Newf(codes.OutOfRange, "watch %s: %v", path, ce)
		if wd, derr := st.WithDetails(protoadapt.MessageV1Of(&coordv1.CompactedDetail{CompactRevision: ce.CompactRevision, CurrentRevision: ce.CurrentRevision})); derr == nil {
			st = wd
		}
		return st.Err()
	case errors.As(err, &oe):
		stream.SetTrailer(metadata.Pairs(TrailerResumeRevision, strconv.FormatInt(oe.Resume, 10)))
		st := status.Newf(codes.ResourceExhausted, "watch %s: %v", path, oe)
		if wd, derr := st.WithDetails(protoadapt.MessageV1Of(&coordv1.ResumeDetail{ResumeRevision: oe.Resume})); derr == nil {
			st = wd
		}
		return st.Err()
	case errors.Is(err, watch.ErrClosed):
		return status.Errorf(codes.Unavailable, "watch %s: member is stopping", path)
	}
	return status.Errorf(codes.Internal, "watch %s: %v", path, err)
}

func (s *Server) members() []*coordv1.Member {
	attrs := s.machine.Members()
	lead := s.leader.Load()
	var out []*coordv1.Member
	for _, p := range s.node.Members() {
		a := attrs[p.ID]
		out = append(out, &coordv1.Member{Id: p.ID, Name: a.Name, PeerAddr: p.Addr, ClientAddr: a.ClientAddr, IsLeader: p.ID == lead})
	}
	return out
}

// Members implements CoordService.Members.
func (s *Server) Members(context.Context, *coordv1.MembersRequest) (*coordv1.MembersResponse, error) {
	return &coordv1.MembersResponse{Header: s.header(s.machine.Revision()), Members: s.members()}, nil
}

// MemberAdd implements CoordService.MemberAdd.
func (s *Server) MemberAdd(ctx context.Context, req *coordv1.MemberAddRequest) (*coordv1.MemberAddResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "member add: name is required")
	}
	if _, err := ParseInitialCluster(req.Name + "=" + req.PeerAddr); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "member add %s: %v", req.Name, err)
	}
	id := MemberID(req.Name)
	cctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.node.AddMember(cctx, raftstore.Peer{ID: id, Addr: req.PeerAddr}); err != nil {
		return nil, s.clusterError(ctx, "member add "+req.Name, err)
	}
	return &coordv1.MemberAddResponse{
		Header:    s.header(s.machine.Revision()),
		Member:    &coordv1.Member{Id: id, Name: req.Name, PeerAddr: req.PeerAddr},
		Members:   s.members(),
		ClusterId: s.clusterID,
	}, nil
}

// MemberRemove implements CoordService.MemberRemove.
func (s *Server) MemberRemove(ctx context.Context, req *coordv1.MemberRemoveRequest) (*coordv1.MemberRemoveResponse, error) {
	if req.Id == 0 {
		return nil, status.Error(codes.InvalidArgument, "member remove: id is required")
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.node.RemoveMember(cctx, req.Id); err != nil {
		return nil, s.clusterError(ctx, "member remove "+FormatID(req.Id), err)
	}
	return &coordv1.MemberRemoveResponse{Header: s.header(s.machine.Revision()), Members: s.members()}, nil
}

// Status implements CoordService.Status.
func (s *Server) Status(context.Context, *coordv1.StatusRequest) (*coordv1.StatusResponse, error) {
	st := s.node.Status()
	ms := s.machine.Stats()
	hs := s.hub.Stats()
	return &coordv1.StatusResponse{
		Header:          &coordv1.ResponseHeader{Revision: ms.Revision, MemberId: s.id, LeaderId: st.Leader, RaftTerm: st.Term},
		Name:            s.cfg.Name,
		CommitIndex:     st.CommitIndex,
		AppliedIndex:    st.AppliedIndex,
		CompactRevision: hs.CompactRev,
		Nodes:           int64(ms.Nodes),
		Sessions:        int64(ms.Sessions),
		Watchers:        int64(hs.Watchers),
		IsLeader:        st.IsLeader,
		ClusterId:       s.clusterID,
	}, nil
}

// chunkSender streams what is written to it as SnapshotResponse chunks.
type chunkSender struct {
	stream grpc.ServerStreamingServer[coordv1.SnapshotResponse]
	header *coordv1.ResponseHeader
}

func (c *chunkSender) Write(p []byte) (int, error) {
	resp := &coordv1.SnapshotResponse{Header: c.header, Blob: p}
	c.header = nil
	if err := c.stream.Send(resp); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Snapshot implements CoordService.Snapshot.
func (s *Server) Snapshot(_ *coordv1.SnapshotRequest, stream grpc.ServerStreamingServer[coordv1.SnapshotResponse]) error {
	ctx := stream.Context()
	if err := s.readBarrier(ctx, "snapshot", false); err != nil {
		return err
	}
	src, err := s.machine.Snapshot()
	if err != nil {
		return status.Errorf(codes.Internal, "snapshot: %v", err)
	}
	defer src.Close()
	rev := int64(0)
	if r, ok := src.(interface{ Revision() int64 }); ok {
		rev = r.Revision()
	}
	bw := bufio.NewWriterSize(&chunkSender{stream: stream, header: s.header(rev)}, 1<<20)
	if _, err := src.WriteTo(bw); err != nil {
		return status.Errorf(codes.Unavailable, "snapshot: %v", err)
	}
	if err := bw.Flush(); err != nil {
		return status.Errorf(codes.Unavailable, "snapshot: %v", err)
	}
	return nil
}

// trailers adds the member and leader ids to the trailer of a failed call.
func (s *Server) trailers(ctx context.Context, err error) {
	if err == nil {
		return
	}
	grpc.SetTrailer(ctx, metadata.Pairs(TrailerMemberID, FormatID(s.id), TrailerLeaderID, FormatID(s.leader.Load())))
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	s.trailers(ctx, err)
	s.metrics.observe(info.FullMethod, err, time.Since(start))
	return resp, err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := h(srv, ss)
	if err != nil {
		ss.SetTrailer(metadata.Pairs(TrailerMemberID, FormatID(s.id), TrailerLeaderID, FormatID(s.leader.Load())))
	}
	s.metrics.observe(info.FullMethod, err, time.Since(start))
	return err
}
