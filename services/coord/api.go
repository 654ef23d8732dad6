package coord

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"github.com/berthdev/berth/services/coord/internal/session"
	"github.com/berthdev/berth/services/coord/internal/tree"
	"github.com/berthdev/berth/services/coord/internal/watch"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
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

// stamp completes the header of a response the state machine made (the caller owns it:
// see tree.Machine.Apply) with this member's view.
func (s *Server) stamp(h *coordv1.ResponseHeader) *coordv1.ResponseHeader {
	if h == nil {
		return s.header(0)
	}
	h.MemberId, h.LeaderId, h.RaftTerm = s.id, s.leader.Load(), s.term.Load()
	return h
}

// errorDomain is the domain of the google.rpc.ErrorInfo detail of every error status.
const errorDomain = "coord.berth.dev"

// statusError makes an error status with an ErrorInfo detail carrying reason, followed by
// the other details given.
func statusError(code codes.Code, reason coordv1.ErrorReason, msg string, details ...proto.Message) error {
	st := status.New(code, msg)
	ds := make([]protoadapt.MessageV1, 0, 1+len(details))
	ds = append(ds, protoadapt.MessageV1Of(&errdetails.ErrorInfo{Reason: reason.String(), Domain: errorDomain}))
	for _, d := range details {
		ds = append(ds, protoadapt.MessageV1Of(d))
	}
	if wd, err := st.WithDetails(ds...); err == nil {
		st = wd
	}
	return st.Err()
}

// storeError maps a store error to its gRPC status.
func storeError(err error) error {
	var code codes.Code
	var reason coordv1.ErrorReason
	var details []proto.Message
	switch {
	case errors.Is(err, tree.ErrInvalidPath), errors.Is(err, tree.ErrInvalidArgument):
		code, reason = codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT
		if errors.Is(err, tree.ErrInvalidPath) {
			reason = coordv1.ErrorReason_ERROR_REASON_INVALID_PATH
		}
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: tree.ErrorField(err), Description: err.Error()},
		}})
	case errors.Is(err, tree.ErrValueTooLarge):
		code, reason = codes.ResourceExhausted, coordv1.ErrorReason_ERROR_REASON_TOO_LARGE
	case errors.Is(err, tree.ErrNotFound):
		code, reason = codes.NotFound, coordv1.ErrorReason_ERROR_REASON_NOT_FOUND
	case errors.Is(err, tree.ErrVersionMismatch):
		code, reason = codes.Aborted, coordv1.ErrorReason_ERROR_REASON_VERSION_MISMATCH
	case errors.Is(err, tree.ErrSessionNotFound):
		code, reason = codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_SESSION_NOT_FOUND
	case errors.Is(err, tree.ErrRequestIDReused):
		code, reason = codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_REQUEST_ID_REUSED
	default:
		code, reason = codes.Internal, coordv1.ErrorReason_ERROR_REASON_INTERNAL
	}
	return statusError(code, reason, err.Error(), details...)
}

// invalidArgument is the INVALID_ARGUMENT status for a request field the API checks itself.
func invalidArgument(field, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	return statusError(codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, msg,
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}}})
}

// clusterError maps an error from the Raft node; parent is the caller's context.
func (s *Server) clusterError(parent context.Context, what string, err error) error {
	switch {
	case parent.Err() != nil:
		return status.FromContextError(parent.Err()).Err()
	case errors.Is(err, raftstore.ErrNoLeader):
		return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_NO_LEADER,
			fmt.Sprintf("%s: no leader (an election is in progress or there is no quorum); retry", what))
	case errors.Is(err, context.DeadlineExceeded):
		return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_NOT_COMMITTED,
			fmt.Sprintf("%s: not committed within %v (no quorum?); retry with the same request id", what, s.cfg.RequestTimeout))
	case errors.Is(err, raftstore.ErrStopped), errors.Is(err, raftstore.ErrRemoved):
		return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_STOPPING,
			fmt.Sprintf("%s: member is stopping: %v", what, err))
	case errors.Is(err, raftstore.ErrProposalTooLarge):
		return statusError(codes.ResourceExhausted, coordv1.ErrorReason_ERROR_REASON_TOO_LARGE, fmt.Sprintf("%s: %v", what, err))
	case errors.Is(err, raftstore.ErrMemberExists):
		return statusError(codes.AlreadyExists, coordv1.ErrorReason_ERROR_REASON_MEMBER_EXISTS, fmt.Sprintf("%s: %v", what, err))
	case errors.Is(err, raftstore.ErrMemberNotFound):
		return statusError(codes.NotFound, coordv1.ErrorReason_ERROR_REASON_NOT_FOUND, fmt.Sprintf("%s: %v", what, err))
	case errors.Is(err, raftstore.ErrLastMember):
		return statusError(codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_LAST_MEMBER, fmt.Sprintf("%s: %v", what, err))
	}
	return statusError(codes.Internal, coordv1.ErrorReason_ERROR_REASON_INTERNAL, fmt.Sprintf("%s: %v", what, err))
}

