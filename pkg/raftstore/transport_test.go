package raftstore

import (
	"context"
	"hash/crc32"
	"testing"
	"time"

	raftv1 "github.com/berthdev/berth/proto/raft/v1"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func TestPeerServiceRefusesBadInput(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.start(1, false)
	c.waitLeader()
	conn, err := grpc.NewClient(c.member(1).addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := raftv1.NewTransportServiceClient(conn)
	msg := func(m *raftpb.Message) []byte {
		b, _ := proto.Marshal(m)
		return b
	}
	heartbeat := msg(&raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(2), To: proto.Uint64(1)})
	snapMsg := msg(&raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: proto.Uint64(2), To: proto.Uint64(1),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(5), Term: proto.Uint64(9)}}})

	messageTests := []struct {
		name string
		req  *raftv1.SendMessagesRequest
		want codes.Code
	}{
		{"other cluster", &raftv1.SendMessagesRequest{ClusterId: c.clusterID + 1, From: 2, To: 1, Messages: [][]byte{heartbeat}}, codes.FailedPrecondition},
		{"other member", &raftv1.SendMessagesRequest{ClusterId: c.clusterID, From: 2, To: 3, Messages: [][]byte{heartbeat}}, codes.FailedPrecondition},
		{"sender 0", &raftv1.SendMessagesRequest{ClusterId: c.clusterID, From: 0, To: 1}, codes.InvalidArgument},
		{"garbage message", &raftv1.SendMessagesRequest{ClusterId: c.clusterID, From: 2, To: 1, Messages: [][]byte{{0xff, 0xff, 0xff}}}, codes.InvalidArgument},
		{"message from someone else", &raftv1.SendMessagesRequest{ClusterId: c.clusterID, From: 3, To: 1, Messages: [][]byte{heartbeat}}, codes.InvalidArgument},
		{"snapshot on the message stream", &raftv1.SendMessagesRequest{ClusterId: c.clusterID, From: 2, To: 1, Messages: [][]byte{snapMsg}}, codes.InvalidArgument},
	}
	for _, tt := range messageTests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			st, err := client.SendMessages(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.Send(tt.req)
			_, err = st.CloseAndRecv()
			if got := status.Code(err); got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
		})
	}

	header := func(size uint64) *raftv1.SendSnapshotRequest {
		return &raftv1.SendSnapshotRequest{Part: &raftv1.SendSnapshotRequest_Header{Header: &raftv1.SnapshotHeader{ClusterId: c.clusterID, From: 2, To: 1, Message: snapMsg, Size: size}}}
	}
	chunk := func(b string) *raftv1.SendSnapshotRequest {
		return &raftv1.SendSnapshotRequest{Part: &raftv1.SendSnapshotRequest_Chunk{Chunk: []byte(b)}}
	}
	trailer := func(crc uint32) *raftv1.SendSnapshotRequest {
		return &raftv1.SendSnapshotRequest{Part: &raftv1.SendSnapshotRequest_Trailer{Trailer: &raftv1.SnapshotTrailer{Crc32C: crc}}}
	}
	goodCRC := crc32.Checksum([]byte("not a snapshot file"), crcTable)
	snapshotTests := []struct {
		name string
		reqs []*raftv1.SendSnapshotRequest
		want codes.Code
	}{
		{"no header", []*raftv1.SendSnapshotRequest{chunk("abc")}, codes.InvalidArgument},
		{"longer than announced", []*raftv1.SendSnapshotRequest{header(2), chunk("abc")}, codes.InvalidArgument},
		{"shorter than announced", []*raftv1.SendSnapshotRequest{header(9), chunk("abc"), trailer(0)}, codes.InvalidArgument},
		{"no trailer", []*raftv1.SendSnapshotRequest{header(3), chunk("abc")}, codes.InvalidArgument},
		{"checksum mismatch", []*raftv1.SendSnapshotRequest{header(3), chunk("abc"), trailer(1)}, codes.DataLoss},
		{"not a snapshot file", []*raftv1.SendSnapshotRequest{header(19), chunk("not a snapshot file"), trailer(goodCRC)}, codes.DataLoss},
	}
	for _, tt := range snapshotTests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			st, err := client.SendSnapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range tt.reqs {
				st.Send(r)
			}
			_, err = st.CloseAndRecv()
			if got := status.Code(err); got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	snaps, _ := listSnapshots(c.member(1).node.snapDir)
	if len(snaps) != 0 {
		t.Fatalf("snapshot files after refused transfers: got %d, want 0", len(snaps))
	}
}
