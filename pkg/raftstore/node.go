package raftstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Status is a member's view of the cluster, as of the last turn of its raft loop.
type Status struct {
	// ID is this member's ID.
	ID uint64
	// Leader is the member this one follows (itself when leader), 0 when none is known.
	Leader uint64
	// Term is the current Raft term.
	Term uint64
	// CommitIndex is the highest log index known to be committed. Before Run has turned
	// the raft loop once, it is the commit index recovered from the WAL: a restarted member
	// has applied its own committed log once AppliedIndex reaches it.
	CommitIndex uint64
	// AppliedIndex is the highest log index applied to the state machine.
	AppliedIndex uint64
	// SnapshotIndex is the index of the latest snapshot, taken here or received.
	SnapshotIndex uint64
	// IsLeader reports whether this member is the leader.
	IsLeader bool
	// Members are the applied members, sorted by ID.
	Members []Peer
}

// LeaderChange is a change of leader seen by a member.
type LeaderChange struct {
	// Leader is the new leader, 0 when the member lost its leader.
	Leader uint64
	// Term is the term in which the change was seen.
	Term uint64
	// IsLeader reports whether this member is the new leader.
	IsLeader bool
}

// Node is one member of a Raft group: a raft.RawNode, its WAL and snapshots, its peer
// transport and the state machine it drives. NewNode recovers the state and starts
// nothing; Run runs the raft loop until its context ends. The methods that talk to the
// cluster (Propose, ReadIndex, AddMember, ...) are safe for concurrent use and wait for Run.
type Node struct {
	cfg       Config
	sm        StateMachine
	logger    *slog.Logger
	metrics   *metrics
	snapDir   string
	lockFile  *os.File
	transport *transport
	ids       *idGenerator

	// The fields below are owned by the raft loop (Run) once it has started.
	rn           *raft.RawNode
	storage      *raft.MemoryStorage
	wal          *wal
	members      *membership
	confState    *raftpb.ConfState
	applied      uint64
	snapIndex    uint64
	snapshotting bool
	nextSnapAt   uint64
	lead         uint64
	isLeader     bool
	removed      bool
	ticks        uint64
	waiters      map[uint64]*proposal
	confWaiters  map[uint64]*confRequest
	pendingProps []*proposal
	retryProps   []*proposal
	retryConfs   []*confRequest
	readPending  []*readRequest
	readInflight map[uint64]*readBatch
	readWaiting  []*readRequest
	postAdvance  []func()

	// Channels into the raft loop.
	recvc     chan *raftpb.Message
	propc     chan *proposal
	readc     chan *readRequest
	confc     chan *confRequest
	transferc chan uint64
	reportc   chan peerReport
	snapDonec chan snapshotResult

	appliedIndex atomic.Uint64
	// leaderTerm is the term this member leads in, 0 when it does not lead.
	leaderTerm atomic.Uint64
	// tickCount counts the raft loop's ticks (n.ticks), for contactMark.
	tickCount atomic.Uint64
	// contact holds, while this member leads, when each member was last heard from in
	// leaderTerm; the transport updates it as messages arrive (see noteContact).
	contact     atomic.Pointer[map[uint64]*contactMark]
	removedFlag atomic.Bool
	running     atomic.Bool
	started     atomic.Bool
	stopping    chan struct{} // closed when the raft loop has exited
	closeOnce   sync.Once
	closeErr    error
	leaderc     chan LeaderChange

	mu         sync.Mutex
	status     Status
	leaderWait chan struct{} // closed and replaced on every leader change
	removedIDs map[uint64]bool
}

// proposal is one Propose call on its way through the raft loop.
type proposal struct {
	id      uint64
	data    []byte // envelope: version, id, caller's data
	ctx     context.Context
	abandon <-chan struct{} // nil: never
	done    chan proposalResult
	start   time.Time
}

// gone reports whether the caller of a proposal or read has given up.
func gone(ctx context.Context, abandon <-chan struct{}) bool {
	if ctx.Err() != nil {
		return true
	}
	select {
	case <-abandon:
		return true
	default:
		return false
	}
}

type proposalResult struct {
	value any
	err   error
}

// readRequest is one ReadIndex call.
type readRequest struct {
	ctx     context.Context
	abandon <-chan struct{} // nil: never
	done    chan error
	index   uint64
}

// readBatch is the read requests that share one raft read-index request.
type readBatch struct {
	reqs []*readRequest
	sent uint64 // tick count when sent
}

// confRequest is one membership change.
type confRequest struct {
	cc   *raftpb.ConfChange
	ctx  context.Context
	done chan error
}

// snapshotResult is the outcome of writing a snapshot file in the background.
type snapshotResult struct {
	meta *raftpb.Snapshot
	size int64
	dur  time.Duration
	err  error
}

// peerReport is what a peer sender tells the raft loop.
type peerReport struct {
	id   uint64
	kind reportKind
}

type reportKind int

const (
	reportUnreachable reportKind = iota
	reportSnapshotFinish
	reportSnapshotFailure
	reportRemoved
)

// Every proposed entry starts with an envelope: a version byte, the proposing member's
// ID and the proposal ID, so that the proposer (and only it) hands the Apply result back to
// its caller. The layout is persisted: it only grows.
const (
	envelopeVersion = 1
	envelopeSize    = 1 + 8 + 8
)

func envelope(member, id uint64, data []byte) []byte {
	b := make([]byte, envelopeSize+len(data))
	b[0] = envelopeVersion
	binary.LittleEndian.PutUint64(b[1:9], member)
	binary.LittleEndian.PutUint64(b[9:17], id)
	copy(b[envelopeSize:], data)
	return b
}

func openEnvelope(b []byte) (member, id uint64, data []byte, err error) {
	if len(b) < envelopeSize {
		return 0, 0, nil, fmt.Errorf("entry of %d bytes is shorter than its envelope", len(b))
	}
	if b[0] != envelopeVersion {
		return 0, 0, nil, fmt.Errorf("entry envelope version %d, this build reads %d", b[0], envelopeVersion)
	}
	return binary.LittleEndian.Uint64(b[1:9]), binary.LittleEndian.Uint64(b[9:17]), b[envelopeSize:], nil
}

// idGenerator makes IDs unique across members (member ID in the top 16 bits) and across
// restarts of one member (a millisecond clock in the low 48 bits at start).
type idGenerator struct {
	prefix uint64
	suffix atomic.Uint64
}

