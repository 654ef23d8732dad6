package natsbus

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	commonv1 "github.com/berthdev/berth/proto/common/v1"
)

// Meta is the CloudEvents metadata of a received command, request or reply.
type Meta struct {
	// ID is ce-id; a retried command carries the same id, so handlers dedupe on it.
	ID string
	// Source is ce-source, the sender.
	Source string
	// Type is ce-type: the full protobuf name of the payload (berth.agent.v1.StepRequest).
	Type string
	// ServicePath is ce-subject, the service path the message is about, if any.
	ServicePath string
	// Time is ce-time.
	Time time.Time
	// Subject is the NATS subject the message came on.
	Subject string
}

type metaKey struct{}

// MetaFromContext returns the metadata of the message a handler was called for.
func MetaFromContext(ctx context.Context) (Meta, bool) {
	m, ok := ctx.Value(metaKey{}).(Meta)
	return m, ok
}

func readMeta(msg *nats.Msg) Meta {
	m := Meta{
		ID:          msg.Header.Get(HeaderID),
		Source:      msg.Header.Get(HeaderSource),
		Type:        msg.Header.Get(HeaderType),
		ServicePath: msg.Header.Get(HeaderSubject),
		Subject:     msg.Subject,
	}
	if t, err := time.Parse(time.RFC3339Nano, msg.Header.Get(HeaderTime)); err == nil {
		m.Time = t
	}
	return m
}

// CallOption sets a ce-* attribute of a command or request.
type CallOption func(*callOptions)

type callOptions struct {
	id          string
	servicePath string
}

// WithID sets ce-id (and, for PublishWork, Nats-Msg-Id). Retries of one command must use
// the same id so the receiver can dedupe; without it a request gets a random id.
func WithID(id string) CallOption { return func(o *callOptions) { o.id = id } }

// WithServicePath sets ce-subject, the service path the command is about.
func WithServicePath(path string) CallOption {
	return func(o *callOptions) { o.servicePath = path }
}

// command builds the binary protobuf message of m with its ce-* headers.
func (b *Bus) command(subject string, m proto.Message, opts []CallOption) (*nats.Msg, error) {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.id == "" {
		o.id = nuid.Next()
	}
	if err := checkID(o.id); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("nil message")
	}
	data, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	msg := nats.NewMsg(subject)
	msg.Header.Set(HeaderSpecVersion, SpecVersion)
	msg.Header.Set(HeaderID, o.id)
	msg.Header.Set(HeaderSource, b.cfg.Source)
	msg.Header.Set(HeaderType, string(m.ProtoReflect().Descriptor().FullName()))
	if o.servicePath != "" {
		msg.Header.Set(HeaderSubject, o.servicePath)
	}
	msg.Header.Set(HeaderTime, time.Now().UTC().Format(time.RFC3339Nano))
	msg.Header.Set(HeaderContentType, ContentTypeProtobuf)
	msg.Data = data
	return msg, nil
}

