package coord_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
)

// freezer is a TCP proxy to a member that can freeze: it keeps every connection open and
// stops forwarding bytes, as a member whose process was stopped (SIGSTOP) or whose host
// hangs behind a live network would look.
type freezer struct {
	l      net.Listener
	target string
	frozen chan struct{} // closed while frozen
	closed chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, target: target, frozen: make(chan struct{}), closed: make(chan struct{})}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) addr() string { return f.l.Addr().String() }

func (f *freezer) freeze() { close(f.frozen) }

func (f *freezer) accept() {
	defer f.wg.Done()
	for {
		in, err := f.l.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", f.target)
		if err != nil {
			in.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, in, out)
		f.mu.Unlock()
		f.wg.Add(2)
		go f.pipe(in, out)
		go f.pipe(out, in)
	}
}

// pipe copies src to dst until either fails or the proxy closes; while frozen it forwards
// nothing and keeps both ends open.
func (f *freezer) pipe(dst, src net.Conn) {
	defer f.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-f.frozen:
			<-f.closed
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				dst.Close()
			}
			return
		}
	}
}

func (f *freezer) close() {
	close(f.closed)
	f.l.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// TestWatchFailsOverFromFrozenMember checks that a watch on a member that froze does not
// stall silently: the client's gRPC keepalive pings find the connection dead and the
// watch resumes on another member without losing the event written meanwhile.
func TestWatchFailsOverFromFrozenMember(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 20s")
	}
	c := startCluster(t, 3)
	ctx := t.Context()
	fz := newFreezer(t, c.members[0].clientAddr)
	// The watch starts on the first endpoint: the member behind the proxy.
	watcher := c.client(fz.addr(), c.members[1].clientAddr, c.members[2].clientAddr)
	writer := c.client(c.members[1].clientAddr, c.members[2].clientAddr)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := watcher.Watch(wctx, "/frozen", 0, coordclient.Recursive())
	next := func(d time.Duration) (coordclient.WatchResponse, bool) {
		select {
		case r, ok := <-events:
			return r, ok
		case <-time.After(d):
			return coordclient.WatchResponse{}, false
		}
	}
	// Make sure the watch is established (an event arrives through the proxy).
	deadline := time.Now().Add(10 * time.Second)
	for got := false; !got; {
		if time.Now().After(deadline) {
			t.Fatal("the watch through the proxy delivered nothing within 10s")
		}
		if _, err := writer.Put(ctx, "/frozen/warm", []byte("x")); err != nil {
			t.Fatal(err)
		}
		r, ok := next(time.Second)
		got = ok && r.Err == nil && len(r.Events) > 0
	}
	fz.freeze()
	frozen := time.Now()
	put, err := writer.Put(ctx, "/frozen/after", []byte("y"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		r, ok := next(30*time.Second - time.Since(frozen))
		if !ok {
			t.Fatalf("the watch stalled on the frozen member: no event for %v", time.Since(frozen).Round(time.Second))
		}
		if r.Err != nil {
			t.Fatalf("watch ended: %v", r.Err)
		}
		for _, e := range r.Events {
			if e.Node.Path == "/frozen/after" {
				if e.Revision != put.Revision {
					t.Errorf("event revision: got %d, want %d", e.Revision, put.Revision)
				}
				t.Logf("the watch failed over from the frozen member and delivered the event %v after the freeze", time.Since(frozen).Round(time.Millisecond))
				return
			}
		}
	}
}
