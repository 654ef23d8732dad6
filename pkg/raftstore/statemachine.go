// Package raftstore is a replicated state machine engine on go.etcd.io/raft/v3: one event
// loop per node, its own write-ahead log with group commit, snapshots with log compaction,
// a gRPC peer transport, ReadIndex reads and membership changes. The state it replicates is
// a StateMachine supplied by the caller; raftstore knows nothing of what the entries mean.
package raftstore

import "io"

// Entry is one committed proposal handed to the state machine, in log order.
type Entry struct {
	// Index is the Raft log index of the entry; strictly increasing across Apply calls.
	Index uint64
	// Term is the Raft term in which the entry was proposed.
	Term uint64
	// Data is the bytes given to Propose.
	Data []byte
}

// StateMachine is the replicated state the engine drives. The engine calls its methods from
// one goroutine (the apply loop), never concurrently with each other.
type StateMachine interface {
	// Apply applies one committed entry. It must be deterministic: the same entries in the same
	// order give the same state on every member. The result is handed back to the Propose call
	// that proposed the entry, if it was proposed on this member and is still waiting.
	Apply(e Entry) any
	// Snapshot captures the state as of the last applied entry. The returned source is written
	// out later, possibly on another goroutine while Apply continues, so it must not share
	// mutable state with the live state machine. The engine closes it.
	Snapshot() (SnapshotSource, error)
	// Restore replaces the whole state with the snapshot read from r (written by a
	// SnapshotSource of the same state machine type).
	Restore(r io.Reader) error
}

// SnapshotSource is a point-in-time copy of a state machine that can be serialized.
type SnapshotSource interface {
	io.WriterTo
	io.Closer
}
