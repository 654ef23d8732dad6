package coordclient

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// The sentinel errors of the client. Every error a method returns for a failure the store
// reported wraps exactly one of them (through *Error or *CompactedError), so callers branch
// with errors.Is.
var (
	// ErrNotFound is a node (or member) that does not exist: gRPC NOT_FOUND.
	ErrNotFound = errors.New("coord: not found")
	// ErrConflict is a failed compare-and-swap (ExpectVersion did not match): gRPC ABORTED.
	ErrConflict = errors.New("coord: version conflict")
	// ErrSessionExpired is a session that is unknown, closed or expired: gRPC
	// FAILED_PRECONDITION on a request that names a session, a keepalive answered with
	// expired, or no keepalive acknowledged for a whole TTL.
	ErrSessionExpired = errors.New("coord: session expired")
	// ErrRequestIDReused is a request id that the store saw before with a different
	// request: gRPC FAILED_PRECONDITION on a request that names no session. It only happens
	// with ids given through RequestID.
	ErrRequestIDReused = errors.New("coord: request id reused for a different request")
	// ErrTooLarge is a value over 4 MiB or a request over the store's size limit: gRPC
	// RESOURCE_EXHAUSTED.
	ErrTooLarge = errors.New("coord: value or request too large")
	// ErrInvalidPath is a malformed path, found before anything is sent.
	ErrInvalidPath = errors.New("coord: invalid path")
	// ErrInvalidArgument is any other malformed request: gRPC INVALID_ARGUMENT, or an option
	// that does not apply where it was given.
	ErrInvalidArgument = errors.New("coord: invalid argument")
	// ErrAlreadyExists is a MemberAdd of a member already in the cluster: gRPC ALREADY_EXISTS.
	ErrAlreadyExists = errors.New("coord: already exists")
	// ErrNoLeader is gRPC UNAVAILABLE from a member that knows no leader (an election is in
	// progress or failing) or that leads without a quorum.
	ErrNoLeader = errors.New("coord: no leader")
	// ErrUnavailable is any other UNAVAILABLE: no member could be reached, the write was not
	// committed in time, or the member is stopping.
	ErrUnavailable = errors.New("coord: unavailable")
	// ErrCompacted is a watch whose start revision is older than the member's event
	// history: gRPC OUT_OF_RANGE. The error is a *CompactedError.
	ErrCompacted = errors.New("coord: revision compacted")
	// ErrFenced is a guarded write refused because the fencing node (a leadership or lock
	// node) no longer exists with the create revision the writer holds: the writer was
	// deposed.
	ErrFenced = errors.New("coord: fenced: leadership lost")
	// ErrLastMember is a MemberRemove of the cluster's only member: gRPC
	// FAILED_PRECONDITION.
	ErrLastMember = errors.New("coord: cannot remove the last member")
	// ErrSessionClosed is returned by Session.Err after Session.Close.
	ErrSessionClosed = errors.New("coord: session closed")
	// ErrClosed is a call on a Client after Close.
	ErrClosed = errors.New("coord: client closed")
)

// errorDomain is the domain of the ErrorInfo detail of berth-coord's error statuses, whose
// reason names a coordv1.ErrorReason value.
const errorDomain = "coord.berth.dev"

// Trailer keys that every error status of berth-coord carries.
const (
	trailerMemberID        = "berth-member-id"
	trailerLeaderID        = "berth-leader-id"
	trailerCompactRevision = "berth-compact-revision"
)

// Error is a failure status returned by a coord member. It wraps one of the sentinels
// (Unwrap), except for codes the API does not document.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the member's message.
	Message string
	// MemberID is the id of the member that answered, 0 when the status came from the
	// transport (no member was reached).
	MemberID uint64
	// LeaderID is the leader's id as the member knew it, 0 when unknown.
	LeaderID uint64
	// LeaderAddr is the leader's client address from a LeaderDetail, when the member gave one.
	LeaderAddr string

	kind error
}

// Error returns the sentinel's text followed by the member's message.
func (e *Error) Error() string {
	kind := "coord: " + strings.ToLower(e.Code.String())
	if e.kind != nil {
		kind = e.kind.Error()
	}
	msg := e.Message
	// Statuses made from the store's own errors already start with the sentinel's text.
	switch {
	case msg == "":
		return kind
	case strings.HasPrefix(msg, "coord:"):
		return msg
	default:
		return kind + ": " + msg
	}
}

// Unwrap returns the sentinel the status maps to.
func (e *Error) Unwrap() error { return e.kind }

// GRPCStatus returns the status the error was made from.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// CompactedError is a watch that started before the member's event history. Re-list, then
// watch from the list's revision + 1 (or use the RelistOnCompaction option).
type CompactedError struct {
	// CompactRevision is the highest revision whose events may be missing; a watch can
	// start at CompactRevision + 1 at the earliest.
	CompactRevision int64
	// CurrentRevision is the member's revision, 0 when it did not say.
	CurrentRevision int64
}

