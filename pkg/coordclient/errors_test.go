package coordclient

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

func withDetails(code codes.Code, msg string, ds ...protoadapt.MessageV1) error {
	st, err := status.New(code, msg).WithDetails(ds...)
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func withReason(code codes.Code, reason coordv1.ErrorReason) error {
	return withDetails(code, reason.String(), &errdetails.ErrorInfo{Reason: reason.String(), Domain: errorDomain})
}

func TestMapError(t *testing.T) {
	fromMember := metadata.Pairs(trailerMemberID, "a1", trailerLeaderID, "b2")
	noLeader := metadata.Pairs(trailerMemberID, "a1", trailerLeaderID, "0")
	tests := []struct {
		name         string
		err          error
		trailer      metadata.MD
		precondition error
		want         error
		retry        bool
	}{
		{"not found", status.Error(codes.NotFound, "coord: node not found: /a"), fromMember, nil, ErrNotFound, false},
		{"cas", status.Error(codes.Aborted, "version 3, want 2"), fromMember, nil, ErrConflict, false},
		{"session", status.Error(codes.FailedPrecondition, "session 7"), fromMember, ErrSessionExpired, ErrSessionExpired, false},
		{"request id reuse", status.Error(codes.FailedPrecondition, "reused"), fromMember, nil, ErrRequestIDReused, false},
		{"last member", status.Error(codes.FailedPrecondition, "last"), fromMember, ErrLastMember, ErrLastMember, false},
		{"too large", status.Error(codes.ResourceExhausted, "value is 5 MiB"), fromMember, nil, ErrTooLarge, false},
		{"invalid", status.Error(codes.InvalidArgument, "ttl"), fromMember, nil, ErrInvalidArgument, false},
		{"invalid path detail", withDetails(codes.InvalidArgument, "bad", &errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "path", Description: "empty"}},
		}), fromMember, nil, ErrInvalidPath, false},
		{"exists", status.Error(codes.AlreadyExists, "member"), fromMember, nil, ErrAlreadyExists, false},
		{"no leader", status.Error(codes.Unavailable, "no leader"), noLeader, nil, ErrNoLeader, true},
		{"not committed", status.Error(codes.Unavailable, "not committed in time"), fromMember, nil, ErrUnavailable, true},
		{"transport", status.Error(codes.Unavailable, "connection refused"), nil, nil, ErrUnavailable, true},
		{"compacted detail", withDetails(codes.OutOfRange, "compacted", &coordv1.CompactedDetail{CompactRevision: 41, CurrentRevision: 90}), fromMember, nil, ErrCompacted, false},
		{"compacted trailer", status.Error(codes.OutOfRange, "compacted"), metadata.Pairs(trailerCompactRevision, "41"), nil, ErrCompacted, false},
		{"attempt deadline", status.Error(codes.DeadlineExceeded, "deadline"), nil, nil, context.DeadlineExceeded, true},
		// The member's ErrorInfo reason wins over what the call guessed.
		{"reason session", withReason(codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_SESSION_NOT_FOUND), fromMember, nil, ErrSessionExpired, false},
		{"reason request id reuse", withReason(codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_REQUEST_ID_REUSED), fromMember, ErrSessionExpired, ErrRequestIDReused, false},
		{"reason last member", withReason(codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_LAST_MEMBER), fromMember, nil, ErrLastMember, false},
		{"reason no quorum", withReason(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_NO_QUORUM), fromMember, nil, ErrNoLeader, true},
		{"reason no leader", withReason(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_NO_LEADER), fromMember, nil, ErrNoLeader, true},
		{"reason not committed", withReason(codes.Unavailable, coordv1.ErrorReason_ERROR_REASON_NOT_COMMITTED), noLeader, nil, ErrUnavailable, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mapError(tt.err, tt.trailer, tt.precondition)
			if !errors.Is(got, tt.want) {
				t.Fatalf("mapError(%v) = %v, want errors.Is %v", tt.err, got, tt.want)
			}
			if r := retryable(t.Context(), got); r != tt.retry {
				t.Fatalf("retryable(%v) = %v, want %v", got, r, tt.retry)
			}
		})
	}
}

func TestMapErrorDetails(t *testing.T) {
	got := mapError(withDetails(codes.OutOfRange, "compacted", &coordv1.CompactedDetail{CompactRevision: 41, CurrentRevision: 90}), nil, nil)
	var ce *CompactedError
	if !errors.As(fmt.Errorf("watch /a: %w", got), &ce) || ce.CompactRevision != 41 || ce.CurrentRevision != 90 {
		t.Fatalf("got %#v, want a *CompactedError with revisions 41 and 90", got)
	}

	got = mapError(withDetails(codes.Unavailable, "not leader", &coordv1.LeaderDetail{LeaderId: 0xb2, LeaderClientAddr: "10.0.0.2:7379"}),
		metadata.Pairs(trailerMemberID, "a1", trailerLeaderID, "b2"), nil)
	var e *Error
	if !errors.As(got, &e) {
		t.Fatalf("got %T, want *Error", got)
	}
	if e.MemberID != 0xa1 || e.LeaderID != 0xb2 || e.LeaderAddr != "10.0.0.2:7379" {
		t.Fatalf("got member %x leader %x at %q, want a1, b2 at 10.0.0.2:7379", e.MemberID, e.LeaderID, e.LeaderAddr)
	}
	if e.GRPCStatus().Code() != codes.Unavailable {
		t.Fatalf("got code %s, want Unavailable", e.GRPCStatus().Code())
	}

	got = mapError(withDetails(codes.ResourceExhausted, "slow", &coordv1.ResumeDetail{ResumeRevision: 77}), nil, nil)
	var re *resumeError
	if !errors.As(got, &re) || re.rev != 77 {
		t.Fatalf("got %#v, want a resumeError at 77", got)
	}

	// A context error is not retried even when the call's context is still alive: the
	// caller's own cancellation ends the call.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if retryable(ctx, mapError(status.Error(codes.Unavailable, "x"), nil, nil)) {
		t.Fatal("retryable with a cancelled context, want false")
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{status.Error(codes.NotFound, "coord: node not found: /a"), "coord: node not found: /a"},
		{status.Error(codes.Aborted, "version 3, want 2"), "coord: version conflict: version 3, want 2"},
		{status.Error(codes.Internal, "boom"), "coord: internal: boom"},
		{status.Error(codes.Unavailable, ""), "coord: unavailable"},
	}
	for _, tt := range tests {
		if got := mapError(tt.err, nil, nil).Error(); got != tt.want {
			t.Errorf("mapError(%v).Error() = %q, want %q", tt.err, got, tt.want)
		}
	}
}
