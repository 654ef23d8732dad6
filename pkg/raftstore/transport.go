package raftstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	raftv1 "github.com/berthdev/berth/proto/raft/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const (
	// peerQueueLen is how many messages wait for one peer before new ones are dropped (and
	// the peer reported unreachable to raft, which then slows down and retries).
	peerQueueLen = 4096
	// peerBatchBytes caps one SendMessages request (a single larger message still goes).
	peerBatchBytes = 4 << 20
	// snapshotChunkBytes is the size of one snapshot chunk on the wire.
	snapshotChunkBytes = 512 << 10
)

// transport sends raft messages to the other members over gRPC: per peer, one long-lived
// client stream for messages and one goroutine for snapshots. It is started by Run and its
// goroutines end with Run's context.
type transport struct {
	n        *Node
	dialOpts []grpc.DialOption

	mu sync.Mutex
	// ctx and wg are Run's: senders created later (new members) live and end with them.
	ctx   context.Context
	wg    *sync.WaitGroup
	peers map[uint64]*peerSender
	addrs map[uint64]string // applied membership, falling back to Config.Peers
}

func newTransport(n *Node) *transport {
	creds := insecure.NewCredentials()
	if n.cfg.PeerTLS != nil {
		creds = credentials.NewTLS(n.cfg.PeerTLS)
	}
	t := &transport{
		n: n,
		dialOpts: []grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: backoff.Config{
					BaseDelay:  n.cfg.TickInterval,
					Multiplier: 1.6,
					Jitter:     0.2,
					MaxDelay:   n.electionTimeout(),
				},
				MinConnectTimeout: max(time.Second, n.electionTimeout()),
			}),
		},
		peers: map[uint64]*peerSender{},
		addrs: map[uint64]string{},
	}
	for _, p := range n.cfg.Peers {
		t.addrs[p.ID] = p.Addr
	}
	for id, addr := range n.members.members {
		t.addrs[id] = addr
	}
	return t
}

func (n *Node) electionTimeout() time.Duration {
	return n.cfg.TickInterval * time.Duration(n.cfg.ElectionTicks)
}

func (t *transport) start(ctx context.Context, wg *sync.WaitGroup) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ctx, t.wg = ctx, wg
}

// syncPeers takes the addresses of the applied membership: senders of removed members
// stop, senders whose member moved are restarted on their next message.
func (t *transport) syncPeers(m *membership) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, addr := range m.members {
		t.addrs[id] = addr
	}
	for id := range m.removed {
		delete(t.addrs, id)
	}
	for id, ps := range t.peers {
		if addr, ok := t.addrs[id]; !ok || addr != ps.addr {
			ps.cancel()
			delete(t.peers, id)
		}
	}
}

// peer returns the sender for id, starting it if needed; nil when the address of id is
// unknown or the transport is not running.
func (t *transport) peer(id uint64) *peerSender {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ps, ok := t.peers[id]; ok {
		return ps
	}
	addr, ok := t.addrs[id]
	if !ok || t.ctx == nil || t.ctx.Err() != nil {
		return nil
	}
	conn, err := grpc.NewClient(addr, t.dialOpts...)
	if err != nil {
		t.n.logger.Error("raftstore: dial peer", "peer", id, "addr", addr, "err", err)
		return nil
	}
	ctx, cancel := context.WithCancel(t.ctx)
	ps := &peerSender{
		t:      t,
		id:     id,
		addr:   addr,
		conn:   conn,
		client: raftv1.NewTransportServiceClient(conn),
		msgc:   make(chan []byte, peerQueueLen),
		snapc:  make(chan snapshotJob, 1),
		cancel: cancel,
	}
	t.peers[id] = ps
	t.wg.Go(func() {
		var wg sync.WaitGroup
		wg.Go(func() { ps.runSnapshots(ctx) })
		ps.runMessages(ctx)
		wg.Wait()
		conn.Close()
	})
	return ps
}

