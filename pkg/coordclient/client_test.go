package coordclient

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/protoadapt"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestPutRetryReusesRequestID(t *testing.T) {
	a := startFake(t, 1)
	var n atomic.Int32
	a.setFail(func(ctx context.Context, _ string) error {
		if n.Add(1) <= 2 {
			return a.statusErr(ctx, codes.Unavailable, "no leader")
		}
		return nil
	})
	c := newTestClient(t, a.addr)
	if _, err := c.Put(t.Context(), "/a", []byte("x")); err != nil {
		t.Fatalf("put: %v", err)
	}
	_, ids := a.stats()
	if len(ids) != 3 {
		t.Fatalf("got %d attempts, want 3", len(ids))
	}
	if ids[0] == "" || ids[1] != ids[0] || ids[2] != ids[0] {
		t.Fatalf("got request ids %q, want one non-empty id reused on every retry", ids)
	}
	if _, err := c.Put(t.Context(), "/a", []byte("y")); err != nil {
		t.Fatalf("second put: %v", err)
	}
	_, ids = a.stats()
	if ids[3] == ids[0] {
		t.Fatalf("got request id %q for a second logical put, want a new one", ids[3])
	}
}

func TestFailoverToNextEndpoint(t *testing.T) {
	a, b := startFake(t, 1), startFake(t, 2)
	a.set(func(f *fakeMember) { f.leader = 0 })
	a.setFail(func(ctx context.Context, _ string) error { return a.statusErr(ctx, codes.Unavailable, "no leader") })
	c := newTestClient(t, deadAddr(t), a.addr, b.addr)
	if _, err := c.Put(t.Context(), "/a", []byte("x")); err != nil {
		t.Fatalf("put: %v", err)
	}
	_, aIDs := a.stats()
	_, bIDs := b.stats()
	if len(aIDs) != 1 || len(bIDs) != 1 {
		t.Fatalf("got %d attempts on a and %d on b, want 1 and 1", len(aIDs), len(bIDs))
	}
	if aIDs[0] != bIDs[0] {
		t.Fatalf("got request id %q on a and %q on b, want the same", aIDs[0], bIDs[0])
	}
	// The failed endpoints are left behind: the next call goes to b at once.
	if _, err := c.Get(t.Context(), "/a"); err != nil {
		t.Fatalf("get: %v", err)
	}
	if calls, _ := a.stats(); calls != 1 {
		t.Fatalf("got %d calls on a, want 1 (the client should stay on b)", calls)
	}
}

func TestFollowsLeaderDetail(t *testing.T) {
	a, b := startFake(t, 1), startFake(t, 2)
	a.set(func(f *fakeMember) { f.leader = 2 })
	a.setFail(func(ctx context.Context, _ string) error {
		return a.statusErr(ctx, codes.Unavailable, "not the leader",
			protoadapt.MessageV1Of(&coordv1.LeaderDetail{LeaderId: 2, LeaderClientAddr: b.addr}))
	})
	// b is not among the endpoints: the client learns it from the LeaderDetail.
	c := newTestClient(t, a.addr)
	start := time.Now()
	if _, err := c.Put(t.Context(), "/a", []byte("x")); err != nil {
		t.Fatalf("put: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("put took %s, want the leader hint followed at once", took)
	}
	if _, err := c.Put(t.Context(), "/b", []byte("x")); err != nil {
		t.Fatalf("put: %v", err)
	}
	aCalls, _ := a.stats()
	bCalls, _ := b.stats()
	if aCalls != 1 || bCalls != 2 {
		t.Fatalf("got %d calls on a and %d on b, want 1 and 2", aCalls, bCalls)
	}
	if id, addr := c.leader(); id != 2 || addr != b.addr {
		t.Fatalf("got leader %d at %q, want 2 at %q", id, addr, b.addr)
	}
}

func TestLearnsLeaderFromHeader(t *testing.T) {
	a, b := startFake(t, 1), startFake(t, 2)
	a.set(func(f *fakeMember) {
		f.leader = 2
		f.members = []*coordv1.Member{{Id: 1, ClientAddr: a.addr}, {Id: 2, ClientAddr: b.addr, IsLeader: true}}
	})
	c := newTestClient(t, a.addr, b.addr)
	// A serializable read may go to any member; it teaches the client who leads.
	if _, err := c.Put(t.Context(), "/a", []byte("x")); err != nil {
		t.Fatalf("put: %v", err)
	}
	if _, err := c.Put(t.Context(), "/b", []byte("x")); err != nil {
		t.Fatalf("put: %v", err)
	}
	aCalls, _ := a.stats()
	bCalls, _ := b.stats()
	if aCalls != 1 || bCalls != 1 {
		t.Fatalf("got %d puts on a and %d on b, want 1 and 1 (the second on the leader)", aCalls, bCalls)
	}
}

func TestNotFoundIsNotRetried(t *testing.T) {
	a := startFake(t, 1)
	c := newTestClient(t, a.addr)
	_, err := c.Get(t.Context(), "/missing")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("get: got %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "get /missing") {
		t.Fatalf("got error %q, want it to name the op and path", err)
	}
	if calls, _ := a.stats(); calls != 1 {
		t.Fatalf("got %d calls, want 1", calls)
	}
}

func TestGivesUpAtDeadline(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T) []string
		wantErr error
	}{
		{"unreachable", func(t *testing.T) []string { return []string{deadAddr(t), deadAddr(t)} }, ErrUnavailable},
		{"no leader", func(t *testing.T) []string {
			a := startFake(t, 1)
			a.set(func(f *fakeMember) { f.leader = 0 })
			a.setFail(func(ctx context.Context, _ string) error { return a.statusErr(ctx, codes.Unavailable, "no leader") })
			return []string{a.addr}
		}, ErrNoLeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestClient(t, tt.setup(t)...)
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := c.Put(ctx, "/a", []byte("x"))
			took := time.Since(start)
			if !errors.Is(err, tt.wantErr) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want %v and context.DeadlineExceeded", err, tt.wantErr)
			}
			if took > 1500*time.Millisecond {
				t.Fatalf("put took %s with a 500ms deadline", took)
			}
		})
	}
}

