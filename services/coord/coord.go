// Package coord is berth-coord: Berth's Raft-replicated, ZooKeeper-like coordination store.
// It serves the berth.coord.v1 gRPC API (proto/berth/coord/v1) on the client address, the
// Raft peer service (pkg/raftstore) on the peer address, and /metrics, /healthz and /readyz
// on the metrics address. The replicated state is internal/tree; watches are served from
// internal/watch; the leader's session clock is internal/session.
package coord

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"github.com/berthdev/berth/services/coord/internal/session"
	"github.com/berthdev/berth/services/coord/internal/tree"
	"github.com/berthdev/berth/services/coord/internal/watch"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// maxMessageBytes is the largest gRPC message the client API accepts or sends: above the
// 4 MiB value limit, so that an oversized value is refused by the store with a message
// that names the limit rather than by the transport.
const maxMessageBytes = 64 << 20

// Server is one berth-coord member. Build it with New, run it with Run.
type Server struct {
	coordv1.UnimplementedCoordServiceServer

	cfg       Config
	log       *slog.Logger
	reg       *prometheus.Registry
	id        uint64
	clusterID uint64
	machine   *tree.Machine
	hub       *watch.Hub
	lessor    *session.Lessor
	node      *raftstore.Node
	metrics   *metrics

	// leader and term are the leadership as last seen, for response headers.
	leader atomic.Uint64
	term   atomic.Uint64

	// leadMu serializes changes of the lessor's role: promotion, demotion, stopping.
	leadMu sync.Mutex
	// leadStateMu serializes replacements of lead.
	leadStateMu sync.Mutex
	lead        atomic.Pointer[leaderState]
	// quorumLost is set while this member leads without having heard from a majority for
	// an election timeout (for logs and the quorum_lost_total metric).
	quorumLost atomic.Bool
	// replayTarget is the commit index this member recovered from its WAL; replayed is
	// closed once it has applied that much, and client reads wait for it, so that a
	// restarted member never answers from a state older than the one it had.
	replayTarget uint64
	replayed     chan struct{}
	// changes hands the latest leader change from followLeadership to leaderLoop.
	changes chan raftstore.LeaderChange
	// stopping is set when a planned stop begins; the lessor is never promoted again.
	stopping atomic.Bool
	// drainCtx is cancelled when the member stops serving streams: watch and keepalive
	// streams then end with UNAVAILABLE.
	drainCtx    context.Context
	drainCancel context.CancelFunc

	// clientAddr is the bound client address, set by Run.
	clientAddr atomic.Pointer[string]
	metricsURL atomic.Pointer[string]
}

// sessionBridge adapts the lessor to the machine's SessionObserver.
type sessionBridge struct{ l *session.Lessor }

func (b sessionBridge) SessionOpened(id, ttlMs, deadlineMs int64) {
	b.l.SessionOpened(id, time.Duration(ttlMs)*time.Millisecond, deadlineTime(deadlineMs))
}
func (b sessionBridge) SessionRemoved(id int64) { b.l.SessionRemoved(id) }
func (b sessionBridge) SessionsReset(ss []tree.SessionInfo) {
	b.l.SessionsReset(sessionStates(ss))
}

func sessionStates(ss []tree.SessionInfo) []session.State {
	out := make([]session.State, 0, len(ss))
	for _, s := range ss {
		out = append(out, session.State{ID: s.ID, TTL: time.Duration(s.TTLMs) * time.Millisecond, Deadline: deadlineTime(s.DeadlineMs)})
	}
	return out
}