func newIDGenerator(member uint64, now time.Time) *idGenerator {
	g := &idGenerator{prefix: (member & 0xffff) << 48}
	g.suffix.Store((uint64(now.UnixMilli()) << 8) & (1<<48 - 1))
	return g
}

func (g *idGenerator) next() uint64 {
	return g.prefix | (g.suffix.Add(1) & (1<<48 - 1))
}

// NewNode opens or creates the data dir, recovers the WAL and the latest snapshot
// (restoring sm from it) and prepares the raft node. It starts nothing; call Run. A data
// dir of another cluster or member is refused with ErrClusterMismatch, a damaged log with
// ErrCorrupt. A node whose Run is never called must be closed with Close.
func NewNode(cfg Config, sm StateMachine) (*Node, error) {
	if sm == nil {
		return nil, errors.New("raftstore: new node: state machine is nil")
	}
	cfg.Peers = slices.Clone(cfg.Peers)
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger.With("raft_member", fmt.Sprintf("%x", cfg.ID))
	walDir := filepath.Join(cfg.DataDir, "wal")
	snapDir := filepath.Join(cfg.DataDir, "snap")
	for _, d := range []string{cfg.DataDir, walDir, snapDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("raftstore: new node: %w", err)
		}
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	n, err := newNode(cfg, sm, logger, walDir, snapDir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	n.lockFile = lock
	return n, nil
}

func newNode(cfg Config, sm StateMachine, logger *slog.Logger, walDir, snapDir string) (*Node, error) {
	m := makeMetrics(cfg.MetricsSubsystem)
	if err := removeSnapshotTemps(snapDir); err != nil {
		return nil, fmt.Errorf("raftstore: new node: %w", err)
	}
	n := &Node{
		cfg:          cfg,
		sm:           sm,
		logger:       logger,
		metrics:      m,
		snapDir:      snapDir,
		ids:          newIDGenerator(cfg.ID, time.Now()),
		storage:      raft.NewMemoryStorage(),
		members:      newMembership(),
		confState:    &raftpb.ConfState{},
		waiters:      map[uint64]*proposal{},
		confWaiters:  map[uint64]*confRequest{},
		readInflight: map[uint64]*readBatch{},
		recvc:        make(chan *raftpb.Message, 4096),
		propc:        make(chan *proposal, 4096),
		readc:        make(chan *readRequest, 1024),
		confc:        make(chan *confRequest, 16),
		transferc:    make(chan uint64, 4),
		reportc:      make(chan peerReport, 256),
		snapDonec:    make(chan snapshotResult, 1),
		stopping:     make(chan struct{}),
		leaderc:      make(chan LeaderChange, 1),
		leaderWait:   make(chan struct{}),
		removedIDs:   map[uint64]bool{},
	}

	w, st, err := openWAL(walDir, cfg.ClusterID, cfg.ID, cfg.WALSegmentBytes, m, logger)
	fresh := false
	switch {
	case errors.Is(err, errNoWAL):
		w, err = createWAL(walDir, cfg.ClusterID, cfg.ID, cfg.WALSegmentBytes, m, logger)
		if err != nil {
			return nil, fmt.Errorf("raftstore: new node: %w", err)
		}
		fresh = true
	case err != nil:
		return nil, fmt.Errorf("raftstore: new node: %w", err)
	default:
		fresh = st.empty()
	}
	n.wal = w
	fail := func(err error) (*Node, error) {
		w.close()
		return nil, fmt.Errorf("raftstore: new node: %w", err)
	}
	if fresh && len(cfg.Peers) == 0 {
		return fail(errors.New("config: Peers: required for a new member"))
	}
	if !fresh {
		if err := n.recover(st); err != nil {
			return fail(err)
		}
	}
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        cfg.ID,
		ElectionTick:              cfg.ElectionTicks,
		HeartbeatTick:             cfg.HeartbeatTicks,
		Storage:                   n.storage,
		Applied:                   n.applied,
		MaxSizePerMsg:             cfg.MaxSizePerMsg,
		MaxInflightMsgs:           cfg.MaxInflightMsgs,
		MaxUncommittedEntriesSize: 1 << 30,
		CheckQuorum:               true,
		PreVote:                   true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{l: logger},
	})
	if err != nil {
		return fail(err)
	}
	if fresh && !cfg.Join {
		// Every member of a new cluster bootstraps the same entries, so they are built from
		// the peers sorted by ID.
		peers := slices.Clone(cfg.Peers)
		slices.SortFunc(peers, func(a, b Peer) int { return compareUint64(a.ID, b.ID) })
		rps := make([]raft.Peer, len(peers))
		for i, p := range peers {
			rps[i] = raft.Peer{ID: p.ID, Context: encodeMember(p)}
		}
		if err := rn.Bootstrap(rps); err != nil {
			return fail(fmt.Errorf("bootstrap: %w", err))
		}
	}
	if err := m.register(cfg.Registerer); err != nil {
		return fail(err)
	}
	n.rn = rn
	n.transport = newTransport(n)
	n.appliedIndex.Store(n.applied)
	n.metrics.appliedIndex.Set(float64(n.applied))
	n.status = Status{ID: cfg.ID, CommitIndex: max(rn.BasicStatus().GetCommit(), n.applied), AppliedIndex: n.applied, SnapshotIndex: n.snapIndex, Members: n.members.peers()}
	n.removedIDs = n.members.clone().removed
	return n, nil
}