// unavailable returns the UNAVAILABLE status for a call that this member cannot serve
// now, judging by the leader state st, or nil: no leader for longer than an election
// timeout. A leader never refuses a call for want of a quorum: raft itself fences writes
// and reads, and its CheckQuorum steps a cut-off leader down within two election timeouts,
// after which calls fail at once (see followLeadership). Refusing earlier, on the leader's
// own reckoning, turned a busy leader's slow round trips into errors while its followers
// were answering. It is checked before each attempt; an attempt in flight is cut short by
// a change of leader.
func (s *Server) unavailable(st *leaderState, what string) error {
	if st.leader != 0 {
		return nil
	}
	if d := time.Since(st.since); d >= s.cfg.ElectionTimeout {
		return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_NO_LEADER,
			fmt.Sprintf("%s: no leader for %v (an election is failing or member %s is cut off from the majority); retry on another member",
				what, d.Round(time.Millisecond), FormatID(s.id)))
	}
	return nil
}

// quorumSilence reports, on a leader, how long it has not heard from a majority, and
// whether that is an election timeout both on the clock and in raft ticks (a process too
// busy to tick on time is judged by raft's own clock, as raft's CheckQuorum judges it).
// Any message of its term from a follower counts, dated when it arrives.
func (s *Server) quorumSilence(now time.Time) (time.Duration, bool) {
	at, ticks, ok := s.node.QuorumContact()
	if !ok {
		return 0, false
	}
	d := now.Sub(at)
	return d, d > s.cfg.ElectionTimeout && ticks > uint64(s.cfg.ElectionTimeout/s.cfg.HeartbeatInterval)
}

// replicate runs attempt (a proposal or a read barrier) against the cluster within the
// request timeout, failing fast when the cluster cannot serve it (see unavailable). While
// the member has no leader it waits for one, up to an election timeout. An attempt in
// flight when the leader changes may have been lost with the old leader (a follower
// forwards proposals, and a lost one is never retried by Raft): idempotent attempts
// (reads, writes with a request id, which the store dedupes) are made again for the new
// leader; others fail at once with UNAVAILABLE, outcome unknown.
func (s *Server) replicate(ctx context.Context, what string, idempotent bool, attempt func(ctx context.Context, abandon <-chan struct{}) error) error {
	rctx := ctx
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > s.cfg.RequestTimeout {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancel()
	}
	for {
		st := s.lead.Load()
		if err := s.unavailable(st, what); err != nil {
			return err
		}
		if st.leader == 0 {
			t := time.NewTimer(time.Until(st.since.Add(s.cfg.ElectionTimeout)) + time.Millisecond)
			select {
			case <-st.done.Done():
			case <-t.C:
			case <-rctx.Done():
			}
			t.Stop()
			if rctx.Err() != nil {
				return s.clusterError(ctx, what, fmt.Errorf("%w: %w", raftstore.ErrNoLeader, rctx.Err()))
			}
			continue
		}
		// The attempt gives up when the leader state is replaced (raftstore's abandon
		// channel: no context to make and link per call).
		err := attempt(rctx, st.done.Done())
		if err == nil {
			return nil
		}
		if rctx.Err() != nil || st.done.Err() == nil {
			return s.clusterError(ctx, what, err)
		}
		// The leadership changed while the attempt was in flight.
		if err := s.unavailable(s.lead.Load(), what); err != nil {
			return err
		}
		if !idempotent {
			return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_NOT_COMMITTED,
				fmt.Sprintf("%s: the leader changed while the write was in flight; its outcome is unknown (give writes a request id to make retries safe)", what))
		}
	}
}

