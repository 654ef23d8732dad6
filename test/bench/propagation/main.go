// Command propagation measures how fast instance changes reach the places that answer for
// them (scripts/bench/propagation.sh): registration to resolvable, and removal after a
// failure, for 1,000 instances registered by emulated agents in their own coord sessions
// (each emulated agent is a coord client, a session, and ephemeral instance nodes written
// exactly as berth-agent writes them), through a real berth-coord member, a real NATS
// server and a real berth-name-service, to
//
//   - views: the per-service views on NATS (what every agent's templates and resolver
//     follow), observed by a subscriber to berth.v1.names.view.>;
//   - resolve: a real berth-agent's local name API, GET /v1/resolve/<service>, asked again
//     each time its blocking /v1/watch/<service> returns.
//
// Then 1% of the instances fail in each of three ways: the health check fails (the agent
// rewrites the node with health UNHEALTHY at the moment its checks detect it), the agent is
// killed (kill -9: its session's keepalives stop and the session expires after its TTL),
// and the agent stops (its session is closed). Everything runs in this one process on
// loopback.
package main

import (
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
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/pkg/natsbus"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent"
	coordsrv "github.com/berthdev/berth/services/coord"
	nameservice "github.com/berthdev/berth/services/name-service"
)

func main() {
	instances := flag.Int("instances", 1000, "instances to register")
	perAgent := flag.Int("per-agent", 10, "instances per emulated agent (one per service)")
	rate := flag.Int("rate", 200, "registrations per second")
	ttl := flag.Duration("session-ttl", 3*time.Second, "TTL of the emulated agents' sessions")
	dir := flag.String("dir", "", "state directory (default: a temporary one)")
	flag.Parse()
	if err := run(*instances, *perAgent, *rate, *ttl, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "propagation:", err)
		os.Exit(1)
	}
}

// observed records, per instance and observer, when it was first seen selectable and when
// it was last seen gone after a time.
type observed struct {
	mu   sync.Mutex
	up   map[string]time.Time // first time seen selectable
	gone map[string]time.Time // first time seen not selectable after watchGone[id]
	// watchGone are the instances whose removal is being timed, from when.
	watchGone map[string]time.Time
}

func newObserved() *observed {
	return &observed{up: map[string]time.Time{}, gone: map[string]time.Time{}, watchGone: map[string]time.Time{}}
}

// see records the selectable instance keys of one service at time at.
func (o *observed) see(service string, selectable map[string]bool, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id := range selectable {
		k := service + "/" + id
		if _, ok := o.up[k]; !ok {
			o.up[k] = at
		}
	}
	for k, since := range o.watchGone {
		if svc, id := filepath.Dir(k), filepath.Base(k); svc == service && !selectable[id] {
			if _, ok := o.gone[k]; !ok && at.After(since) {
				o.gone[k] = at
			}
		}
	}
}

func (o *observed) expectGone(k string, since time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.watchGone[k] = since
}

