package linearizability

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// echoServer echoes every connection until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

func startProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy run: %v", err)
		}
	})
	return p
}

// roundTrip writes msg and reads it back within d.
func roundTrip(c net.Conn, msg string, d time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

func TestProxyModes(t *testing.T) {
	p := startProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "hello", time.Second); err != nil || got != "hello" {
		t.Fatalf("pass: got %q %v, want hello", got, err)
	}

	p.SetMode(Blackhole)
	if got, err := roundTrip(c, "lost", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackhole on an open connection: got %q %v, want a timeout", got, err)
	}
	nc, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatalf("blackhole must still accept: %v", err)
	}
	if got, err := roundTrip(nc, "lost", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackhole on a new connection: got %q %v, want a timeout", got, err)
	}
	nc.Close()

	// Back to pass: the tainted connection is closed, new ones work.
	p.SetMode(Pass)
	if _, err := roundTrip(c, "x", time.Second); err == nil {
		t.Fatal("a connection that lost bytes to a blackhole must be closed on heal")
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := roundTrip(c2, "again", time.Second); err != nil || got != "again" {
		t.Fatalf("after heal: got %q %v, want again", got, err)
	}

	p.SetMode(Drop)
	if _, err := roundTrip(c2, "x", time.Second); err == nil {
		t.Fatal("drop must close open connections")
	}
	c3, err := net.Dial("tcp", p.Addr())
	if err == nil {
		_, err = roundTrip(c3, "x", time.Second)
		c3.Close()
	}
	if err == nil {
		t.Fatal("drop must close new connections")
	}
	if got := p.Mode(); got != Drop {
		t.Errorf("mode: got %v, want %v", got, Drop)
	}
}

func TestNewProxyRejectsBadTarget(t *testing.T) {
	if _, err := NewProxy("no-port"); err == nil {
		t.Error("NewProxy(\"no-port\"): got nil error, want one naming the target")
	}
}