// recover loads the latest snapshot named by the WAL into the state machine and the
// recovered entries and HardState into the raft storage.
func (n *Node) recover(st *walState) error {
	if s := st.snapshot; s.Index > 0 {
		path := filepath.Join(n.snapDir, snapshotName(s.Term, s.Index))
		sf, err := readSnapshotFile(path)
		if err != nil {
			return fmt.Errorf("load snapshot %d: %w", s.Index, err)
		}
		md := sf.meta.GetMetadata()
		if md.GetIndex() != s.Index || md.GetTerm() != s.Term {
			return &CorruptError{File: path, Offset: -1, Reason: fmt.Sprintf("holds snapshot %d term %d, the WAL names %d term %d", md.GetIndex(), md.GetTerm(), s.Index, s.Term)}
		}
		mem, err := unmarshalMembership(sf.meta.GetData())
		if err != nil {
			return &CorruptError{File: path, Offset: -1, Reason: err.Error()}
		}
		if err := n.storage.ApplySnapshot(sf.meta); err != nil {
			return fmt.Errorf("load snapshot %d: %w", s.Index, err)
		}
		if err := sf.restore(n.sm); err != nil {
			return err
		}
		n.members = mem
		n.confState = proto.Clone(raftpb.EnsureConfState(md.GetConfState())).(*raftpb.ConfState)
		n.applied = s.Index
		n.snapIndex = s.Index
		n.metrics.snapshotSize.Set(float64(sf.size))
		if err := pruneSnapshots(n.snapDir, s.Index); err != nil {
			return err
		}
	}
	if err := n.storage.Append(st.entries); err != nil {
		return fmt.Errorf("load entries: %w", err)
	}
	if hs := st.hardState; hs != nil {
		hs = proto.Clone(hs).(*raftpb.HardState)
		last, _ := n.storage.LastIndex()
		if hs.GetCommit() < n.snapIndex {
			hs.Commit = proto.Uint64(n.snapIndex)
		}
		if hs.GetCommit() > last {
			n.logger.Warn("raftstore: recovered commit index beyond the log; lowering it", "commit", hs.GetCommit(), "last_index", last)
			hs.Commit = proto.Uint64(last)
		}
		if err := n.storage.SetHardState(hs); err != nil {
			return fmt.Errorf("load hard state: %w", err)
		}
	}
	return nil
}

// lockDataDir takes an exclusive lock on dir/LOCK, held until the returned file is closed.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "LOCK")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("raftstore: lock data dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock data dir %s: %w", dir, ErrDataDirLocked)
		}
		return nil, fmt.Errorf("raftstore: lock data dir %s: %w", dir, err)
	}
	return f, nil
}

// Close releases the files of a node whose Run was never called. After Run has been
// called, Run owns them and Close does nothing. Close is idempotent.
func (n *Node) Close() error {
	if n.started.CompareAndSwap(false, true) {
		close(n.stopping)
		return n.closeFiles()
	}
	return nil
}

func (n *Node) closeFiles() error {
	n.closeOnce.Do(func() {
		n.closeErr = n.wal.close()
		if n.lockFile != nil {
			if err := n.lockFile.Close(); n.closeErr == nil && err != nil {
				n.closeErr = fmt.Errorf("raftstore: unlock data dir: %w", err)
			}
		}
	})
	return n.closeErr
}

// Run runs the raft loop: ticks, incoming messages, proposals, and for each Ready the WAL
// write (one fsync), the messages, the state machine updates and Advance. It returns nil
// when ctx ends, after every goroutine it started has stopped and the WAL is closed;
// ErrRemoved when this member was removed from the cluster; another error when the node
// cannot go on safely (a WAL write failed, a snapshot is damaged). Run may be called once.
func (n *Node) Run(ctx context.Context) error {
	if !n.started.CompareAndSwap(false, true) {
		return errors.New("raftstore: run: node already ran or was closed")
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	n.transport.start(ctx, &wg)
	n.running.Store(true)
	err := n.loop(ctx, &wg)
	n.running.Store(false)
	close(n.stopping)
	cancel()
	wg.Wait()
	n.failAll()
	n.metrics.isLeader.Set(0)
	if cerr := n.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (n *Node) loop(ctx context.Context, wg *sync.WaitGroup) error {
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			// Step what peers sent first: a tick judges their contact (CheckQuorum,
			// QuorumContact), and after a long turn their messages may still be queued.
			n.drain()
			n.tick()
		case m := <-n.recvc:
			n.step(m)
		case p := <-n.propc:
			n.pendingProps = append(n.pendingProps, p)
		case r := <-n.readc:
			n.readPending = append(n.readPending, r)
		case c := <-n.confc:
			n.proposeConfChange(c)
		case to := <-n.transferc:
			n.rn.TransferLeader(to)
		case r := <-n.reportc:
			n.report(r)
		case res := <-n.snapDonec:
			if err := n.finishSnapshot(res); err != nil {
				return err
			}
		}
		n.drain()
		n.flushProposals(false)
		n.flushReads()
		for n.rn.HasReady() {
			if err := n.handleReady(ctx, wg); err != nil {
				return fmt.Errorf("raftstore: run: %w", err)
			}
		}
		if n.removed {
			n.logger.Info("raftstore: this member was removed from the cluster; stopping")
			return ErrRemoved
		}
		n.publishStatus()
	}
}

// drain takes what else is waiting on the input channels, so that one Ready (one fsync)
// covers as much work as possible.
func (n *Node) drain() {
	for range 1024 {
		select {
		case m := <-n.recvc:
			n.step(m)
		case p := <-n.propc:
			n.pendingProps = append(n.pendingProps, p)
		case r := <-n.readc:
			n.readPending = append(n.readPending, r)
		case r := <-n.reportc:
			n.report(r)
		default:
			return
		}
	}
}

func (n *Node) tick() {
	n.rn.Tick()
	n.ticks++
	n.tickCount.Store(n.ticks)
	n.flushProposals(true)
	n.retryConfChanges()
	n.retryReads()
	if n.ticks%uint64(n.cfg.ElectionTicks) == 0 {
		n.purgeWaiters()
	}
}

func (n *Node) step(m *raftpb.Message) {
	if err := n.rn.Step(m); err != nil && n.logger.Enabled(context.Background(), slog.LevelDebug) {
		n.logger.Debug("raftstore: step message", "type", m.GetType().String(), "from", m.GetFrom(), "err", err)
	}
}

func (n *Node) report(r peerReport) {
	switch r.kind {
	case reportUnreachable:
		n.rn.ReportUnreachable(r.id)
	case reportSnapshotFinish:
		n.rn.ReportSnapshot(r.id, raft.SnapshotFinish)
	case reportSnapshotFailure:
		n.rn.ReportSnapshot(r.id, raft.SnapshotFailure)
	case reportRemoved:
		n.logger.Warn("raftstore: a peer says this member was removed from the cluster", "peer", r.id)
		n.removed = true
		n.removedFlag.Store(true)
	}
}