// abandonable adapts an attempt that only takes a context to replicate: it runs under a
// context cancelled when abandon closes (for the rare calls without an abandon channel).
func abandonable(attempt func(context.Context) error) func(context.Context, <-chan struct{}) error {
	return func(ctx context.Context, abandon <-chan struct{}) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// The goroutine exits when the attempt returns (cancel) or is abandoned.
		go func() {
			select {
			case <-abandon:
				cancel()
			case <-ctx.Done():
			}
		}()
		return attempt(ctx)
	}
}

// applyEntry replicates an entry and returns what the machine's Apply returned for it; an
// error result is mapped to its status. An entry with a request id is proposed again
// after a change of leader (the store answers a duplicate from its request-id table).
func (s *Server) applyEntry(ctx context.Context, what, requestID string, data []byte, err error) (any, error) {
	if err != nil {
		return nil, storeError(err)
	}
	var res any
	err = s.replicate(ctx, what, requestID != "", func(ctx context.Context, abandon <-chan struct{}) error {
		var err error
		res, err = s.node.ProposeUnless(ctx, data, abandon)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err, ok := res.(error); ok {
		return nil, storeError(err)
	}
	return res, nil
}

// propose replicates a write and returns the machine's response message.
func (s *Server) propose(ctx context.Context, what, requestID string, data []byte, err error) (proto.Message, error) {
	res, err := s.applyEntry(ctx, what, requestID, data, err)
	if err != nil {
		return nil, err
	}
	if r, ok := res.(*tree.PutResult); ok {
		return r.Response(), nil
	}
	if r, ok := res.(proto.Message); ok {
		return r, nil
	}
	return nil, status.Errorf(codes.Internal, "%s: unexpected result %T", what, res)
}

// recordMemberRequest records a member request with a request id in the store before its
// change is made, and reports whether an earlier attempt of the same request was
// recorded (a retry). Requests without a request id record nothing.
func (s *Server) recordMemberRequest(ctx context.Context, what, requestID string, data []byte, err error) (bool, error) {
	if requestID == "" {
		return false, nil
	}
	res, err := s.applyEntry(ctx, what, requestID, data, err)
	if err != nil {
		return false, err
	}
	r, ok := res.(tree.MemberRequestResult)
	if !ok {
		return false, status.Errorf(codes.Internal, "%s: unexpected result %T", what, res)
	}
	return r.Repeat, nil
}

// awaitReplay waits until this member has applied the log it recovered at start (see
// Server.replayed), so that no read is answered from an older state than the member had
// before it restarted. It fails with UNAVAILABLE (STARTING) after the request timeout.
func (s *Server) awaitReplay(ctx context.Context, what string) error {
	select {
	case <-s.replayed:
		return nil
	default:
	}
	t := time.NewTimer(s.cfg.RequestTimeout)
	defer t.Stop()
	select {
	case <-s.replayed:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-t.C:
		return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_STARTING,
			fmt.Sprintf("%s: member %s has not applied its recovered log (index %d) yet; retry shortly or on another member",
				what, FormatID(s.id), s.replayTarget))
	}
}

// readBarrier makes a read see at least the state this member had before it last
// stopped, and a linearizable read every write acknowledged before it.
func (s *Server) readBarrier(ctx context.Context, what string, serializable bool) error {
	if err := s.awaitReplay(ctx, what); err != nil {
		return err
	}
	if serializable || s.cfg.localLinearizableReads || forceLocalReads {
		return nil
	}
	return s.replicate(ctx, what, true, s.node.ReadIndexUnless)
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
		return nil, invalidArgument("limit", "list %s: limit %d is negative", req.Path, req.Limit)
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
		return nil, statusError(codes.ResourceExhausted, coordv1.ErrorReason_ERROR_REASON_TOO_LARGE,
			fmt.Sprintf("put %s: value is %d bytes, over the %d-byte limit", req.Path, len(req.Value), tree.MaxValueBytes))
	}
	data, err := tree.EncodePut(req)
	res, err := s.propose(ctx, "put "+req.Path, req.RequestId, data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.PutResponse)
	r.Header = s.stamp(r.Header)
	return r, nil
}

