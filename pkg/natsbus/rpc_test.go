package natsbus_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
)

// The tests use event payloads as request and reply types: any proto message will do.

func TestRequestReply(t *testing.T) {
	s := natstest.RunServer(t)
	server := connect(t, s, func(c *natsbus.Config) { c.Name = "berth-agent/h-017" })
	client := connect(t, s, func(c *natsbus.Config) { c.Name = "berth-controller/r1" })
	var gotMeta natsbus.Meta
	var gotDeadline bool
	_, err := natsbus.HandleTyped(t.Context(), server, "berth.v1.agent.h-017.step", "agents",
		func(ctx context.Context, req *eventsv1.HostEvent) (*eventsv1.InstanceEvent, error) {
			gotMeta, _ = natsbus.MetaFromContext(ctx)
			_, gotDeadline = ctx.Deadline()
			return &eventsv1.InstanceEvent{Host: req.GetHost(), State: "running"}, nil
		})
	if err != nil {
		t.Fatalf("handle: %v", err)
	}
	var resp eventsv1.InstanceEvent
	err = client.Request(t.Context(), "berth.v1.agent.h-017.step", &eventsv1.HostEvent{Host: "h-017"}, &resp,
		natsbus.WithID("step-1-attempt-1"), natsbus.WithServicePath("hotel/search"))
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if want := (&eventsv1.InstanceEvent{Host: "h-017", State: "running"}); !proto.Equal(&resp, want) {
		t.Errorf("reply: got %v, want %v", &resp, want)
	}
	want := natsbus.Meta{ID: "step-1-attempt-1", Source: "berth-controller/r1", Type: "berth.events.v1.HostEvent",
		ServicePath: "hotel/search", Subject: "berth.v1.agent.h-017.step"}
	if time.Since(gotMeta.Time) > time.Minute {
		t.Errorf("meta time: got %s, want about now", gotMeta.Time)
	}
	gotMeta.Time = time.Time{}
	if gotMeta != want {
		t.Errorf("meta: got %+v, want %+v", gotMeta, want)
	}
	if !gotDeadline {
		t.Errorf("handler context: got no deadline, want the requester's")
	}
}

func TestRequestNoResponders(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	start := time.Now()
	err := b.Request(ctx, "berth.v1.rpc.nobody", &eventsv1.HostEvent{}, &eventsv1.HostEvent{})
	if !errors.Is(err, natsbus.ErrNoResponders) {
		t.Fatalf("got %v, want ErrNoResponders", err)
	}
	if got, want := err.Error(), "request berth.v1.rpc.nobody: no responders"; got != want {
		t.Errorf("message: got %q, want %q", got, want)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("no responders after %s, want well within the 3s timeout", el)
	}
	if got := natsbus.CodeOf(err); got != commonv1.Code_CODE_UNAVAILABLE {
		t.Errorf("code: got %s, want CODE_UNAVAILABLE", got)
	}
}

func TestRequestTimeout(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	handlerDone := make(chan error, 1)
	release := make(chan struct{})
	_, err := natsbus.HandleTyped(t.Context(), b, "berth.v1.rpc.slow", "",
		func(ctx context.Context, req *eventsv1.HostEvent) (*eventsv1.HostEvent, error) {
			if req.GetHost() == "deaf" {
				<-release // Ignores its deadline: the requester times out alone.
				return nil, nil
			}
			<-ctx.Done() // The requester's deadline travels in berth-timeout.
			handlerDone <- ctx.Err()
			return nil, ctx.Err()
		})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host       string
		wantPrefix string
	}{
		{"deaf", "request berth.v1.rpc.slow: timeout after "},
		// Either the handler's deadline-exceeded reply or the local timeout wins the race.
		{"polite", "request berth.v1.rpc.slow: "},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			err = b.Request(ctx, "berth.v1.rpc.slow", &eventsv1.HostEvent{Host: tt.host}, &eventsv1.HostEvent{})
			if tt.host == "deaf" {
				close(release)
			}
			if !errors.Is(err, natsbus.ErrTimeout) {
				t.Fatalf("got %v, want ErrTimeout", err)
			}
			if !strings.HasPrefix(err.Error(), tt.wantPrefix) {
				t.Errorf("message: got %q, want it to start with %q", err, tt.wantPrefix)
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("timed out after %s, want about 300ms", el)
			}
		})
	}
	select {
	case herr := <-handlerDone:
		if !errors.Is(herr, context.DeadlineExceeded) {
			t.Errorf("handler context: got %v, want deadline exceeded", herr)
		}
	case <-time.After(2 * time.Second):
		t.Errorf("handler context did not end at the requester's deadline")
	}
}