// flushProposals steps the pending proposals into raft in batches of at most
// MaxBatchBytes. With retry, proposals raft dropped earlier (no leader yet, leadership
// transfer in progress) are tried again; the callers' contexts bound how long.
func (n *Node) flushProposals(retry bool) {
	props := n.pendingProps
	if retry && len(n.retryProps) > 0 {
		props = append(n.retryProps, props...)
		n.retryProps = nil
	}
	n.pendingProps = nil
	live := props[:0]
	for _, p := range props {
		if !gone(p.ctx, p.abandon) {
			live = append(live, p)
		}
	}
	for len(live) > 0 {
		size, k := 0, 0
		for k < len(live) && (k == 0 || size+len(live[k].data) <= n.cfg.MaxBatchBytes) {
			size += len(live[k].data)
			k++
		}
		batch := live[:k]
		live = live[k:]
		ents := make([]*raftpb.Entry, len(batch))
		for i, p := range batch {
			ents[i] = &raftpb.Entry{Data: p.data}
		}
		err := n.rn.Step(&raftpb.Message{Type: raftpb.MsgProp.Enum(), From: proto.Uint64(n.cfg.ID), Entries: ents})
		switch {
		case err == nil:
			now := time.Now()
			for _, p := range batch {
				p.start = now
				n.waiters[p.id] = p
			}
		case errors.Is(err, raft.ErrProposalDropped):
			n.retryProps = append(n.retryProps, batch...)
		default:
			for _, p := range batch {
				p.done <- proposalResult{err: fmt.Errorf("raftstore: propose: %w", err)}
			}
		}
	}
}

// purgeWaiters forgets proposals whose callers have given up and whose entries never
// came back (dropped on a leader change).
func (n *Node) purgeWaiters() {
	for id, p := range n.waiters {
		if gone(p.ctx, p.abandon) {
			delete(n.waiters, id)
		}
	}
	for id, c := range n.confWaiters {
		if c.ctx.Err() != nil {
			delete(n.confWaiters, id)
		}
	}
}

func (n *Node) proposeConfChange(c *confRequest) {
	err := n.rn.ProposeConfChange(c.cc)
	switch {
	case err == nil:
		n.confWaiters[c.cc.GetId()] = c
	case errors.Is(err, raft.ErrProposalDropped):
		n.retryConfs = append(n.retryConfs, c)
	default:
		c.done <- fmt.Errorf("raftstore: propose membership change: %w", err)
	}
}

func (n *Node) retryConfChanges() {
	confs := n.retryConfs
	n.retryConfs = nil
	for _, c := range confs {
		if c.ctx.Err() == nil {
			n.proposeConfChange(c)
		}
	}
}

// flushReads sends one raft read-index request for all pending ReadIndex calls.
func (n *Node) flushReads() {
	live := n.readPending[:0]
	for _, r := range n.readPending {
		if !gone(r.ctx, r.abandon) {
			live = append(live, r)
		}
	}
	n.readPending = nil
	if len(live) == 0 {
		return
	}
	id := n.ids.next()
	var rctx [16]byte
	binary.LittleEndian.PutUint64(rctx[:8], n.cfg.ID)
	binary.LittleEndian.PutUint64(rctx[8:], id)
	n.readInflight[id] = &readBatch{reqs: slices.Clone(live), sent: n.ticks}
	n.rn.ReadIndex(rctx[:])
}

// retryReads re-sends read-index requests unanswered for an election timeout (raft drops
// them when there is no leader or the leader changes).
func (n *Node) retryReads() {
	for id, b := range n.readInflight {
		if n.ticks-b.sent >= uint64(n.cfg.ElectionTicks) {
			delete(n.readInflight, id)
			n.readPending = append(n.readPending, b.reqs...)
		}
	}
	n.flushReads()
}

func (n *Node) handleReadStates(states []raft.ReadState) {
	for _, rs := range states {
		if len(rs.RequestCtx) != 16 || binary.LittleEndian.Uint64(rs.RequestCtx[:8]) != n.cfg.ID {
			continue
		}
		id := binary.LittleEndian.Uint64(rs.RequestCtx[8:])
		b, ok := n.readInflight[id]
		if !ok {
			continue
		}
		delete(n.readInflight, id)
		for _, r := range b.reqs {
			r.index = rs.Index
			n.readWaiting = append(n.readWaiting, r)
		}
	}
}

// releaseReads completes the reads whose index has been applied.
func (n *Node) releaseReads() {
	keep := n.readWaiting[:0]
	for _, r := range n.readWaiting {
		switch {
		case r.index <= n.applied:
			r.done <- nil
		case !gone(r.ctx, r.abandon):
			keep = append(keep, r)
		}
	}
	clear(n.readWaiting[len(keep):])
	n.readWaiting = keep
}

// handleReady processes one Ready in the classic order: persist (one WAL write and at most
// one fsync), send, apply, Advance. The leader sends before it persists (Raft thesis
// 10.2.1); followers only after, since their acknowledgements promise durability.
func (n *Node) handleReady(ctx context.Context, wg *sync.WaitGroup) error {
	rd := n.rn.Ready()
	n.observeSoftState(rd.SoftState)
	if n.isLeader {
		n.send(rd.Messages)
	}
	var ws *walSnapshot
	var sf *snapshotFile
	if !raft.IsEmptySnap(rd.Snapshot) {
		md := rd.Snapshot.GetMetadata()
		var err error
		sf, err = readSnapshotFile(filepath.Join(n.snapDir, snapshotName(md.GetTerm(), md.GetIndex())))
		if err != nil {
			return fmt.Errorf("apply snapshot %d: %w", md.GetIndex(), err)
		}
		ws = &walSnapshot{Index: md.GetIndex(), Term: md.GetTerm(), Reset: true}
	}
	if err := n.wal.save(rd.HardState, rd.Entries, ws, rd.MustSync); err != nil {
		return err
	}
	if sf != nil {
		if err := n.applySnapshot(rd.Snapshot, sf); err != nil {
			return err
		}
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := n.storage.SetHardState(rd.HardState); err != nil {
			return fmt.Errorf("store hard state: %w", err)
		}
	}
	if err := n.storage.Append(rd.Entries); err != nil {
		return fmt.Errorf("store entries: %w", err)
	}
	if !n.isLeader {
		n.send(rd.Messages)
	}
	if err := n.applyEntries(rd.CommittedEntries); err != nil {
		return err
	}
	n.handleReadStates(rd.ReadStates)
	n.releaseReads()
	n.rn.Advance(rd)
	for _, f := range n.postAdvance {
		f()
	}
	clear(n.postAdvance)
	n.postAdvance = n.postAdvance[:0]
	n.maybeSnapshot(ctx, wg)
	return nil
}

