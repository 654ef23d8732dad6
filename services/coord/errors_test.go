package coord

import (
	"context"
	"testing"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// badField returns the field of the BadRequest detail of a status error, "" when none.
func badField(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}

func TestErrorDetails(t *testing.T) {
	c := startCluster(t, 3, nil)
	ctx := t.Context()
	f := c.follower()
	if _, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/used", RequestId: "used"}); err != nil {
		t.Fatal(err)
	}
	solo := startCluster(t, 1, nil)
	one := solo.leader()
	badPut := &coordv1.Op{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: "/a//b"}}}
	type R = coordv1.ErrorReason
	tests := []struct {
		name   string
		call   func(context.Context) error
		code   codes.Code
		reason R
		field  string // the BadRequest field; "" when none is expected
	}{
		{"put path", func(ctx context.Context) error {
			_, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "no-slash"})
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_PATH, "path"},
		{"get path", func(ctx context.Context) error {
			_, err := f.api.Get(ctx, &coordv1.GetRequest{Path: "/a/"})
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_PATH, "path"},
		{"txn compare result", func(ctx context.Context) error {
			_, err := f.api.Txn(ctx, &coordv1.TxnRequest{Compares: []*coordv1.Compare{{Path: "/x"}}})
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "compares[0].result"},
		{"txn compare path", func(ctx context.Context) error {
			_, err := f.api.Txn(ctx, &coordv1.TxnRequest{Compares: []*coordv1.Compare{
				{Path: "/x", Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Exists{Exists: true}},
				{Path: "x", Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL},
			}})
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_PATH, "compares[1].path"},
		{"txn op path", func(ctx context.Context) error {
			_, err := f.api.Txn(ctx, &coordv1.TxnRequest{Success: []*coordv1.Op{badPut}})
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_PATH, "success[0].put.path"},
		{"ttl", func(ctx context.Context) error {
			_, err := f.api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: 5})
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "ttl_ms"},
		{"list limit", func(ctx context.Context) error {
			_, err := f.api.List(ctx, &coordv1.ListRequest{Path: "/", Limit: -1})
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "limit"},
		{"watch start revision", func(ctx context.Context) error {
			w, err := f.api.Watch(ctx, &coordv1.WatchRequest{Path: "/", StartRevision: -1})
			if err == nil {
				_, err = w.Recv()
			}
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "start_revision"},
		{"unknown session", func(ctx context.Context) error {
			_, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/e", SessionId: 999})
			return err
		}, codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_SESSION_NOT_FOUND, ""},
		{"session close of unknown session", func(ctx context.Context) error {
			_, err := f.api.SessionClose(ctx, &coordv1.SessionCloseRequest{SessionId: 999})
			return err
		}, codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_SESSION_NOT_FOUND, ""},
		{"request id reused", func(ctx context.Context) error {
			_, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/other", RequestId: "used"})
			return err
		}, codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_REQUEST_ID_REUSED, ""},
		{"last member", func(ctx context.Context) error {
			_, err := one.api.MemberRemove(ctx, &coordv1.MemberRemoveRequest{Id: one.srv.id})
			return err
		}, codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_LAST_MEMBER, ""},
		{"missing node", func(ctx context.Context) error {
			_, err := f.api.Get(ctx, &coordv1.GetRequest{Path: "/nope"})
			return err
		}, codes.NotFound, coordv1.ErrorReason_ERROR_REASON_NOT_FOUND, ""},
		{"cas", func(ctx context.Context) error {
			v := int64(7)
			_, err := f.api.Put(ctx, &coordv1.PutRequest{Path: "/used", ExpectedVersion: &v})
			return err
		}, codes.Aborted, coordv1.ErrorReason_ERROR_REASON_VERSION_MISMATCH, ""},
		{"member add without a name", func(ctx context.Context) error {
			_, err := f.api.MemberAdd(ctx, &coordv1.MemberAddRequest{PeerAddr: "127.0.0.1:1"})
			return err
		}, codes.InvalidArgument, coordv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "name"},
	}
	for _, tt := range tests {
		err := tt.call(ctx)
		if got := code(err); got != tt.code {
			t.Errorf("%s: got code %v (%v), want %v", tt.name, got, err, tt.code)
			continue
		}
		if got := reasonOf(err); got != tt.reason.String() {
			t.Errorf("%s: got reason %q, want %s", tt.name, got, tt.reason)
		}
		if got := badField(err); got != tt.field {
			t.Errorf("%s: got field %q, want %q", tt.name, got, tt.field)
		}
	}
}

func TestMemberRequestIDsMakeRetriesSafe(t *testing.T) {
	c := startCluster(t, 3, nil)
	ctx := t.Context()
	l := c.leader()
	addr := listen(t)
	peer := addr.Addr().String()
	addr.Close()
	add := &coordv1.MemberAddRequest{Name: "n4", PeerAddr: peer, RequestId: "add-n4"}
	if _, err := l.api.MemberAdd(ctx, add); err != nil {
		t.Fatalf("member add: %v", err)
	}
	tests := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason coordv1.ErrorReason
	}{
		{"retried add", func() error { _, err := c.follower().api.MemberAdd(ctx, add); return err }, codes.OK, 0},
		{"add without request id", func() error {
			_, err := l.api.MemberAdd(ctx, &coordv1.MemberAddRequest{Name: "n4", PeerAddr: peer})
			return err
		}, codes.AlreadyExists, coordv1.ErrorReason_ERROR_REASON_MEMBER_EXISTS},
		{"request id reused", func() error {
			_, err := l.api.MemberAdd(ctx, &coordv1.MemberAddRequest{Name: "n5", PeerAddr: "127.0.0.1:1", RequestId: "add-n4"})
			return err
		}, codes.FailedPrecondition, coordv1.ErrorReason_ERROR_REASON_REQUEST_ID_REUSED},
		{"remove", func() error {
			_, err := l.api.MemberRemove(ctx, &coordv1.MemberRemoveRequest{Id: MemberID("n4"), RequestId: "rm-n4"})
			return err
		}, codes.OK, 0},
		{"retried remove", func() error {
			_, err := c.follower().api.MemberRemove(ctx, &coordv1.MemberRemoveRequest{Id: MemberID("n4"), RequestId: "rm-n4"})
			return err
		}, codes.OK, 0},
		{"remove without request id", func() error {
			_, err := l.api.MemberRemove(ctx, &coordv1.MemberRemoveRequest{Id: MemberID("n4")})
			return err
		}, codes.NotFound, coordv1.ErrorReason_ERROR_REASON_NOT_FOUND},
		{"retried add after the remove", func() error { _, err := l.api.MemberAdd(ctx, add); return err },
			codes.AlreadyExists, coordv1.ErrorReason_ERROR_REASON_MEMBER_EXISTS},
	}
	for _, tt := range tests {
		err := tt.call()
		if got := code(err); got != tt.code {
			t.Errorf("%s: got %v, want code %v", tt.name, err, tt.code)
			continue
		}
		if err != nil && reasonOf(err) != tt.reason.String() {
			t.Errorf("%s: got reason %q, want %s", tt.name, reasonOf(err), tt.reason)
		}
	}
	ms, err := l.api.Members(ctx, &coordv1.MembersRequest{})
	if err != nil || len(ms.Members) != 3 {
		t.Errorf("members: got %v %v, want 3", ms, err)
	}
}