// deadlineTime converts a recorded deadline (unix ms, 0 for none) to a wall-clock time.
func deadlineTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// New validates cfg, opens the data dir and recovers the state. It starts nothing; a
// Server whose Run is never called must be closed with Close.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	members, _ := ParseInitialCluster(cfg.InitialCluster)
	s := &Server{cfg: cfg, log: logger.With("member", cfg.Name), reg: prometheus.NewRegistry(), id: MemberID(cfg.Name),
		changes: make(chan raftstore.LeaderChange, 1), replayed: make(chan struct{})}
	s.drainCtx, s.drainCancel = context.WithCancel(context.Background())
	initial := &leaderState{since: time.Now()}
	initial.done, initial.cancel = context.WithCancel(context.Background())
	s.lead.Store(initial)
	s.clusterID = cfg.ClusterID
	if s.clusterID == 0 {
		base := members
		if cfg.InitialClusterState == ClusterStateExisting {
			// A joining member's initial cluster is the cluster it joins plus itself.
			base = nil
			for _, m := range members {
				if m.Name != cfg.Name {
					base = append(base, m)
				}
			}
		}
		s.clusterID = ClusterIDOf(base)
	}
	s.hub = watch.NewHub(0, watch.Options{HistoryEvents: cfg.HistoryWindow, WatcherBuffer: cfg.WatcherBuffer})
	s.lessor = session.New(session.Options{ClockSkew: cfg.MaxClockSkew})
	s.machine = tree.New(tree.Options{Publisher: s.hub, Sessions: sessionBridge{s.lessor}})
	if err := loadSeed(cfg.DataDir, s.machine); err != nil {
		return nil, err
	}
	var peerTLS *tls.Config
	if cfg.PeerTLS.enabled() {
		t, err := cfg.PeerTLS.serverTLS("peer")
		if err != nil {
			return nil, err
		}
		peerTLS = t
	}
	peers := make([]raftstore.Peer, 0, len(members))
	for _, m := range members {
		peers = append(peers, raftstore.Peer{ID: MemberID(m.Name), Addr: m.PeerAddr})
	}
	m, err := newMetrics(s.reg, s)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	node, err := raftstore.NewNode(raftstore.Config{
		ID:               s.id,
		Name:             cfg.Name,
		DataDir:          cfg.DataDir,
		Peers:            peers,
		Join:             cfg.InitialClusterState == ClusterStateExisting,
		ClusterID:        s.clusterID,
		TickInterval:     cfg.HeartbeatInterval,
		ElectionTicks:    int(cfg.ElectionTimeout / cfg.HeartbeatInterval),
		HeartbeatTicks:   1,
		SnapshotEntries:  cfg.SnapshotEntries,
		Logger:           s.log,
		Registerer:       s.reg,
		MetricsSubsystem: "coord_raft",
		PeerTLS:          peerTLS,
	}, s.machine)
	if err != nil {
		return nil, fmt.Errorf("open raft node %s: %w", cfg.Name, err)
	}
	s.node = node
	s.replayTarget = node.Status().CommitIndex
	return s, nil
}

// Close releases the data dir of a Server whose Run was never called.
func (s *Server) Close() error {
	s.drainCancel()
	return s.node.Close()
}

// ID returns this member's id.
func (s *Server) ID() uint64 { return s.id }

// ClusterID returns the cluster id.
func (s *Server) ClusterID() uint64 { return s.clusterID }

// ClientAddr returns the address the client API listens on, once Run has bound it.
func (s *Server) ClientAddr() string {
	if p := s.clientAddr.Load(); p != nil {
		return *p
	}
	return ""
}

// Registry returns the server's metrics registry.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// group runs goroutines and collects the first error; every goroutine is waited for.
type group struct {
	wg     sync.WaitGroup
	once   sync.Once
	err    error
	cancel context.CancelFunc
}

func (g *group) go_(name string, fn func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := fn(); err != nil {
			g.once.Do(func() {
				g.err = fmt.Errorf("%s: %w", name, err)
				g.cancel()
			})
		}
	}()
}

// drainTimeout bounds how long a planned stop waits for unary calls in flight.
const drainTimeout = 2 * time.Second