// Publish sends m as a binary protobuf command on subject with core NATS: fire and forget,
// delivered to whoever subscribes now.
func (b *Bus) Publish(ctx context.Context, subject string, m proto.Message, opts ...CallOption) error {
	if err := checkSubject(subject, false); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	msg, err := b.command(subject, m, opts)
	if err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	if err := b.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// PublishWork stores m as a binary protobuf command in BERTH_WORK (subject under
// berth.v1.work) and waits for the stream's ack. WithID is required: it is ce-id and
// Nats-Msg-Id, so a retried PublishWork is stored once.
func (b *Bus) PublishWork(ctx context.Context, subject string, m proto.Message, opts ...CallOption) error {
	if !strings.HasPrefix(subject, "berth.v1.work.") {
		return fmt.Errorf("publish work %s: subject not under berth.v1.work", subject)
	}
	if err := checkSubject(subject, false); err != nil {
		return fmt.Errorf("publish work %s: %w", subject, err)
	}
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.id == "" {
		return fmt.Errorf("publish work %s: no id (WithID)", subject)
	}
	msg, err := b.command(subject, m, opts)
	if err != nil {
		return fmt.Errorf("publish work %s: %w", subject, err)
	}
	if _, err := b.js.PublishMsg(ctx, msg, jetstream.WithMsgID(o.id)); err != nil {
		return fmt.Errorf("publish work %s: %w", subject, err)
	}
	return nil
}

// Request sends req as a binary protobuf command to subject and decodes the reply into
// resp. Its deadline is ctx's, or Config.RequestTimeout when ctx has none; the handler
// learns it from the berth-timeout header. Failures:
//   - nobody subscribes: "request <subject>: no responders", errors.Is ErrNoResponders,
//     at once rather than at the deadline;
//   - no reply in time: "request <subject>: timeout after <d>", errors.Is ErrTimeout (so is
//     a handler's CODE_DEADLINE_EXCEEDED reply);
//   - the handler failed: "request <subject>: <code words>: <message>", a *StatusError
//     with the handler's code (errors.As, or errors.Is against ErrNotFound and the others).
func (b *Bus) Request(ctx context.Context, subject string, req, resp proto.Message, opts ...CallOption) error {
	class := subjectClass(subject)
	err := b.request(ctx, subject, req, resp, opts)
	outcome := "ok"
	var se *StatusError
	switch {
	case err == nil:
	case errors.Is(err, ErrTimeout):
		outcome = "timeout"
	case errors.As(err, &se):
		outcome = "error"
	case errors.Is(err, ErrNoResponders):
		outcome = "no_responders"
	default:
		outcome = "failed"
	}
	b.metrics.requests.WithLabelValues(class, outcome).Inc()
	return err
}

func (b *Bus) request(ctx context.Context, subject string, req, resp proto.Message, opts []CallOption) error {
	if err := checkSubject(subject, false); err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if resp == nil {
		return fmt.Errorf("request %s: nil response message", subject)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.cfg.RequestTimeout)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	timeout := time.Until(dl)
	if timeout <= 0 {
		return fmt.Errorf("request %s: %w after 0s", subject, ErrTimeout)
	}
	msg, err := b.command(subject, req, opts)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	msg.Header.Set(HeaderTimeout, timeout.String())
	start := time.Now()
	reply, err := b.nc.RequestMsgWithContext(ctx, msg)
	switch {
	case err == nil:
		b.metrics.duration.WithLabelValues(subjectClass(subject)).Observe(time.Since(start).Seconds())
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("request %s: %w", subject, ErrNoResponders)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("request %s: %w after %s", subject, ErrTimeout, timeout.Round(time.Millisecond))
	default:
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if name := reply.Header.Get(HeaderStatusCode); name != "" {
		st := &commonv1.Status{}
		if err := proto.Unmarshal(reply.Data, st); err != nil {
			st = &commonv1.Status{Message: fmt.Sprintf("undecodable status body: %v", err)}
		}
		if code, ok := parseCode(name); ok && st.GetCode() == commonv1.Code_CODE_UNSPECIFIED {
			st.Code = code
		}
		return fmt.Errorf("request %s: %w", subject, FromStatus(st))
	}
	if err := proto.Unmarshal(reply.Data, resp); err != nil {
		return fmt.Errorf("request %s: decode reply as %s: %w", subject, resp.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// HandlerFunc answers one request. Its error is sent back as a berth.common.v1.Status:
// return a *StatusError (Errorf) to choose the code; any other error is CODE_INTERNAL
// (see StatusOf).
type HandlerFunc func(ctx context.Context, req proto.Message) (proto.Message, error)

// SubscribeOption changes how a subscription runs its handler.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	concurrency int
}

// WithConcurrency lets up to n handler calls of the subscription run at once, each in its
// own goroutine (which Bus.Close waits for). The default, 1, runs them one after the other
// in the order the messages came.
func WithConcurrency(n int) SubscribeOption {
	return func(o *subscribeOptions) { o.concurrency = max(n, 1) }
}

// Subscription is a subscription started by Handle or Subscribe. It ends when the context
// given to Handle or Subscribe ends (pending messages are handled first), on Drain or
// Unsubscribe, or when the Bus closes.
type Subscription struct {
	sub  *nats.Subscription
	stop func() bool
}

// Subject is the subscribed subject.
func (s *Subscription) Subject() string { return s.sub.Subject }

// Drain stops taking new messages, handles the ones already received, then unsubscribes.
// It returns at once; Bus.Close waits for the handlers.
func (s *Subscription) Drain() error {
	s.stop()
	if err := s.sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("drain %s: %w", s.sub.Subject, err)
	}
	return nil
}

// Unsubscribe stops at once; messages received but not yet handled are dropped.
func (s *Subscription) Unsubscribe() error {
	s.stop()
	if err := s.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("unsubscribe %s: %w", s.sub.Subject, err)
	}
	return nil
}

// subscribe subscribes handle to subject (in queue group queue unless empty), running it as
// opts say, with a context derived from ctx. The subscription drains when ctx ends.
func (b *Bus) subscribe(ctx context.Context, subject, queue string, opts []SubscribeOption, handle func(context.Context, *nats.Msg)) (*Subscription, error) {
	if err := checkSubject(subject, true); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o := subscribeOptions{concurrency: 1}
	for _, opt := range opts {
		opt(&o)
	}
	cb := func(msg *nats.Msg) { handle(ctx, msg) }
	if o.concurrency > 1 {
		sem := make(chan struct{}, o.concurrency)
		cb = func(msg *nats.Msg) {
			// The NATS dispatch goroutine blocks here while n handlers run, so messages
			// queue in the subscription (and count against its pending limits) rather than
			// in goroutines.
			sem <- struct{}{}
			b.handlers.Add(1)
			go func() {
				defer b.handlers.Done()
				defer func() { <-sem }()
				handle(ctx, msg)
			}()
		}
	}
	var (
		sub *nats.Subscription
		err error
	)
	if queue == "" {
		sub, err = b.nc.Subscribe(subject, cb)
	} else {
		sub, err = b.nc.QueueSubscribe(subject, queue, cb)
	}
	if err != nil {
		return nil, err
	}
	// The flush makes the subscription known to the server when subscribe returns, so a
	// request sent right after finds it. While reconnecting it is skipped: the client
	// subscribes again once connected.
	fctx, cancel := context.WithTimeout(ctx, b.cfg.ConnectTimeout)
	err = b.nc.FlushWithContext(fctx)
	cancel()
	if err != nil && b.nc.IsConnected() {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("flush subscription: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = sub.Drain() })
	return &Subscription{sub: sub, stop: stop}, nil
}

// Handle answers requests on subject (in queue group queue, so that replicas share them;
// empty for every subscriber to get each request). Each request is decoded into a new
// message of reqType's type and fn is called with a context that carries its Meta
// (MetaFromContext) and ends at the requester's deadline or when ctx ends. fn's reply is
// sent as binary protobuf; its error as a Status with the berth-status-code header. A
// request that does not decode is answered CODE_INVALID_ARGUMENT without calling fn; a
// panic in fn is answered CODE_INTERNAL and logged. The subscription drains when ctx ends.
func (b *Bus) Handle(ctx context.Context, subject, queue string, reqType proto.Message, fn HandlerFunc, opts ...SubscribeOption) (*Subscription, error) {
	if reqType == nil || fn == nil {
		return nil, fmt.Errorf("handle %s: nil request type or handler", subject)
	}
	class := subjectClass(subject)
	sub, err := b.subscribe(ctx, subject, queue, opts, func(ctx context.Context, msg *nats.Msg) {
		b.serve(ctx, class, msg, reqType, fn)
	})
	if err != nil {
		return nil, fmt.Errorf("handle %s: %w", subject, err)
	}
	return sub, nil
}

// HandleTyped is Handle for a handler with concrete message types:
//
//	natsbus.HandleTyped(ctx, bus, subjects.RPCPlace, "scheduler",
//		func(ctx context.Context, req *schedv1.PlaceRequest) (*schedv1.PlaceResponse, error) { ... })
func HandleTyped[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](ctx context.Context, b *Bus, subject, queue string, fn func(context.Context, PReq) (Resp, error), opts ...SubscribeOption) (*Subscription, error) {
	return b.Handle(ctx, subject, queue, PReq(new(Req)), func(ctx context.Context, req proto.Message) (proto.Message, error) {
		resp, err := fn(ctx, req.(PReq))
		if err != nil {
			return nil, err
		}
		return resp, nil
	}, opts...)
}

func (b *Bus) serve(ctx context.Context, class string, msg *nats.Msg, reqType proto.Message, fn HandlerFunc) {
	if msg.Reply == "" {
		b.metrics.handled.WithLabelValues(class, "bad_request").Inc()
		b.log.Warn("request without reply subject dropped", "subject", msg.Subject)
		return
	}
	meta := readMeta(msg)
	req := reqType.ProtoReflect().New().Interface()
	var (
		resp proto.Message
		err  error
	)
	if ct := msg.Header.Get(HeaderContentType); ct != "" && ct != ContentTypeProtobuf {
		err = Errorf(commonv1.Code_CODE_INVALID_ARGUMENT, "%s %q, want %s", HeaderContentType, ct, ContentTypeProtobuf)
	} else if uerr := proto.Unmarshal(msg.Data, req); uerr != nil {
		err = Errorf(commonv1.Code_CODE_INVALID_ARGUMENT, "decode %s: %v", req.ProtoReflect().Descriptor().FullName(), uerr)
	}
	outcome := "bad_request"
	if err == nil {
		hctx := context.WithValue(ctx, metaKey{}, meta)
		if d, perr := time.ParseDuration(msg.Header.Get(HeaderTimeout)); perr == nil && d > 0 {
			var cancel context.CancelFunc
			hctx, cancel = context.WithTimeout(hctx, d)
			defer cancel()
		}
		resp, err = b.call(hctx, msg.Subject, fn, req)
		outcome = "ok"
		if err != nil {
			outcome = "error"
		}
	}
	b.metrics.handled.WithLabelValues(class, outcome).Inc()
	// The reply is about what the request was about.
	ropts := []CallOption{WithServicePath(meta.ServicePath)}
	var reply *nats.Msg
	if err != nil {
		st := StatusOf(err)
		reply, err = b.command(msg.Reply, st, ropts)
		if err == nil {
			reply.Header.Set(HeaderStatusCode, st.GetCode().String())
		}
	} else {
		if resp == nil {
			// An empty body decodes as an empty message of whatever type the caller wants.
			resp = &emptypb.Empty{}
		}
		reply, err = b.command(msg.Reply, resp, ropts)
	}
	if err == nil {
		err = msg.RespondMsg(reply)
	}
	if err != nil {
		b.log.Warn("reply not sent", "subject", msg.Subject, "id", meta.ID, "err", err)
	}
}

// call runs fn and turns a panic into a CODE_INTERNAL error.
func (b *Bus) call(ctx context.Context, subject string, fn HandlerFunc, req proto.Message) (resp proto.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			b.log.Error("handler panicked", "subject", subject, "panic", r, "stack", string(debug.Stack()))
			resp, err = nil, Errorf(commonv1.Code_CODE_INTERNAL, "handler of %s panicked: %v", subject, r)
		}
	}()
	return fn(ctx, req)
}

// Subscribe receives binary protobuf commands published on subject (Publish) in queue
// group queue (empty: every subscriber gets each message). Each message is decoded into a
// new message of msgType's type and fn is called with a context carrying its Meta; a
// message that does not decode is logged and dropped, and so is fn's error. The
// subscription drains when ctx ends.
func (b *Bus) Subscribe(ctx context.Context, subject, queue string, msgType proto.Message, fn func(context.Context, proto.Message) error, opts ...SubscribeOption) (*Subscription, error) {
	if msgType == nil || fn == nil {
		return nil, fmt.Errorf("subscribe %s: nil message type or handler", subject)
	}
	class := subjectClass(subject)
	sub, err := b.subscribe(ctx, subject, queue, opts, func(ctx context.Context, msg *nats.Msg) {
		meta := readMeta(msg)
		m := msgType.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(msg.Data, m); err != nil {
			b.metrics.handled.WithLabelValues(class, "bad_request").Inc()
			b.log.Warn("undecodable message dropped", "subject", msg.Subject, "id", meta.ID, "err", err)
			return
		}
		_, err := b.call(context.WithValue(ctx, metaKey{}, meta), msg.Subject, func(ctx context.Context, m proto.Message) (proto.Message, error) {
			return nil, fn(ctx, m)
		}, m)
		if err != nil {
			b.metrics.handled.WithLabelValues(class, "error").Inc()
			b.log.Warn("message handler failed", "subject", msg.Subject, "id", meta.ID, "err", err)
			return
		}
		b.metrics.handled.WithLabelValues(class, "ok").Inc()
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	return sub, nil
}

// SubscribeTyped is Subscribe for a handler with a concrete message type.
func SubscribeTyped[M any, PM interface {
	*M
	proto.Message
}](ctx context.Context, b *Bus, subject, queue string, fn func(context.Context, PM) error, opts ...SubscribeOption) (*Subscription, error) {
	return b.Subscribe(ctx, subject, queue, PM(new(M)), func(ctx context.Context, m proto.Message) error {
		return fn(ctx, m.(PM))
	}, opts...)
}