func TestRequestErrorReplies(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	tests := []struct {
		name     string
		herr     error
		panics   bool
		wantCode commonv1.Code
		wantMsg  string
		sentinel error
	}{
		{"invalid argument", natsbus.Errorf(commonv1.Code_CODE_INVALID_ARGUMENT, "field %s: must be > 0", "replicas"),
			false, commonv1.Code_CODE_INVALID_ARGUMENT, "field replicas: must be > 0", natsbus.ErrInvalidArgument},
		{"not found", natsbus.Errorf(commonv1.Code_CODE_NOT_FOUND, "service hotel/x"),
			false, commonv1.Code_CODE_NOT_FOUND, "service hotel/x", natsbus.ErrNotFound},
		{"wrapped status", errWrap{natsbus.Errorf(commonv1.Code_CODE_CONFLICT, "version 3, want 2")},
			false, commonv1.Code_CODE_CONFLICT, "version 3, want 2", natsbus.ErrConflict},
		{"plain error", errors.New("disk full"), false, commonv1.Code_CODE_INTERNAL, "disk full", natsbus.ErrInternal},
		{"panic", nil, true, commonv1.Code_CODE_INTERNAL, "handler of berth.v1.rpc.fail panicked: oops", natsbus.ErrInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			_, err := b.Handle(ctx, "berth.v1.rpc.fail", "", &eventsv1.HostEvent{}, func(context.Context, proto.Message) (proto.Message, error) {
				if tt.panics {
					panic("oops")
				}
				return nil, tt.herr
			})
			if err != nil {
				t.Fatal(err)
			}
			err = b.Request(t.Context(), "berth.v1.rpc.fail", &eventsv1.HostEvent{}, &eventsv1.HostEvent{})
			var se *natsbus.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("got %v (%T), want a *StatusError", err, err)
			}
			if se.Code != tt.wantCode || se.Message != tt.wantMsg {
				t.Errorf("got code %s message %q, want %s %q", se.Code, se.Message, tt.wantCode, tt.wantMsg)
			}
			if !errors.Is(err, tt.sentinel) {
				t.Errorf("errors.Is(%v, sentinel of %s): got false, want true", err, tt.wantCode)
			}
			if errors.Is(err, natsbus.ErrUnavailable) {
				t.Errorf("errors.Is(%v, ErrUnavailable): got true, want false", err)
			}
		})
	}
}

type errWrap struct{ err error }

func (e errWrap) Error() string { return "wrapped: " + e.err.Error() }
func (e errWrap) Unwrap() error { return e.err }

