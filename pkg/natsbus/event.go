package natsbus

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/proto/subjects"
)

// Header names. The ce-* headers are the CloudEvents 1.0 NATS binding in binary mode; the
// berth-* headers belong to request/reply.
const (
	HeaderSpecVersion = "ce-specversion"
	HeaderID          = "ce-id"
	HeaderSource      = "ce-source"
	HeaderType        = "ce-type"
	HeaderSubject     = "ce-subject"
	HeaderTime        = "ce-time"
	HeaderContentType = "content-type"
	// HeaderStatusCode marks a failure reply; its value is the Code name (CODE_NOT_FOUND)
	// and the body is the berth.common.v1.Status.
	HeaderStatusCode = "berth-status-code"
	// HeaderTimeout carries the time the requester will wait (a Go duration, "1.5s"); the
	// handler's context ends then.
	HeaderTimeout = "berth-timeout"
)

// Header values.
const (
	SpecVersion         = "1.0"
	ContentTypeJSON     = "application/json"
	ContentTypeProtobuf = "application/protobuf"
)

// eventsPrefix is the subject prefix of every event; BERTH_EVENTS captures it.
const eventsPrefix = "berth.v1.events."

// Event is an event to publish on BERTH_EVENTS.
type Event struct {
	// Subject is the NATS subject, from proto/subjects (subjects.DeployEvent("completed",
	// "hotel/search")). It must be under berth.v1.events.
	Subject string
	// ID is ce-id and Nats-Msg-Id. It must be deterministic: the same event published again
	// (a retry, a new leader replaying a transition) must get the same ID so that the
	// stream's duplicate window drops it. Derive it with EventID from parts that identify
	// the transition, never from the clock or a random number.
	ID string
	// Type is ce-type, subjects.EventType(domain, type): dev.berth.deploy.completed.
	Type string
	// Source is ce-source, the publishing component: berth-controller/<replica>.
	Source string
	// ServicePath is ce-subject, the service path the event is about (hotel/search); empty
	// for events about hosts or tasks.
	ServicePath string
	// Time is ce-time; zero means now.
	Time time.Time
	// Data is the payload, sent as its protojson.
	Data proto.Message
}

// EventID derives a deterministic event id from the parts that identify one occurrence of
// an event: for a deploy transition, the deployment id, the event type and the coord
// revision that recorded it (EventID(dep.Id, "completed", strconv.FormatInt(rev, 10))).
// Equal parts give equal ids; parts are length-prefixed, so ("ab", "c") and ("a", "bc")
// differ. The id is 32 hex characters (128 bits of SHA-256).
func EventID(parts ...string) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// message validates e and builds its NATS message.
func (e Event) message() (*nats.Msg, error) {
	if !strings.HasPrefix(e.Subject, eventsPrefix) || strings.Count(e.Subject, ".") < 4 {
		return nil, fmt.Errorf("subject %q: want berth.v1.events.<domain>.<type>.<ids>", e.Subject)
	}
	if err := checkSubject(e.Subject, false); err != nil {
		return nil, err
	}
	if err := checkID(e.ID); err != nil {
		return nil, err
	}
	if e.Type == "" {
		return nil, errors.New("empty type (ce-type)")
	}
	if e.Source == "" {
		return nil, errors.New("empty source (ce-source)")
	}
	if e.Data == nil {
		return nil, errors.New("nil data")
	}
	data, err := protojson.Marshal(e.Data)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", e.Data.ProtoReflect().Descriptor().FullName(), err)
	}
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	msg := nats.NewMsg(e.Subject)
	msg.Header.Set(HeaderSpecVersion, SpecVersion)
	msg.Header.Set(HeaderID, e.ID)
	msg.Header.Set(HeaderSource, e.Source)
	msg.Header.Set(HeaderType, e.Type)
	if e.ServicePath != "" {
		msg.Header.Set(HeaderSubject, e.ServicePath)
	}
	msg.Header.Set(HeaderTime, t.UTC().Format(time.RFC3339Nano))
	msg.Header.Set(HeaderContentType, ContentTypeJSON)
	msg.Data = data
	return msg, nil
}

// PublishEvent publishes e to BERTH_EVENTS and waits for the stream's ack. Nats-Msg-Id is
// e.ID, so publishing the same event again within the duplicate window is acknowledged
// without storing it twice: retrying a PublishEvent that failed is always safe.
func (b *Bus) PublishEvent(ctx context.Context, e Event) error {
	msg, err := e.message()
	if err != nil {
		b.metrics.events.WithLabelValues("error").Inc()
		return fmt.Errorf("publish event %s: %w", e.Subject, err)
	}
	ack, err := b.js.PublishMsg(ctx, msg, jetstream.WithMsgID(e.ID), jetstream.WithExpectStream(subjects.StreamEvents))
	if err != nil {
		b.metrics.events.WithLabelValues("error").Inc()
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			return fmt.Errorf("publish event %s: no stream answered (is %s missing?): %w", e.Subject, subjects.StreamEvents, err)
		}
		return fmt.Errorf("publish event %s: %w", e.Subject, err)
	}
	if ack.Duplicate {
		b.metrics.events.WithLabelValues("duplicate").Inc()
	} else {
		b.metrics.events.WithLabelValues("ok").Inc()
	}
	return nil
}