func run(n, perAgent, rate int, ttl time.Duration, dir string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if dir == "" {
		d, err := os.MkdirTemp("", "berth-propagation-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	log := slog.New(slog.DiscardHandler)

	// NATS with JetStream.
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		return err
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("nats not ready")
	}
	natsURL := "nats://" + ns.Addr().String()

	// One coord member.
	cl, _ := net.Listen("tcp", "127.0.0.1:0")
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	coordAddr := cl.Addr().String()
	csrv, err := coordsrv.New(coordsrv.Config{Name: "n1", DataDir: filepath.Join(dir, "coord"), ListenClient: coordAddr,
		ListenPeer: pl.Addr().String(), ClientListener: cl, PeerListener: pl, InitialCluster: "n1=" + pl.Addr().String(),
		HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond}, log)
	if err != nil {
		return err
	}
	cctx, ccancel := context.WithCancel(ctx)
	cdone := make(chan error, 1)
	go func() { cdone <- csrv.Run(cctx) }()
	defer func() { ccancel(); <-cdone }()
	coord, err := coordclient.New(ctx, coordclient.Config{Endpoints: []string{coordAddr}})
	if err != nil {
		return err
	}
	defer coord.Close()
	for {
		if _, err := coord.List(ctx, "/berth", coordclient.Limit(1)); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	bus, err := natsbus.Connect(ctx, natsbus.Config{URLs: []string{natsURL}, Name: "propagation"})
	if err != nil {
		return err
	}
	defer bus.Close(context.Background())
	if err := bus.EnsureStreams(ctx, natsbus.StreamConfig{}); err != nil {
		return err
	}
	ncfg := nameservice.DefaultConfig()
	ncfg.DNSAddr, ncfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	names, err := nameservice.New(ncfg, nameservice.Deps{Bus: bus, Coord: coord, Logger: log, Registerer: prometheus.NewRegistry()})
	if err != nil {
		return err
	}
	if _, err := names.Listen(); err != nil {
		return err
	}
	nctx, ncancel := context.WithCancel(ctx)
	ndone := make(chan error, 1)
	go func() { ndone <- names.Run(nctx) }()
	defer func() { ncancel(); <-ndone }()
	for names.Ready(ctx) != nil {
		time.Sleep(10 * time.Millisecond)
	}

	// A real agent whose local name API is watched.
	acfg := agent.DefaultConfig()
	acfg.HostID, acfg.DC, acfg.DataDir = "observer", "dc1", filepath.Join(dir, "agent")
	acfg.NATS, acfg.Coord, acfg.ListenMetrics, acfg.DockerHost = natsURL, coordAddr, "", "-"
	acfg.NameAPIListen, acfg.AdvertiseIP = "127.0.0.1:0", "127.0.0.1"
	ag, err := agent.New(acfg, agent.Deps{Logger: log})
	if err != nil {
		return err
	}
	actx, acancel := context.WithCancel(ctx)
	adone := make(chan error, 1)
	go func() { adone <- ag.Run(actx) }()
	defer func() { acancel(); <-adone }()
	for ag.Ready(ctx) != nil || ag.Addrs() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	api := "http://" + ag.Addrs().NameAPI.String()

	agents := n / perAgent
	services := perAgent * 10
	if services > n {
		services = n
	}
	svcName := func(i int) string { return fmt.Sprintf("bench/s%03d", i) }

	// Observers.
	viewsObs, resolveObs := newObserved(), newObserved()
	sub, err := bus.Conn().Subscribe(subjects.NamesViews, func(m *nats.Msg) {
		at := time.Now()
		var v namesv1.ServiceView
		if proto.Unmarshal(m.Data, &v) != nil {
			return
		}
		sel := map[string]bool{}
		for _, in := range v.GetInstances() {
			if dnsview.Selectable(in) {
				sel[in.GetId()] = true
			}
		}
		viewsObs.see(v.GetService(), sel, at)
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	var wg sync.WaitGroup
	octx, ocancel := context.WithCancel(ctx)
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: services + 10}}
	for i := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			watchResolve(octx, hc, api, svcName(i), resolveObs)
		}()
	}
	defer func() { ocancel(); wg.Wait() }()
	// The coord deletes of the instances: when a session's expiry (or close) was committed.
	var delMu sync.Mutex
	deleted := map[string]time.Time{}
	res, err := coord.List(ctx, "/berth", coordclient.Limit(1))
	if err != nil {
		return err
	}
	wch := coord.Watch(octx, "/berth/instances", res.Revision+1, coordclient.Recursive())
	wg.Add(1)
	go func() {
		defer wg.Done()
		for r := range wch {
			at := time.Now()
			for _, ev := range r.Events {
				if ev.Type == coordclient.EventDelete {
					delMu.Lock()
					deleted[ev.Node.Path[len("/berth/instances/"):]] = at
					delMu.Unlock()
				}
			}
		}
	}()
	time.Sleep(500 * time.Millisecond) // the observer agent subscribes to every service

	// Emulated agents: agent a registers instance "a<a>" in perAgent services.
	type emu struct {
		c      *coordclient.Client
		sess   *coordclient.Session
		cancel context.CancelFunc
		keys   []string
	}
	emus := make([]*emu, agents)
	for a := range agents {
		c, err := coordclient.New(ctx, coordclient.Config{Endpoints: []string{coordAddr}})
		if err != nil {
			return err
		}
		sctx, scancel := context.WithCancel(ctx)
		s, err := c.NewSession(sctx, ttl)
		if err != nil {
			scancel()
			return err
		}
		emus[a] = &emu{c: c, sess: s, cancel: scancel}
	}
	defer func() {
		for _, e := range emus {
			e.cancel()
			_ = e.c.Close()
		}
	}()
	value := func(svc, id string, h namesv1.Health) []byte {
		b, _ := protojson.Marshal(&namesv1.Instance{Id: id, Service: svc, Host: id, Ip: fmt.Sprintf("10.%d.%d.%d", len(id)%250, 1, 1),
			Port: 8080, Dc: "dc1", Version: "1.0", Weight: 100, State: namesv1.InstanceState_INSTANCE_STATE_ACTIVE, Health: h})
		return b
	}
	putAt := map[string]time.Time{}
	fmt.Printf("registering %d instances (%d emulated agents × %d, %d services) at %d/s ...\n", agents*perAgent, agents, perAgent, services, rate)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	for a, e := range emus {
		for k := range perAgent {
			svc := svcName((a*perAgent + k) % services)
			id := "a" + strconv.Itoa(a)
			<-tick.C
			putAt[svc+"/"+id] = time.Now()
			if _, err := e.c.Put(ctx, "/berth/instances/"+svc+"/"+id, value(svc, id, namesv1.Health_HEALTH_HEALTHY), coordclient.Ephemeral(e.sess.ID())); err != nil {
				return err
			}
			e.keys = append(e.keys, svc+"/"+id)
		}
	}
	tick.Stop()
	time.Sleep(2 * time.Second)
	regViews := latencies(putAt, viewsObs.up)
	regResolve := latencies(putAt, resolveObs.up)

	// Failures: 1% by health, 1% by kill -9, 1% by session close.
	fail := max(n/100, 1)
	healthAt := map[string]time.Time{}
	killAt := map[string]time.Time{}
	closeAt := map[string]time.Time{}
	// Health: instances of agents 0.. (one per agent, so that kills below are separate).
	for a := 0; len(healthAt) < fail && a < agents; a++ {
		e := emus[a]
		key := e.keys[0]
		svc, id := filepath.Dir(key), filepath.Base(key)
		t0 := time.Now()
		viewsObs.expectGone(key, t0)
		resolveObs.expectGone(key, t0)
		healthAt[key] = t0
		if _, err := e.c.Put(ctx, "/berth/instances/"+key, value(svc, id, namesv1.Health_HEALTH_UNHEALTHY), coordclient.Ephemeral(e.sess.ID())); err != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	// kill -9 and close: whole agents at the end of the list.
	for a := agents - 1; a >= 0 && (len(killAt) < fail || len(closeAt) < fail); a-- {
		e := emus[a]
		t0 := time.Now()
		closing := len(killAt) >= fail
		target := killAt
		if closing {
			target = closeAt
		}
		for _, key := range e.keys {
			viewsObs.expectGone(key, t0)
			resolveObs.expectGone(key, t0)
			target[key] = t0
		}
		if closing {
			cctx, c2 := context.WithTimeout(ctx, 5*time.Second)
			_ = e.sess.Close(cctx)
			c2()
		} else {
			e.cancel() // keepalives stop, nothing is said to coord: the session expires
		}
	}
	time.Sleep(ttl + 3*time.Second)

	fmt.Println()
	fmt.Printf("%-44s %10s %10s %10s %8s\n", "", "p50", "p99", "max", "n")
	row := func(name string, d []time.Duration, want int) {
		if len(d) == 0 {
			fmt.Printf("%-44s %10s %10s %10s %8d (of %d)\n", name, "-", "-", "-", 0, want)
			return
		}
		slices.Sort(d)
		fmt.Printf("%-44s %10s %10s %10s %5d/%d\n", name, pct(d, 50), pct(d, 99), d[len(d)-1].Round(time.Millisecond), len(d), want)
	}
	row("registration → in the views", regViews, len(putAt))
	row("registration → agent /v1/resolve", regResolve, len(putAt))
	row("health failure → gone from the views", latencies(healthAt, viewsObs.gone), len(healthAt))
	row("health failure → gone from /v1/resolve", latencies(healthAt, resolveObs.gone), len(healthAt))
	row("kill -9 → gone from the views", latencies(killAt, viewsObs.gone), len(killAt))
	row("kill -9 → gone from /v1/resolve", latencies(killAt, resolveObs.gone), len(killAt))
	delMu.Lock()
	expired := map[string]time.Time{}
	for k := range killAt {
		if t, ok := deleted[k]; ok {
			expired[k] = t
		}
	}
	delMu.Unlock()
	row("kill -9 → session expiry (coord delete)", latencies(killAt, expired), len(killAt))
	row("session expiry → gone from the views", latencies(expired, viewsObs.gone), len(killAt))
	row("session expiry → gone from /v1/resolve", latencies(expired, resolveObs.gone), len(killAt))
	row("session close → gone from the views", latencies(closeAt, viewsObs.gone), len(closeAt))
	row("session close → gone from /v1/resolve", latencies(closeAt, resolveObs.gone), len(closeAt))
	fmt.Println()
	fmt.Printf("session TTL %s. Budgets beside: Consul defaults ≈ 13 s from failure to removal; Kubernetes\n", ttl)
	fmt.Printf("readiness defaults ≈ 30 s (period 10 s × failureThreshold 3). Goals: removal ≤ 1 s after the\n")
	fmt.Printf("failure is detected (health: the agent's write; kill -9: session expiry; close: the close),\n")
	fmt.Printf("registration → resolvable ≤ 500 ms at p99.\n")
	return nil
}

// watchResolve asks the agent's /v1/resolve each time its /v1/watch returns, and records
// the instances answered.
func watchResolve(ctx context.Context, hc *http.Client, api, svc string, o *observed) {
	var index int64
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/watch/%s?index=%d&wait=5s", api, svc, index), nil)
		resp, err := hc.Do(req)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if s := resp.Header.Get("X-Berth-Index"); s != "" {
			index, _ = strconv.ParseInt(s, 10, 64)
		} else {
			time.Sleep(5 * time.Millisecond)
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, api+"/v1/resolve/"+svc, nil)
		resp, err = hc.Do(req)
		if err != nil {
			continue
		}
		at := time.Now()
		var ans struct {
			Instances []struct {
				ID string `json:"id"`
			} `json:"instances"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&ans)
		resp.Body.Close()
		sel := map[string]bool{}
		for _, in := range ans.Instances {
			sel[in.ID] = true
		}
		o.see(svc, sel, at)
	}
}

func latencies(from map[string]time.Time, to map[string]time.Time) []time.Duration {
	var out []time.Duration
	for k, t0 := range from {
		if t1, ok := to[k]; ok {
			out = append(out, t1.Sub(t0))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func pct(d []time.Duration, p int) string {
	i := (len(d)*p + 99) / 100
	if i > 0 {
		i--
	}
	return d[i].Round(100 * time.Microsecond).String()
}
