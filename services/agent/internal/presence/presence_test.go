package presence

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeStore is a hand-written Store: sessions that the test can expire, and the puts made.
type fakeStore struct {
	mu       sync.Mutex
	failOpen int // opens that fail before one succeeds
	sessions []*fakeSession
	puts     []put
	opened   chan *fakeSession
}

type put struct {
	path    string
	value   []byte
	session *fakeSession
}

type fakeSession struct {
	done   chan struct{}
	once   sync.Once
	closed bool
}

func (s *fakeSession) Done() <-chan struct{} { return s.done }
func (s *fakeSession) Err() error            { return errors.New("session expired") }
func (s *fakeSession) Close(context.Context) error {
	s.once.Do(func() { close(s.done) })
	s.closed = true
	return nil
}
func (s *fakeSession) expire() { s.once.Do(func() { close(s.done) }) }

func (f *fakeStore) OpenSession(ctx context.Context, ttl time.Duration) (Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failOpen > 0 {
		f.failOpen--
		return nil, errors.New("coord unreachable")
	}
	s := &fakeSession{done: make(chan struct{})}
	f.sessions = append(f.sessions, s)
	f.opened <- s
	return s, nil
}

func (f *fakeStore) PutEphemeral(ctx context.Context, path string, value []byte, s Session) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.puts = append(f.puts, put{path, value, s.(*fakeSession)})
	return nil
}

func (f *fakeStore) lastPut() put {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.puts) == 0 {
		return put{}
	}
	return f.puts[len(f.puts)-1]
}

func TestKeeperHoldsAndReopens(t *testing.T) {
	store := &fakeStore{failOpen: 1, opened: make(chan *fakeSession, 4)}
	k := New(Config{Host: "h1", SessionTTL: time.Second, Refresh: time.Hour, Gather: func(context.Context) *agentv1.AgentInfo {
		return &agentv1.AgentInfo{HostId: "h1", CpuCount: 2, Kernel: "6.1"}
	}}, store)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- k.Run(ctx) }()

	// The first open fails; the keeper retries.
	first := waitSession(t, store)
	waitReady(t, k)
	p := store.lastPut()
	if p.path != "/berth/alive/h1" || p.session != first {
		t.Fatalf("put: got %q in %p, want /berth/alive/h1 in the first session", p.path, p.session)
	}
	var info agentv1.AgentInfo
	if err := protojson.Unmarshal(p.value, &info); err != nil || info.GetHostId() != "h1" || info.GetCpuCount() != 2 {
		t.Fatalf("value: got %s (%v), want the AgentInfo", p.value, err)
	}

	// The session expires: a new one is opened and the node put again in it.
	first.expire()
	second := waitSession(t, store)
	deadline := time.Now().Add(5 * time.Second)
	for store.lastPut().session != second && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if store.lastPut().session != second {
		t.Fatalf("after expiry: node not put in the new session")
	}

	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !second.closed {
		t.Errorf("session at stop: got open, want closed (its alive node deleted)")
	}
}

func waitSession(t *testing.T, store *fakeStore) *fakeSession {
	t.Helper()
	select {
	case s := <-store.opened:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no session opened")
		return nil
	}
}

func waitReady(t *testing.T, k *Keeper) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for k.Ready(t.Context()) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("keeper not ready: %v", k.Ready(t.Context()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