func (n *Node) observeSoftState(ss *raft.SoftState) {
	if ss == nil {
		return
	}
	isLeader := ss.RaftState == raft.StateLeader
	if ss.Lead == n.lead && isLeader == n.isLeader {
		return
	}
	if ss.Lead != n.lead && ss.Lead != raft.None {
		n.metrics.leaderChanges.Inc()
	}
	n.lead, n.isLeader = ss.Lead, isLeader
	if isLeader {
		n.metrics.isLeader.Set(1)
	} else {
		n.metrics.isLeader.Set(0)
	}
	term := n.rn.BasicStatus().GetTerm()
	if isLeader {
		// Being elected is hearing from a majority: count every member as heard from now.
		n.contact.Store(nil)
		n.resetContact()
		n.leaderTerm.Store(term)
	} else {
		n.leaderTerm.Store(0)
		n.contact.Store(nil)
	}
	lc := LeaderChange{Leader: ss.Lead, Term: term, IsLeader: isLeader}
	n.logger.Info("raftstore: leader changed", "leader", fmt.Sprintf("%x", ss.Lead), "term", term, "is_leader", isLeader)
	n.mu.Lock()
	n.status.Leader = ss.Lead
	n.status.IsLeader = isLeader
	n.status.Term = term
	close(n.leaderWait)
	n.leaderWait = make(chan struct{})
	n.mu.Unlock()
	// The channel holds the latest change only: replace an unread one.
	select {
	case n.leaderc <- lc:
	default:
		select {
		case <-n.leaderc:
		default:
		}
		select {
		case n.leaderc <- lc:
		default:
		}
	}
}

// contactMark is when a member was last heard from: the wall clock and the raft loop's
// tick count, which is raft's own clock (CheckQuorum counts ticks): a process too busy to
// tick on time stretches it, as it stretches raft's patience.
type contactMark struct {
	at   atomic.Int64 // unix ns
	tick atomic.Uint64
}

// resetContact rebuilds the contact table for the current members, keeping what is known
// of members already in it and counting the others as heard from now.
func (n *Node) resetContact() {
	old := n.contact.Load()
	now := time.Now().UnixNano()
	table := make(map[uint64]*contactMark, len(n.members.members))
	for id := range n.members.members {
		if old != nil && (*old)[id] != nil {
			table[id] = (*old)[id]
			continue
		}
		c := &contactMark{}
		c.at.Store(now)
		c.tick.Store(n.ticks)
		table[id] = c
	}
	n.contact.Store(&table)
}

// noteContact records a message of the leader's term from a member: the member follows
// this leader (raft's CheckQuorum counts the same messages). It runs on the transport's
// goroutines, so that the contact is dated when the message arrives, not when a busy raft
// loop gets to it.
func (n *Node) noteContact(m *raftpb.Message) {
	term := n.leaderTerm.Load()
	if term == 0 || m.GetTerm() != term {
		return
	}
	if table := n.contact.Load(); table != nil {
		if c := (*table)[m.GetFrom()]; c != nil {
			c.at.Store(time.Now().UnixNano())
			c.tick.Store(n.tickCount.Load())
		}
	}
}

// send hands messages to the transport. They are marshalled here, in the loop, because
// raft shares entries with its storage.
func (n *Node) send(msgs []*raftpb.Message) {
	for _, m := range msgs {
		to := m.GetTo()
		if to == n.cfg.ID || to == raft.None {
			continue
		}
		if m.GetType() == raftpb.MsgSnap {
			n.sendSnapshot(m)
			continue
		}
		b, err := proto.Marshal(m)
		if err != nil {
			n.logger.Error("raftstore: encode message", "type", m.GetType().String(), "to", to, "err", err)
			continue
		}
		if !n.transport.send(to, b) {
			n.postAdvance = append(n.postAdvance, func() { n.rn.ReportUnreachable(to) })
		}
	}
}

func (n *Node) sendSnapshot(m *raftpb.Message) {
	to := m.GetTo()
	md := m.GetSnapshot().GetMetadata()
	path := filepath.Join(n.snapDir, snapshotName(md.GetTerm(), md.GetIndex()))
	b, err := proto.Marshal(m)
	if err == nil {
		err = n.transport.sendSnapshot(to, snapshotJob{msg: b, path: path, index: md.GetIndex()})
	}
	if err != nil {
		n.logger.Warn("raftstore: send snapshot", "to", to, "index", md.GetIndex(), "err", err)
		n.postAdvance = append(n.postAdvance, func() { n.rn.ReportSnapshot(to, raft.SnapshotFailure) })
	}
}

// applySnapshot installs a snapshot received from the leader, already in the WAL.
func (n *Node) applySnapshot(snap *raftpb.Snapshot, sf *snapshotFile) error {
	md := snap.GetMetadata()
	mem, err := unmarshalMembership(snap.GetData())
	if err != nil {
		return fmt.Errorf("apply snapshot %d: %w", md.GetIndex(), err)
	}
	if err := n.wal.releaseAll(); err != nil {
		return err
	}
	if err := n.storage.ApplySnapshot(snap); err != nil {
		return fmt.Errorf("apply snapshot %d: %w", md.GetIndex(), err)
	}
	if err := sf.restore(n.sm); err != nil {
		return err
	}
	n.members = mem
	n.confState = proto.Clone(raftpb.EnsureConfState(md.GetConfState())).(*raftpb.ConfState)
	n.applied = md.GetIndex()
	n.snapIndex = md.GetIndex()
	n.appliedIndex.Store(n.applied)
	n.metrics.appliedIndex.Set(float64(n.applied))
	n.metrics.snapshotsReceived.Inc()
	n.metrics.snapshotSize.Set(float64(sf.size))
	n.transport.syncPeers(mem)
	n.publishMembers()
	if mem.removed[n.cfg.ID] {
		n.removed = true
		n.removedFlag.Store(true)
	}
	n.logger.Info("raftstore: restored snapshot from the leader", "index", md.GetIndex(), "term", md.GetTerm(), "bytes", sf.size)
	return pruneSnapshots(n.snapDir, n.snapIndex)
}

