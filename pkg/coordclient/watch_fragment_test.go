package coordclient

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// fragmentServer is a member whose Watch splits revision 5 (6 events) into fragments of
// 2; its first stream breaks after two of the three fragments.
type fragmentServer struct {
	coordv1.UnimplementedCoordServiceServer

	mu       sync.Mutex
	requests []*coordv1.WatchRequest
}

func event(rev int64, i int) *coordv1.Event {
	return &coordv1.Event{Type: coordv1.EventType_EVENT_TYPE_DELETE, Node: &coordv1.Node{Path: fmt.Sprintf("/svc/e%d", i), ModRev: rev}, Revision: rev}
}

func (s *fragmentServer) Watch(req *coordv1.WatchRequest, st grpc.ServerStreamingServer[coordv1.WatchResponse]) error {
	s.mu.Lock()
	s.requests = append(s.requests, req)
	first := len(s.requests) == 1
	s.mu.Unlock()
	if err := st.Send(&coordv1.WatchResponse{Header: &coordv1.ResponseHeader{Revision: 4}, Created: true}); err != nil {
		return err
	}
	if req.StartRevision > 5 {
		return status.Error(codes.Internal, "resumed past revision 5: events were lost")
	}
	for f := range 3 {
		if first && f == 2 {
			return status.Error(codes.Unavailable, "member stopping")
		}
		resp := &coordv1.WatchResponse{Header: &coordv1.ResponseHeader{Revision: 5}, Fragment: f < 2,
			Events: []*coordv1.Event{event(5, 2*f), event(5, 2*f+1)}}
		if err := st.Send(resp); err != nil {
			return err
		}
	}
	if err := st.Send(&coordv1.WatchResponse{Header: &coordv1.ResponseHeader{Revision: 6}, Events: []*coordv1.Event{event(6, 9)}}); err != nil {
		return err
	}
	<-st.Context().Done()
	return nil
}

func TestWatchJoinsFragmentsOfARevision(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := &fragmentServer{}
	srv := grpc.NewServer()
	coordv1.RegisterCoordServiceServer(srv, fs)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Stop(); <-done })

	c := newTestClient(t, l.Addr().String())
	ch := c.Watch(t.Context(), "/svc", 5, Recursive())
	var got []WatchResponse
	for len(got) < 2 {
		select {
		case r := <-ch:
			if r.Err != nil {
				t.Fatalf("watch: %v", r.Err)
			}
			got = append(got, r)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d batches within 10s, want 2", len(got))
		}
	}
	if len(got[0].Events) != 6 || got[0].Revision != 5 {
		t.Errorf("first batch: got %d events up to revision %d, want the 6 events of revision 5 together", len(got[0].Events), got[0].Revision)
	}
	for i, e := range got[0].Events {
		if want := fmt.Sprintf("/svc/e%d", i); e.Node.Path != want {
			t.Errorf("event %d of revision 5: got %s, want %s (in order, once)", i, e.Node.Path, want)
		}
	}
	if len(got[1].Events) != 1 || got[1].Revision != 6 {
		t.Errorf("second batch: got %+v, want the event of revision 6", got[1])
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if len(fs.requests) != 2 || !fs.requests[0].Fragment || fs.requests[1].StartRevision != 5 {
		t.Errorf("watch requests: got %v, want 2 asking for fragments, the second resuming at revision 5", fs.requests)
	}
}
