package raftstore

import (
	"fmt"
	"maps"
	"slices"

	raftv1 "github.com/berthdev/berth/proto/raft/v1"
	"google.golang.org/protobuf/proto"
)

// membership is the applied set of members with their addresses, and the IDs removed so
// far. It changes only by applying configuration changes or restoring a snapshot, so it
// is the same on every member at the same index.
type membership struct {
	members map[uint64]string
	removed map[uint64]bool
}

func newMembership() *membership {
	return &membership{members: map[uint64]string{}, removed: map[uint64]bool{}}
}

func (m *membership) clone() *membership {
	return &membership{members: maps.Clone(m.members), removed: maps.Clone(m.removed)}
}

// peers returns the members sorted by ID.
func (m *membership) peers() []Peer {
	out := make([]Peer, 0, len(m.members))
	for id, addr := range m.members {
		out = append(out, Peer{ID: id, Addr: addr})
	}
	slices.SortFunc(out, func(a, b Peer) int { return compareUint64(a.ID, b.ID) })
	return out
}

func (m *membership) marshal() ([]byte, error) {
	pb := &raftv1.Membership{}
	for _, p := range m.peers() {
		pb.Members = append(pb.Members, &raftv1.Member{Id: p.ID, Addr: p.Addr})
	}
	pb.Removed = slices.Sorted(maps.Keys(m.removed))
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(pb)
	if err != nil {
		return nil, fmt.Errorf("encode membership: %w", err)
	}
	return b, nil
}

func unmarshalMembership(b []byte) (*membership, error) {
	pb := &raftv1.Membership{}
	if err := proto.Unmarshal(b, pb); err != nil {
		return nil, fmt.Errorf("decode membership: %w", err)
	}
	m := newMembership()
	for _, mb := range pb.GetMembers() {
		if mb.GetId() == 0 {
			return nil, fmt.Errorf("decode membership: member with ID 0")
		}
		m.members[mb.GetId()] = mb.GetAddr()
	}
	for _, id := range pb.GetRemoved() {
		m.removed[id] = true
	}
	return m, nil
}

// encodeMember is the context of a configuration change that adds or updates p.
func encodeMember(p Peer) []byte {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&raftv1.Member{Id: p.ID, Addr: p.Addr})
	return b
}

func decodeMember(b []byte) (Peer, error) {
	pb := &raftv1.Member{}
	if err := proto.Unmarshal(b, pb); err != nil {
		return Peer{}, fmt.Errorf("decode member: %w", err)
	}
	return Peer{ID: pb.GetId(), Addr: pb.GetAddr()}, nil
}