func (n *Node) applyEntries(ents []*raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	start := time.Now()
	for _, e := range ents {
		idx := e.GetIndex()
		if idx <= n.applied {
			continue
		}
		switch e.GetType() {
		case raftpb.EntryNormal:
			if len(e.GetData()) == 0 {
				break // a new leader's empty entry
			}
			member, id, data, err := openEnvelope(e.GetData())
			if err != nil {
				return fmt.Errorf("apply entry %d: %w", idx, err)
			}
			res := n.sm.Apply(Entry{Index: idx, Term: e.GetTerm(), Data: data})
			if p, ok := n.waiters[id]; ok && member == n.cfg.ID {
				delete(n.waiters, id)
				n.metrics.commitDuration.Observe(start.Sub(p.start).Seconds())
				p.done <- proposalResult{value: res}
			}
		case raftpb.EntryConfChange:
			if err := n.applyConfChange(e); err != nil {
				return err
			}
		default:
			return fmt.Errorf("apply entry %d: unsupported entry type %s", idx, e.GetType())
		}
		n.applied = idx
	}
	n.appliedIndex.Store(n.applied)
	n.metrics.appliedIndex.Set(float64(n.applied))
	n.metrics.applyDuration.Observe(time.Since(start).Seconds())
	return nil
}

// applyConfChange applies one membership change. A change that is invalid at this point of
// the log (adding a member twice, removing the last one) is cancelled the same way on every
// member, as raft allows, and its proposer gets the reason.
func (n *Node) applyConfChange(e *raftpb.Entry) error {
	cc := &raftpb.ConfChange{}
	if err := proto.Unmarshal(e.GetData(), cc); err != nil {
		return fmt.Errorf("apply entry %d: decode membership change: %w", e.GetIndex(), err)
	}
	id := cc.GetNodeId()
	var reject error
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeUpdateNode:
		p, err := decodeMember(cc.GetContext())
		_, exists := n.members.members[id]
		switch {
		case err != nil:
			reject = err
		case p.ID != id:
			reject = fmt.Errorf("raftstore: membership change for %x carries member %x", id, p.ID)
		case cc.GetType() == raftpb.ConfChangeAddNode && (exists || n.members.removed[id]):
			reject = fmt.Errorf("add member %x: %w", id, ErrMemberExists)
		case cc.GetType() == raftpb.ConfChangeUpdateNode && !exists:
			reject = fmt.Errorf("update member %x: %w", id, ErrMemberNotFound)
		default:
			n.members.members[id] = p.Addr
		}
	case raftpb.ConfChangeRemoveNode:
		_, exists := n.members.members[id]
		switch {
		case !exists:
			reject = fmt.Errorf("remove member %x: %w", id, ErrMemberNotFound)
		case len(n.members.members) == 1:
			reject = fmt.Errorf("remove member %x: %w", id, ErrLastMember)
		default:
			delete(n.members.members, id)
			n.members.removed[id] = true
		}
	default:
		reject = fmt.Errorf("raftstore: unsupported membership change %s", cc.GetType())
	}
	if reject != nil {
		n.logger.Warn("raftstore: membership change refused", "index", e.GetIndex(), "err", reject)
		cc.NodeId = proto.Uint64(raft.None)
	}
	n.confState = n.rn.ApplyConfChange(cc)
	if reject == nil {
		n.transport.syncPeers(n.members)
		n.publishMembers()
		if n.members.removed[n.cfg.ID] {
			n.removed = true
			n.removedFlag.Store(true)
		}
	}
	if c, ok := n.confWaiters[cc.GetId()]; ok && c.cc.GetType() == cc.GetType() && c.cc.GetNodeId() == id {
		delete(n.confWaiters, cc.GetId())
		c.done <- reject
	}
	return nil
}

// maybeSnapshot starts a snapshot when enough entries have been applied since the last
// one. The state machine is captured here, in the loop; the file is written in the
// background and finishSnapshot completes the job.
func (n *Node) maybeSnapshot(ctx context.Context, wg *sync.WaitGroup) {
	if n.snapshotting || n.applied < n.snapIndex+n.cfg.SnapshotEntries || n.applied < n.nextSnapAt {
		return
	}
	term, err := n.storage.Term(n.applied)
	if err != nil {
		n.logger.Error("raftstore: snapshot: term of applied entry", "index", n.applied, "err", err)
		n.nextSnapAt = n.applied + n.cfg.SnapshotEntries
		return
	}
	data, err := n.members.marshal()
	if err != nil {
		n.logger.Error("raftstore: snapshot", "err", err)
		n.nextSnapAt = n.applied + n.cfg.SnapshotEntries
		return
	}
	src, err := n.sm.Snapshot()
	if err != nil {
		n.logger.Error("raftstore: snapshot: state machine", "index", n.applied, "err", err)
		n.nextSnapAt = n.applied + n.cfg.SnapshotEntries
		return
	}
	meta := &raftpb.Snapshot{
		Metadata: &raftpb.SnapshotMetadata{
			Index:     proto.Uint64(n.applied),
			Term:      proto.Uint64(term),
			ConfState: proto.Clone(raftpb.EnsureConfState(n.confState)).(*raftpb.ConfState),
		},
		Data: data,
	}
	n.snapshotting = true
	wg.Go(func() {
		start := time.Now()
		_, size, err := writeSnapshotFile(n.snapDir, meta, src)
		if cerr := src.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close snapshot source: %w", cerr)
		}
		select {
		case n.snapDonec <- snapshotResult{meta: meta, size: size, dur: time.Since(start), err: err}:
		case <-ctx.Done():
		}
	})
}

// finishSnapshot records a written snapshot in the WAL, then compacts the raft log and
// removes the WAL segments and snapshot files it makes unnecessary.
func (n *Node) finishSnapshot(res snapshotResult) error {
	n.snapshotting = false
	md := res.meta.GetMetadata()
	if res.err != nil {
		n.logger.Error("raftstore: snapshot", "index", md.GetIndex(), "err", res.err)
		n.nextSnapAt = md.GetIndex() + n.cfg.SnapshotEntries
		return nil
	}
	idx := md.GetIndex()
	if idx <= n.snapIndex {
		return nil // a snapshot from the leader overtook it
	}
	if err := n.wal.save(nil, nil, &walSnapshot{Index: idx, Term: md.GetTerm()}, true); err != nil {
		return fmt.Errorf("raftstore: run: %w", err)
	}
	if _, err := n.storage.CreateSnapshot(idx, md.GetConfState(), res.meta.GetData()); err != nil {
		return fmt.Errorf("raftstore: run: snapshot %d: %w", idx, err)
	}
	if idx > n.cfg.SnapshotCatchUpEntries {
		compact := idx - n.cfg.SnapshotCatchUpEntries
		if first, _ := n.storage.FirstIndex(); compact >= first {
			if err := n.storage.Compact(compact); err != nil && !errors.Is(err, raft.ErrCompacted) {
				return fmt.Errorf("raftstore: run: compact to %d: %w", compact, err)
			}
		}
	}
	n.snapIndex = idx
	if err := n.wal.releaseTo(idx); err != nil {
		return fmt.Errorf("raftstore: run: %w", err)
	}
	if err := pruneSnapshots(n.snapDir, idx); err != nil {
		return fmt.Errorf("raftstore: run: %w", err)
	}
	n.metrics.snapshotDuration.Observe(res.dur.Seconds())
	n.metrics.snapshotSize.Set(float64(res.size))
	n.logger.Debug("raftstore: snapshot taken", "index", idx, "bytes", res.size, "duration", res.dur)
	return nil
}