// Delete implements CoordService.Delete.
func (s *Server) Delete(ctx context.Context, req *coordv1.DeleteRequest) (*coordv1.DeleteResponse, error) {
	data, err := tree.EncodeDelete(req)
	res, err := s.propose(ctx, "delete "+req.Path, req.RequestId, data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.DeleteResponse)
	r.Header = s.stamp(r.Header)
	return r, nil
}

// Txn implements CoordService.Txn.
func (s *Server) Txn(ctx context.Context, req *coordv1.TxnRequest) (*coordv1.TxnResponse, error) {
	data, err := tree.EncodeTxn(req)
	res, err := s.propose(ctx, "txn", req.RequestId, data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.TxnResponse)
	r.Header = s.stamp(r.Header)
	return r, nil
}

// SessionOpen implements CoordService.SessionOpen.
func (s *Server) SessionOpen(ctx context.Context, req *coordv1.SessionOpenRequest) (*coordv1.SessionOpenResponse, error) {
	data, err := tree.EncodeSessionOpen(req, time.Now().UnixMilli())
	res, err := s.propose(ctx, "session open", req.RequestId, data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.SessionOpenResponse)
	r.Header = s.stamp(r.Header)
	return r, nil
}

// SessionClose implements CoordService.SessionClose.
func (s *Server) SessionClose(ctx context.Context, req *coordv1.SessionCloseRequest) (*coordv1.SessionCloseResponse, error) {
	data, err := tree.EncodeSessionClose(req)
	res, err := s.propose(ctx, "session close", req.RequestId, data, err)
	if err != nil {
		return nil, err
	}
	r := res.(*coordv1.SessionCloseResponse)
	r.Header = s.stamp(r.Header)
	return r, nil
}

// notLeader is the UNAVAILABLE status for a keepalive that reached a member whose lessor
// is not the leader's. The LeaderDetail names the leader, or no one when this member is
// stopping and has not handed leadership over yet, or when no leader is known.
func (s *Server) notLeader() error {
	lead := s.leader.Load()
	reason := coordv1.ErrorReason_ERROR_REASON_NOT_LEADER
	why := "is not the leader"
	if s.stopping.Load() {
		reason, why = coordv1.ErrorReason_ERROR_REASON_STOPPING, "is stopping"
	}
	if lead == s.id {
		// Leading in Raft without a lessor: stopping, or promotion not done yet.
		lead = 0
	}
	d := &coordv1.LeaderDetail{LeaderId: lead, LeaderClientAddr: s.machine.Members()[lead].ClientAddr}
	msg := fmt.Sprintf("session keepalive: member %s %s; leader is %s at %q", FormatID(s.id), why, FormatID(lead), d.LeaderClientAddr)
	if lead == 0 {
		msg = fmt.Sprintf("session keepalive: member %s %s; no leader is known yet, retry shortly", FormatID(s.id), why)
	}
	return statusError(codes.Unavailable, reason, msg, d)
}

// errNotRecorded is returned by renew when the renewal's record did not commit in time.
var errNotRecorded = errors.New("coord: renewal not recorded")

// noQuorum is the UNAVAILABLE status for a keepalive whose renewal could not be recorded
// in the log in time: the leader cannot reach a majority, or it is badly overloaded.
func (s *Server) noQuorum() error {
	return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_NO_QUORUM,
		fmt.Sprintf("session keepalive: member %s leads but could not record the renewal within %v (quorum lost?); retry",
			FormatID(s.id), s.cfg.RequestTimeout), &coordv1.LeaderDetail{})
}

// renew renews a session for a keepalive. The deadline the lessor gives it is recorded
// through the log, and the renewal counts only once that record is committed in the
// lessor's term: a keepalive is acknowledged only when every later leader knows of it, so
// no failover can expire a session before its client gives up, nor extend it past the
// last acknowledged renewal. Concurrent renewals share the raft loop's batches (one fsync).
func (s *Server) renew(ctx context.Context, id int64) (time.Duration, error) {
	term, deadline, ttl, err := s.lessor.Renew(id)
	if err != nil {
		return 0, err
	}
	st := s.lead.Load()
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	res, err := s.node.ProposeUnless(rctx, tree.EncodeDeadlineCheckpoint(term, []tree.Checkpoint{{ID: id, DeadlineMs: deadline.UnixMilli()}}), st.done.Done())
	cancel()
	recorded := err == nil && res == nil
	s.lessor.RenewDone(id, deadline, recorded)
	switch {
	case recorded:
		s.metrics.checkpoints.Inc()
		return ttl, nil
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case err == nil, st.done.Err() != nil && s.lead.Load().leader != s.id:
		// The record was committed in a later term (ignored), or the leadership moved.
		return 0, session.ErrNotLeader
	}
	return 0, errNotRecorded
}

