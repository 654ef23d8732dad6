package tree

import (
	"bytes"
	"testing"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"google.golang.org/protobuf/proto"
)

// FuzzDecodePut checks the hand-written put decoder against proto.Unmarshal: both accept
// or both refuse, and they read the same fields.
func FuzzDecodePut(f *testing.F) {
	for _, r := range []*coordv1.PutRequest{
		{Path: "/a", Value: []byte("v"), RequestId: "r"},
		{Path: "/q/job-", Sequential: true, SessionId: 7, ExpectedVersion: ptr[int64](0)},
		{Path: "/x", ExpectedVersion: ptr[int64](-3), Value: bytes.Repeat([]byte{0}, 300)},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0x02, 0xff, 0xfe})      // path not UTF-8
	f.Add([]byte{0x12, 0x05, 'a'})             // truncated value
	f.Add([]byte{0x10, 0x01, 0x0a, 0x01, '/'}) // a varint where bytes belong, then the path
	f.Add([]byte{0x00, 0x01})                  // field number 0
	f.Add([]byte{0x3a, 0x01, 'x', 0x18, 0x05}) // an unknown field, then expected_version
	f.Fuzz(func(t *testing.T, b []byte) {
		got, gerr := decodePut(b)
		want := &coordv1.PutRequest{}
		werr := proto.Unmarshal(b, want)
		if (gerr != nil) != (werr != nil) {
			t.Fatalf("decodePut error %v, proto.Unmarshal error %v", gerr, werr)
		}
		if gerr != nil {
			return
		}
		want.ProtoReflect().SetUnknown(nil)
		if !proto.Equal(got, want) {
			t.Fatalf("decodePut: got %v, want %v", got, want)
		}
	})
}