func (n *Node) publishStatus() {
	bs := n.rn.BasicStatus()
	n.mu.Lock()
	n.status.Term = bs.GetTerm()
	n.status.CommitIndex = bs.GetCommit()
	n.status.AppliedIndex = n.applied
	n.status.SnapshotIndex = n.snapIndex
	n.mu.Unlock()
	n.metrics.term.Set(float64(bs.GetTerm()))
}

func (n *Node) publishMembers() {
	peers := n.members.peers()
	removed := n.members.clone().removed
	n.mu.Lock()
	n.status.Members = peers
	n.removedIDs = removed
	n.mu.Unlock()
	if n.isLeader {
		n.resetContact()
	}
}

// failAll answers every call still waiting once the loop has stopped.
func (n *Node) failAll() {
	err := n.stoppedErr()
	for _, p := range n.waiters {
		p.done <- proposalResult{err: err}
	}
	for _, p := range append(n.pendingProps, n.retryProps...) {
		p.done <- proposalResult{err: err}
	}
	for _, c := range n.confWaiters {
		c.done <- err
	}
	for _, c := range n.retryConfs {
		c.done <- err
	}
	clear(n.waiters)
	clear(n.confWaiters)
	n.pendingProps, n.retryProps, n.retryConfs = nil, nil, nil
}

func (n *Node) stoppedErr() error {
	if n.removedFlag.Load() {
		return ErrRemoved
	}
	return ErrStopped
}

// leaderKnown reports whether this member currently knows a leader.
func (n *Node) leaderKnown() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.status.Leader != raft.None
}

// ctxErr is the error for a call whose context ended: ErrNoLeader joined with the context
// error when the cluster has no leader, else the context error.
func (n *Node) ctxErr(ctx context.Context) error {
	if !n.leaderKnown() {
		return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
	}
	return ctx.Err()
}

// waitLeader waits until this member knows a leader.
func (n *Node) waitLeader(ctx context.Context, abandon <-chan struct{}) error {
	for {
		n.mu.Lock()
		lead, wait := n.status.Leader, n.leaderWait
		n.mu.Unlock()
		if lead != raft.None {
			return nil
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-abandon:
			return ErrAbandoned
		case <-n.stopping:
			return n.stoppedErr()
		}
	}
}

// Propose replicates data as one log entry and waits until this member has applied it.
// It returns what StateMachine.Apply returned for the entry. Followers forward proposals
// to the leader. Errors: ErrNoLeader (joined with the context error) when there was no
// leader while ctx allowed; the context error when the outcome is unknown (the entry may
// still be applied later); ErrStopped or ErrRemoved when the node stopped;
// ErrProposalTooLarge.
func (n *Node) Propose(ctx context.Context, data []byte) (any, error) {
	return n.ProposeUnless(ctx, data, nil)
}

// ProposeUnless is Propose that also gives up, with ErrAbandoned, when abandon is closed
// (nil: never), without a context to make: a caller that watches something shared (a
// leadership) passes its channel. The proposal is then dropped if raft has not taken it
// yet; its outcome is unknown.
func (n *Node) ProposeUnless(ctx context.Context, data []byte, abandon <-chan struct{}) (any, error) {
	n.metrics.proposals.Inc()
	res, err := n.propose(ctx, data, abandon)
	if err != nil {
		n.metrics.proposalsFailed.Inc()
	}
	return res, err
}

func (n *Node) propose(ctx context.Context, data []byte, abandon <-chan struct{}) (any, error) {
	if len(data) > n.cfg.MaxProposalBytes {
		return nil, fmt.Errorf("propose %d bytes (limit %d): %w", len(data), n.cfg.MaxProposalBytes, ErrProposalTooLarge)
	}
	if err := n.waitLeader(ctx, abandon); err != nil {
		return nil, err
	}
	id := n.ids.next()
	p := &proposal{id: id, data: envelope(n.cfg.ID, id, data), ctx: ctx, abandon: abandon, done: make(chan proposalResult, 1)}
	select {
	case n.propc <- p:
	case <-ctx.Done():
		return nil, n.ctxErr(ctx)
	case <-abandon:
		return nil, ErrAbandoned
	case <-n.stopping:
		return nil, n.stoppedErr()
	}
	select {
	case r := <-p.done:
		return r.value, r.err
	case <-ctx.Done():
		return nil, n.ctxErr(ctx)
	case <-abandon:
		return nil, ErrAbandoned
	case <-n.stopping:
		select {
		case r := <-p.done:
			return r.value, r.err
		default:
			return nil, n.stoppedErr()
		}
	}
}

// ReadIndex is a linearizable read barrier: it returns once this member has applied at
// least the commit index the leader had when the call was made (confirmed by a quorum), so
// a read of the local state after it sees every write acknowledged before the call.
// ErrNoLeader (joined with the context error) when there was no leader while ctx allowed.
func (n *Node) ReadIndex(ctx context.Context) error { return n.ReadIndexUnless(ctx, nil) }

// ReadIndexUnless is ReadIndex that also gives up, with ErrAbandoned, when abandon is
// closed (nil: never).
func (n *Node) ReadIndexUnless(ctx context.Context, abandon <-chan struct{}) error {
	if err := n.waitLeader(ctx, abandon); err != nil {
		return err
	}
	r := &readRequest{ctx: ctx, abandon: abandon, done: make(chan error, 1)}
	select {
	case n.readc <- r:
	case <-ctx.Done():
		return n.ctxErr(ctx)
	case <-abandon:
		return ErrAbandoned
	case <-n.stopping:
		return n.stoppedErr()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return n.ctxErr(ctx)
	case <-abandon:
		return ErrAbandoned
	case <-n.stopping:
		return n.stoppedErr()
	}
}

