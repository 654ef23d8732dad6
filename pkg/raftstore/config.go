package raftstore

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Peer is one member of the cluster.
type Peer struct {
	// ID is the member's Raft ID: non-zero, never reused by another member.
	ID uint64
	// Addr is host:port of the member's peer gRPC listener.
	Addr string
}

// Config configures a Node. Zero values take the defaults named on each field.
type Config struct {
	// ID is this member's Raft ID. Required, non-zero.
	ID uint64
	// Name is this member's name, used in logs.
	Name string
	// DataDir holds the WAL (DataDir/wal) and the snapshots (DataDir/snap). Required.
	DataDir string
	// Peers is the initial cluster, this member included. It is required for a new member
	// (new cluster or Join); once the data dir holds a log, membership comes from the log and
	// Peers only supplies addresses of members the log has not named yet.
	Peers []Peer
	// Join means this member joins an existing cluster (it must have been added with
	// AddMember first): it starts with an empty log and learns the cluster from the leader.
	Join bool
	// ClusterID identifies the cluster; the caller derives it from the initial cluster. It is
	// written in every WAL segment header and checked on every peer stream, so a data dir or
	// a peer of another cluster is refused. Required, non-zero.
	ClusterID uint64
	// TickInterval is the Raft tick (heartbeat) interval. Default 100ms.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks. Default 10.
	ElectionTicks int
	// HeartbeatTicks is the heartbeat interval in ticks. Default 1.
	HeartbeatTicks int
	// SnapshotEntries is how many applied entries trigger a snapshot and log compaction.
	// Default 10000.
	SnapshotEntries uint64
	// SnapshotCatchUpEntries is how many entries before a snapshot stay in memory after a
	// compaction, so that a slightly lagging follower gets entries rather than a snapshot.
	// Default min(5000, SnapshotEntries).
	SnapshotCatchUpEntries uint64
	// MaxBatchBytes caps the proposal bytes put into one Raft proposal message: concurrent
	// Propose calls are batched up to this size. Default 1 MiB.
	MaxBatchBytes int
	// MaxSizePerMsg caps the entry bytes in one append message to a follower. Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs caps the append messages in flight to one follower. Default 256.
	MaxInflightMsgs int
	// MaxProposalBytes caps the data of one proposal. Default 32 MiB.
	MaxProposalBytes int
	// WALSegmentBytes is the size at which a WAL segment is closed and a new one started.
	// Default 64 MiB.
	WALSegmentBytes int64
	// Logger receives the node's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the node's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// MetricsSubsystem is the metrics subsystem (namespace "berth"). Default "raft".
	MetricsSubsystem string
	// PeerTLS secures the peer transport, both the server (PeerServer, ServePeers) and the
	// dials to other members; nil means plaintext. For mutual TLS set Certificates, RootCAs,
	// ClientCAs and ClientAuth.
	PeerTLS *tls.Config
}

func (c *Config) setDefaults() {
	if c.TickInterval == 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = 10
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = 1
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = 10000
	}
	if c.SnapshotCatchUpEntries == 0 {
		c.SnapshotCatchUpEntries = min(5000, c.SnapshotEntries)
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = 1 << 20
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = 1 << 20
	}
	if c.MaxInflightMsgs == 0 {
		c.MaxInflightMsgs = 256
	}
	if c.MaxProposalBytes == 0 {
		c.MaxProposalBytes = 32 << 20
	}
	if c.WALSegmentBytes == 0 {
		c.WALSegmentBytes = defaultWALSegment
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MetricsSubsystem == "" {
		c.MetricsSubsystem = "raft"
	}
}

// Validate checks the configuration (after defaults) and names the first field at fault.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("raftstore config: %s: %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.ID == 0:
		return bad("ID", "must not be 0")
	case c.DataDir == "":
		return bad("DataDir", "must be set")
	case c.ClusterID == 0:
		return bad("ClusterID", "must not be 0")
	case c.TickInterval < time.Millisecond:
		return bad("TickInterval", "%v is below 1ms", c.TickInterval)
	case c.HeartbeatTicks < 1:
		return bad("HeartbeatTicks", "%d is below 1", c.HeartbeatTicks)
	case c.ElectionTicks <= c.HeartbeatTicks:
		return bad("ElectionTicks", "%d must be above HeartbeatTicks (%d)", c.ElectionTicks, c.HeartbeatTicks)
	case c.SnapshotCatchUpEntries > c.SnapshotEntries:
		return bad("SnapshotCatchUpEntries", "%d is above SnapshotEntries (%d)", c.SnapshotCatchUpEntries, c.SnapshotEntries)
	case c.MaxBatchBytes < 0:
		return bad("MaxBatchBytes", "%d is negative", c.MaxBatchBytes)
	case c.MaxInflightMsgs < 1:
		return bad("MaxInflightMsgs", "%d is below 1", c.MaxInflightMsgs)
	case c.MaxProposalBytes < 1 || c.MaxProposalBytes > maxRecordBytes/2:
		return bad("MaxProposalBytes", "%d is outside 1..%d", c.MaxProposalBytes, maxRecordBytes/2)
	case c.WALSegmentBytes < 4096:
		return bad("WALSegmentBytes", "%d is below 4096", c.WALSegmentBytes)
	}
	seen := make(map[uint64]bool, len(c.Peers))
	for i, p := range c.Peers {
		if err := validatePeer(p); err != nil {
			return bad(fmt.Sprintf("Peers[%d]", i), "%v", err)
		}
		if seen[p.ID] {
			return bad(fmt.Sprintf("Peers[%d]", i), "duplicate ID %d", p.ID)
		}
		seen[p.ID] = true
	}
	if len(c.Peers) > 0 && !seen[c.ID] {
		return bad("Peers", "does not include this member (ID %d)", c.ID)
	}
	return nil
}

// validatePeer checks one member's ID and address.
func validatePeer(p Peer) error {
	if p.ID == 0 {
		return errors.New("ID must not be 0")
	}
	host, port, err := net.SplitHostPort(p.Addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", p.Addr, err)
	}
	if host == "" || port == "" {
		return fmt.Errorf("address %q: want host:port", p.Addr)
	}
	return nil
}
