package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"github.com/go-zookeeper/zk"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// ephConfig configures the comparison with ZooKeeper.
type ephConfig struct {
	zk, coord []string
	n         int
	ttl       time.Duration
	inflight  []int
	valueSize int
}

func (c *ephConfig) validate() error {
	switch {
	case len(c.zk) == 0 && len(c.coord) == 0:
		return errors.New("neither --zk nor --coord endpoints given")
	case c.n < 1 || c.n > 1_000_000:
		return fmt.Errorf("--n %d is outside 1..1000000", c.n)
	case c.ttl < time.Second:
		return fmt.Errorf("--ttl %v is under 1s", c.ttl)
	case len(c.inflight) == 0:
		return errors.New("--inflight is empty")
	case c.valueSize < 0 || c.valueSize > 1<<20:
		return fmt.Errorf("--value-size %d is outside 0..1048576", c.valueSize)
	}
	for _, f := range c.inflight {
		if f < 1 || f > 10000 {
			return fmt.Errorf("--inflight %d is outside 1..10000", f)
		}
	}
	return nil
}

// ephResult is one child's figures: its create rate and the time from its death to the
// removal of its ephemerals.
type ephResult struct {
	inflight int
	rate     float64
	cleanup  time.Duration
}

// runEphemeral runs the ephemeral benchmark on ZooKeeper and berth-coord and prints the
// table.
func runEphemeral(ctx context.Context, out io.Writer, cfg ephConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	results := map[string][]ephResult{}
	for _, system := range []string{"zk", "coord"} {
		addrs := cfg.zk
		if system == "coord" {
			addrs = cfg.coord
		}
		if len(addrs) == 0 {
			continue
		}
		for _, inflight := range cfg.inflight {
			r, err := ephemeralRun(ctx, out, cfg, system, addrs, inflight)
			if err != nil {
				return fmt.Errorf("%s, %d in flight: %w", system, inflight, err)
			}
			results[system] = append(results[system], r)
		}
	}
	zr, cr := results["zk"], results["coord"]
	if len(zr) == 0 || len(cr) == 0 {
		return nil
	}
	fmt.Fprintf(out, "\nberth-coord vs ZooKeeper 3.8: 3 members each on 127.0.0.1; one client process creates %d ephemeral nodes (%d-byte values) in one session\n", cfg.n, cfg.valueSize)
	fmt.Fprintf(out, "(ZooKeeper session timeout = berth session TTL = %v), is killed with SIGKILL, and a second client times the removal of its nodes\n\n", cfg.ttl)
	var rows []row
	for i := range zr {
		z, c := zr[i], cr[i]
		rows = append(rows, row{section: true, metric: fmt.Sprintf("%d ephemerals, %d create(s) in flight", cfg.n, z.inflight)})
		r := row{metric: "create rate", base: fmtRate(z.rate), coord: fmtRate(c.rate), ratio: ratio(c.rate, z.rate)}
		if i == len(zr)-1 {
			r.goal, r.verdict = ">= 2x ZooKeeper", verdict(c.rate >= 2*z.rate)
		}
		rows = append(rows, r)
		bound := cfg.ttl + time.Second
		rows = append(rows, row{metric: "client killed -> nodes gone", base: fmtDur(z.cleanup), coord: fmtDur(c.cleanup),
			ratio: ratio(float64(c.cleanup), float64(z.cleanup)), goal: "<= TTL + 1s = " + bound.String(), verdict: verdict(c.cleanup <= bound)})
	}
	table(out, "zookeeper", rows)
	return nil
}