// send queues one marshalled message for id without blocking. It reports false when the
// message was dropped.
func (t *transport) send(id uint64, b []byte) bool {
	ps := t.peer(id)
	if ps == nil {
		return false
	}
	select {
	case ps.msgc <- b:
		return true
	default:
		return false
	}
}

// snapshotJob is one MsgSnap to stream.
type snapshotJob struct {
	msg   []byte // marshalled MsgSnap
	path  string // the snapshot file
	index uint64
}

func (t *transport) sendSnapshot(id uint64, job snapshotJob) error {
	ps := t.peer(id)
	if ps == nil {
		return fmt.Errorf("no address for member %x", id)
	}
	select {
	case ps.snapc <- job:
		return nil
	default:
		return fmt.Errorf("a snapshot to member %x is already in flight", id)
	}
}

// peerSender owns the streams to one member.
type peerSender struct {
	t      *transport
	id     uint64
	addr   string
	conn   *grpc.ClientConn
	client raftv1.TransportServiceClient
	msgc   chan []byte
	snapc  chan snapshotJob
	cancel context.CancelFunc
}

// report tells the raft loop about the peer; it waits only for snapshot outcomes, which
// raft must get.
func (ps *peerSender) report(ctx context.Context, kind reportKind) {
	r := peerReport{id: ps.id, kind: kind}
	if kind == reportSnapshotFinish || kind == reportSnapshotFailure || kind == reportRemoved {
		select {
		case ps.t.n.reportc <- r:
		case <-ctx.Done():
		}
		return
	}
	select {
	case ps.t.n.reportc <- r:
	default:
	}
}

// runMessages keeps one SendMessages stream open to the peer and pipelines the queued
// messages on it, reconnecting with jittered exponential backoff.
func (ps *peerSender) runMessages(ctx context.Context) {
	n := ps.t.n
	minDelay, maxDelay := n.cfg.TickInterval, n.electionTimeout()
	delay := minDelay
	for {
		sent, err := ps.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		if sent {
			delay = minDelay
		}
		if status.Code(err) == codes.PermissionDenied {
			n.logger.Warn("raftstore: peer refuses this member as removed", "peer", ps.id, "err", err)
			ps.report(ctx, reportRemoved)
			return
		}
		n.logger.Debug("raftstore: peer stream broken", "peer", ps.id, "addr", ps.addr, "err", err)
		ps.report(ctx, reportUnreachable)
		// Messages queued for a dead stream are stale by the time it is back; raft resends
		// what matters.
		for drained := false; !drained; {
			select {
			case <-ps.msgc:
			default:
				drained = true
			}
		}
		d := delay/2 + rand.N(delay/2+1)
		delay = min(delay*2, maxDelay)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return
		}
	}
}

// stream runs one SendMessages stream until it breaks or ctx ends. sent reports whether
// any request went out.
func (ps *peerSender) stream(ctx context.Context) (sent bool, err error) {
	n := ps.t.n
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := ps.client.SendMessages(sctx)
	if err != nil {
		return false, err
	}
	for {
		var first []byte
		select {
		case <-ctx.Done():
			return sent, ctx.Err()
		case first = <-ps.msgc:
		}
		req := &raftv1.SendMessagesRequest{ClusterId: n.cfg.ClusterID, From: n.cfg.ID, To: ps.id, Messages: [][]byte{first}}
		size := len(first)
	batch:
		for size < peerBatchBytes && len(req.Messages) < peerQueueLen {
			select {
			case b := <-ps.msgc:
				req.Messages = append(req.Messages, b)
				size += len(b)
			default:
				break batch
			}
		}
		if err := st.Send(req); err != nil {
			if _, rerr := st.CloseAndRecv(); rerr != nil {
				return sent, rerr
			}
			return sent, err
		}
		sent = true
	}
}

