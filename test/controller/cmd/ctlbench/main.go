// Command ctlbench measures berth-controller (DESIGN §12) against real NATS and a real
// three-member coord in process, with emulated agents: light responders on their own NATS
// subscriptions that answer step requests like an agent (journal by task, step and
// attempt; accepted, already running, already done) and run a no-op or a sleep.
//
//	ctlbench dispatch -agents 5000   one deployment over every agent in one batch, against
//	                                 a bare nats.go scatter-gather of the same requests
//	ctlbench failover -deploys 20 -kills 20
//	                                 leader kills during deployments: time to resume, and
//	                                 every step run exactly once
//
// scripts/bench/dispatch.sh and scripts/bench/failover.sh run it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	coordsrv "github.com/berthdev/berth/services/coord"
	controller "github.com/berthdev/berth/services/task-controller"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ctlbench dispatch|failover [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "dispatch":
		err = dispatch(os.Args[2:])
	case "failover":
		err = failover(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: want dispatch or failover", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ctlbench:", err)
		os.Exit(1)
	}
}

// world is NATS, coord and the controllers of one bench.
type world struct {
	dir       string
	ns        *server.Server
	natsURL   string
	endpoints []string
	stops     []func()
	cc        *coordclient.Client
	bus       *natsbus.Bus

	mu    sync.Mutex
	ctrls []*replica
}

type replica struct {
	name   string
	url    string
	bus    *natsbus.Bus
	cc     *coordclient.Client
	cancel context.CancelFunc
	done   chan error
	dead   bool
}

func newWorld() (*world, error) {
	dir, err := os.MkdirTemp("", "ctlbench-")
	if err != nil {
		return nil, err
	}
	w := &world{dir: dir}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, JetStream: true,
		StoreDir: filepath.Join(dir, "nats"), MaxPayload: 8 << 20})
	if err != nil {
		return nil, err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		return nil, fmt.Errorf("nats not ready")
	}
	w.ns = ns
	w.natsURL = ns.ClientURL()
	var initial []string
	var cfgs []coordsrv.Config
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		cl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		pl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		cfgs = append(cfgs, coordsrv.Config{Name: name, DataDir: filepath.Join(dir, name), ClientListener: cl, PeerListener: pl,
			HeartbeatInterval: 100 * time.Millisecond, ElectionTimeout: time.Second, RequestTimeout: 5 * time.Second})
		initial = append(initial, name+"="+pl.Addr().String())
		w.endpoints = append(w.endpoints, cl.Addr().String())
	}
	for _, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		srv, err := coordsrv.New(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		w.stops = append(w.stops, func() { cancel(); <-done })
	}
	if w.cc, err = coordclient.New(context.Background(), coordclient.Config{Endpoints: w.endpoints}); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := w.cc.Put(ctx, "/berth/bench", []byte("1"))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("coord has no leader: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if w.bus, err = natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{w.natsURL}, Name: "bench"}); err != nil {
		return nil, err
	}
	if err := w.bus.EnsureStreams(context.Background(), natsbus.StreamConfig{}); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *world) close() {
	w.mu.Lock()
	ctrls := w.ctrls
	w.mu.Unlock()
	for _, r := range ctrls {
		if !r.dead {
			r.cancel()
			<-r.done
			r.cc.Close()
			_ = r.bus.Close(context.Background())
		}
	}
	_ = w.bus.Close(context.Background())
	w.cc.Close()
	for _, s := range w.stops {
		s()
	}
	w.ns.Shutdown()
	w.ns.WaitForShutdown()
	_ = os.RemoveAll(w.dir)
}

func (w *world) startController(name string) (*replica, error) {
	cfg := controller.DefaultConfig()
	cfg.Replica, cfg.Listen, cfg.SessionTTL = name, "127.0.0.1:0", time.Second
	cfg.PollInterval, cfg.RetryBackoff, cfg.RetryBackoffMax = 2*time.Second, 100*time.Millisecond, time.Second
	cfg.EnsureStreams = false
	r := &replica{name: name, done: make(chan error, 1)}
	var err error
	if r.bus, err = natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{w.natsURL}, Name: name}); err != nil {
		return nil, err
	}
	if r.cc, err = coordclient.New(context.Background(), coordclient.Config{Endpoints: w.endpoints}); err != nil {
		return nil, err
	}
	c, err := controller.New(cfg, controller.Deps{Bus: r.bus, Coord: r.cc})
	if err != nil {
		return nil, err
	}
	addr, err := c.Listen()
	if err != nil {
		return nil, err
	}
	r.url = "http://" + addr.String()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- c.Run(ctx) }()
	w.mu.Lock()
	w.ctrls = append(w.ctrls, r)
	w.mu.Unlock()
	return r, nil
}