// CloudEvent is a received event: its CloudEvents attributes and its data, still JSON.
// Encoded with encoding/json it is the event in CloudEvents structured mode (one JSON
// object with the attributes and "data").
type CloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"`
	Time            time.Time       `json:"time,omitzero"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`
}

// DecodeEvent reads the CloudEvent of a core NATS message.
func DecodeEvent(msg *nats.Msg) (CloudEvent, error) {
	return decodeEvent(msg.Subject, msg.Header, msg.Data)
}

// DecodeStreamEvent reads the CloudEvent of a message received from a JetStream consumer.
func DecodeStreamEvent(msg jetstream.Msg) (CloudEvent, error) {
	return decodeEvent(msg.Subject(), msg.Headers(), msg.Data())
}

// decodeEvent checks the headers that make a CloudEvent: ce-specversion 1.0, ce-id,
// ce-source and ce-type present, ce-time (when present) RFC 3339, content-type (when
// present) application/json, and data that is JSON.
func decodeEvent(subject string, h nats.Header, data []byte) (CloudEvent, error) {
	ce := CloudEvent{
		SpecVersion:     h.Get(HeaderSpecVersion),
		ID:              h.Get(HeaderID),
		Source:          h.Get(HeaderSource),
		Type:            h.Get(HeaderType),
		Subject:         h.Get(HeaderSubject),
		DataContentType: h.Get(HeaderContentType),
	}
	fail := func(format string, args ...any) (CloudEvent, error) {
		return CloudEvent{}, fmt.Errorf("decode event %s: %s", subject, fmt.Sprintf(format, args...))
	}
	switch {
	case ce.SpecVersion == "":
		return fail("missing %s header", HeaderSpecVersion)
	case ce.SpecVersion != SpecVersion:
		return fail("%s %q, want %s", HeaderSpecVersion, ce.SpecVersion, SpecVersion)
	case ce.ID == "":
		return fail("missing %s header", HeaderID)
	case ce.Source == "":
		return fail("missing %s header", HeaderSource)
	case ce.Type == "":
		return fail("missing %s header", HeaderType)
	}
	if ts := h.Get(HeaderTime); ts != "" {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return fail("%s %q is not RFC 3339", HeaderTime, ts)
		}
		ce.Time = t
	}
	if ce.DataContentType != "" && ce.DataContentType != ContentTypeJSON {
		return fail("%s %q, want %s", HeaderContentType, ce.DataContentType, ContentTypeJSON)
	}
	if len(data) > 0 {
		if !json.Valid(data) {
			return fail("data is not JSON")
		}
		ce.Data = json.RawMessage(append([]byte(nil), data...))
	}
	return ce, nil
}

// UnmarshalEventData decodes ce's data into m. Fields m does not know are ignored, since
// schemas only grow and an older consumer must read newer events.
func UnmarshalEventData(ce CloudEvent, m proto.Message) error {
	if len(ce.Data) == 0 {
		return fmt.Errorf("decode event %s data: empty", ce.ID)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(ce.Data, m); err != nil {
		return fmt.Errorf("decode event %s data as %s: %w", ce.ID, m.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// checkSubject checks that s is a valid subject: non-empty tokens without spaces or
// control characters, and no wildcards unless wildcards is set.
func checkSubject(s string, wildcards bool) error {
	if s == "" {
		return errors.New("empty subject")
	}
	if strings.HasPrefix(s, "$") {
		return fmt.Errorf("subject %q: starts with $", s)
	}
	toks := strings.Split(s, ".")
	for i, tok := range toks {
		if tok == "" {
			return fmt.Errorf("subject %q: empty token", s)
		}
		if strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("subject %q: space or control character", s)
		}
		switch {
		case tok == "*" || tok == ">":
			if !wildcards {
				return fmt.Errorf("subject %q: wildcard in a subject to publish to", s)
			}
			if tok == ">" && i != len(toks)-1 {
				return fmt.Errorf("subject %q: > is not the last token", s)
			}
		case strings.ContainsAny(tok, "*>"):
			return fmt.Errorf("subject %q: wildcard inside token %q", s, tok)
		}
	}
	return nil
}

// checkID checks a ce-id: 1 to 256 printable characters without spaces.
func checkID(id string) error {
	if id == "" {
		return errors.New("empty id (ce-id)")
	}
	if len(id) > 256 {
		return fmt.Errorf("id (ce-id) of %d bytes, want at most 256", len(id))
	}
	if strings.ContainsFunc(id, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("id (ce-id) %q: space or control character", id)
	}
	return nil
}