// runSnapshots streams the snapshots raft asks for, one at a time, and reports each
// outcome to raft.
func (ps *peerSender) runSnapshots(ctx context.Context) {
	n := ps.t.n
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-ps.snapc:
			start := time.Now()
			err := ps.sendSnapshot(ctx, job)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				n.logger.Warn("raftstore: send snapshot", "peer", ps.id, "index", job.index, "err", err)
				ps.report(ctx, reportSnapshotFailure)
				ps.report(ctx, reportUnreachable)
				if status.Code(err) == codes.PermissionDenied {
					ps.report(ctx, reportRemoved)
				}
				continue
			}
			n.metrics.snapshotsSent.Inc()
			n.logger.Info("raftstore: snapshot sent", "peer", ps.id, "index", job.index, "duration", time.Since(start))
			ps.report(ctx, reportSnapshotFinish)
		}
	}
}

func (ps *peerSender) sendSnapshot(ctx context.Context, job snapshotJob) error {
	n := ps.t.n
	f, err := os.Open(job.path)
	if err != nil {
		return fmt.Errorf("open snapshot: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("open snapshot: %w", err)
	}
	size := fi.Size()
	// A transfer gets at least a minute, and more for large files at 1 MiB/s.
	timeout := max(time.Minute, time.Duration(size>>20)*time.Second)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := ps.client.SendSnapshot(ctx)
	if err != nil {
		return err
	}
	sendErr := func(err error) error {
		if _, rerr := st.CloseAndRecv(); rerr != nil {
			return rerr
		}
		return err
	}
	hdr := &raftv1.SnapshotHeader{ClusterId: n.cfg.ClusterID, From: n.cfg.ID, To: ps.id, Message: job.msg, Size: uint64(size)}
	if err := st.Send(&raftv1.SendSnapshotRequest{Part: &raftv1.SendSnapshotRequest_Header{Header: hdr}}); err != nil {
		return sendErr(err)
	}
	h := crc32.New(crcTable)
	r := bufio.NewReaderSize(io.TeeReader(f, h), snapshotChunkBytes)
	var sentBytes int64
	for sentBytes < size {
		buf := make([]byte, min(int64(snapshotChunkBytes), size-sentBytes))
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("read snapshot %s: %w", job.path, err)
		}
		if err := st.Send(&raftv1.SendSnapshotRequest{Part: &raftv1.SendSnapshotRequest_Chunk{Chunk: buf}}); err != nil {
			return sendErr(err)
		}
		sentBytes += int64(len(buf))
	}
	if err := st.Send(&raftv1.SendSnapshotRequest{Part: &raftv1.SendSnapshotRequest_Trailer{Trailer: &raftv1.SnapshotTrailer{Crc32C: h.Sum32()}}}); err != nil {
		return sendErr(err)
	}
	_, err = st.CloseAndRecv()
	return err
}

// peerService is the gRPC server side of the transport.
type peerService struct {
	raftv1.UnimplementedTransportServiceServer
	n *Node
}

// checkPeer validates the addressing of an incoming stream.
func (n *Node) checkPeer(clusterID, from, to uint64) error {
	switch {
	case clusterID != n.cfg.ClusterID:
		return status.Errorf(codes.FailedPrecondition, "raftstore: cluster %x, this member belongs to cluster %x", clusterID, n.cfg.ClusterID)
	case to != n.cfg.ID:
		return status.Errorf(codes.FailedPrecondition, "raftstore: stream for member %x reached member %x", to, n.cfg.ID)
	case from == 0:
		return status.Error(codes.InvalidArgument, "raftstore: sender ID is 0")
	}
	n.mu.Lock()
	removed := n.removedIDs[from]
	n.mu.Unlock()
	if removed {
		return status.Errorf(codes.PermissionDenied, "raftstore: member %x was removed from the cluster", from)
	}
	return nil
}