// crash cuts a replica off like a killed process (its session expires by its TTL).
func (w *world) crash(r *replica) {
	r.dead = true
	r.bus.Conn().Close()
	r.cc.Close()
	r.cancel()
	<-r.done
}

func (w *world) leader(timeout time.Duration) (*replica, error) {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l, err := w.cc.Leader(ctx, "controller")
		cancel()
		if err == nil {
			w.mu.Lock()
			for _, r := range w.ctrls {
				if r.name == string(l.Value) && !r.dead {
					w.mu.Unlock()
					return r, nil
				}
			}
			w.mu.Unlock()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no controller leader within %s", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fleet is a set of emulated agents.
type fleet struct {
	conns   []*nats.Conn
	stepDur time.Duration

	mu      sync.Mutex
	journal map[string]*entry
	runs    map[string]int
	tokens  map[string]uint64
	started atomic.Int64
}

type entry struct {
	attempt uint32
	done    bool
	result  *agentv1.StepResult
}

// newFleet subscribes n emulated agents h-0..h-(n-1), spread over a few connections.
func newFleet(url string, n, conns int, stepDur time.Duration) (*fleet, error) {
	f := &fleet{stepDur: stepDur, journal: map[string]*entry{}, runs: map[string]int{}, tokens: map[string]uint64{}}
	for i := range conns {
		nc, err := nats.Connect(url, nats.Name(fmt.Sprintf("agents-%d", i)))
		if err != nil {
			return nil, err
		}
		f.conns = append(f.conns, nc)
	}
	for i := range n {
		nc := f.conns[i%conns]
		host := fmt.Sprintf("h-%d", i)
		if _, err := nc.Subscribe("berth.v1.agent."+host+".step", func(m *nats.Msg) { f.handle(nc, host, m) }); err != nil {
			return nil, err
		}
	}
	for _, nc := range f.conns {
		if err := nc.Flush(); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (f *fleet) close() {
	for _, nc := range f.conns {
		nc.Close()
	}
}

// handle answers a step request the way an agent's journal does.
func (f *fleet) handle(nc *nats.Conn, host string, m *nats.Msg) {
	req := &agentv1.StepRequest{}
	reply := &agentv1.StepReply{Host: host}
	if err := proto.Unmarshal(m.Data, req); err != nil {
		reply.Disposition, reply.RejectReason = agentv1.StepDisposition_STEP_DISPOSITION_REJECTED, agentv1.RejectReason_REJECT_REASON_INVALID_REQUEST
		f.respond(m, reply)
		return
	}
	if strings.HasPrefix(req.GetTaskId(), "b-") {
		// The bare baseline: a reply and nothing else.
		reply.Disposition = agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED
		f.respond(m, reply)
		return
	}
	key := req.GetTaskId() + "/" + req.GetStepId()
	f.mu.Lock()
	if req.GetFencingToken() < f.tokens[req.GetTaskId()] {
		f.mu.Unlock()
		reply.Disposition, reply.RejectReason = agentv1.StepDisposition_STEP_DISPOSITION_REJECTED, agentv1.RejectReason_REJECT_REASON_STALE_TOKEN
		f.respond(m, reply)
		return
	}
	f.tokens[req.GetTaskId()] = max(f.tokens[req.GetTaskId()], req.GetFencingToken())
	e := f.journal[key]
	run := false
	switch {
	case e == nil:
		run = true
	case !e.done:
		reply.Disposition, reply.RunningAttempt = agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_RUNNING, e.attempt
	default:
		reply.Disposition, reply.Result = agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE, e.result
	}
	if run {
		e = &entry{attempt: req.GetAttempt()}
		f.journal[key] = e
		f.runs[key]++
		reply.Disposition = agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED
	}
	f.mu.Unlock()
	f.respond(m, reply)
	if !run {
		return
	}
	f.started.Add(1)
	finish := func() {
		now := timestamppb.Now()
		res := &agentv1.StepResult{TaskId: req.GetTaskId(), StepId: req.GetStepId(), Attempt: req.GetAttempt(), Host: host,
			State: agentv1.StepState_STEP_STATE_OK, Plugin: req.GetPlugin(), Action: req.GetAction(), StartedAt: now, EndedAt: now,
			FencingToken: req.GetFencingToken()}
		f.mu.Lock()
		e.done, e.result = true, res
		f.mu.Unlock()
		b, _ := proto.Marshal(res)
		_ = nc.Publish("berth.v1.agent.result."+req.GetTaskId(), b)
	}
	if f.stepDur == 0 {
		finish()
		return
	}
	time.AfterFunc(f.stepDur, finish)
}

func (f *fleet) respond(m *nats.Msg, reply *agentv1.StepReply) {
	b, _ := proto.Marshal(reply)
	_ = m.Respond(b)
}

// baseline is a bare nats.go scatter-gather: n requests with payload, all at once, until
// every reply is in.
func baseline(url string, n int, payload func(i int) []byte) (time.Duration, error) {
	nc, err := nats.Connect(url, nats.Name("baseline"))
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := nc.Request(fmt.Sprintf("berth.v1.agent.h-%d.step", i), payload(i), 10*time.Second); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("baseline request: %w", err)
	}
	return d, nil
}

// httpJSON sends a request and decodes a proto answer.
func httpJSON(method, url string, body any, m proto.Message) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, b)
	}
	if m == nil {
		return nil
	}
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
}