// QuorumContact reports, while this member leads (ok), when a majority of the members
// (this one included) had last been heard from in its term, and how many raft ticks have
// passed since. The followers' messages are dated as they arrive, so a leader whose own
// loop runs late still sees its quorum; and the ticks are raft's clock, which a process
// too busy to tick on time slows down as it slows raft's CheckQuorum. A leader that has
// not heard from a majority for an election timeout of ticks is cut off, or about to step
// down.
func (n *Node) QuorumContact() (at time.Time, ticksAgo uint64, ok bool) {
	table := n.contact.Load()
	if table == nil || n.leaderTerm.Load() == 0 {
		return time.Time{}, 0, false
	}
	now := n.tickCount.Load()
	type mark struct {
		at   int64
		tick uint64
	}
	marks := make([]mark, 0, len(*table))
	for id, c := range *table {
		if id != n.cfg.ID {
			marks = append(marks, mark{c.at.Load(), c.tick.Load()})
		}
	}
	// The majority less this member, which is always in contact with itself.
	need := len(*table) / 2
	if _, self := (*table)[n.cfg.ID]; !self {
		need++
	}
	switch {
	case need == 0:
		return time.Now(), 0, true
	case need > len(marks):
		return time.Unix(0, 0), now, true
	}
	slices.SortFunc(marks, func(a, b mark) int { return compareUint64(b.tick, a.tick) }) // newest first
	m := marks[need-1]                                                                   // the need-th most recent contact
	return time.Unix(0, m.at), now - min(m.tick, now), true
}

// AppliedIndex returns the index of the last entry applied to the state machine.
func (n *Node) AppliedIndex() uint64 { return n.appliedIndex.Load() }

// Status returns this member's view of the cluster.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.status
	// The applied index is fresher than the rest (published once per turn of the loop);
	// what is applied is committed.
	s.AppliedIndex = n.appliedIndex.Load()
	s.CommitIndex = max(s.CommitIndex, s.AppliedIndex)
	s.Members = slices.Clone(s.Members)
	return s
}

// Members returns the applied members sorted by ID.
func (n *Node) Members() []Peer {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.status.Members)
}

// Leadership returns the channel of leader changes seen by this member. It holds the
// latest change only (an unread change is replaced by a newer one) and is never closed.
// A change to Leader 0 means the member lost its leader. The same channel is returned on
// every call: it has one consumer.
func (n *Node) Leadership() <-chan LeaderChange { return n.leaderc }

// TransferLeadership asks the leader to hand leadership to member to, and waits until this
// member sees to as leader. It re-asks every election timeout until ctx ends.
func (n *Node) TransferLeadership(ctx context.Context, to uint64) error {
	if !slices.ContainsFunc(n.Members(), func(p Peer) bool { return p.ID == to }) {
		return fmt.Errorf("transfer leadership to %x: %w", to, ErrMemberNotFound)
	}
	retry := time.NewTicker(n.cfg.TickInterval * time.Duration(n.cfg.ElectionTicks))
	defer retry.Stop()
	for {
		n.mu.Lock()
		lead, wait := n.status.Leader, n.leaderWait
		n.mu.Unlock()
		if lead == to {
			return nil
		}
		if lead != raft.None {
			select {
			case n.transferc <- to:
			case <-ctx.Done():
				return n.ctxErr(ctx)
			case <-n.stopping:
				return n.stoppedErr()
			}
		}
		select {
		case <-wait:
		case <-retry.C:
		case <-ctx.Done():
			return fmt.Errorf("transfer leadership to %x: %w", to, n.ctxErr(ctx))
		case <-n.stopping:
			return n.stoppedErr()
		}
	}
}

// AddMember adds p to the cluster and waits until this member has applied the change.
// Start the new member with Config.Join afterwards. ErrMemberExists for an ID that is or
// was a member. Raft takes one membership change at a time: while another is still being
// applied, this one is dropped and AddMember returns when ctx ends (retry).
func (n *Node) AddMember(ctx context.Context, p Peer) error {
	if err := validatePeer(p); err != nil {
		return fmt.Errorf("add member: %w", err)
	}
	n.mu.Lock()
	_, removed := n.removedIDs[p.ID]
	exists := slices.ContainsFunc(n.status.Members, func(m Peer) bool { return m.ID == p.ID })
	n.mu.Unlock()
	if exists || removed {
		return fmt.Errorf("add member %x: %w", p.ID, ErrMemberExists)
	}
	return n.changeMembership(ctx, &raftpb.ConfChange{
		Type:    raftpb.ConfChangeAddNode.Enum(),
		NodeId:  proto.Uint64(p.ID),
		Context: encodeMember(p),
	})
}

// RemoveMember removes member id from the cluster and waits until this member has applied
// the change. A removed member's Run returns ErrRemoved; its ID is never accepted again.
// ErrMemberNotFound for a non-member, ErrLastMember for the only member. Like AddMember,
// it returns when ctx ends if raft dropped it for a pending change.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	members := n.Members()
	if !slices.ContainsFunc(members, func(m Peer) bool { return m.ID == id }) {
		return fmt.Errorf("remove member %x: %w", id, ErrMemberNotFound)
	}
	if len(members) == 1 {
		return fmt.Errorf("remove member %x: %w", id, ErrLastMember)
	}
	return n.changeMembership(ctx, &raftpb.ConfChange{
		Type:   raftpb.ConfChangeRemoveNode.Enum(),
		NodeId: proto.Uint64(id),
	})
}

func (n *Node) changeMembership(ctx context.Context, cc *raftpb.ConfChange) error {
	if err := n.waitLeader(ctx, nil); err != nil {
		return err
	}
	cc.Id = proto.Uint64(n.ids.next())
	c := &confRequest{cc: cc, ctx: ctx, done: make(chan error, 1)}
	select {
	case n.confc <- c:
	case <-ctx.Done():
		return n.ctxErr(ctx)
	case <-n.stopping:
		return n.stoppedErr()
	}
	select {
	case err := <-c.done:
		return err
	case <-ctx.Done():
		return n.ctxErr(ctx)
	case <-n.stopping:
		select {
		case err := <-c.done:
			return err
		default:
			return n.stoppedErr()
		}
	}
}
