package imagebuilder

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	"github.com/berthdev/berth/proto/subjects"
)

// workAckWait is how long the work queue waits for an ack before redelivering; a request
// being built tells it to wait longer (InProgress) every third of it.
const workAckWait = time.Minute

// consumeWork takes build requests from BERTH_WORK (berth.v1.work.build) with the durable
// consumer every replica shares and answers each with an image event: cached (the image
// existed), built or failed (published by the build itself), or failed for a request
// that could not be decided. A request that failed on infrastructure is redelivered after
// retry_delay, up to max_deliver deliveries; one that failed on the application is not.
func (b *Builder) consumeWork(ctx context.Context) error {
	js := b.bus.JetStream()
	var cons jetstream.Consumer
	for {
		var err error
		cons, err = js.CreateOrUpdateConsumer(ctx, subjects.StreamWork, jetstream.ConsumerConfig{
			Durable:       b.cfg.WorkConsumer,
			FilterSubject: SubjectWork,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       workAckWait,
			MaxDeliver:    b.cfg.MaxDeliver,
			MaxAckPending: b.cfg.Concurrency,
		})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		b.log.Warn("build work consumer not created yet, retrying", "stream", subjects.StreamWork, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume %s: %w", SubjectWork, err)
	}
	defer it.Stop()
	sem := make(chan struct{}, b.cfg.Concurrency)
	defer func() {
		// Wait for the handlers still running.
		for range cap(sem) {
			sem <- struct{}{}
		}
	}()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, nats.ErrConnectionClosed) {
				return fmt.Errorf("consume %s: %w", SubjectWork, err)
			}
			b.log.Warn("build work consumer", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			_ = msg.Nak()
			return nil
		}
		go func() {
			defer func() { <-sem }()
			b.handleWork(ctx, msg)
		}()
	}
}

// handleWork answers one work-queue request and settles its message.
func (b *Builder) handleWork(ctx context.Context, msg jetstream.Msg) {
	req := &imagev1.BuildRequest{}
	if err := proto.Unmarshal(msg.Data(), req); err != nil {
		b.log.Warn("undecodable build request dropped", "subject", msg.Subject(), "err", err)
		b.m.requests.WithLabelValues("work", "application").Inc()
		_ = msg.Term()
		return
	}
	if req.GetRequestId() == "" {
		req.RequestId = msg.Headers().Get(natsbus.HeaderID)
	}
	delivered := uint64(1)
	if md, err := msg.Metadata(); err == nil {
		delivered = md.NumDelivered
	}

	// Keep the message ours while a build runs.
	stop := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(workAckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	reply, f := b.resolve(ctx, req)
	close(stop)
	<-progressDone
	b.countRequest("work", reply, f)

	ev := &eventsv1.ImageEvent{Service: req.GetService(), Version: req.GetVersion(), PackageSha256: req.GetPackageSha256(), At: timestamppb.Now()}
	switch {
	case f == nil:
		if reply.GetCached() {
			ev.Reference, ev.Digest, ev.BaseImage, ev.Message = reply.GetReference(), reply.GetDigest(), reply.GetBaseImage(), "image exists"
			b.publishOutcome(ctx, EventCached, req, ev)
		}
		// A fresh build published image.built itself.
		if err := msg.Ack(); err != nil {
			b.log.Warn("ack build request", "request_id", req.GetRequestId(), "err", err)
		}
		return
	case ctx.Err() != nil:
		_ = msg.Nak()
		return
	case f.class == imagev1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE && delivered < uint64(b.cfg.MaxDeliver):
		b.log.Warn("build request will be retried", "request_id", req.GetRequestId(), "delivery", delivered, "err", f.msg)
		_ = msg.NakWithDelay(b.cfg.RetryDelay)
		return
	}
	if !f.published {
		ev.FailureClass, ev.Message, ev.BuildLog = ClassName(f.class), f.msg, f.log
		b.publishOutcome(ctx, EventFailed, req, ev)
	}
	if err := msg.Term(); err != nil {
		b.log.Warn("settle failed build request", "request_id", req.GetRequestId(), "err", err)
	}
}

// publishOutcome publishes the outcome event of a work request, with an id derived from
// the request, so a redelivered request does not announce it twice.
func (b *Builder) publishOutcome(ctx context.Context, typ string, req *imagev1.BuildRequest, ev *eventsv1.ImageEvent) {
	if CheckServicePath(req.GetService()) != nil {
		// No subject can name it; the log is all there is.
		b.log.Warn("build request without a valid service dropped", "request_id", req.GetRequestId(), "outcome", typ, "message", ev.GetMessage())
		return
	}
	b.publish(ctx, typ, req.GetService(), natsbus.EventID("image-request", req.GetRequestId(), typ), ev)
}
