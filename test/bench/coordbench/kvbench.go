package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// kvConfig configures the comparison with etcd.
type kvConfig struct {
	etcd, coord         []string
	etcdPIDs, coordPIDs []int
	clients, conns      int
	valueSize           int
	warmup, duration    time.Duration
	watchers, watchPuts int
	keys                int
	requestIDs          bool
	rounds              int
	only                map[string]bool
}

func (c *kvConfig) validate() error {
	switch {
	case len(c.etcd) == 0 && len(c.coord) == 0:
		return errors.New("neither --etcd nor --coord endpoints given")
	case c.clients < 1 || c.conns < 1 || c.conns > c.clients:
		return fmt.Errorf("--clients %d and --conns %d: want 1 <= conns <= clients", c.clients, c.conns)
	case c.valueSize < 1 || c.valueSize > 1<<20:
		return fmt.Errorf("--value-size %d is outside 1..1048576", c.valueSize)
	case c.duration <= 0 || c.warmup < 0:
		return fmt.Errorf("--duration %v and --warmup %v: want positive and non-negative", c.duration, c.warmup)
	case c.watchers < 1 || c.watchPuts < 1:
		return fmt.Errorf("--watchers %d and --watch-puts %d must be positive", c.watchers, c.watchPuts)
	case c.keys < 1:
		return fmt.Errorf("--keys %d must be positive", c.keys)
	case c.rounds < 1 || c.rounds > 9:
		return fmt.Errorf("--rounds %d is outside 1..9", c.rounds)
	}
	return nil
}

func (c *kvConfig) want(bench string) bool { return len(c.only) == 0 || c.only[bench] }

// kvResults are one store's figures.
type kvResults struct {
	put1, putN, readLin, readSer Result
	watch                        watchResult
}

// runKV runs the benchmarks on etcd and on berth-coord in turn, rounds times (the watch
// benchmark only in the first round, on fresh servers), takes for each benchmark the round
// with the median throughput, and prints the table. Alternating the two systems spreads
// the noise of a shared machine over both.
func runKV(ctx context.Context, out io.Writer, cfg kvConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	var etcdRounds, coordRounds []*kvResults
	for round := range cfg.rounds {
		rc := cfg
		if round > 0 && rc.want("watch") {
			rc.only = map[string]bool{}
			for _, b := range []string{"put", "read"} {
				if cfg.want(b) {
					rc.only[b] = true
				}
			}
		}
		fmt.Fprintf(out, "round %d of %d\n", round+1, cfg.rounds)
		for _, system := range []string{"etcd", "coord"} {
			if (system == "etcd" && len(cfg.etcd) == 0) || (system == "coord" && len(cfg.coord) == 0) {
				continue
			}
			r, err := benchStore(ctx, out, rc, system)
			if err != nil {
				return fmt.Errorf("%s: %w", system, err)
			}
			if system == "etcd" {
				etcdRounds = append(etcdRounds, r)
			} else {
				coordRounds = append(coordRounds, r)
			}
		}
	}
	if len(etcdRounds) == 0 || len(coordRounds) == 0 {
		return nil
	}
	etcdRes, coordRes := medianRounds(etcdRounds), medianRounds(coordRounds)
	fmt.Fprintf(out, "\nberth-coord vs etcd 3.4: 3 members each on 127.0.0.1, heartbeat 100 ms, election 1000 ms, %d-byte values,\n", cfg.valueSize)
	fmt.Fprintf(out, "%d clients over %d connections spread over the members (1 client: one connection to the leader),\n", cfg.clients, cfg.conns)
	fmt.Fprintf(out, "%v per run, the round with the median throughput of %d alternating rounds\n\n", cfg.duration, cfg.rounds)
	table(out, "etcd", kvRows(cfg, etcdRes, coordRes))
	return nil
}

// medianRounds picks, per benchmark, the round whose throughput is the median; the watch
// figures come from the first round.
func medianRounds(rs []*kvResults) *kvResults {
	pick := func(get func(*kvResults) Result) Result {
		all := make([]Result, len(rs))
		for i, r := range rs {
			all[i] = get(r)
		}
		slices.SortFunc(all, func(a, b Result) int { return cmp.Compare(a.Rate(), b.Rate()) })
		return all[(len(all)-1)/2]
	}
	return &kvResults{
		put1:    pick(func(r *kvResults) Result { return r.put1 }),
		putN:    pick(func(r *kvResults) Result { return r.putN }),
		readLin: pick(func(r *kvResults) Result { return r.readLin }),
		readSer: pick(func(r *kvResults) Result { return r.readSer }),
		watch:   rs[0].watch,
	}
}

