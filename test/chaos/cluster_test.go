package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

// clusterConfig describes a berth-coord cluster of processes on loopback.
type clusterConfig struct {
	// binary is the berth-coord executable.
	binary string
	// dir holds the members' data dirs and logs.
	dir string
	// heartbeat and election are the Raft timings.
	heartbeat, election time.Duration
	// requestTimeout bounds writes and linearizable reads on the server.
	requestTimeout time.Duration
}

// member is one berth-coord process of a cluster.
type member struct {
	idx  int
	name string
	// clientAddr and peerAddr are where the process listens.
	clientAddr, peerAddr string
	dataDir, logFile     string
	// conn is a client connection to clientAddr that outlives restarts; api wraps it.
	conn *grpc.ClientConn
	api  coordv1.CoordServiceClient

	args []string

	// mu guards the fields below.
	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited
	paused bool
}

// coordCluster is a cluster of berth-coord processes whose peer links each pass through
// their own faultProxy: member i reaches member j at links[i][j].
type coordCluster struct {
	cfg     clusterConfig
	members []*member
	links   [][]*faultProxy

	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

// freePort returns a free loopback address below the kernel's ephemeral port range (32768
// and up on Linux), so that the port cannot be taken meanwhile by the local end of an
// outgoing connection before the member process binds it.
func freePort() (string, error) {
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+rand.IntN(12000)))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		l.Close()
		return addr, nil
	}
	return "", errors.New("no free port in 20000..31999 after 100 tries")
}

