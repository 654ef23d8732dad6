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
	deletes  []string
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

func (f *fakeStore) PutEphemeral(ctx context.Context, path string, value []byte, s Session) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.puts = append(f.puts, put{path, value, s.(*fakeSession)})
	return int64(len(f.puts) + len(f.deletes)), nil
}

func (f *fakeStore) Delete(ctx context.Context, path string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deletes = append(f.deletes, path)
	return int64(len(f.puts) + len(f.deletes)), nil
}

// putsIn returns the paths put in session s, in order.
func (f *fakeStore) putsIn(s *fakeSession) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, p := range f.puts {
		if p.session == s {
			out = append(out, p.path)
		}
	}
	return out
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

func TestKeeperNodesFollowSessions(t *testing.T) {
	store := &fakeStore{opened: make(chan *fakeSession, 4)}
	k := New(Config{Host: "h1", SessionTTL: time.Second, Refresh: time.Hour, Gather: func(context.Context) *agentv1.AgentInfo {
		return &agentv1.AgentInfo{HostId: "h1"}
	}}, store)

	// Before any session: the node is kept and ErrNoSession says it is not in place yet.
	if _, err := k.Put(t.Context(), "/berth/instances/a/b/i-1", []byte("one")); !errors.Is(err, ErrNoSession) {
		t.Fatalf("Put before a session: got %v, want ErrNoSession", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- k.Run(ctx) }()
	first := waitSession(t, store)
	waitReady(t, k)
	if got, want := store.putsIn(first), []string{"/berth/alive/h1", "/berth/instances/a/b/i-1"}; !equal(got, want) {
		t.Fatalf("puts in the first session: got %v, want %v", got, want)
	}
	if rev, err := k.Put(t.Context(), "/berth/instances/a/b/i-2", []byte("two")); err != nil || rev == 0 {
		t.Fatalf("Put in a session: got rev %d, %v; want a revision", rev, err)
	}
	if _, err := k.Delete(t.Context(), "/berth/instances/a/b/i-1"); err != nil {
		t.Fatalf("Delete: %v", err)
	}

	// A new session gets the alive node and the nodes still kept, not the deleted one.
	first.expire()
	second := waitSession(t, store)
	deadline := time.Now().Add(5 * time.Second)
	want := []string{"/berth/alive/h1", "/berth/instances/a/b/i-2"}
	for !equal(store.putsIn(second), want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := store.putsIn(second); !equal(got, want) {
		t.Fatalf("puts in the second session: got %v, want %v", got, want)
	}
	if got := k.Nodes(); !equal(got, []string{"/berth/instances/a/b/i-2"}) {
		t.Errorf("Nodes: got %v, want [/berth/instances/a/b/i-2]", got)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
