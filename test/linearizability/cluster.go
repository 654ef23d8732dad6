package linearizability

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// BuildCoord builds the berth-coord binary from the services/coord module at srcDir into
// out, with the given build tags (none when empty).
func BuildCoord(ctx context.Context, srcDir, out, tags string) error {
	args := []string{"build", "-o", out}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	args = append(args, "./cmd/berth-coord")
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = srcDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build berth-coord (tags %q): %w\n%s", tags, err, b)
	}
	return nil
}

// goTool is the go command of the toolchain running the tests, else the one on PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	if p := "/usr/local/go/bin/go"; fileExists(p) {
		return p
	}
	return "go"
}

// tail returns up to the last n bytes of a file.
func tail(file string, n int64) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return err.Error()
	}
	return string(b[max(0, int64(len(b))-n):])
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ClusterConfig describes a cluster of berth-coord processes on loopback.
type ClusterConfig struct {
	// Binary is the berth-coord executable. Required.
	Binary string
	// Dir holds the members' data dirs and log files. Required.
	Dir string
	// Members is the cluster size. Default 3.
	Members int
	// Heartbeat and Election are the Raft timings. Defaults 50ms and 500ms.
	Heartbeat, Election time.Duration
	// RequestTimeout bounds writes and linearizable reads on the server. Default 1s.
	RequestTimeout time.Duration
	// SnapshotEntries is passed to --snapshot-entries. Default 1,000,000: every member's
	// membership holds its own proxy addresses, and a snapshot sent by a leader would carry
	// the leader's, so the tests keep snapshots out of the way.
	SnapshotEntries uint64
}

func (c *ClusterConfig) setDefaults() error {
	if c.Binary == "" || c.Dir == "" {
		return errors.New("cluster config: Binary and Dir are required")
	}
	if c.Members == 0 {
		c.Members = 3
	}
	if c.Members < 1 || c.Members > 9 {
		return fmt.Errorf("cluster config: Members %d is outside 1..9", c.Members)
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 50 * time.Millisecond
	}
	if c.Election == 0 {
		c.Election = 500 * time.Millisecond
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = time.Second
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = 1_000_000
	}
	return nil
}