// Error describes the compaction.
func (e *CompactedError) Error() string {
	return fmt.Sprintf("coord: revision compacted: events up to revision %d are gone, watch from %d or re-list",
		e.CompactRevision, e.CompactRevision+1)
}

// Unwrap returns ErrCompacted.
func (e *CompactedError) Unwrap() error { return ErrCompacted }

// resumeError is a watch cancelled because the client read too slowly; resuming at rev
// loses nothing.
type resumeError struct {
	rev int64
	err error
}

func (e *resumeError) Error() string { return e.err.Error() }
func (e *resumeError) Unwrap() error { return e.err }

// mapError turns an RPC error into the client's error: a *Error wrapping a sentinel, a
// *CompactedError, or the context's error. trailer is the call's trailer metadata (may be
// nil); precondition is the sentinel FAILED_PRECONDITION stands for in the call made
// (ErrSessionExpired for a request that names a session, ErrLastMember for MemberRemove),
// nil meaning ErrRequestIDReused.
func mapError(err error, trailer metadata.MD, precondition error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := &Error{
		Code:     st.Code(),
		Message:  st.Message(),
		MemberID: trailerUint(trailer, trailerMemberID, 16),
		LeaderID: trailerUint(trailer, trailerLeaderID, 16),
	}
	var compacted *CompactedError
	var resume *coordv1.ResumeDetail
	badPath := false
	reason := coordv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == errorDomain {
				reason = coordv1.ErrorReason(coordv1.ErrorReason_value[d.GetReason()])
			}
		case *coordv1.CompactedDetail:
			compacted = &CompactedError{CompactRevision: d.GetCompactRevision(), CurrentRevision: d.GetCurrentRevision()}
		case *coordv1.ResumeDetail:
			resume = d
		case *coordv1.LeaderDetail:
			if d.GetLeaderId() != 0 {
				e.LeaderID = d.GetLeaderId()
			}
			e.LeaderAddr = d.GetLeaderClientAddr()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				if strings.HasSuffix(v.GetField(), "path") {
					badPath = true
				}
			}
		}
	}
	switch st.Code() {
	case codes.Canceled:
		return fmt.Errorf("%w: %s", context.Canceled, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%w: %s", context.DeadlineExceeded, st.Message())
	case codes.NotFound:
		e.kind = ErrNotFound
	case codes.AlreadyExists:
		e.kind = ErrAlreadyExists
	case codes.Aborted:
		e.kind = ErrConflict
	case codes.FailedPrecondition:
		// The member's reason says which precondition failed; a member that gives none
		// leaves it to the call made.
		switch reason {
		case coordv1.ErrorReason_ERROR_REASON_SESSION_NOT_FOUND:
			e.kind = ErrSessionExpired
		case coordv1.ErrorReason_ERROR_REASON_REQUEST_ID_REUSED:
			e.kind = ErrRequestIDReused
		case coordv1.ErrorReason_ERROR_REASON_LAST_MEMBER:
			e.kind = ErrLastMember
		default:
			e.kind = ErrRequestIDReused
			if precondition != nil {
				e.kind = precondition
			}
		}
	case codes.ResourceExhausted:
		e.kind = ErrTooLarge
		if resume != nil {
			return &resumeError{rev: resume.GetResumeRevision(), err: e}
		}
	case codes.InvalidArgument:
		e.kind = ErrInvalidArgument
		if badPath {
			e.kind = ErrInvalidPath
		}
	case codes.OutOfRange:
		if compacted == nil {
			compacted = &CompactedError{CompactRevision: int64(trailerUint(trailer, trailerCompactRevision, 10))}
		}
		return compacted
	case codes.Unavailable:
		e.kind = ErrUnavailable
		switch reason {
		case coordv1.ErrorReason_ERROR_REASON_NO_LEADER, coordv1.ErrorReason_ERROR_REASON_NO_QUORUM:
			e.kind = ErrNoLeader
		case coordv1.ErrorReason_ERROR_REASON_UNSPECIFIED:
			if e.MemberID != 0 && e.LeaderID == 0 {
				e.kind = ErrNoLeader
			}
		}
	}
	return e
}

// trailerUint reads a number from the trailer; member ids are hex (as berth-coord formats
// them), revisions decimal.
func trailerUint(md metadata.MD, key string, base int) uint64 {
	vs := md.Get(key)
	if len(vs) == 0 {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(vs[0]), "0x"), base, 64)
	if err != nil {
		// The trailer is advisory; an unreadable one counts as absent.
		return 0
	}
	return n
}

// retryable reports whether a failed attempt may be tried again (on the same or another
// member). ctx is the whole call's context: an attempt that timed out on its own deadline
// is retried while the call's context lives.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code == codes.Unavailable
	}
	// An attempt cut short by its own timeout (the call's context is still alive).
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}