// Run serves until ctx ends (nil then) or a part fails. It returns after every goroutine
// it started has stopped and the data dir is closed.
//
// When ctx ends the member stops in order, so that a planned restart costs the cluster
// little: it stops renewing sessions at once (keepalives get UNAVAILABLE), hands
// leadership to another member when it leads (TransferLeadership, bounded by the
// election timeout), ends its watch and keepalive streams with UNAVAILABLE so that
// clients move on, lets unary calls in flight finish (up to 2 s, with Raft still
// running so that their writes can commit), and only then stops Raft.
func (s *Server) Run(ctx context.Context) error {
	// runCtx lives until the member has drained: Raft keeps running during the stop.
	runCtx, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRun()
	defer s.drainCancel()
	var lc net.ListenConfig
	listen := func(l net.Listener, addr, what string) (net.Listener, error) {
		if l != nil {
			return l, nil
		}
		l, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s %s: %w", what, addr, err)
		}
		return l, nil
	}
	var closers []net.Listener
	closeAll := func() {
		for _, l := range closers {
			l.Close()
		}
	}
	clientL, err := listen(s.cfg.ClientListener, s.cfg.ListenClient, "client")
	if err != nil {
		s.node.Close()
		return err
	}
	closers = append(closers, clientL)
	peerL, err := listen(s.cfg.PeerListener, s.cfg.ListenPeer, "peer")
	if err != nil {
		closeAll()
		s.node.Close()
		return err
	}
	closers = append(closers, peerL)
	var metricsL net.Listener
	if s.cfg.ListenMetrics != "" || s.cfg.MetricsListener != nil {
		if metricsL, err = listen(s.cfg.MetricsListener, s.cfg.ListenMetrics, "metrics"); err != nil {
			closeAll()
			s.node.Close()
			return err
		}
		if s.cfg.HTTPTLS.enabled() {
			httpTLS, err := s.cfg.HTTPTLS.serverTLS("http")
			if err != nil {
				metricsL.Close()
				closeAll()
				s.node.Close()
				return err
			}
			metricsL = tls.NewListener(metricsL, httpTLS)
		}
	}
	addr := clientL.Addr().String()
	s.clientAddr.Store(&addr)

	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMessageBytes),
		grpc.MaxSendMsgSize(maxMessageBytes),
		grpc.ForceServerCodecV2(newSendCodec()),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
		grpc.KeepaliveEnforcementPolicy(keepaliveEnforcement),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: serverPingTime, Timeout: serverPingTimeout}),
	}
	if s.cfg.ClientTLS.enabled() {
		t, err := s.cfg.ClientTLS.serverTLS("client")
		if err != nil {
			closeAll()
			s.node.Close()
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(t)))
	}
	clientSrv := grpc.NewServer(opts...)
	coordv1.RegisterCoordServiceServer(clientSrv, s)

	// The grace for the first election: a member that has just started knows no leader
	// for up to two election timeouts without anything being wrong.
	s.setLead(func(st *leaderState) { st.since = time.Now().Add(s.cfg.ElectionTimeout) })

	g := &group{cancel: cancelRun}
	g.go_("raft node", func() error { return s.node.Run(runCtx) })
	g.go_("peer service", func() error { return s.node.ServePeers(runCtx, peerL) })
	g.go_("leadership", func() error { return s.followLeadership(runCtx) })
	g.go_("session leader loop", func() error { return s.leaderLoop(runCtx) })
	g.go_("quorum watch", func() error { return s.quorumWatch(runCtx) })
	g.go_("replay", func() error { return s.trackReplay(runCtx) })
	g.go_("client api", func() error { return clientSrv.Serve(clientL) })
	if metricsL != nil {
		u := "http://" + metricsL.Addr().String()
		if s.cfg.HTTPTLS.enabled() {
			u = "https://" + metricsL.Addr().String()
		}
		s.metricsURL.Store(&u)
		g.go_("metrics", func() error { return s.serveMetrics(runCtx, metricsL) })
	}
	s.log.Info("berth-coord started", "id", FormatID(s.id), "cluster", FormatID(s.clusterID),
		"client", addr, "peer", peerL.Addr().String())
	select {
	case <-ctx.Done():
		if s.cfg.noHandover {
			// Tests emulate a crash: no hand-over, no drain.
			s.drainCancel()
			clientSrv.Stop()
			break
		}
		s.handOver(runCtx)
		s.drainCancel()
		stopped := make(chan struct{})
		go func() { clientSrv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(drainTimeout):
			clientSrv.Stop()
			<-stopped
		}
	case <-runCtx.Done():
		// A part failed.
		s.drainCancel()
		clientSrv.Stop()
	}
	cancelRun()
	g.wg.Wait()
	if g.err != nil && !errors.Is(g.err, context.Canceled) {
		return g.err
	}
	return nil
}