// ephemeralRun starts a child process that creates the ephemerals in one session, kills it
// once they are created, and times their removal.
func ephemeralRun(ctx context.Context, out io.Writer, cfg ephConfig, system string, addrs []string, inflight int) (ephResult, error) {
	res := ephResult{inflight: inflight}
	prefix := fmt.Sprintf("/bench-eph/%s-%d-%d", system, inflight, time.Now().UnixNano())
	var w deletionWatch
	var err error
	if system == "zk" {
		w, err = newZKWatch(addrs, cfg.ttl, prefix)
	} else {
		w, err = newCoordWatch(addrs, prefix)
	}
	if err != nil {
		return res, err
	}
	defer w.Close()

	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	cmd := exec.CommandContext(ctx, self, "ephemeral-child", "--system", system, "--addrs", strings.Join(addrs, ","),
		"--n", strconv.Itoa(cfg.n), "--ttl", cfg.ttl.String(), "--inflight", strconv.Itoa(inflight),
		"--prefix", prefix, "--value-size", strconv.Itoa(cfg.valueSize))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start child: %w", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "created ") {
				lines <- sc.Text()
				break
			}
		}
		io.Copy(io.Discard, stdout)
		close(lines)
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(5 * time.Minute):
		return res, errors.New("child did not report its creates within 5 minutes")
	}
	var n int
	var secs float64
	if _, err := fmt.Sscanf(line, "created %d %g", &n, &secs); err != nil || n != cfg.n {
		return res, fmt.Errorf("child reported %q", line)
	}
	res.rate = float64(n) / secs
	if err := w.Arm(ctx, n); err != nil {
		return res, err
	}
	// Let the session run on its keepalives for a while, as a real client's would.
	time.Sleep(cfg.ttl)
	killed := time.Now()
	cmd.Process.Kill()
	gone, err := w.Wait(ctx, killed.Add(3*cfg.ttl+10*time.Second))
	if err != nil {
		return res, err
	}
	res.cleanup = gone.Sub(killed)
	left, err := w.Remaining(ctx)
	if err != nil {
		return res, err
	}
	if left != 0 {
		return res, fmt.Errorf("%d ephemerals left after the session ended", left)
	}
	fmt.Fprintf(out, "[%s] %s, %d in flight: %.0f creates/s, nodes gone %s after the kill\n", time.Now().Format("15:04:05"), system, inflight, res.rate, fmtDur(res.cleanup))
	return res, nil
}

// deletionWatch times the removal of a dead client's ephemerals. Both systems delete all of
// a session's ephemerals at once (one ZooKeeper transaction, one berth-coord revision), so
// it polls one of them every 5 ms: the same method for both. (A berth-coord watch would be
// push-based, but a revision of more than 4096 events cancels every watcher of the subtree
// with RESOURCE_EXHAUSTED, which a 10,000-node session expiry is.)
type deletionWatch interface {
	// Arm checks that the n ephemerals exist and picks the one to poll.
	Arm(ctx context.Context, n int) error
	// Wait polls until that node is gone and returns when it saw it gone.
	Wait(ctx context.Context, deadline time.Time) (time.Time, error)
	// Remaining counts the nodes left under the prefix.
	Remaining(ctx context.Context) (int, error)
	Close() error
}

// pollGone calls exists every 5 ms until it reports false, deadline passes or ctx ends.
func pollGone(ctx context.Context, deadline time.Time, exists func(context.Context) (bool, error)) (time.Time, error) {
	var lastErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ok, err := exists(ctx)
		now := time.Now()
		if err == nil && !ok {
			return now, nil
		}
		lastErr = err
		time.Sleep(5 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("ephemerals not deleted in time (last poll error: %v)", lastErr)
}

// zkWatch polls one ephemeral of the child with exists.
type zkWatch struct {
	conn   *zk.Conn
	prefix string
	path   string
}

type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}

func connectZK(addrs []string, ttl time.Duration) (*zk.Conn, error) {
	conn, events, err := zk.Connect(addrs, ttl, zk.WithLogger(quietLogger{}))
	if err != nil {
		return nil, fmt.Errorf("connect zookeeper %v: %w", addrs, err)
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case e := <-events:
			if e.State == zk.StateHasSession {
				go func() {
					for range events { // the channel is closed by Close
					}
				}()
				return conn, nil
			}
		case <-timeout:
			conn.Close()
			return nil, fmt.Errorf("connect zookeeper %v: no session within 30s", addrs)
		}
	}
}

func newZKWatch(addrs []string, ttl time.Duration, prefix string) (*zkWatch, error) {
	conn, err := connectZK(addrs, ttl)
	if err != nil {
		return nil, err
	}
	// ZooKeeper needs the parents; berth-coord does not.
	path := ""
	for _, part := range strings.Split(strings.TrimPrefix(prefix, "/"), "/") {
		path += "/" + part
		if _, err := conn.Create(path, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			conn.Close()
			return nil, fmt.Errorf("create %s: %w", path, err)
		}
	}
	return &zkWatch{conn: conn, prefix: prefix}, nil
}

func (w *zkWatch) Arm(ctx context.Context, n int) error {
	left, err := w.Remaining(ctx)
	if err != nil || left != n {
		return fmt.Errorf("before the kill: %d nodes under %s (%v), want %d", left, w.prefix, err, n)
	}
	w.path = ephPath(w.prefix, n-1)
	return nil
}

func (w *zkWatch) Wait(ctx context.Context, deadline time.Time) (time.Time, error) {
	return pollGone(ctx, deadline, func(context.Context) (bool, error) {
		ok, _, err := w.conn.Exists(w.path)
		return ok, err
	})
}

func (w *zkWatch) Remaining(context.Context) (int, error) {
	kids, _, err := w.conn.Children(w.prefix)
	return len(kids), err
}

func (w *zkWatch) Close() error {
	w.conn.Close()
	return nil
}

