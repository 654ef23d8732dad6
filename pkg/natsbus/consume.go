package natsbus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/berthdev/berth/proto/subjects"
)

// ErrStreamNotFound is returned (wrapped) when BERTH_EVENTS or BERTH_WORK does not exist:
// nothing has called EnsureStreams on this NATS (berth dev and the services do).
var ErrStreamNotFound = jetstream.ErrStreamNotFound

// ErrJetStreamNotEnabled is returned (wrapped) when the server runs without JetStream.
var ErrJetStreamNotEnabled = jetstream.ErrJetStreamNotEnabled

// jsError marks a JetStream API call that nobody answered as ErrJetStreamNotEnabled: a
// server without JetStream has no responder for the API subjects.
func jsError(err error) error {
	if errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, ErrJetStreamNotEnabled) {
		return fmt.Errorf("%w: %w", ErrJetStreamNotEnabled, err)
	}
	return err
}

// Defaults of EventConsumerConfig.
const (
	DefaultAckWait  = 30 * time.Second
	DefaultNakDelay = time.Second
)

// EventConsumerConfig says which events ConsumeEvents reads from BERTH_EVENTS and how.
type EventConsumerConfig struct {
	// Durable names a durable consumer: the server remembers which events it acked, so a
	// restarted consumer resumes where it stopped, and replicas that share the name share
	// the events. Empty means an ordered consumer: ephemeral, in order, no acks, recreated
	// by the client after a server restart — for readers such as `berth events`.
	Durable string
	// FilterSubjects are the subjects to read, each under berth.v1.events (wildcards
	// allowed). Empty means every event.
	FilterSubjects []string
	// StartTime, when set, starts at the first event stored at or after it; otherwise the
	// consumer starts at the oldest event (or, for an existing durable, where it stopped).
	StartTime time.Time
	// DeliverNew starts with the events published after the consumer is created.
	DeliverNew bool
	// StopWhenCaughtUp makes ConsumeEvents return nil once it has handled every event that
	// was in the stream when it started (when the server reports none pending), instead of
	// waiting for more.
	StopWhenCaughtUp bool
	// AckWait is how long a durable consumer waits for fn before redelivering. Zero means
	// DefaultAckWait.
	AckWait time.Duration
	// MaxDeliver bounds the deliveries of one event to a durable consumer; zero means no
	// bound.
	MaxDeliver int
	// NakDelay is how long a durable consumer waits before redelivering an event whose fn
	// failed. Zero means DefaultNakDelay.
	NakDelay time.Duration
}

// Validate checks the configuration.
func (c EventConsumerConfig) Validate() error {
	if c.Durable != "" {
		if err := subjects.Token(c.Durable); err != nil {
			return fmt.Errorf("event consumer: durable name: %w", err)
		}
		if strings.ContainsAny(c.Durable, "/\\") {
			return fmt.Errorf("event consumer: durable name %q: contains a slash", c.Durable)
		}
	}
	for _, f := range c.FilterSubjects {
		if f != subjects.AllEvents && !strings.HasPrefix(f, eventsPrefix) {
			return fmt.Errorf("event consumer: filter subject %q: not under berth.v1.events", f)
		}
		if err := checkSubject(f, true); err != nil {
			return fmt.Errorf("event consumer: filter: %w", err)
		}
	}
	if c.DeliverNew && !c.StartTime.IsZero() {
		return errors.New("event consumer: both a start time and deliver-new")
	}
	if c.AckWait < 0 || c.NakDelay < 0 || c.MaxDeliver < 0 {
		return errors.New("event consumer: negative ack wait, nak delay or max deliver")
	}
	return nil
}

// EventDelivery is one event handed to a ConsumeEvents callback.
type EventDelivery struct {
	// Event is the decoded CloudEvent.
	Event CloudEvent
	// Subject is the NATS subject the event was published on.
	Subject string
	// Sequence is the event's sequence number in BERTH_EVENTS.
	Sequence uint64
	// Stored is when the stream stored the event.
	Stored time.Time
	// Pending is how many events matching the filter followed this one when it was
	// delivered.
	Pending uint64
	// Delivered counts the deliveries of this event to this consumer, from 1.
	Delivered uint64
}