// handOver starts a planned stop: the lessor stops renewing sessions, and a leader hands
// leadership to another member (Raft only transfers to a member whose log has caught up),
// so that the cluster does not wait an election timeout for this member's silence. The
// candidates share one budget, handOverBudget or half an election timeout if shorter: a
// transfer to a live member takes milliseconds, and when every member stops at once (a
// whole cluster shut down) nobody is left to take over, so waiting longer only delays the
// stop. The new leader gives every session that was being kept alive its full TTL.
// handOverBudget bounds the leadership transfer of a planned stop.
const handOverBudget = 200 * time.Millisecond

func (s *Server) handOver(ctx context.Context) {
	s.leadMu.Lock()
	s.stopping.Store(true)
	if leader, _ := s.lessor.IsLeader(); leader {
		s.lessor.Demote()
	}
	s.leadMu.Unlock()
	if st := s.node.Status(); !st.IsLeader || len(st.Members) < 2 {
		return
	}
	start := time.Now()
	budget, cancelBudget := context.WithTimeout(ctx, min(handOverBudget, s.cfg.ElectionTimeout/2))
	defer cancelBudget()
	for _, p := range s.node.Members() {
		if p.ID == s.id {
			continue
		}
		tctx, cancel := context.WithTimeout(budget, s.cfg.ElectionTimeout/2)
		err := s.node.TransferLeadership(tctx, p.ID)
		cancel()
		if err == nil {
			s.log.Info("stopping: handed leadership over", "to", FormatID(p.ID), "took", time.Since(start))
			return
		}
		s.log.Warn("stopping: leadership transfer failed", "to", FormatID(p.ID), "err", err)
		if budget.Err() != nil {
			return
		}
	}
}

func (s *Server) serveMetrics(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.leader.Load() == 0 {
			http.Error(w, "no leader", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	// The profiling endpoints of net/http/pprof, registered explicitly (not on
	// http.DefaultServeMux).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	<-errc
	return nil
}

// leaderState is what this member knows of the leadership. It is replaced as a whole on
// every change, and done is cancelled then, so that a call in flight can tell that the
// leader it counted on is gone.
type leaderState struct {
	// leader is the leader's id, 0 when none is known.
	leader uint64
	// term is the Raft term of the change.
	term uint64
	// since is when the member last changed leader (for leader 0: since when it has had
	// none).
	since time.Time
	// done is cancelled when the state is replaced.
	done   context.Context
	cancel context.CancelFunc
}

// setLead replaces the leader state with a copy changed by f and cancels the old one.
func (s *Server) setLead(f func(*leaderState)) {
	s.leadStateMu.Lock()
	defer s.leadStateMu.Unlock()
	old := s.lead.Load()
	st := *old
	f(&st)
	st.done, st.cancel = context.WithCancel(context.Background())
	s.lead.Store(&st)
	old.cancel()
}

// followLeadership is the one consumer of the Raft node's leader changes: it publishes
// them (leaderState, the leader and term in response headers), demotes the lessor at once
// when this member loses leadership, and hands promotions to the session leader loop.
func (s *Server) followLeadership(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case lc := <-s.node.Leadership():
			s.leadMu.Lock()
			s.leader.Store(lc.Leader)
			s.term.Store(lc.Term)
			now := time.Now()
			s.setLead(func(st *leaderState) {
				if st.leader != lc.Leader {
					st.since = now
					if st.leader == s.id && lc.Leader == 0 && lc.Term == st.term {
						// Raft's CheckQuorum stepped this leader down: it has not heard from a
						// majority for at least an election timeout. Calls fail at once with
						// NO_LEADER, so that clients move to the majority's side instead of
						// waiting for an election this member cannot join.
						st.since = now.Add(-s.cfg.ElectionTimeout)
					}
				}
				st.leader, st.term = lc.Leader, lc.Term
			})
			if leader, term := s.lessor.IsLeader(); leader && (!lc.IsLeader || term != lc.Term) {
				s.lessor.Demote()
				s.log.Info("lost leadership", "term", lc.Term, "leader", FormatID(lc.Leader))
			}
			s.leadMu.Unlock()
			// The channel holds the latest change only.
			select {
			case s.changes <- lc:
			default:
				select {
				case <-s.changes:
				default:
				}
				s.changes <- lc
			}
		}
	}
}