// deliver hands one incoming message to the raft loop.
func (n *Node) deliver(ctx context.Context, m *raftpb.Message) error {
	n.noteContact(m)
	select {
	case n.recvc <- m:
		return nil
	case <-n.stopping:
		return status.Error(codes.Unavailable, "raftstore: member stopped")
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

var errNotRunning = status.Error(codes.Unavailable, "raftstore: member not running")

// SendMessages receives a peer's message stream.
func (s *peerService) SendMessages(stream grpc.ClientStreamingServer[raftv1.SendMessagesRequest, raftv1.SendMessagesResponse]) error {
	n := s.n
	if !n.running.Load() {
		return errNotRunning
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&raftv1.SendMessagesResponse{})
		}
		if err != nil {
			return err
		}
		if err := n.checkPeer(req.GetClusterId(), req.GetFrom(), req.GetTo()); err != nil {
			return err
		}
		for _, b := range req.GetMessages() {
			m := &raftpb.Message{}
			if err := proto.Unmarshal(b, m); err != nil {
				return status.Errorf(codes.InvalidArgument, "raftstore: decode message from %x: %v", req.GetFrom(), err)
			}
			if m.GetTo() != n.cfg.ID || m.GetFrom() != req.GetFrom() {
				return status.Errorf(codes.InvalidArgument, "raftstore: message from %x to %x on the stream from %x", m.GetFrom(), m.GetTo(), req.GetFrom())
			}
			if m.GetType() == raftpb.MsgSnap {
				return status.Error(codes.InvalidArgument, "raftstore: snapshots go through SendSnapshot")
			}
			if err := n.deliver(stream.Context(), m); err != nil {
				return err
			}
		}
	}
}

// SendSnapshot receives one snapshot: it stores the file, checks it and steps the MsgSnap
// into raft.
func (s *peerService) SendSnapshot(stream grpc.ClientStreamingServer[raftv1.SendSnapshotRequest, raftv1.SendSnapshotResponse]) error {
	n := s.n
	if !n.running.Load() {
		return errNotRunning
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return status.Error(codes.InvalidArgument, "raftstore: snapshot stream must start with a header")
	}
	if err := n.checkPeer(hdr.GetClusterId(), hdr.GetFrom(), hdr.GetTo()); err != nil {
		return err
	}
	m := &raftpb.Message{}
	if err := proto.Unmarshal(hdr.GetMessage(), m); err != nil {
		return status.Errorf(codes.InvalidArgument, "raftstore: decode snapshot message: %v", err)
	}
	md := m.GetSnapshot().GetMetadata()
	if m.GetType() != raftpb.MsgSnap || m.GetTo() != n.cfg.ID || m.GetFrom() != hdr.GetFrom() || md.GetIndex() == 0 {
		return status.Errorf(codes.InvalidArgument, "raftstore: snapshot header holds a %s from %x to %x at index %d", m.GetType(), m.GetFrom(), m.GetTo(), md.GetIndex())
	}
	path, err := n.receiveSnapshotFile(stream, hdr.GetSize(), md)
	if err != nil {
		return err
	}
	n.logger.Info("raftstore: snapshot received", "from", hdr.GetFrom(), "index", md.GetIndex(), "bytes", hdr.GetSize(), "file", filepath.Base(path))
	if err := n.deliver(stream.Context(), m); err != nil {
		return err
	}
	return stream.SendAndClose(&raftv1.SendSnapshotResponse{})
}

