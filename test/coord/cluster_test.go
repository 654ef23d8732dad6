// Package coord_test runs pkg/coordclient against a real berth-coord cluster of three
// members in process: leader following, retries that apply once, sessions across
// failover and expiry, election and fencing, locks, watches across member kills and
// re-listing after compaction.
package coord_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/coordclient"
	coordsrv "github.com/berthdev/berth/services/coord"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// member is one in-process berth-coord member. Its addresses stay the same across
// restarts.
type member struct {
	name                 string
	clientAddr, peerAddr string
	cfg                  coordsrv.Config
	cancel               context.CancelFunc
	done                 chan error
}

func (m *member) running() bool { return m.cancel != nil }

// cluster is a berth-coord cluster of in-process members on loopback.
type cluster struct {
	t       *testing.T
	members []*member
}

// clusterOpts tweaks every member's configuration.
type clusterOpts func(*coordsrv.Config)

// startCluster runs n members on ports chosen by the kernel and waits for a leader. The
// members are stopped when the test ends.
func startCluster(t *testing.T, n int, opts ...clusterOpts) *cluster {
	t.Helper()
	c := &cluster{t: t}
	dir := t.TempDir()
	var initial []string
	for i := range n {
		m := &member{name: fmt.Sprintf("n%d", i+1), clientAddr: freeAddr(t), peerAddr: freeAddr(t)}
		m.cfg = coordsrv.Config{
			Name:              m.name,
			DataDir:           filepath.Join(dir, m.name),
			ListenClient:      m.clientAddr,
			ListenPeer:        m.peerAddr,
			HeartbeatInterval: 50 * time.Millisecond,
			ElectionTimeout:   500 * time.Millisecond,
			RequestTimeout:    2 * time.Second,
		}
		initial = append(initial, m.name+"="+m.peerAddr)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.cfg.InitialCluster = strings.Join(initial, ",")
		for _, o := range opts {
			o(&m.cfg)
		}
		c.start(m)
	}
	t.Cleanup(func() {
		for _, m := range c.members {
			c.stop(m)
		}
	})
	c.leader()
	return c
}

// handedOut are the addresses freeAddr gave this test process: the kernel may give a
// port that was just closed to the next listener, so two calls could name one port.
var handedOut = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// freeAddr returns a loopback address with a port that was free a moment ago and that it
// never returned before.
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut.m[addr] {
			handedOut.m[addr] = true
			return addr
		}
	}
	t.Fatal("no free address not handed out before")
	return ""
}

// start runs m (again) on its addresses and data dir.
func (c *cluster) start(m *member) {
	c.t.Helper()
	srv, err := coordsrv.New(m.cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		c.t.Fatalf("new member %s: %v", m.name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan error, 1)
	go func() { m.done <- srv.Run(ctx) }()
	// Wait until the client port answers, so that a restart is serving when start returns.
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", m.clientAddr, 100*time.Millisecond)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("member %s does not listen on %s: %v", m.name, m.clientAddr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop stops m and waits for it to return.
func (c *cluster) stop(m *member) {
	if !m.running() {
		return
	}
	m.cancel()
	if err := <-m.done; err != nil {
		c.t.Errorf("run member %s: %v", m.name, err)
	}
	m.cancel = nil
}

// endpoints returns every member's client address.
func (c *cluster) endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientAddr)
	}
	return eps
}

// client returns a client of the cluster closed when the test ends.
func (c *cluster) client(endpoints ...string) *coordclient.Client {
	c.t.Helper()
	if len(endpoints) == 0 {
		endpoints = c.endpoints()
	}
	cl, err := coordclient.New(c.t.Context(), coordclient.Config{Endpoints: endpoints, RequestTimeout: 10 * time.Second})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// leader waits for a running member that is the leader and knows it, and returns it.
func (c *cluster) leader() *member {
	c.t.Helper()
	cl, err := coordclient.New(c.t.Context(), coordclient.Config{Endpoints: c.endpoints(), RequestTimeout: time.Second})
	if err != nil {
		c.t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range c.members {
			if !m.running() {
				continue
			}
			ctx, cancel := context.WithTimeout(c.t.Context(), 500*time.Millisecond)
			st, err := cl.Status(ctx, m.clientAddr)
			cancel()
			if err == nil && st.IsLeader {
				return m
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatal("no leader within 15s")
	return nil
}

// byAddr returns the member serving addr.
func (c *cluster) byAddr(addr string) *member {
	for _, m := range c.members {
		if m.clientAddr == addr {
			return m
		}
	}
	c.t.Fatalf("no member at %s", addr)
	return nil
}

// wait fails the test unless cond holds within d.
func wait(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