// leaderLoop drives the lessor while this member leads (promotion, session expiries and
// recording deadlines of sessions that have none) and announces this member's client
// address once.
func (s *Server) leaderLoop(ctx context.Context) error {
	announced := false
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case lc := <-s.changes:
			if leader, term := s.lessor.IsLeader(); lc.IsLeader && (!leader || term != lc.Term) {
				s.promote(ctx, lc.Term)
			}
		case <-timer.C:
		}
		if !announced && s.leader.Load() != 0 {
			announced = s.announce(ctx)
		}
		s.leaderDuties(ctx)
		timer.Reset(min(max(s.lessor.NextWake(time.Second), 20*time.Millisecond), time.Second))
	}
}

// stillLeader reports whether the Raft node leads in term.
func (s *Server) stillLeader(term uint64) bool {
	st := s.node.Status()
	return st.IsLeader && st.Term == term
}

// promote makes the lessor the leader's for term once every entry of the earlier terms is
// applied (a ReadIndex barrier), then records deadlines for the sessions that have none
// (opened or checkpointed by an older version). Nothing is
// promoted when the member lost that leadership meanwhile or is stopping.
func (s *Server) promote(ctx context.Context, term uint64) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.node.ReadIndex(rctx); err != nil {
		s.log.Warn("promote: read barrier failed; will retry on the next leadership change", "term", term, "err", err)
		return
	}
	s.leadMu.Lock()
	if s.stopping.Load() || !s.stillLeader(term) {
		s.leadMu.Unlock()
		return
	}
	var cps []session.Checkpoint
	s.machine.WithSessions(func(ss []tree.SessionInfo) {
		cps = s.lessor.Promote(term, sessionStates(ss))
	})
	s.leadMu.Unlock()
	s.log.Info("became leader", "term", term, "sessions", len(cps))
	s.proposeCheckpoints(ctx, term, cps)
}

// quorumWatch checks, every heartbeat, whether this member leads without having heard from
// a majority for an election timeout (quorumSilence), and logs and counts it. Nothing is
// refused for it: raft fences writes, and its CheckQuorum steps a cut-off leader down.
func (s *Server) quorumWatch(ctx context.Context) error {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		d, lost := s.quorumSilence(time.Now())
		if lost && s.quorumLost.CompareAndSwap(false, true) {
			s.metrics.quorumLost.Inc()
			s.log.Warn("leader has not heard from a majority for an election timeout (cut off, or its followers are overloaded)", "silence", d)
		}
		if !lost && s.quorumLost.CompareAndSwap(true, false) {
			s.log.Info("leader hears from a majority again, or no longer leads")
		}
	}
}

