package scheduler

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
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
)

// consumeWork takes placement requests from BERTH_WORK (berth.v1.work.place) with the
// durable consumer every replica shares, places each, publishes the outcome as an
// AllocationEvent (placed or failed) and acks it. A request that fails because coord is
// unreachable is redelivered later; one that is invalid or cannot be placed is not. The
// message's ce-id is the request id when the request has none, so a redelivery after a
// commit is answered from the placement record instead of placing twice.
func (s *Scheduler) consumeWork(ctx context.Context) error {
	js := s.bus.JetStream()
	var cons jetstream.Consumer
	for {
		var err error
		cons, err = js.CreateOrUpdateConsumer(ctx, subjects.StreamWork, jetstream.ConsumerConfig{
			Durable:       s.cfg.WorkConsumer,
			FilterSubject: subjects.WorkPlace,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       time.Minute,
			MaxDeliver:    10,
			MaxAckPending: s.cfg.Concurrency * 4,
		})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn("placement work consumer not created yet, retrying", "stream", subjects.StreamWork, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume %s: %w", subjects.WorkPlace, err)
	}
	defer it.Stop()
	sem := make(chan struct{}, s.cfg.Concurrency)
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
				return fmt.Errorf("consume %s: %w", subjects.WorkPlace, err)
			}
			s.log.Warn("placement work consumer", "err", err)
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
			s.handleWork(ctx, msg)
		}()
	}
}

// handleWork places one work-queue request and settles its message.
func (s *Scheduler) handleWork(ctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	pr := &inventoryv1.PlacementRequest{}
	if err := proto.Unmarshal(msg.Data(), pr); err != nil {
		s.log.Warn("undecodable placement request dropped", "subject", msg.Subject(), "err", err)
		s.m.requests.WithLabelValues("work", "invalid").Inc()
		_ = msg.Term()
		return
	}
	if pr.GetRequestId() == "" {
		pr.RequestId = msg.Headers().Get(natsbus.HeaderID)
	}
	reply, err := s.Place(ctx, pr)
	s.m.observe("work", reply, err, time.Since(start))
	if err != nil && ctx.Err() != nil {
		_ = msg.Nak()
		return
	}
	var se *natsbus.StatusError
	if err != nil && errors.As(err, &se) && (se.Code == commonv1.Code_CODE_UNAVAILABLE || se.Code == commonv1.Code_CODE_INTERNAL) {
		s.log.Warn("placement request will be retried", "request_id", pr.GetRequestId(), "err", err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	ev := &inventoryv1.AllocationEvent{
		Service: pr.GetService(), DeploymentId: pr.GetDeploymentId(), RequestId: pr.GetRequestId(),
		Requested: pr.GetCount(), At: timestamppb.Now(),
	}
	typ := EventPlaced
	if err != nil {
		typ = EventFailed
		ev.Message = err.Error()
	} else {
		ev.Allocations = reply.GetAllocations()
		ev.Message = fmt.Sprintf("placed %d of %d", reply.GetPlaced(), reply.GetRequested())
		if reply.GetExplanation() != "" {
			ev.Message = reply.GetExplanation()
		}
	}
	if pr.GetService() != "" {
		s.publish(ctx, typ, pr.GetService(), natsbus.EventID(pr.GetRequestId(), typ), ev)
	}
	if err := msg.Ack(); err != nil {
		s.log.Warn("ack placement request", "request_id", pr.GetRequestId(), "err", err)
	}
}