// coordWatch polls one ephemeral of the child with a linearizable keys-only Get.
type coordWatch struct {
	conn   *grpc.ClientConn
	api    coordv1.CoordServiceClient
	prefix string
	path   string
}

func newCoordWatch(addrs []string, prefix string) (*coordWatch, error) {
	conn, err := grpc.NewClient(addrs[0], grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, err
	}
	return &coordWatch{conn: conn, api: coordv1.NewCoordServiceClient(conn), prefix: prefix}, nil
}

func (w *coordWatch) Arm(ctx context.Context, n int) error {
	left, err := w.Remaining(ctx)
	if err != nil || left != n {
		return fmt.Errorf("before the kill: %d nodes under %s (%v), want %d", left, w.prefix, err, n)
	}
	w.path = ephPath(w.prefix, n-1)
	return nil
}

func (w *coordWatch) Wait(ctx context.Context, deadline time.Time) (time.Time, error) {
	return pollGone(ctx, deadline, func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := w.api.Get(cctx, &coordv1.GetRequest{Path: w.path, KeysOnly: true})
		switch status.Code(err) {
		case codes.OK:
			return true, nil
		case codes.NotFound:
			return false, nil
		}
		return false, err
	})
}

func (w *coordWatch) Remaining(ctx context.Context) (int, error) {
	r, err := w.api.List(ctx, &coordv1.ListRequest{Path: w.prefix, Recursive: true, KeysOnly: true})
	if err != nil {
		return 0, err
	}
	return len(r.Nodes), nil
}

func (w *coordWatch) Close() error { return w.conn.Close() }

func ephPath(prefix string, i int) string { return fmt.Sprintf("%s/e%07d", prefix, i) }

// childConfig is the ephemeral-child subcommand's configuration.
type childConfig struct {
	system    string
	addrs     []string
	n         int
	ttl       time.Duration
	inflight  int
	prefix    string
	valueSize int
}

// runChild opens a session, creates the ephemerals with inflight concurrent creates,
// prints "created N SECONDS", then keeps the session alive until it is killed.
func runChild(ctx context.Context, cfg childConfig) error {
	value := make([]byte, cfg.valueSize)
	var create func(path string) error
	switch cfg.system {
	case "zk":
		conn, err := connectZK(cfg.addrs, cfg.ttl)
		if err != nil {
			return err
		}
		defer conn.Close()
		create = func(path string) error {
			_, err := conn.Create(path, value, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
			return err
		}
	case "coord":
		var err error
		create, err = coordChildSession(ctx, cfg, value)
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("--system %q: want zk or coord", cfg.system)
	}
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, cfg.inflight)
	for range cfg.inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.n {
					return
				}
				if err := create(ephPath(cfg.prefix, i)); err != nil {
					errc <- fmt.Errorf("create %s: %w", ephPath(cfg.prefix, i), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	fmt.Printf("created %d %.6f\n", cfg.n, time.Since(start).Seconds())
	<-ctx.Done() // the session lives on its keepalives until the process is killed
	return nil
}

// coordChildSession opens a berth-coord session on the leader, keeps it alive every TTL/3
// from a goroutine that lives as long as the process, and returns a create function.
func coordChildSession(ctx context.Context, cfg childConfig, value []byte) (func(string) error, error) {
	var api coordv1.CoordServiceClient
	for attempt := 0; api == nil; attempt++ {
		for _, a := range cfg.addrs {
			conn, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return nil, err
			}
			c := coordv1.NewCoordServiceClient(conn)
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := c.Status(sctx, &coordv1.StatusRequest{})
			cancel()
			if err == nil && st.IsLeader {
				api = c
				break
			}
			conn.Close()
		}
		if attempt == 100 {
			return nil, fmt.Errorf("no berth-coord leader among %v", cfg.addrs)
		}
		if api == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	s, err := api.SessionOpen(ctx, &coordv1.SessionOpenRequest{TtlMs: cfg.ttl.Milliseconds()})
	if err != nil {
		return nil, fmt.Errorf("open session: %w", err)
	}
	ka, err := api.SessionKeepAlive(ctx)
	if err != nil {
		return nil, fmt.Errorf("keepalive: %w", err)
	}
	go func() {
		for ctx.Err() == nil {
			if err := ka.Send(&coordv1.SessionKeepAliveRequest{SessionId: s.SessionId}); err != nil {
				return
			}
			if r, err := ka.Recv(); err != nil || r.Expired {
				return
			}
			time.Sleep(cfg.ttl / 3)
		}
	}()
	return func(path string) error {
		_, err := api.Put(ctx, &coordv1.PutRequest{Path: path, Value: value, SessionId: s.SessionId, RequestId: path})
		return err
	}, nil
}