// waitEnd long-polls a deployment until it is terminal.
func waitEnd(base, id string, timeout time.Duration) (*controllerv1.Deployment, error) {
	deadline := time.Now().Add(timeout)
	var rev int64
	for {
		d := &controllerv1.Deployment{}
		if err := httpJSON("GET", fmt.Sprintf("%s/v1/deployments/%s?targets=false&wait=10s&after_revision=%d", base, id, rev), nil, d); err != nil {
			if time.Now().After(deadline) {
				return nil, err
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		switch d.GetStatus().GetState() {
		case "succeeded", "failed", "aborted", "rolled_back":
			return d, nil
		}
		if time.Now().After(deadline) {
			return d, fmt.Errorf("deployment %s not ended within %s: %s", id, timeout, d.GetStatus().GetState())
		}
		rev = d.GetRevision()
	}
}

func hosts(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("h-%d", from+i)
	}
	return out
}

const fakeSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func dispatch(args []string) error {
	fs := flag.NewFlagSet("dispatch", flag.ExitOnError)
	n := fs.Int("agents", 5000, "emulated agents")
	rounds := fs.Int("rounds", 3, "measurements of each side (the best is reported)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the controller rounds to this file")
	_ = fs.Parse(args)
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	w, err := newWorld()
	if err != nil {
		return err
	}
	defer w.close()
	f, err := newFleet(w.natsURL, *n, 8, 0)
	if err != nil {
		return err
	}
	defer f.close()
	c, err := w.startController("c1")
	if err != nil {
		return err
	}
	if _, err := w.leader(10 * time.Second); err != nil {
		return err
	}
	// The same payload the controller sends.
	payload := func(i int) []byte {
		b, _ := proto.Marshal(&agentv1.StepRequest{TaskId: "d-20260101-000000-000000", StepId: fmt.Sprintf("deploy-h-%d", i), Attempt: 1, FencingToken: 1,
			Host: fmt.Sprintf("h-%d", i), Plugin: "package-deploy", Action: "deploy", Service: "bench/fleet",
			Arguments: map[string]string{"url": "file:///pkgs/fleet.tar.gz", "sha256": fakeSHA, "version": "1", "service": "bench/fleet", "health_deadline": "30s"}})
		return b
	}
	var bestBase, bestCtl time.Duration
	for r := range *rounds {
		base, err := baseline(w.natsURL, *n, func(i int) []byte {
			req := &agentv1.StepRequest{}
			_ = proto.Unmarshal(payload(i), req)
			req.TaskId = fmt.Sprintf("b-20260101-000000-%06d", r)
			b, _ := proto.Marshal(req)
			return b
		})
		if err != nil {
			return err
		}
		svc := fmt.Sprintf("bench/fleet%d", r)
		if err := httpJSON("PATCH", c.url+"/v1/tree/"+svc, map[string]any{}, nil); err != nil {
			return err
		}
		start := time.Now()
		d := &controllerv1.Deployment{}
		if err := httpJSON("POST", c.url+"/v1/deployments", map[string]any{"service": svc, "version": fmt.Sprintf("%d", r+1),
			"artifact": map[string]string{"url": "file:///pkgs/fleet.tar.gz", "sha256": fakeSHA}, "hosts": hosts(0, *n),
			"strategy": map[string]any{"batches": []string{"100%"}}}, d); err != nil {
			return err
		}
		end, err := waitEnd(c.url, d.GetId(), 60*time.Second)
		if err != nil {
			return err
		}
		took := time.Since(start)
		if end.GetStatus().GetState() != "succeeded" {
			return fmt.Errorf("deployment %s ended %s: %s", d.GetId(), end.GetStatus().GetState(), end.GetStatus().GetMessage())
		}
		full := &controllerv1.Deployment{}
		if err := httpJSON("GET", c.url+"/v1/deployments/"+d.GetId(), nil, full); err == nil {
			var lastSent, lastEnd time.Time
			for _, tg := range full.GetTargets() {
				if t := tg.GetStep().GetDispatchedAt().AsTime(); t.After(lastSent) {
					lastSent = t
				}
				if t := tg.GetEndedAt().AsTime(); t.After(lastEnd) {
					lastEnd = t
				}
			}
			st := full.GetStatus()
			at := func(t time.Time) time.Duration { return t.Sub(start).Round(time.Millisecond) }
			fmt.Printf("  timeline from the API call: leader started %s, last step sent %s, last target ended %s, deployment ended %s\n",
				at(st.GetStartedAt().AsTime()), at(lastSent), at(lastEnd), at(st.GetEndedAt().AsTime()))
		}
		fmt.Printf("round %d: bare scatter-gather of %d requests %s; controller deployment to %d agents, API call to all succeeded, %s (ratio %.2f)\n",
			r+1, *n, base.Round(time.Millisecond), *n, took.Round(time.Millisecond), float64(took)/float64(base))
		if bestBase == 0 || base < bestBase {
			bestBase = base
		}
		if bestCtl == 0 || took < bestCtl {
			bestCtl = took
		}
	}
	ratio := float64(bestCtl) / float64(bestBase)
	fmt.Printf("best: bare %s, controller %s, ratio %.2f (goal ≤ 1.3 and ≤ 2s: %s)\n", bestBase.Round(time.Millisecond),
		bestCtl.Round(time.Millisecond), ratio, verdict(ratio <= 1.3 && bestCtl <= 2*time.Second))
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func failover(args []string) error {
	fs := flag.NewFlagSet("failover", flag.ExitOnError)
	deploys := fs.Int("deploys", 20, "concurrent deployments")
	per := fs.Int("hosts", 10, "hosts per deployment (one step at a time)")
	kills := fs.Int("kills", 20, "leader kills")
	every := fs.Duration("every", 1500*time.Millisecond, "time between a new leader and the next kill")
	stepDur := fs.Duration("step", time.Second, "duration of one emulated step")
	_ = fs.Parse(args)
	w, err := newWorld()
	if err != nil {
		return err
	}
	defer w.close()
	f, err := newFleet(w.natsURL, *deploys**per, 8, *stepDur)
	if err != nil {
		return err
	}
	defer f.close()
	for i := range 3 {
		if _, err := w.startController(fmt.Sprintf("c%d", i+1)); err != nil {
			return err
		}
	}
	lead, err := w.leader(10 * time.Second)
	if err != nil {
		return err
	}
	type send struct {
		at    time.Time
		token uint64
	}
	var mu sync.Mutex
	var sends []send
	mon, err := nats.Connect(w.natsURL)
	if err != nil {
		return err
	}
	defer mon.Close()
	if _, err := mon.Subscribe("berth.v1.agent.*.step", func(m *nats.Msg) {
		now := time.Now()
		req := &agentv1.StepRequest{}
		_ = proto.Unmarshal(m.Data, req)
		mu.Lock()
		sends = append(sends, send{at: now, token: req.GetFencingToken()})
		mu.Unlock()
	}); err != nil {
		return err
	}
	_ = mon.Flush()
	var ids []string
	for i := range *deploys {
		svc := fmt.Sprintf("bench/s%d", i)
		if err := httpJSON("PATCH", lead.url+"/v1/tree/"+svc, map[string]any{}, nil); err != nil {
			return err
		}
		d := &controllerv1.Deployment{}
		if err := httpJSON("POST", lead.url+"/v1/deployments", map[string]any{"service": svc, "version": "1",
			"artifact": map[string]string{"url": "file:///pkgs/s.tar.gz", "sha256": fakeSHA}, "hosts": hosts(i**per, *per),
			"strategy": map[string]any{"max_parallel": 1}}, d); err != nil {
			return err
		}
		ids = append(ids, d.GetId())
	}
	var resume []time.Duration
	for k := range *kills {
		time.Sleep(*every)
		lead, err = w.leader(10 * time.Second)
		if err != nil {
			return err
		}
		li, err := w.cc.Leader(context.Background(), "controller")
		if err != nil {
			return err
		}
		killed := time.Now()
		w.crash(lead)
		if _, err := w.startController(fmt.Sprintf("c%d", 4+k)); err != nil {
			return err
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			mu.Lock()
			var at time.Time
			// The first step of a newer leader (a step of the killed one may still be in
			// flight to the monitor).
			for _, s := range sends {
				if s.at.After(killed) && s.token > li.Token {
					at = s.at
					break
				}
			}
			mu.Unlock()
			if !at.IsZero() {
				resume = append(resume, at.Sub(killed))
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("kill %d: no step sent within 15s", k+1)
			}
			time.Sleep(2 * time.Millisecond)
		}
		fmt.Printf("kill %d of %s: next step sent after %s\n", k+1, lead.name, resume[len(resume)-1].Round(time.Millisecond))
	}
	lead, err = w.leader(10 * time.Second)
	if err != nil {
		return err
	}
	failed := 0
	for _, id := range ids {
		d, err := waitEnd(lead.url, id, 5*time.Minute)
		if err != nil {
			return err
		}
		if d.GetStatus().GetState() != "succeeded" {
			failed++
			fmt.Printf("deployment %s ended %s: %s\n", id, d.GetStatus().GetState(), d.GetStatus().GetMessage())
		}
	}
	f.mu.Lock()
	lost, twice := 0, 0
	for i := range *deploys {
		for _, id := range []string{ids[i]} {
			for _, h := range hosts(i**per, *per) {
				switch c := f.runs[id+"/deploy-"+h]; {
				case c == 0:
					lost++
				case c > 1:
					twice++
				}
			}
		}
	}
	f.mu.Unlock()
	sort.Slice(resume, func(i, j int) bool { return resume[i] < resume[j] })
	pct := func(p float64) time.Duration {
		if len(resume) == 0 {
			return 0
		}
		return resume[min(len(resume)-1, int(p*float64(len(resume)-1)+0.5))]
	}
	fmt.Printf("%d deployments × %d steps, %d leader kills (session TTL 1s): time from kill to the next step sent p50 %s, p99 %s, max %s (goal p99 ≤ 2s: %s)\n",
		*deploys, *per, *kills, pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), resume[len(resume)-1].Round(time.Millisecond),
		verdict(pct(0.99) <= 2*time.Second))
	fmt.Printf("steps: %d lost, %d executed twice, %d deployments not succeeded (goal 0, 0, 0: %s)\n", lost, twice, failed, verdict(lost == 0 && twice == 0 && failed == 0))
	if lost > 0 || twice > 0 || failed > 0 {
		return fmt.Errorf("%d lost, %d executed twice, %d failed", lost, twice, failed)
	}
	return nil
}
