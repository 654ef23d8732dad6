package coordclient

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeMember is a hand-written stand-in for one berth-coord member that implements only
// Put and Get, for the tests of the client's own logic (failover, retries, request ids).
// The behaviour tests against the real store live in the test module (test/coord).
type fakeMember struct {
	coordv1.UnimplementedCoordServiceServer

	id   uint64
	addr string

	mu sync.Mutex
	// fail, when set, decides the answer of the next Put or Get: a non-nil error is
	// returned instead of serving the call.
	fail func(ctx context.Context, method string) error
	// leader is the leader id this member reports in headers.
	leader uint64
	// requestIDs are the request ids of the puts received, in order.
	requestIDs []string
	calls      int
	// nodes is the member's tiny store.
	nodes map[string][]byte
	// members is what Members answers.
	members []*coordv1.Member
}

func startFake(t *testing.T, id uint64) *fakeMember {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeMember{id: id, addr: l.Addr().String(), nodes: map[string][]byte{}, leader: id}
	srv := grpc.NewServer()
	coordv1.RegisterCoordServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f
}

// statusErr builds an error status the way berth-coord does: with the member and leader
// ids (hex) in the trailer and optional details.
func (f *fakeMember) statusErr(ctx context.Context, code codes.Code, msg string, details ...protoadapt.MessageV1) error {
	f.mu.Lock()
	leader := f.leader
	f.mu.Unlock()
	_ = grpc.SetTrailer(ctx, metadata.Pairs(
		trailerMemberID, strconv.FormatUint(f.id, 16),
		trailerLeaderID, strconv.FormatUint(leader, 16)))
	st := status.New(code, msg)
	if len(details) > 0 {
		var err error
		if st, err = st.WithDetails(details...); err != nil {
			panic(err)
		}
	}
	return st.Err()
}

func (f *fakeMember) setFail(fn func(ctx context.Context, method string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

func (f *fakeMember) header() *coordv1.ResponseHeader {
	return &coordv1.ResponseHeader{Revision: int64(len(f.requestIDs)), MemberId: f.id, LeaderId: f.leader}
}

func (f *fakeMember) stats() (calls int, ids []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, append([]string(nil), f.requestIDs...)
}

func (f *fakeMember) Put(ctx context.Context, req *coordv1.PutRequest) (*coordv1.PutResponse, error) {
	f.mu.Lock()
	f.calls++
	f.requestIDs = append(f.requestIDs, req.GetRequestId())
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		if err := fail(ctx, "Put"); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[req.GetPath()] = req.GetValue()
	return &coordv1.PutResponse{Header: f.header(), Node: &coordv1.Node{Path: req.GetPath(), Version: 1}}, nil
}

func (f *fakeMember) Get(ctx context.Context, req *coordv1.GetRequest) (*coordv1.GetResponse, error) {
	f.mu.Lock()
	f.calls++
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		if err := fail(ctx, "Get"); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.nodes[req.GetPath()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "coord: node not found: %s", req.GetPath())
	}
	return &coordv1.GetResponse{Header: f.header(), Node: &coordv1.Node{Path: req.GetPath(), Value: v, Version: 1}}, nil
}

func (f *fakeMember) Members(context.Context, *coordv1.MembersRequest) (*coordv1.MembersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &coordv1.MembersResponse{Header: f.header(), Members: f.members}, nil
}

func (f *fakeMember) set(fn func(f *fakeMember)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func newTestClient(t *testing.T, endpoints ...string) *Client {
	t.Helper()
	c, err := New(t.Context(), Config{Endpoints: endpoints, RequestTimeout: 3e9})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