// Member is one berth-coord process of a Cluster.
type Member struct {
	// Index is the member's position in Cluster.Members.
	Index int
	// Name is its --name; ID the member id derived from it.
	Name string
	ID   uint64
	// ClientAddr, PeerAddr and MetricsAddr are where the process listens.
	ClientAddr, PeerAddr, MetricsAddr string
	// DataDir is its --data-dir; LogFile collects its stderr across restarts.
	DataDir, LogFile string
	// Conn is a client connection to ClientAddr that outlives restarts; API wraps it.
	Conn *grpc.ClientConn
	API  coordv1.CoordServiceClient

	args []string

	// mu guards the fields below.
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Cluster is a berth-coord cluster of processes whose peer links each pass through their
// own Proxy: member i reaches member j at Links[i][j]. Close it when done.
type Cluster struct {
	cfg     ClusterConfig
	Members []*Member
	// Links[i][j] is the proxy member i dials to reach member j (nil for i == j).
	Links [][]*Proxy

	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

// memberID is coord.MemberID: FNV-64a of the name, never 0.
func memberID(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	if v := h.Sum64(); v != 0 {
		return v
	}
	return 1
}

// freeAddr returns a free loopback address for a member process to listen on. It picks
// ports below the kernel's ephemeral range (32768 and up on Linux), so that the port cannot
// be taken in the meantime by the local end of some outgoing connection, only (unlikely) by
// another test doing the same, and it checks the port is free now.
func freeAddr() (string, error) {
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

// StartCluster starts the proxies and every member, and returns once every member serves
// its client API (not necessarily once a leader is elected; see WaitLeader).
func StartCluster(ctx context.Context, cfg ClusterConfig) (*Cluster, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	pctx, cancel := context.WithCancel(context.Background())
	c := &Cluster{cfg: cfg, cancel: cancel, errs: make(chan error, cfg.Members*cfg.Members)}
	fail := func(err error) (*Cluster, error) {
		c.Close()
		return nil, err
	}
	for i := range cfg.Members {
		m := &Member{Index: i, Name: fmt.Sprintf("n%d", i+1)}
		m.ID = memberID(m.Name)
		for _, p := range []*string{&m.ClientAddr, &m.PeerAddr, &m.MetricsAddr} {
			a, err := freeAddr()
			if err != nil {
				return fail(fmt.Errorf("start cluster: %w", err))
			}
			*p = a
		}
		m.DataDir = filepath.Join(cfg.Dir, m.Name)
		m.LogFile = filepath.Join(cfg.Dir, m.Name+".log")
		conn, err := grpc.NewClient(m.ClientAddr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			return fail(fmt.Errorf("start cluster: dial %s: %w", m.Name, err))
		}
		m.Conn, m.API = conn, coordv1.NewCoordServiceClient(conn)
		c.Members = append(c.Members, m)
	}
	c.Links = make([][]*Proxy, cfg.Members)
	for i := range cfg.Members {
		c.Links[i] = make([]*Proxy, cfg.Members)
		for j := range cfg.Members {
			if i == j {
				continue
			}
			p, err := NewProxy(c.Members[j].PeerAddr)
			if err != nil {
				return fail(fmt.Errorf("start cluster: %w", err))
			}
			c.Links[i][j] = p
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				if err := p.Run(pctx); err != nil {
					c.errs <- err
				}
			}()
		}
	}
	clusterID := strconv.FormatUint(rand.Uint64()|1, 16)
	for i, m := range c.Members {
		var entries []string
		for j, o := range c.Members {
			addr := o.PeerAddr
			if i != j {
				addr = c.Links[i][j].Addr()
			}
			entries = append(entries, o.Name+"="+addr)
		}
		m.args = []string{
			"--name", m.Name, "--data-dir", m.DataDir,
			"--listen-client", m.ClientAddr, "--listen-peer", m.PeerAddr, "--listen-metrics", m.MetricsAddr,
			"--initial-cluster", strings.Join(entries, ","), "--initial-cluster-state", "new",
			"--cluster-id", clusterID,
			"--heartbeat-interval", strconv.Itoa(int(cfg.Heartbeat / time.Millisecond)),
			"--election-timeout", strconv.Itoa(int(cfg.Election / time.Millisecond)),
			"--request-timeout", strconv.Itoa(int(cfg.RequestTimeout / time.Millisecond)),
			"--snapshot-entries", strconv.FormatUint(cfg.SnapshotEntries, 10),
			"--log-format", "text",
		}
		if err := c.Start(ctx, i); err != nil {
			return fail(err)
		}
	}
	return c, nil
}

// Start starts member i's process (again) and waits until it answers Status.
func (c *Cluster) Start(ctx context.Context, i int) error {
	m := c.Members[i]
	m.mu.Lock()
	if m.cmd != nil {
		m.mu.Unlock()
		return fmt.Errorf("start %s: already running", m.Name)
	}
	logf, err := os.OpenFile(m.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	fmt.Fprintf(logf, "=== start %s at %s\n", m.Name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(c.cfg.Binary, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The member dies with the test process, even when the test binary is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		m.mu.Unlock()
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	for {
		// The connection may be backing off after the member's last death: retry now.
		m.Conn.ResetConnectBackoff()
		sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := m.API.Status(sctx, &coordv1.StatusRequest{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("start %s: process exited; log %s ends:\n%s", m.Name, m.LogFile, tail(m.LogFile, 2048))
		case <-ctx.Done():
			return fmt.Errorf("start %s: %w", m.Name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill sends SIGKILL to member i and waits for the process to exit.
func (c *Cluster) Kill(i int) error { return c.stop(i, syscall.SIGKILL, 0) }

// stop signals member i and waits for it to exit, with SIGKILL after grace (0: none).
func (c *Cluster) stop(i int, sig syscall.Signal, grace time.Duration) error {
	m := c.Members[i]
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd, m.done = nil, nil
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", m.Name, err)
	}
	if grace > 0 {
		select {
		case <-done:
			return nil
		case <-time.After(grace):
			cmd.Process.Kill()
		}
	}
	<-done
	return nil
}

// Running reports whether member i's process is running.
func (c *Cluster) Running(i int) bool {
	m := c.Members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

// Isolate sets every link from and to member i to mode.
func (c *Cluster) Isolate(i int, mode Mode) {
	for j := range c.Members {
		if j != i {
			c.Links[i][j].SetMode(mode)
			c.Links[j][i].SetMode(mode)
		}
	}
}

// Cut sets both links between members i and j to mode.
func (c *Cluster) Cut(i, j int, mode Mode) {
	c.Links[i][j].SetMode(mode)
	c.Links[j][i].SetMode(mode)
}

// Heal sets every link back to Pass.
func (c *Cluster) Heal() {
	for i := range c.Links {
		for _, p := range c.Links[i] {
			if p != nil {
				p.SetMode(Pass)
			}
		}
	}
}

// Leader returns the member that a majority of the running members name as leader and
// that says it leads, or -1.
func (c *Cluster) Leader(ctx context.Context) int {
	votes := map[uint64]int{}
	leading := map[uint64]bool{}
	for i, m := range c.Members {
		if !c.Running(i) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		st, err := m.API.Status(sctx, &coordv1.StatusRequest{})
		cancel()
		if err != nil {
			continue
		}
		if id := st.GetHeader().GetLeaderId(); id != 0 {
			votes[id]++
		}
		if st.IsLeader {
			leading[m.ID] = true
		}
	}
	for i, m := range c.Members {
		if leading[m.ID] && votes[m.ID] > len(c.Members)/2 {
			return i
		}
	}
	return -1
}

// WaitLeader waits until Leader names a member other than those in not, and returns it.
func (c *Cluster) WaitLeader(ctx context.Context, not ...int) (int, error) {
	for {
		if l := c.Leader(ctx); l >= 0 && !contains(not, l) {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("wait for a leader (not %v): %w", not, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// Close stops every member (SIGTERM, then SIGKILL after 5 s), the proxies and the client
// connections, and returns the first error a proxy reported.
func (c *Cluster) Close() error {
	var wg sync.WaitGroup
	for i := range c.Members {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(i, syscall.SIGTERM, 5*time.Second) }()
	}
	wg.Wait()
	for _, m := range c.Members {
		m.Conn.Close()
	}
	c.cancel()
	c.wg.Wait()
	close(c.errs)
	return <-c.errs
}
