package natsbus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/berthdev/berth/proto/subjects"
)

// Defaults of StreamConfig.
const (
	DefaultEventsMaxAge    = 30 * 24 * time.Hour
	DefaultWorkMaxAge      = 7 * 24 * time.Hour
	DefaultDuplicateWindow = 2 * time.Minute
)

// StreamConfig sizes the streams EnsureStreams creates. The zero value is the defaults.
type StreamConfig struct {
	// EventsMaxAge is how long BERTH_EVENTS keeps an event. Zero means DefaultEventsMaxAge.
	EventsMaxAge time.Duration
	// WorkMaxAge is how long BERTH_WORK keeps a command nobody took. Zero means
	// DefaultWorkMaxAge.
	WorkMaxAge time.Duration
	// DuplicateWindow is how long both streams remember a Nats-Msg-Id to drop a republished
	// message. Zero means DefaultDuplicateWindow.
	DuplicateWindow time.Duration
	// Replicas is the number of copies in a JetStream cluster. Zero means 1.
	Replicas int
}

// Validate checks the sizes.
func (c StreamConfig) Validate() error {
	if c.EventsMaxAge < 0 || c.WorkMaxAge < 0 || c.DuplicateWindow < 0 {
		return fmt.Errorf("stream config: negative duration")
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		return fmt.Errorf("stream config: replicas %d, want 1 to 5", c.Replicas)
	}
	return nil
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.EventsMaxAge == 0 {
		c.EventsMaxAge = DefaultEventsMaxAge
	}
	if c.WorkMaxAge == 0 {
		c.WorkMaxAge = DefaultWorkMaxAge
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	// JetStream refuses a duplicate window longer than the stream's max age.
	c.DuplicateWindow = min(c.DuplicateWindow, c.EventsMaxAge, c.WorkMaxAge)
	return c
}

// EventsStreamConfig is the JetStream configuration of BERTH_EVENTS for c.
func (c StreamConfig) EventsStreamConfig() jetstream.StreamConfig {
	c = c.withDefaults()
	return jetstream.StreamConfig{
		Name:        subjects.StreamEvents,
		Description: "Berth events (CloudEvents, berth.v1.events.>)",
		Subjects:    []string{subjects.AllEvents},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      c.EventsMaxAge,
		Duplicates:  c.DuplicateWindow,
		Replicas:    c.Replicas,
		Discard:     jetstream.DiscardOld,
	}
}

// WorkStreamConfig is the JetStream configuration of BERTH_WORK for c: a work queue, so a
// command is removed once a consumer acks it.
func (c StreamConfig) WorkStreamConfig() jetstream.StreamConfig {
	c = c.withDefaults()
	return jetstream.StreamConfig{
		Name:        subjects.StreamWork,
		Description: "Berth commands that survive a restart of their consumer (berth.v1.work.>)",
		Subjects:    []string{subjects.AllWork},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      c.WorkMaxAge,
		Duplicates:  c.DuplicateWindow,
		Replicas:    c.Replicas,
		Discard:     jetstream.DiscardOld,
	}
}

// EnsureStreams creates BERTH_EVENTS and BERTH_WORK, or updates them to cfg when they
// exist. It is idempotent and keeps the messages already stored; a change JetStream cannot
// make in place (a different retention, fewer replicas than a cluster allows) is an error
// that names the stream.
func (b *Bus) EnsureStreams(ctx context.Context, cfg StreamConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	for _, sc := range []jetstream.StreamConfig{cfg.EventsStreamConfig(), cfg.WorkStreamConfig()} {
		if _, err := b.js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, jsError(err))
		}
	}
	return nil
}
