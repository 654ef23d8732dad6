package views

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/proto/subjects"
)

// FromBus adapts a NATS bus to Source: core subscriptions for the subjects, the
// berth-names bucket for Load.
func FromBus(b *natsbus.Bus) Source { return &busSource{b: b} }

type busSource struct {
	b *natsbus.Bus

	mu sync.Mutex
	kv jetstream.KeyValue
}

func (s *busSource) Subscribe(subject string, fn func([]byte)) (func(), error) {
	sub, err := s.b.Conn().Subscribe(subject, func(m *nats.Msg) { fn(m.Data) })
	if err != nil {
		return nil, err
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

func (s *busSource) Load(ctx context.Context, key string) ([]byte, bool, error) {
	s.mu.Lock()
	kv := s.kv
	s.mu.Unlock()
	if kv == nil {
		var err error
		kv, err = s.b.JetStream().KeyValue(ctx, subjects.NamesBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("open bucket %s: %w", subjects.NamesBucket, err)
		}
		s.mu.Lock()
		s.kv = kv
		s.mu.Unlock()
	}
	e, err := kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("read %s from %s: %w", key, subjects.NamesBucket, err)
	}
	return e.Value(), true, nil
}

func (s *busSource) Reconnects() uint64 { return s.b.Conn().Stats().Reconnects }