func TestStatusDetailsAndWire(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	_, err := b.Handle(t.Context(), "berth.v1.rpc.detail", "", &eventsv1.HostEvent{}, func(context.Context, proto.Message) (proto.Message, error) {
		return nil, &natsbus.StatusError{Code: commonv1.Code_CODE_RESOURCE_EXHAUSTED, Message: "no capacity", Details: map[string]string{"retry_after": "5s"}}
	})
	if err != nil {
		t.Fatal(err)
	}
	// A raw request shows the wire format: the header and a Status body.
	msg, err := b.Conn().RequestWithContext(t.Context(), "berth.v1.rpc.detail", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get(natsbus.HeaderStatusCode); got != "CODE_RESOURCE_EXHAUSTED" {
		t.Errorf("header %s: got %q, want CODE_RESOURCE_EXHAUSTED", natsbus.HeaderStatusCode, got)
	}
	var st commonv1.Status
	if err := proto.Unmarshal(msg.Data, &st); err != nil {
		t.Fatalf("body is not a Status: %v", err)
	}
	if st.GetDetails()["retry_after"] != "5s" || st.GetCode() != commonv1.Code_CODE_RESOURCE_EXHAUSTED {
		t.Errorf("status: got %v, want resource exhausted with retry_after=5s", &st)
	}
	err = b.Request(t.Context(), "berth.v1.rpc.detail", &eventsv1.HostEvent{}, &eventsv1.HostEvent{})
	var se *natsbus.StatusError
	if !errors.As(err, &se) || se.Details["retry_after"] != "5s" {
		t.Errorf("got %v, want a StatusError with retry_after=5s", err)
	}
	if got, want := err.Error(), "request berth.v1.rpc.detail: resource exhausted: no capacity"; got != want {
		t.Errorf("message: got %q, want %q", got, want)
	}
}

func TestHandleBadRequest(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	called := false
	_, err := b.Handle(t.Context(), "berth.v1.rpc.strict", "", &eventsv1.HostEvent{}, func(context.Context, proto.Message) (proto.Message, error) {
		called = true
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		msg  *nats.Msg
	}{
		{"garbage body", &nats.Msg{Subject: "berth.v1.rpc.strict", Data: []byte{0xff, 0xff, 0xff}}},
		{"json body", &nats.Msg{Subject: "berth.v1.rpc.strict", Header: nats.Header{"content-type": {"application/json"}}, Data: []byte("{}")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply, err := b.Conn().RequestMsgWithContext(t.Context(), tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			if got := reply.Header.Get(natsbus.HeaderStatusCode); got != "CODE_INVALID_ARGUMENT" {
				t.Errorf("got status %q, want CODE_INVALID_ARGUMENT", got)
			}
		})
	}
	if called {
		t.Errorf("handler called for a bad request, want not")
	}
}

func TestHandleNilReplyAndContextEnd(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	ctx, cancel := context.WithCancel(t.Context())
	sub, err := b.Handle(ctx, "berth.v1.rpc.ack", "q", &eventsv1.HostEvent{}, func(context.Context, proto.Message) (proto.Message, error) {
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	resp := &eventsv1.HostEvent{Host: "stale"}
	if err := b.Request(t.Context(), "berth.v1.rpc.ack", &eventsv1.HostEvent{}, resp); err != nil {
		t.Fatalf("request: %v", err)
	}
	if resp.GetHost() != "" {
		t.Errorf("nil reply: got host %q, want an empty message", resp.GetHost())
	}
	cancel()
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := b.Request(t.Context(), "berth.v1.rpc.ack", &eventsv1.HostEvent{}, resp)
		if errors.Is(err, natsbus.ErrNoResponders) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after ctx ended: got %v, want no responders", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Errorf("unsubscribe after drain: %v", err)
	}
}

func TestHandleConcurrency(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	const n = 4
	var (
		mu      sync.Mutex
		running int
		peak    int
	)
	release := make(chan struct{})
	_, err := natsbus.HandleTyped(t.Context(), b, "berth.v1.rpc.par", "", func(ctx context.Context, _ *eventsv1.HostEvent) (*eventsv1.HostEvent, error) {
		mu.Lock()
		running++
		peak = max(peak, running)
		if running == n {
			close(release)
		}
		mu.Unlock()
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		mu.Lock()
		running--
		mu.Unlock()
		return &eventsv1.HostEvent{}, nil
	}, natsbus.WithConcurrency(n))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			errs <- b.Request(ctx, "berth.v1.rpc.par", &eventsv1.HostEvent{}, &eventsv1.HostEvent{})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("request: %v", err)
		}
	}
	if peak != n {
		t.Errorf("peak concurrent handlers: got %d, want %d", peak, n)
	}
}

func TestPublishSubscribeTyped(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s, func(c *natsbus.Config) { c.Source = "berth-agent/h-1" })
	got := make(chan *eventsv1.TaskEvent, 1)
	var meta natsbus.Meta
	_, err := natsbus.SubscribeTyped(t.Context(), b, "berth.v1.agent.progress.*", "", func(ctx context.Context, m *eventsv1.TaskEvent) error {
		meta, _ = natsbus.MetaFromContext(ctx)
		got <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &eventsv1.TaskEvent{TaskId: "t1", Message: "50%"}
	if err := b.Publish(t.Context(), "berth.v1.agent.progress.t1", want, natsbus.WithID("t1-p1")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if !proto.Equal(m, want) {
			t.Errorf("got %v, want %v", m, want)
		}
		if meta.ID != "t1-p1" || meta.Source != "berth-agent/h-1" || meta.Type != "berth.events.v1.TaskEvent" {
			t.Errorf("meta: got %+v, want id t1-p1, source berth-agent/h-1, type berth.events.v1.TaskEvent", meta)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("message not received within 3s")
	}
	if err := b.Publish(t.Context(), "berth.v1.agent.progress.*", want); err == nil {
		t.Errorf("publish to a wildcard: got nil error, want one")
	}
}

func TestPublishWork(t *testing.T) {
	s := natstest.RunServer(t)
	b := withStreams(t, s)
	for range 2 {
		if err := b.PublishWork(t.Context(), "berth.v1.work.build", &eventsv1.ImageEvent{Service: "hotel/search"}, natsbus.WithID("build-hotel-search-1.4.2")); err != nil {
			t.Fatalf("publish work: %v", err)
		}
	}
	if got := streamMsgs(t, b, "BERTH_WORK"); got != 1 {
		t.Errorf("after publishing one id twice: got %d commands, want 1", got)
	}
	if err := b.PublishWork(t.Context(), "berth.v1.work.build", &eventsv1.ImageEvent{}); err == nil {
		t.Errorf("publish work without id: got nil error, want one")
	}
	if err := b.PublishWork(t.Context(), "berth.v1.rpc.build", &eventsv1.ImageEvent{}, natsbus.WithID("x")); err == nil {
		t.Errorf("publish work outside berth.v1.work: got nil error, want one")
	}
}

func TestStatusError(t *testing.T) {
	cause := errors.New("root")
	err := natsbus.Errorf(commonv1.Code_CODE_FAILED_PRECONDITION, "deployment d1 is %s: %w", "paused", cause)
	if got, want := err.Error(), "failed precondition: deployment d1 is paused: root"; got != want {
		t.Errorf("Error: got %q, want %q", got, want)
	}
	if !errors.Is(err, cause) || !errors.Is(err, natsbus.ErrFailedPrecondition) || errors.Is(err, natsbus.ErrNotFound) {
		t.Errorf("errors.Is: got cause %v, precondition %v, not found %v; want true true false",
			errors.Is(err, cause), errors.Is(err, natsbus.ErrFailedPrecondition), errors.Is(err, natsbus.ErrNotFound))
	}
	tests := []struct {
		err  error
		want commonv1.Code
	}{
		{nil, commonv1.Code_CODE_OK},
		{err, commonv1.Code_CODE_FAILED_PRECONDITION},
		{context.DeadlineExceeded, commonv1.Code_CODE_DEADLINE_EXCEEDED},
		{context.Canceled, commonv1.Code_CODE_ABORTED},
		{errors.New("x"), commonv1.Code_CODE_INTERNAL},
		{&natsbus.StatusError{}, commonv1.Code_CODE_INTERNAL},
	}
	for _, tt := range tests {
		if got := natsbus.CodeOf(tt.err); got != tt.want {
			t.Errorf("CodeOf(%v): got %s, want %s", tt.err, got, tt.want)
		}
	}
	if got := natsbus.FromStatus(&commonv1.Status{Message: "m"}).Code; got != commonv1.Code_CODE_INTERNAL {
		t.Errorf("FromStatus without code: got %s, want CODE_INTERNAL", got)
	}
}
