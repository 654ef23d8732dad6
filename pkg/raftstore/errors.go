package raftstore

import (
	"errors"
	"fmt"
)

var (
	// ErrStopped is returned by calls on a node whose Run has returned.
	ErrStopped = errors.New("raftstore: node stopped")
	// ErrNoLeader is returned when the cluster had no leader (no quorum) for as long as the
	// caller's context allowed. It is joined with the context's error.
	ErrNoLeader = errors.New("raftstore: no leader")
	// ErrRemoved is returned by Run, and by calls on the node, once this member has been
	// removed from the cluster.
	ErrRemoved = errors.New("raftstore: member removed from the cluster")
	// ErrCorrupt is matched (errors.Is) by every error about damaged persisted data: a bad
	// WAL record in the middle of the log, a snapshot file whose checksum does not match.
	// The concrete error is a *CorruptError that names the file and the offset.
	ErrCorrupt = errors.New("raftstore: corrupt data")
	// ErrClusterMismatch is returned by NewNode when the data dir was written by another
	// cluster or another member.
	ErrClusterMismatch = errors.New("raftstore: data dir belongs to another cluster or member")
	// ErrAbandoned is returned by ProposeUnless and ReadIndexUnless when the caller's
	// abandon channel closed first; a proposal's outcome is then unknown.
	ErrAbandoned = errors.New("raftstore: abandoned by the caller")
	// ErrProposalTooLarge is returned by Propose for data over Config.MaxProposalBytes.
	ErrProposalTooLarge = errors.New("raftstore: proposal too large")
	// ErrMemberExists is returned by AddMember for an ID that is, or was, a member.
	ErrMemberExists = errors.New("raftstore: member exists")
	// ErrMemberNotFound is returned by RemoveMember and TransferLeadership for an ID that is
	// not a member.
	ErrMemberNotFound = errors.New("raftstore: member not found")
	// ErrLastMember is returned by RemoveMember when the member is the only voter left.
	ErrLastMember = errors.New("raftstore: cannot remove the last member")
	// ErrDataDirLocked is returned by NewNode when another node holds the data dir.
	ErrDataDirLocked = errors.New("raftstore: data dir in use by another node")
)

// CorruptError describes damaged persisted data. It matches ErrCorrupt with errors.Is.
type CorruptError struct {
	// File is the path of the damaged file.
	File string
	// Offset is the byte offset of the damaged record, or -1 when it does not apply.
	Offset int64
	// Reason says what is wrong.
	Reason string
}

// Error implements error.
func (e *CorruptError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("raftstore: corrupt file %s: %s", e.File, e.Reason)
	}
	return fmt.Sprintf("raftstore: corrupt record in %s at offset %d: %s", e.File, e.Offset, e.Reason)
}

// Is reports whether target is ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }
