package coord_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/berthdev/berth/pkg/coordclient"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// closeSessionBehindItsBack ends a session on the store through the raw API, as its expiry
// would, without its owner knowing.
func closeSessionBehindItsBack(t *testing.T, addr string, id int64) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := coordv1.NewCoordServiceClient(conn).SessionClose(ctx, &coordv1.SessionCloseRequest{SessionId: id, RequestId: "kill-" + t.Name()}); err != nil {
		t.Fatalf("close session %d: %v", id, err)
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestSessionSurvivesFailover(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()
	// The in-process stop of a member is graceful: it drains streams for up to 2s, and
	// meanwhile the stopping leader still answers keepalives. The TTL leaves room for that.
	const ttl = 3 * time.Second
	s, err := cl.NewSession(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, "/berth/alive/h1", []byte("up"), coordclient.Ephemeral(s.ID())); err != nil {
		t.Fatal(err)
	}
	c.stop(c.leader())
	// Two TTLs after the leader went away the session is still alive, on the new leader.
	time.Sleep(2 * ttl)
	if closed(s.Done()) {
		t.Fatalf("session ended across a failover: %v", s.Err())
	}
	if _, err := cl.Get(ctx, "/berth/alive/h1"); err != nil {
		t.Fatalf("ephemeral node after failover: %v", err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("close session: %v", err)
	}
	if !errors.Is(s.Err(), coordclient.ErrSessionClosed) {
		t.Fatalf("err after close: got %v, want ErrSessionClosed", s.Err())
	}
	if _, err := cl.Get(ctx, "/berth/alive/h1"); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("ephemeral node after close: got %v, want ErrNotFound", err)
	}
}

func TestSessionExpiryNotifies(t *testing.T) {
	c := startCluster(t, 3)
	cl := c.client()
	ctx := t.Context()
	const ttl = 1500 * time.Millisecond

	t.Run("store ends it", func(t *testing.T) {
		s, err := cl.NewSession(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Put(ctx, "/berth/alive/h2", nil, coordclient.Ephemeral(s.ID())); err != nil {
			t.Fatal(err)
		}
		closeSessionBehindItsBack(t, c.endpoints()[0], s.ID())
		select {
		case <-s.Done():
		case <-time.After(ttl + time.Second):
			t.Fatal("Done not closed within the ttl after the store ended the session")
		}
		if !errors.Is(s.Err(), coordclient.ErrSessionExpired) {
			t.Fatalf("got %v, want ErrSessionExpired", s.Err())
		}
		if _, err := cl.Get(ctx, "/berth/alive/h2"); !errors.Is(err, coordclient.ErrNotFound) {
			t.Fatalf("ephemeral node: got %v, want ErrNotFound", err)
		}
		if _, err := cl.Put(ctx, "/berth/alive/h2", nil, coordclient.Ephemeral(s.ID())); !errors.Is(err, coordclient.ErrSessionExpired) {
			t.Fatalf("put with the expired session: got %v, want ErrSessionExpired", err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("close of an expired session: got %v, want nil", err)
		}
	})

	t.Run("quorum lost", func(t *testing.T) {
		s, err := cl.NewSession(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			_ = s.Close(cctx)
		}()
		start := time.Now()
		l := c.leader()
		for _, m := range c.members {
			if m != l {
				c.stop(m)
			}
		}
		select {
		case <-s.Done():
		case <-time.After(ttl + 5*time.Second):
			// The leader acknowledges keepalives until it notices it lost its quorum
			// (CheckQuorum), which takes berth-coord a few election timeouts.
			t.Fatal("Done not closed although no keepalive can be acknowledged")
		}
		if !errors.Is(s.Err(), coordclient.ErrSessionExpired) {
			t.Fatalf("got %v, want ErrSessionExpired", s.Err())
		}
		t.Logf("session declared lost %s after quorum loss (ttl %s)", time.Since(start).Round(time.Millisecond), ttl)
	})
}

func TestSessionEndsWithContext(t *testing.T) {
	c := startCluster(t, 1)
	cl := c.client()
	ctx, cancel := context.WithCancel(t.Context())
	s, err := cl.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-s.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("Done not closed after the session's context ended")
	}
	if !errors.Is(s.Err(), context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", s.Err())
	}
	// Close still ends it on the store.
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(t.Context(), "/e", nil, coordclient.Ephemeral(s.ID())); !errors.Is(err, coordclient.ErrSessionExpired) {
		t.Fatalf("put with the closed session: got %v, want ErrSessionExpired", err)
	}
}