// startCoordCluster starts three members and their proxies and waits for a leader. The
// cluster is closed when the test ends; the members' logs are kept when it failed.
func startCoordCluster(t *testing.T, cfg clusterConfig) *coordCluster {
	t.Helper()
	pctx, cancel := context.WithCancel(context.Background())
	c := &coordCluster{cfg: cfg, cancel: cancel, errs: make(chan error, 16)}
	t.Cleanup(func() {
		if err := c.close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if t.Failed() {
			for _, m := range c.members {
				t.Logf("member %s log kept at %s", m.name, keepFile(t, m.logFile))
			}
		}
	})
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const n = 3
	for i := range n {
		m := &member{idx: i, name: fmt.Sprintf("n%d", i+1)}
		for _, p := range []*string{&m.clientAddr, &m.peerAddr} {
			a, err := freePort()
			if err != nil {
				t.Fatal(err)
			}
			*p = a
		}
		m.dataDir = filepath.Join(cfg.dir, m.name)
		m.logFile = filepath.Join(cfg.dir, m.name+".log")
		conn, err := grpc.NewClient(m.clientAddr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			t.Fatal(err)
		}
		m.conn, m.api = conn, coordv1.NewCoordServiceClient(conn)
		c.members = append(c.members, m)
	}
	c.links = make([][]*faultProxy, n)
	for i := range n {
		c.links[i] = make([]*faultProxy, n)
		for j := range n {
			if i == j {
				continue
			}
			p, err := newFaultProxy(c.members[j].peerAddr)
			if err != nil {
				t.Fatal(err)
			}
			c.links[i][j] = p
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				if err := p.Run(pctx); err != nil {
					c.errs <- err
				}
			}()
		}
	}
	// Each member's initial cluster names its own proxies, so the derived cluster ids
	// would differ: pass one.
	clusterID := strconv.FormatUint(rand.Uint64()|1, 16)
	for i, m := range c.members {
		var entries []string
		for j, o := range c.members {
			addr := o.peerAddr
			if i != j {
				addr = c.links[i][j].Addr()
			}
			entries = append(entries, o.name+"="+addr)
		}
		m.args = []string{
			"--name", m.name, "--data-dir", m.dataDir,
			"--listen-client", m.clientAddr, "--listen-peer", m.peerAddr,
			"--initial-cluster", strings.Join(entries, ","), "--initial-cluster-state", "new",
			"--cluster-id", clusterID,
			"--heartbeat-interval", strconv.Itoa(int(cfg.heartbeat / time.Millisecond)),
			"--election-timeout", strconv.Itoa(int(cfg.election / time.Millisecond)),
			"--request-timeout", strconv.Itoa(int(cfg.requestTimeout / time.Millisecond)),
			// A snapshot sent by a leader carries the leader's peer addresses, which bypass
			// the receiver's proxies; keep snapshots out of the way of fault injection.
			"--snapshot-entries", "1000000",
			"--log-format", "text",
		}
	}
	for i := range c.members {
		if err := c.start(t.Context(), i); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancelWait := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancelWait()
	if _, err := c.waitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// start starts member i's process (again) and waits until it answers Status.
func (c *coordCluster) start(ctx context.Context, i int) error {
	m := c.members[i]
	m.mu.Lock()
	if m.cmd != nil {
		m.mu.Unlock()
		return fmt.Errorf("start %s: already running", m.name)
	}
	logf, err := os.OpenFile(m.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("start %s: %w", m.name, err)
	}
	fmt.Fprintf(logf, "=== start %s at %s\n", m.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(c.cfg.binary, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The member dies with the test process, even when the test binary is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		m.mu.Unlock()
		return fmt.Errorf("start %s: %w", m.name, err)
	}
	done := make(chan struct{})
	m.cmd, m.done, m.paused = cmd, done, false
	m.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	for {
		m.conn.ResetConnectBackoff()
		sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := m.api.Status(sctx, &coordv1.StatusRequest{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("start %s: process exited; see %s", m.name, m.logFile)
		case <-ctx.Done():
			return fmt.Errorf("start %s: %w", m.name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kill sends SIGKILL to member i (paused or not) and waits until it has exited.
func (c *coordCluster) kill(i int) { c.stop(i, syscall.SIGKILL, 0) }

// stop signals member i and waits for it to exit, with SIGKILL after grace (0: none).
func (c *coordCluster) stop(i int, sig syscall.Signal, grace time.Duration) {
	m := c.members[i]
	m.mu.Lock()
	cmd, done, paused := m.cmd, m.done, m.paused
	m.cmd, m.done, m.paused = nil, nil, false
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	if paused && sig != syscall.SIGKILL {
		cmd.Process.Signal(syscall.SIGCONT)
	}
	if grace > 0 {
		select {
		case <-done:
			return
		case <-time.After(grace):
			cmd.Process.Kill()
		}
	}
	<-done
}

// pause stops member i with SIGSTOP; resume continues it with SIGCONT.
func (c *coordCluster) pause(i int) error  { return c.signalPause(i, syscall.SIGSTOP, true) }
func (c *coordCluster) resume(i int) error { return c.signalPause(i, syscall.SIGCONT, false) }

func (c *coordCluster) signalPause(i int, sig syscall.Signal, paused bool) error {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return fmt.Errorf("signal %s: not running", m.name)
	}
	if err := m.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s: %w", m.name, err)
	}
	m.paused = paused
	return nil
}

// running reports whether member i's process exists; serving adds that it is not paused.
func (c *coordCluster) running(i int) bool {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

func (c *coordCluster) serving(i int) bool {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil && !m.paused
}

// isolate sets every link from and to member i to mode.
func (c *coordCluster) isolate(i int, mode linkMode) {
	for j := range c.members {
		if j != i {
			c.links[i][j].SetMode(mode)
			c.links[j][i].SetMode(mode)
		}
	}
}

// cut sets both links between members i and j to mode.
func (c *coordCluster) cut(i, j int, mode linkMode) {
	c.links[i][j].SetMode(mode)
	c.links[j][i].SetMode(mode)
}

// slow delays every link from and to member i by d.
func (c *coordCluster) slow(i int, d time.Duration) {
	for j := range c.members {
		if j != i {
			c.links[i][j].SetDelay(d)
			c.links[j][i].SetDelay(d)
		}
	}
}

// heal sets every link back to pass without delay.
func (c *coordCluster) heal() {
	for i := range c.links {
		for _, p := range c.links[i] {
			if p != nil {
				p.SetMode(linkPass)
				p.SetDelay(0)
			}
		}
	}
}

// status asks member i for its Status with a short timeout.
func (c *coordCluster) status(ctx context.Context, i int) (*coordv1.StatusResponse, error) {
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	return c.members[i].api.Status(sctx, &coordv1.StatusRequest{})
}

// leader returns the serving member that says it leads and that a majority of the
// members name as leader, or -1.
func (c *coordCluster) leader(ctx context.Context) int {
	votes := map[uint64]int{}
	leading := map[int]uint64{}
	for i := range c.members {
		if !c.serving(i) {
			continue
		}
		st, err := c.status(ctx, i)
		if err != nil {
			continue
		}
		if id := st.GetHeader().GetLeaderId(); id != 0 {
			votes[id]++
		}
		if st.IsLeader {
			leading[i] = st.GetHeader().GetMemberId()
		}
	}
	for i, id := range leading {
		if votes[id] > len(c.members)/2 {
			return i
		}
	}
	return -1
}

// waitLeader waits until leader names a member and returns it.
func (c *coordCluster) waitLeader(ctx context.Context) (int, error) {
	for {
		if l := c.leader(ctx); l >= 0 {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("wait for a coord leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// follower returns a serving member other than l, or -1.
func (c *coordCluster) follower(l int, rng *rand.Rand) int {
	var fs []int
	for i := range c.members {
		if i != l && c.serving(i) {
			fs = append(fs, i)
		}
	}
	if len(fs) == 0 {
		return -1
	}
	return fs[rng.IntN(len(fs))]
}

// clientEndpoints returns every member's client address.
func (c *coordCluster) clientEndpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientAddr)
	}
	return eps
}

// close stops every member (SIGCONT, SIGTERM, then SIGKILL after 5 s), the proxies and
// the client connections, and returns the first error a proxy reported.
func (c *coordCluster) close() error {
	var wg sync.WaitGroup
	for i := range c.members {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(i, syscall.SIGTERM, 5*time.Second) }()
	}
	wg.Wait()
	for _, m := range c.members {
		m.conn.Close()
	}
	c.cancel()
	c.wg.Wait()
	close(c.errs)
	return <-c.errs
}