// receiveSnapshotFile writes the streamed file under a temporary name, checks its size,
// checksums and metadata, and renames it into place.
func (n *Node) receiveSnapshotFile(stream grpc.ClientStreamingServer[raftv1.SendSnapshotRequest, raftv1.SendSnapshotResponse], size uint64, md *raftpb.SnapshotMetadata) (string, error) {
	f, err := os.CreateTemp(n.snapDir, "recv-*"+snapTempSuffix)
	if err != nil {
		return "", status.Errorf(codes.Internal, "raftstore: store snapshot: %v", err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	h := crc32.New(crcTable)
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	var got uint64
	var trailer *raftv1.SnapshotTrailer
	for trailer == nil {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return "", status.Error(codes.InvalidArgument, "raftstore: snapshot stream ended before its trailer")
		}
		if err != nil {
			return "", err
		}
		switch p := req.GetPart().(type) {
		case *raftv1.SendSnapshotRequest_Chunk:
			got += uint64(len(p.Chunk))
			if got > size {
				return "", status.Errorf(codes.InvalidArgument, "raftstore: snapshot longer than the %d bytes announced", size)
			}
			if _, err := w.Write(p.Chunk); err != nil {
				return "", status.Errorf(codes.Internal, "raftstore: store snapshot: %v", err)
			}
		case *raftv1.SendSnapshotRequest_Trailer:
			trailer = p.Trailer
		default:
			return "", status.Error(codes.InvalidArgument, "raftstore: snapshot stream: header after the start, or an empty part")
		}
	}
	if got != size {
		return "", status.Errorf(codes.InvalidArgument, "raftstore: snapshot of %d bytes, %d announced", got, size)
	}
	if err := w.Flush(); err != nil {
		return "", status.Errorf(codes.Internal, "raftstore: store snapshot: %v", err)
	}
	if h.Sum32() != trailer.GetCrc32C() {
		return "", status.Errorf(codes.DataLoss, "raftstore: snapshot checksum %08x, the sender says %08x", h.Sum32(), trailer.GetCrc32C())
	}
	if err := f.Sync(); err != nil {
		return "", status.Errorf(codes.Internal, "raftstore: store snapshot: %v", err)
	}
	if err := f.Close(); err != nil {
		return "", status.Errorf(codes.Internal, "raftstore: store snapshot: %v", err)
	}
	done = true
	sf, err := readSnapshotFile(tmp)
	if err != nil {
		os.Remove(tmp)
		return "", status.Errorf(codes.DataLoss, "raftstore: received snapshot: %v", err)
	}
	if fm := sf.meta.GetMetadata(); fm.GetIndex() != md.GetIndex() || fm.GetTerm() != md.GetTerm() {
		os.Remove(tmp)
		return "", status.Errorf(codes.InvalidArgument, "raftstore: snapshot file holds index %d term %d, the message says %d term %d", fm.GetIndex(), fm.GetTerm(), md.GetIndex(), md.GetTerm())
	}
	path := filepath.Join(n.snapDir, snapshotName(md.GetTerm(), md.GetIndex()))
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", status.Errorf(codes.Internal, "raftstore: store snapshot: %v", err)
	}
	if err := syncDir(n.snapDir); err != nil {
		return "", status.Errorf(codes.Internal, "raftstore: store snapshot: %v", err)
	}
	return path, nil
}

// maxPeerMessageBytes is the largest request the peer server accepts: a batch plus one
// message of a maximal proposal.
func (n *Node) maxPeerMessageBytes() int {
	return peerBatchBytes + int(n.cfg.MaxSizePerMsg) + 2*n.cfg.MaxProposalBytes + (1 << 20)
}

// PeerServerOptions are the gRPC server options the peer service needs: message size
// limits and, with Config.PeerTLS, the TLS credentials. Use them for a server built by the
// caller with RegisterPeerService.
func (n *Node) PeerServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(n.maxPeerMessageBytes()),
		grpc.WaitForHandlers(true),
	}
	if n.cfg.PeerTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(n.cfg.PeerTLS)))
	}
	return opts
}

// RegisterPeerService registers the peer transport service (berth.raft.v1.TransportService)
// on s. The server should be built with PeerServerOptions.
func (n *Node) RegisterPeerService(s grpc.ServiceRegistrar) {
	raftv1.RegisterTransportServiceServer(s, &peerService{n: n})
}

// PeerServer returns a new gRPC server with PeerServerOptions and the peer service
// registered. The caller serves and stops it.
func (n *Node) PeerServer() *grpc.Server {
	s := grpc.NewServer(n.PeerServerOptions()...)
	n.RegisterPeerService(s)
	return s
}

// ServePeers serves the peer service on lis until ctx ends, then stops the server (closing
// lis) and returns nil once every handler has returned.
func (n *Node) ServePeers(ctx context.Context, lis net.Listener) error {
	s := n.PeerServer()
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(lis) }()
	select {
	case <-ctx.Done():
		s.Stop()
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("raftstore: serve peers: %w", err)
	}
}