func TestRequestTimeoutBoundsCall(t *testing.T) {
	c, err := New(t.Context(), Config{Endpoints: []string{deadAddr(t)}, RequestTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Get(t.Context(), "/a")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("get took %s with a 300ms request timeout", took)
	}
}

func TestClosedClient(t *testing.T) {
	a := startFake(t, 1)
	c := newTestClient(t, a.addr)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(t.Context(), "/a"); !errors.Is(err, ErrClosed) {
		t.Fatalf("get after close: got %v, want ErrClosed", err)
	}
	r, ok := <-c.Watch(t.Context(), "/a", 0)
	if !ok || !errors.Is(r.Err, ErrClosed) {
		t.Fatalf("watch after close: got %+v, want ErrClosed", r)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"ok", Config{Endpoints: []string{"127.0.0.1:7379", "[::1]:7379", "coord-1:7379"}}, ""},
		{"no endpoints", Config{}, "at least one"},
		{"no port", Config{Endpoints: []string{"127.0.0.1"}}, "want host:port"},
		{"empty host", Config{Endpoints: []string{":7379"}}, "empty host"},
		{"bad port", Config{Endpoints: []string{"h:http"}}, "not a number"},
		{"port 0", Config{Endpoints: []string{"h:0"}}, "not a number"},
		{"duplicate", Config{Endpoints: []string{"h:1", "h:1"}}, "listed twice"},
		{"negative timeout", Config{Endpoints: []string{"h:1"}, RequestTimeout: -1}, "RequestTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidArgument)):
				t.Fatalf("got %v, want ErrInvalidArgument containing %q", err, tt.want)
			}
		})
	}
}

func TestRetryDelay(t *testing.T) {
	for attempt := range 12 {
		d := retryDelay(attempt, 3)
		lo, hi := time.Duration(0), time.Second
		if attempt < 2 {
			hi = 10 * time.Millisecond
		}
		if d < lo || d > hi {
			t.Errorf("retryDelay(%d, 3) = %s, want within [%s, %s]", attempt, d, lo, hi)
		}
	}
	if d := retryDelay(30, 1); d < 500*time.Millisecond {
		t.Errorf("retryDelay(30, 1) = %s, want at least 500ms once backed off", d)
	}
}

func TestUsableAddr(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:7379", true}, {"coord-1:7379", true}, {"0.0.0.0:7379", false}, {"[::]:7379", false}, {"", false}, {"nohost", false},
	} {
		if got := usableAddr(tt.addr); got != tt.want {
			t.Errorf("usableAddr(%q) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestNewRequestIDUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newRequestID()
		if len(id) < 20 || seen[id] {
			t.Fatalf("got request id %q (seen before: %v), want unique ids of at least 20 characters", id, seen[id])
		}
		seen[id] = true
	}
}