// ConsumeEvents reads BERTH_EVENTS as cfg says and calls fn for each event, in stream
// order, one at a time. It returns nil when ctx ends (or, with StopWhenCaughtUp, when
// caught up), and an error when the consumer cannot be created or is deleted — wrapping
// ErrStreamNotFound when BERTH_EVENTS is missing.
//
// An ordered consumer stops at fn's first error and returns it. A durable consumer acks
// each event fn accepted; fn's error naks it (redelivered after NakDelay, at most
// MaxDeliver times) and is logged, and consumption goes on. An event that is not a valid
// CloudEvent is logged and skipped (terminated, for a durable consumer).
func (b *Bus) ConsumeEvents(ctx context.Context, cfg EventConsumerConfig, fn func(context.Context, EventDelivery) error) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.NakDelay == 0 {
		cfg.NakDelay = DefaultNakDelay
	}
	filters := cfg.FilterSubjects
	if len(filters) == 0 {
		filters = []string{subjects.AllEvents}
	}
	policy := jetstream.DeliverAllPolicy
	var start *time.Time
	switch {
	case cfg.DeliverNew:
		policy = jetstream.DeliverNewPolicy
	case !cfg.StartTime.IsZero():
		policy = jetstream.DeliverByStartTimePolicy
		t := cfg.StartTime
		start = &t
	}
	var (
		cons jetstream.Consumer
		err  error
	)
	if cfg.Durable == "" {
		cons, err = b.js.OrderedConsumer(ctx, subjects.StreamEvents, jetstream.OrderedConsumerConfig{
			FilterSubjects: filters,
			DeliverPolicy:  policy,
			OptStartTime:   start,
			// The server drops the consumer this long after the reader went away.
			InactiveThreshold: time.Minute,
		})
	} else {
		cons, err = b.js.CreateOrUpdateConsumer(ctx, subjects.StreamEvents, jetstream.ConsumerConfig{
			Durable:        cfg.Durable,
			FilterSubjects: filters,
			DeliverPolicy:  policy,
			OptStartTime:   start,
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        cfg.AckWait,
			MaxDeliver:     cfg.MaxDeliver,
		})
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("consume %s: %w", subjects.StreamEvents, jsError(err))
	}
	if cfg.Durable == "" {
		// An ordered consumer's name changes when it is recreated; delete the last one.
		defer func() {
			if info := cons.CachedInfo(); info != nil {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				_ = b.js.DeleteConsumer(dctx, subjects.StreamEvents, info.Name)
				cancel()
			}
		}()
	}
	if cfg.StopWhenCaughtUp {
		info, err := cons.Info(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("consume %s: %w", subjects.StreamEvents, err)
		}
		if info.NumPending == 0 {
			return nil
		}
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume %s: %w", subjects.StreamEvents, err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
				errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
				errors.Is(err, nats.ErrConnectionClosed) {
				return fmt.Errorf("consume %s: %w", subjects.StreamEvents, err)
			}
			// Missed heartbeats and the like: the iterator recovers by itself. The pause
			// keeps an error that repeats from spinning.
			b.log.Warn("event consumer", "stream", subjects.StreamEvents, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		md, err := msg.Metadata()
		if err != nil {
			b.log.Warn("event without metadata skipped", "subject", msg.Subject(), "err", err)
			continue
		}
		d := EventDelivery{
			Subject:   msg.Subject(),
			Sequence:  md.Sequence.Stream,
			Stored:    md.Timestamp,
			Pending:   md.NumPending,
			Delivered: md.NumDelivered,
		}
		d.Event, err = DecodeStreamEvent(msg)
		if err != nil {
			b.log.Warn("invalid event skipped", "seq", d.Sequence, "err", err)
			if cfg.Durable != "" {
				_ = msg.Term()
			}
		} else if err := fn(ctx, d); err != nil {
			if cfg.Durable == "" {
				return err
			}
			b.log.Warn("event handler failed, will retry", "consumer", cfg.Durable, "seq", d.Sequence, "err", err)
			if err := msg.NakWithDelay(cfg.NakDelay); err != nil {
				b.log.Warn("nak event", "seq", d.Sequence, "err", err)
			}
		} else if cfg.Durable != "" {
			if err := msg.Ack(); err != nil {
				b.log.Warn("ack event", "seq", d.Sequence, "err", err)
			}
		}
		if cfg.StopWhenCaughtUp && md.NumPending == 0 {
			return nil
		}
	}
}