func kvRows(cfg kvConfig, e, c *kvResults) []row {
	var rows []row
	n := fmt.Sprintf("%d clients", cfg.clients)
	thr := func(name string, er, cr Result, goal float64, p99 bool) {
		rows = append(rows, row{section: true, metric: name})
		ok := cr.Rate() >= goal*er.Rate()
		rows = append(rows, row{metric: "throughput", base: fmtRate(er.Rate()), coord: fmtRate(cr.Rate()), ratio: ratio(cr.Rate(), er.Rate()),
			goal: fmt.Sprintf(">= %.1fx etcd", goal), verdict: verdict(ok)})
		rows = append(rows, row{metric: "p50", base: fmtDur(er.P50), coord: fmtDur(cr.P50), ratio: ratio(float64(cr.P50), float64(er.P50))})
		r99 := row{metric: "p99", base: fmtDur(er.P99), coord: fmtDur(cr.P99), ratio: ratio(float64(cr.P99), float64(er.P99))}
		if p99 {
			r99.goal, r99.verdict = "<= etcd", verdict(cr.P99 <= er.P99)
		}
		rows = append(rows, r99)
		if er.CPU > 0 && cr.CPU > 0 {
			rows = append(rows, row{metric: "server CPU per op (3 members)", base: fmtMicros(er.CPUPerOp()), coord: fmtMicros(cr.CPUPerOp()), ratio: ratio(float64(cr.CPUPerOp()), float64(er.CPUPerOp()))})
		}
		if er.Errors+cr.Errors > 0 {
			rows = append(rows, row{metric: "errors", base: strconv.Itoa(er.Errors), coord: strconv.Itoa(cr.Errors)})
		}
	}
	if cfg.want("put") {
		rows = append(rows, row{section: true, metric: fmt.Sprintf("put %d B, 1 client", cfg.valueSize)})
		rows = append(rows, row{metric: "throughput", base: fmtRate(e.put1.Rate()), coord: fmtRate(c.put1.Rate()), ratio: ratio(c.put1.Rate(), e.put1.Rate())})
		rows = append(rows, row{metric: "p50", base: fmtDur(e.put1.P50), coord: fmtDur(c.put1.P50), ratio: ratio(float64(c.put1.P50), float64(e.put1.P50)),
			goal: "<= etcd", verdict: verdict(c.put1.P50 <= e.put1.P50)})
		rows = append(rows, row{metric: "p99", base: fmtDur(e.put1.P99), coord: fmtDur(c.put1.P99), ratio: ratio(float64(c.put1.P99), float64(e.put1.P99))})
		if e.put1.CPU > 0 && c.put1.CPU > 0 {
			rows = append(rows, row{metric: "server CPU per op (3 members)", base: fmtMicros(e.put1.CPUPerOp()), coord: fmtMicros(c.put1.CPUPerOp()), ratio: ratio(float64(c.put1.CPUPerOp()), float64(e.put1.CPUPerOp()))})
		}
		thr(fmt.Sprintf("put %d B, %s", cfg.valueSize, n), e.putN, c.putN, 1.5, true)
	}
	if cfg.want("read") {
		thr("linearizable get, "+n, e.readLin, c.readLin, 1.5, true)
		thr("serializable get, "+n, e.readSer, c.readSer, 1.5, true)
	}
	if cfg.want("watch") {
		ew, cw := e.watch, c.watch
		rows = append(rows, row{section: true, metric: fmt.Sprintf("watch: %d watchers on one key, %d puts", cfg.watchers, cfg.watchPuts)})
		rows = append(rows, row{metric: "put-to-event p50", base: fmtDur(ew.p50), coord: fmtDur(cw.p50), ratio: ratio(float64(cw.p50), float64(ew.p50))})
		rows = append(rows, row{metric: "put-to-event p99", base: fmtDur(ew.p99), coord: fmtDur(cw.p99), ratio: ratio(float64(cw.p99), float64(ew.p99)),
			goal: "<= etcd", verdict: verdict(cw.p99 <= ew.p99)})
		rows = append(rows, row{metric: "events delivered", base: fmt.Sprintf("%d/%d", ew.delivered, ew.expected), coord: fmt.Sprintf("%d/%d", cw.delivered, cw.expected)})
		rows = append(rows, row{metric: "memory per watcher (RSS)", base: fmtBytes(ew.perWatcher), coord: fmtBytes(cw.perWatcher), ratio: ratio(cw.perWatcher, ew.perWatcher),
			goal: "<= etcd", verdict: verdict(cw.perWatcher <= ew.perWatcher)})
		rows = append(rows, row{metric: "RSS before -> after", base: fmt.Sprintf("%s -> %s", fmtMiB(ew.rssBefore), fmtMiB(ew.rssAfter)), coord: fmt.Sprintf("%s -> %s", fmtMiB(cw.rssBefore), fmtMiB(cw.rssAfter))})
		rows = append(rows, row{metric: "watch setup time", base: ew.setup.Round(time.Millisecond).String(), coord: cw.setup.Round(time.Millisecond).String()})
	}
	return rows
}

