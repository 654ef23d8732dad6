// Package natstest runs an in-process NATS server with JetStream for tests, the way
// nats-server's own test.RunServer does: loopback, a random port, no logging, no signal
// handlers, and a JetStream store in t.TempDir(). The server is shut down by t.Cleanup.
package natstest

import (
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyTimeout bounds how long a test waits for a server to accept clients.
const readyTimeout = 10 * time.Second

// Option changes the server's options before it starts.
type Option func(*server.Options)

// WithoutJetStream starts the server with JetStream disabled.
func WithoutJetStream() Option {
	return func(o *server.Options) { o.JetStream = false }
}

// WithUser requires clients to log in with the user and password.
func WithUser(user, password string) Option {
	return func(o *server.Options) {
		o.Username = user
		o.Password = password
	}
}

// Server is a running test server. Restart keeps its port and its JetStream store, so a
// client that reconnects finds its streams again.
type Server struct {
	t    testing.TB
	opts *server.Options

	mu  sync.Mutex
	srv *server.Server
}

// RunServer starts a NATS server with JetStream on 127.0.0.1 and a random port, with its
// store in t.TempDir(), and registers its shutdown with t.Cleanup. It fails the test when
// the server cannot start.
func RunServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	o := &server.Options{
		Host:                  "127.0.0.1",
		Port:                  server.RANDOM_PORT,
		NoLog:                 true,
		NoSigs:                true,
		MaxControlLine:        4096,
		DisableShortFirstPing: true,
		JetStream:             true,
		StoreDir:              t.TempDir(),
		// HTTPPort stays 0: no monitoring endpoint.
	}
	o.Cluster.Compression.Mode = server.CompressionOff
	o.LeafNode.Compression.Mode = server.CompressionOff
	for _, opt := range opts {
		opt(o)
	}
	s := &Server{t: t, opts: o}
	srv := start(t, o.Clone())
	// The port is fixed from now on so that Restart comes back at the same URL.
	s.opts.Port = srv.Addr().(*net.TCPAddr).Port
	s.srv = srv
	t.Cleanup(s.Shutdown)
	return s
}

func start(t testing.TB, o *server.Options) *server.Server {
	t.Helper()
	srv, err := server.NewServer(o)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		t.Fatalf("natstest: server not ready for connections within %s", readyTimeout)
	}
	return srv
}

// URL is the server's client URL (nats://127.0.0.1:<port>); it stays the same across
// Restart.
func (s *Server) URL() string {
	return "nats://" + net.JoinHostPort(s.opts.Host, strconv.Itoa(s.opts.Port))
}

// NATS returns the running server, for its monitoring calls (JetStreamEnabled, NumClients,
// ...). It is nil between Stop and Start.
func (s *Server) NATS() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// Shutdown stops the server and waits until it is down. It is safe to call more than once.
func (s *Server) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// Start starts a stopped server again on the same port with the same store. It fails the
// test when the server is already running or cannot start (for example when another
// process took the port in between).
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.t.Fatalf("natstest: start: server already running")
	}
	s.srv = start(s.t, s.opts.Clone())
}

// Restart stops the server and starts it again on the same port with the same store.
func (s *Server) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.Start()
}
