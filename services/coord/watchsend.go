package coord

import (
	"fmt"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	"github.com/berthdev/berth/services/coord/internal/watch"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// defaultWatchResponseBytes is about the most event bytes a watch response carries: more
// revisions go in further responses, and a single revision larger than this is split into
// fragments for clients that asked for them (WatchRequest.fragment).
const defaultWatchResponseBytes = 1 << 20

// encodedMessage is a message marshalled once and sent as is on every stream that carries
// it (see sendCodec): a watch response shared by every watcher of the same path.
type encodedMessage struct{ b []byte }

// sendCodec is the client API's codec: protobuf, except that an *encodedMessage is sent as
// the bytes it holds. gRPC compresses those per stream as it would any message.
type sendCodec struct{ proto encoding.CodecV2 }

func newSendCodec() sendCodec { return sendCodec{proto: encoding.GetCodecV2(grpcproto.Name)} }

func (c sendCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*encodedMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
	}
	return c.proto.Marshal(v)
}

func (c sendCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

func (c sendCodec) Name() string { return c.proto.Name() }

// watchMemoKey names one encoding of a batch: with or without previous nodes, and the
// leadership its header reports.
type watchMemoKey struct {
	prevNode     bool
	leader, term uint64
}

// eventBytes estimates an event's encoded size (paths, values and some overhead).
func eventBytes(e *coordv1.Event) int {
	n := 32 + len(e.GetNode().GetPath()) + len(e.GetNode().GetValue())
	if p := e.GetPrevNode(); p != nil {
		n += 32 + len(p.GetPath()) + len(p.GetValue())
	}
	return n
}

// withoutPrev returns the event without its previous node (a new event when it has one:
// published events are shared and never modified).
func withoutPrev(e *coordv1.Event) *coordv1.Event {
	if e.PrevNode == nil {
		return e
	}
	return &coordv1.Event{Type: e.Type, Node: e.Node, Revision: e.Revision}
}

func (s *Server) watchResponseBytes() int {
	if s.cfg.watchResponseBytes > 0 {
		return s.cfg.watchResponseBytes
	}
	return defaultWatchResponseBytes
}

// sendBatches sends the batches a watcher got, in order. The usual case, one revision of a
// live watcher, is encoded once per batch and shared by every watcher of the same path.
// Otherwise the revisions are packed into responses of about watchResponseBytes, whole; a
// revision larger than that is split into fragments when the client asked for them, and
// sent whole otherwise.
func (s *Server) sendBatches(stream grpc.ServerStreamingServer[coordv1.WatchResponse], req *coordv1.WatchRequest, bs []*watch.Batch) error {
	limit := s.watchResponseBytes()
	if len(bs) == 1 && len(bs[0].Events) > 0 {
		b := bs[0]
		size := 0
		for _, e := range b.Events {
			size += eventBytes(e)
		}
		if size <= limit {
			key := watchMemoKey{prevNode: req.PrevNode, leader: s.leader.Load(), term: s.term.Load()}
			v := b.Memo(key, func() any {
				evs := b.Events
				if !req.PrevNode {
					evs = make([]*coordv1.Event, len(b.Events))
					for i, e := range b.Events {
						evs[i] = withoutPrev(e)
					}
				}
				resp := &coordv1.WatchResponse{
					Header: &coordv1.ResponseHeader{Revision: b.Rev, MemberId: s.id, LeaderId: key.leader, RaftTerm: key.term},
					Events: evs,
				}
				enc, err := proto.Marshal(resp)
				if err != nil {
					return fmt.Errorf("encode watch response of revision %d: %w", b.Rev, err)
				}
				return &encodedMessage{b: enc}
			})
			m, ok := v.(*encodedMessage)
			if !ok {
				return v.(error)
			}
			if err := stream.SendMsg(m); err != nil {
				return err
			}
			s.metrics.watchEventsSent.Add(float64(len(b.Events)))
			return nil
		}
	}
	var evs []*coordv1.Event
	size := 0
	flush := func(fragment bool) error {
		if len(evs) == 0 {
			return nil
		}
		resp := &coordv1.WatchResponse{Header: s.header(evs[len(evs)-1].Revision), Events: evs, Fragment: fragment}
		if err := stream.Send(resp); err != nil {
			return err
		}
		s.metrics.watchEventsSent.Add(float64(len(evs)))
		evs, size = nil, 0
		return nil
	}
	add := func(e *coordv1.Event, n int) {
		if !req.PrevNode {
			e = withoutPrev(e)
		}
		evs = append(evs, e)
		size += n
	}
	for _, b := range bs {
		bsize := 0
		for _, e := range b.Events {
			bsize += eventBytes(e)
		}
		if size+bsize > limit {
			if err := flush(false); err != nil {
				return err
			}
		}
		if bsize <= limit || !req.Fragment {
			for _, e := range b.Events {
				add(e, 0)
			}
			size += bsize
			continue
		}
		// A revision too large for one response: fragments, each but the last flagged.
		for _, e := range b.Events {
			n := eventBytes(e)
			if len(evs) > 0 && size+n > limit {
				if err := flush(true); err != nil {
					return err
				}
			}
			add(e, n)
		}
		if err := flush(false); err != nil {
			return err
		}
	}
	return flush(false)
}