func fmtBytes(b float64) string {
	if b >= 10*1024 {
		return fmt.Sprintf("%.1f KiB", b/1024)
	}
	return fmt.Sprintf("%.0f B", b)
}

func fmtMiB(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// openStore connects to one of the two systems with conns connections.
func openStore(cfg kvConfig, system string, conns int, endpoints []string) (store, error) {
	if system == "etcd" {
		return newEtcdStore(endpoints, conns)
	}
	return newCoordStore(endpoints, conns, cfg.requestIDs)
}

// benchStore runs the benchmarks against one system.
func benchStore(ctx context.Context, out io.Writer, cfg kvConfig, system string) (*kvResults, error) {
	eps, pids := cfg.coord, cfg.coordPIDs
	if system == "etcd" {
		eps, pids = cfg.etcd, cfg.etcdPIDs
	}
	res := &kvResults{}
	var cpu func() time.Duration
	if len(pids) > 0 {
		cpu = func() time.Duration {
			d, err := cpuTime(pids)
			if err != nil {
				return 0
			}
			return d
		}
	}
	many, err := openStore(cfg, system, cfg.conns, eps)
	if err != nil {
		return nil, err
	}
	defer many.Close()
	value := make([]byte, cfg.valueSize)
	rand.Read(value)
	progress := func(format string, args ...any) {
		fmt.Fprintf(out, "[%s] %s: %s\n", time.Now().Format("15:04:05"), many.Name(), fmt.Sprintf(format, args...))
	}
	// Every connection is up before anything is measured.
	for i := range cfg.conns {
		if err := warm(ctx, many, i); err != nil {
			return nil, err
		}
	}
	if cfg.want("watch") {
		// Watches first, on fresh servers, so that the RSS growth is theirs.
		res.watch, err = benchWatch(ctx, many, pids, cfg.watchers, cfg.watchPuts, cfg.valueSize)
		if err != nil {
			return nil, err
		}
		progress("watch: p50 %s, p99 %s, %d/%d events, %s per watcher", fmtDur(res.watch.p50), fmtDur(res.watch.p99), res.watch.delivered, res.watch.expected, fmtBytes(res.watch.perWatcher))
	}
	if cfg.want("put") {
		l, err := leaderIndex(ctx, system, eps)
		if err != nil {
			return nil, err
		}
		one, err := openStore(cfg, system, 1, eps[l:l+1])
		if err != nil {
			return nil, err
		}
		res.put1 = closedLoop(ctx, 1, cfg.warmup, cfg.duration, cpu, func(ctx context.Context, _, seq int) error {
			return one.Put(ctx, 0, fmt.Sprintf("/bench/put1/k%06d", seq%cfg.keys), value)
		})
		one.Close()
		progress("put, 1 client: %s, p50 %s, p99 %s, server CPU %s/op, %d errors %v", fmtRate(res.put1.Rate()), fmtDur(res.put1.P50), fmtDur(res.put1.P99), fmtMicros(res.put1.CPUPerOp()), res.put1.Errors, res.put1.FirstErr)
		res.putN = closedLoop(ctx, cfg.clients, cfg.warmup, cfg.duration, cpu, func(ctx context.Context, w, seq int) error {
			return many.Put(ctx, w%cfg.conns, fmt.Sprintf("/bench/put/k%06d", mrand.IntN(cfg.keys)), value)
		})
		progress("put, %d clients: %s, p50 %s, p99 %s, server CPU %s/op, %d errors %v", cfg.clients, fmtRate(res.putN.Rate()), fmtDur(res.putN.P50), fmtDur(res.putN.P99), fmtMicros(res.putN.CPUPerOp()), res.putN.Errors, res.putN.FirstErr)
	}
	if cfg.want("read") {
		const readKeys = 1000
		for i := range readKeys {
			if err := many.Put(ctx, i%cfg.conns, fmt.Sprintf("/bench/read/k%04d", i), value); err != nil {
				return nil, fmt.Errorf("populate read keys: %w", err)
			}
		}
		for _, ser := range []bool{false, true} {
			r := closedLoop(ctx, cfg.clients, cfg.warmup, cfg.duration, cpu, func(ctx context.Context, w, _ int) error {
				return many.Get(ctx, w%cfg.conns, fmt.Sprintf("/bench/read/k%04d", mrand.IntN(readKeys)), ser)
			})
			kind := "linearizable"
			if ser {
				kind = "serializable"
				res.readSer = r
			} else {
				res.readLin = r
			}
			progress("%s get, %d clients: %s, p50 %s, p99 %s, server CPU %s/op, %d errors %v", kind, cfg.clients, fmtRate(r.Rate()), fmtDur(r.P50), fmtDur(r.P99), fmtMicros(r.CPUPerOp()), r.Errors, r.FirstErr)
		}
	}
	return res, nil
}

// warm makes one request on connection i so that the connection is established.
func warm(ctx context.Context, s store, i int) error {
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.Put(cctx, i, "/bench/warm", []byte("x"))
		cancel()
		if err == nil {
			return nil
		}
		if attempt == 50 {
			return fmt.Errorf("warm up connection %d: %w", i, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leaderIndex returns the index of the leader among endpoints.
func leaderIndex(ctx context.Context, system string, eps []string) (int, error) {
	for attempt := 0; attempt < 100; attempt++ {
		for i, ep := range eps {
			isLeader, err := isLeader(ctx, system, ep)
			if err == nil && isLeader {
				return i, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("no %s leader among %v", system, eps)
}

func isLeader(ctx context.Context, system, ep string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if system == "etcd" {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return false, err
		}
		defer c.Close()
		st, err := c.Status(ctx, ep)
		if err != nil {
			return false, err
		}
		return st.Leader == st.Header.MemberId, nil
	}
	conn, err := grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, err
	}
	defer conn.Close()
	st, err := coordv1.NewCoordServiceClient(conn).Status(ctx, &coordv1.StatusRequest{})
	if err != nil {
		return false, err
	}
	return st.IsLeader, nil
}

// watchResult is the outcome of the watch benchmark.
type watchResult struct {
	p50, p99            time.Duration
	delivered, expected int
	rssBefore, rssAfter int64
	perWatcher          float64
	setup               time.Duration
}

// benchWatch opens n watchers on one key spread over the store's connections, measures
// the servers' RSS before and after, then puts the key puts times (one put every 50 ms,
// the value starting with the put's send time) and measures each event's put-to-event
// latency at every watcher.
func benchWatch(ctx context.Context, s store, pids []int, n, puts, valueSize int) (watchResult, error) {
	var res watchResult
	const key = "/bench/watch/key"
	if err := s.Put(ctx, 0, key, []byte("init")); err != nil {
		return res, err
	}
	time.Sleep(time.Second)
	before, err := rss(pids)
	if err != nil {
		return res, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	lats := make([][]time.Duration, n)
	var got atomic.Int64
	start := time.Now()
	var setupWG sync.WaitGroup
	errc := make(chan error, s.Conns())
	for c := range s.Conns() {
		setupWG.Add(1)
		go func() {
			defer setupWG.Done()
			for i := c; i < n; i += s.Conns() {
				err := s.Watch(wctx, &wg, c, key, func(val []byte) {
					if len(val) < 8 {
						return
					}
					sent := int64(binary.BigEndian.Uint64(val))
					lats[i] = append(lats[i], time.Duration(time.Now().UnixNano()-sent))
					got.Add(1)
				})
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	setupWG.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return res, err
	}
	res.setup = time.Since(start)
	time.Sleep(2 * time.Second)
	after, err := rss(pids)
	if err != nil {
		return res, err
	}
	res.rssBefore, res.rssAfter = before, after
	res.perWatcher = float64(after-before) / float64(n)
	val := make([]byte, max(valueSize, 8))
	for range puts {
		binary.BigEndian.PutUint64(val, uint64(time.Now().UnixNano()))
		if err := s.Put(ctx, 0, key, val); err != nil {
			return res, fmt.Errorf("watch put: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.expected = n * puts
	deadline := time.Now().Add(20 * time.Second)
	for got.Load() < int64(res.expected) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	res.delivered = len(all)
	res.p50, res.p99 = percentile(all, 50), percentile(all, 99)
	return res, nil
}

// cpuTime sums the user and system CPU time of the processes (/proc/PID/stat, in clock
// ticks of 10 ms).
func cpuTime(pids []int) (time.Duration, error) {
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
		}
		// The command name may hold spaces; the fields after it are space separated.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 13 {
			return 0, fmt.Errorf("cpu time of pid %d: short stat line", pid)
		}
		for _, f := range fields[11:13] { // utime and stime, fields 14 and 15 of stat
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
			}
			ticks += n
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// rss sums the resident set size of the processes, in bytes.
func rss(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, fmt.Errorf("rss of pid %d: %w", pid, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("rss of pid %d: parse %q: %w", pid, line, err)
				}
				total += kb << 10
			}
		}
	}
	return total, nil
}