// trackReplay closes replayed once the member has applied the commit index it recovered
// from its WAL (at once for a new member).
func (s *Server) trackReplay(ctx context.Context) error {
	defer close(s.replayed)
	if s.node.AppliedIndex() >= s.replayTarget {
		return nil
	}
	start := time.Now()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for s.node.AppliedIndex() < s.replayTarget {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	s.log.Info("replayed the local log; serving reads", "applied", s.node.AppliedIndex(), "took", time.Since(start))
	return nil
}

// proposeCheckpoints records session deadlines decided by the leader of term.
func (s *Server) proposeCheckpoints(ctx context.Context, term uint64, cps []session.Checkpoint) {
	if len(cps) == 0 {
		return
	}
	tcps := make([]tree.Checkpoint, 0, len(cps))
	for _, c := range cps {
		tcps = append(tcps, tree.Checkpoint{ID: c.ID, DeadlineMs: c.Deadline.UnixMilli()})
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if _, err := s.node.Propose(pctx, tree.EncodeDeadlineCheckpoint(term, tcps)); err != nil && ctx.Err() == nil {
		s.log.Warn("propose session deadlines", "term", term, "sessions", len(tcps), "err", err)
	}
	s.metrics.checkpoints.Add(float64(len(tcps)))
}

func (s *Server) leaderDuties(ctx context.Context) {
	if term, ids := s.lessor.Expired(); len(ids) > 0 {
		pctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		res, err := s.node.Propose(pctx, tree.EncodeSessionExpire(term, ids))
		cancel()
		switch {
		case err != nil:
			if ctx.Err() == nil {
				s.log.Warn("propose session expiry", "sessions", ids, "err", err)
			}
		default:
			if r, ok := res.(tree.ExpireResult); ok {
				s.metrics.expired.Add(float64(len(r.Expired)))
				s.log.Info("sessions expired", "sessions", r.Expired, "ephemerals_deleted", r.Deleted)
			}
		}
	}
	if term, cps := s.lessor.CheckpointsDue(); len(cps) > 0 {
		s.proposeCheckpoints(ctx, term, cps)
	}
}

// announce proposes this member's name and client address unless the state has them.
func (s *Server) announce(ctx context.Context) bool {
	want := tree.MemberAttrs{ID: s.id, Name: s.cfg.Name, ClientAddr: s.cfg.AdvertiseClient}
	if s.machine.Members()[s.id] == want {
		return true
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if _, err := s.node.Propose(pctx, tree.EncodeMemberAttrs(want)); err != nil {
		return false
	}
	return true
}

// seedFile is where RestoreSnapshot puts the snapshot a new data dir starts from.
const seedFile = "coord-seed.snap"

// RestoreSnapshot seeds dataDir from a snapshot file saved with the Snapshot RPC (offline
// restore). Every member of the restored cluster, including members added to it later,
// must be seeded from the same file before its first start; the members then start a new
// cluster (--initial-cluster-state new) whose state begins at the snapshot. It refuses a
// data dir that already holds a Raft log, and a corrupt snapshot.
func RestoreSnapshot(snapshotFile, dataDir string) error {
	f, err := os.Open(snapshotFile)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	defer f.Close()
	if _, _, err := tree.ReadSnapshotInfo(f); err != nil {
		return fmt.Errorf("restore snapshot %s: %w", snapshotFile, err)
	}
	if same, err := sameFile(snapshotFile, filepath.Join(dataDir, seedFile)); err == nil && same {
		return nil // already seeded from this file: a restart with the same flags
	}
	if ents, _ := os.ReadDir(filepath.Join(dataDir, "wal")); len(ents) > 0 {
		return fmt.Errorf("restore snapshot into %s: the data dir already holds a raft log", dataDir)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	tmp, err := os.CreateTemp(dataDir, seedFile+".tmp*")
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.ReadFrom(f); err != nil {
		tmp.Close()
		return fmt.Errorf("restore snapshot: copy: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("restore snapshot: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dataDir, seedFile)); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	return nil
}

func sameFile(a, b string) (bool, error) {
	x, err := os.ReadFile(a)
	if err != nil {
		return false, err
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(x, y), nil
}

// loadSeed restores the machine from the data dir's seed, when there is one. raftstore's own
// snapshot, when it has one, replaces this state afterwards; otherwise its log replays on
// top of it, which is why the seed is loaded on every start.
func loadSeed(dataDir string, m *tree.Machine) error {
	f, err := os.Open(filepath.Join(dataDir, seedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open seed snapshot: %w", err)
	}
	defer f.Close()
	if err := m.Restore(f); err != nil {
		return fmt.Errorf("load seed snapshot %s: %w", f.Name(), err)
	}
	return nil
}