// SessionKeepAlive implements CoordService.SessionKeepAlive. Each keepalive is answered
// once its renewal is committed (see renew). The stream ends with UNAVAILABLE as soon as
// this member stops being the leader, cannot record a renewal, or stops.
func (s *Server) SessionKeepAlive(stream grpc.BidiStreamingServer[coordv1.SessionKeepAliveRequest, coordv1.SessionKeepAliveResponse]) error {
	ctx := stream.Context()
	if leader, _ := s.lessor.IsLeader(); !leader {
		return s.notLeader()
	}
	// Recv runs on its own goroutine so that the stream can end while the client is
	// between keepalives; the goroutine exits when the stream does.
	reqs := make(chan *coordv1.SessionKeepAliveRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var req *coordv1.SessionKeepAliveRequest
		select {
		case req = <-reqs:
		case err := <-recvErr:
			if err == io.EOF {
				return nil
			}
			return err
		case <-s.drainCtx.Done():
			return s.notLeader()
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		ttl, err := s.renew(ctx, req.SessionId)
		if errors.Is(err, session.ErrUnknown) && !s.machine.HasSession(req.SessionId) {
			// The open may be committed but not yet applied here: wait for this member to
			// catch up, then look again.
			if berr := s.readBarrier(ctx, "session keepalive", false); berr == nil {
				ttl, err = s.renew(ctx, req.SessionId)
			}
		}
		resp := &coordv1.SessionKeepAliveResponse{Header: s.header(s.machine.Revision()), SessionId: req.SessionId}
		switch {
		case ctx.Err() != nil:
			return status.FromContextError(ctx.Err()).Err()
		case errors.Is(err, session.ErrNotLeader):
			return s.notLeader()
		case errors.Is(err, errNotRecorded):
			return s.noQuorum()
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
		return invalidArgument("start_revision", "watch %s: start revision %d is negative", req.Path, req.StartRevision)
	}
	// A watch from "now" must start after the state the member recovered, not replay it.
	if err := s.awaitReplay(stream.Context(), "watch "+req.Path); err != nil {
		return err
	}
	w, rev, err := s.hub.Watch(req.Path, req.Recursive, req.StartRevision)
	if err != nil {
		return s.watchError(stream, req.Path, err)
	}
	defer w.Close()
	if err := stream.Send(&coordv1.WatchResponse{Header: s.header(rev), Created: true}); err != nil {
		return err
	}
	// ctx also ends when the member stops serving streams.
	ctx, cancelDrain := context.WithCancel(stream.Context())
	defer cancelDrain()
	stopDrain := context.AfterFunc(s.drainCtx, cancelDrain)
	defer stopDrain()
	// One timer per stream for the progress notifications of an idle watch.
	idle := time.NewTimer(progressInterval)
	defer idle.Stop()
	for {
		bs, err := w.Next(ctx, idle.C)
		if err != nil {
			if err := stream.Context().Err(); err != nil {
				return status.FromContextError(err).Err()
			}
			if ctx.Err() != nil {
				return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_STOPPING,
					fmt.Sprintf("watch %s: member %s is stopping; resume on another member", req.Path, FormatID(s.id)))
			}
			if errors.Is(err, watch.ErrIdle) {
				if prog, ok := w.Progress(); ok {
					if err := stream.Send(&coordv1.WatchResponse{Header: s.header(prog)}); err != nil {
						return err
					}
				}
				idle.Reset(progressInterval)
				continue
			}
			return s.watchError(stream, req.Path, err)
		}
		if err := s.sendBatches(stream, req, bs); err != nil {
			return err
		}
		idle.Reset(progressInterval)
	}
}

func (s *Server) watchError(stream grpc.ServerStream, path string, err error) error {
	var ce *watch.CompactedError
	var oe *watch.OverflowError
	switch {
	case errors.As(err, &ce):
		stream.SetTrailer(metadata.Pairs(TrailerCompactRev, strconv.FormatInt(ce.CompactRevision, 10)))
		return statusError(codes.OutOfRange, coordv1.ErrorReason_ERROR_REASON_WATCH_COMPACTED, fmt.Sprintf("watch %s: %v", path, ce),
			&coordv1.CompactedDetail{CompactRevision: ce.CompactRevision, CurrentRevision: ce.CurrentRevision})
	case errors.As(err, &oe):
		stream.SetTrailer(metadata.Pairs(TrailerResumeRevision, strconv.FormatInt(oe.Resume, 10)))
		return statusError(codes.ResourceExhausted, coordv1.ErrorReason_ERROR_REASON_WATCH_OVERFLOW, fmt.Sprintf("watch %s: %v", path, oe),
			&coordv1.ResumeDetail{ResumeRevision: oe.Resume})
	case errors.Is(err, watch.ErrClosed):
		return statusError(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_STOPPING, fmt.Sprintf("watch %s: member is stopping", path))
	}
	return statusError(codes.Internal, coordv1.ErrorReason_ERROR_REASON_INTERNAL, fmt.Sprintf("watch %s: %v", path, err))
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

// MemberAdd implements CoordService.MemberAdd. With a request id, a retry whose member is
// already in the cluster with the same peer address succeeds.
func (s *Server) MemberAdd(ctx context.Context, req *coordv1.MemberAddRequest) (*coordv1.MemberAddResponse, error) {
	if req.Name == "" {
		return nil, invalidArgument("name", "member add: name is required")
	}
	if _, err := ParseInitialCluster(req.Name + "=" + req.PeerAddr); err != nil {
		return nil, invalidArgument("peer_addr", "member add %s: %v", req.Name, err)
	}
	id := MemberID(req.Name)
	what := "member add " + req.Name
	data, err := tree.EncodeMemberAdd(req)
	repeat, err := s.recordMemberRequest(ctx, what, req.RequestId, data, err)
	if err != nil {
		return nil, err
	}
	attempted := false
	err = s.replicate(ctx, what, req.RequestId != "", abandonable(func(ctx context.Context) error {
		err := s.node.AddMember(ctx, raftstore.Peer{ID: id, Addr: req.PeerAddr})
		if errors.Is(err, raftstore.ErrMemberExists) && req.RequestId != "" && (repeat || attempted) && s.isMember(id, req.PeerAddr) {
			return nil // an earlier attempt of this request added it
		}
		attempted = true
		return err
	}))
	if err != nil {
		return nil, err
	}
	return &coordv1.MemberAddResponse{
		Header:    s.header(s.machine.Revision()),
		Member:    &coordv1.Member{Id: id, Name: req.Name, PeerAddr: req.PeerAddr},
		Members:   s.members(),
		ClusterId: s.clusterID,
	}, nil
}

// isMember reports whether id is a member with peer address addr.
func (s *Server) isMember(id uint64, addr string) bool {
	return slices.ContainsFunc(s.node.Members(), func(p raftstore.Peer) bool { return p.ID == id && p.Addr == addr })
}

// MemberRemove implements CoordService.MemberRemove. With a request id, a retry whose
// member is already gone succeeds.
func (s *Server) MemberRemove(ctx context.Context, req *coordv1.MemberRemoveRequest) (*coordv1.MemberRemoveResponse, error) {
	if req.Id == 0 {
		return nil, invalidArgument("id", "member remove: id is required")
	}
	what := "member remove " + FormatID(req.Id)
	data, err := tree.EncodeMemberRemove(req)
	repeat, err := s.recordMemberRequest(ctx, what, req.RequestId, data, err)
	if err != nil {
		return nil, err
	}
	attempted := false
	err = s.replicate(ctx, what, req.RequestId != "", abandonable(func(ctx context.Context) error {
		err := s.node.RemoveMember(ctx, req.Id)
		if errors.Is(err, raftstore.ErrMemberNotFound) && req.RequestId != "" && (repeat || attempted) {
			return nil // an earlier attempt of this request removed it
		}
		attempted = true
		return err
	}))
	if err != nil {
		return nil, err
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
