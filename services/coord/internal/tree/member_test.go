package tree

import (
	"bytes"
	"errors"
	"testing"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

func TestMemberRequestRecords(t *testing.T) {
	h := newHarness(t)
	add := &coordv1.MemberAddRequest{Name: "n4", PeerAddr: "127.0.0.1:7386", RequestId: "add-1"}
	remove := &coordv1.MemberRemoveRequest{Id: 42, RequestId: "rm-1"}
	tests := []struct {
		name string
		data func() ([]byte, error)
		want any
	}{
		{"first add", func() ([]byte, error) { return EncodeMemberAdd(add) }, MemberRequestResult{Repeat: false}},
		{"retried add", func() ([]byte, error) { return EncodeMemberAdd(add) }, MemberRequestResult{Repeat: true}},
		{"first remove", func() ([]byte, error) { return EncodeMemberRemove(remove) }, MemberRequestResult{Repeat: false}},
		{"retried remove", func() ([]byte, error) { return EncodeMemberRemove(remove) }, MemberRequestResult{Repeat: true}},
		{"id reused for another add", func() ([]byte, error) {
			return EncodeMemberAdd(&coordv1.MemberAddRequest{Name: "n5", PeerAddr: "127.0.0.1:7388", RequestId: "add-1"})
		}, ErrRequestIDReused},
		{"no request id", func() ([]byte, error) { return EncodeMemberRemove(&coordv1.MemberRemoveRequest{Id: 1}) }, ErrInvalidArgument},
	}
	for _, tt := range tests {
		got := h.apply(tt.data())
		if werr, ok := tt.want.(error); ok {
			if err, _ := got.(error); !errors.Is(err, werr) {
				t.Errorf("%s: got %v, want %v", tt.name, got, werr)
			}
			continue
		}
		if got != tt.want {
			t.Errorf("%s: got %#v, want %#v", tt.name, got, tt.want)
		}
	}
	if rev := h.m.Revision(); rev != 0 {
		t.Errorf("member request records changed the revision to %d, want 0", rev)
	}
	// The records survive a snapshot: a retry after a restore is still a repeat.
	src, err := h.m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := src.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	src.Close()
	h2 := newHarness(t)
	if err := h2.m.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	h2.index = h.index
	if got := h2.apply(EncodeMemberAdd(add)); got != (MemberRequestResult{Repeat: true}) {
		t.Errorf("retried add after restore: got %#v, want a repeat", got)
	}
}
