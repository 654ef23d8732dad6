// Package admin serves the operational endpoints every Berth binary has: /metrics from an
// injected Prometheus registry (never the global one), /healthz (the process is serving) and
// /readyz (every named readiness check passes). UseTLS makes it serve HTTPS (mutual TLS when
// the configuration requires client certificates) and Wrap puts a middleware in front of
// every route.
package admin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is a readiness check: nil means ready.
type Check func(ctx context.Context) error

// Server is the admin HTTP server. Create it with New, add checks and handlers, then Run.
type Server struct {
	addr   string
	gather prometheus.Gatherer
	mux    *http.ServeMux

	mu     sync.Mutex
	checks map[string]Check
	lis    net.Listener
	tls    *tls.Config
	wrap   []func(http.Handler) http.Handler
}

// New returns a server that will listen on addr (host:port; port 0 picks one) and serve the
// metrics of gather.
func New(addr string, gather prometheus.Gatherer) *Server {
	s := &Server{addr: addr, gather: gather, mux: http.NewServeMux(), checks: map[string]Check{}}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	return s
}

// AddCheck registers a readiness check under name; a later check with the same name
// replaces the earlier one.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = c
}

// Handle adds a handler to the admin mux (debug endpoints, say).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// UseTLS makes the server serve HTTPS with cfg (nil: plaintext); a plaintext client is
// refused. It must be called before Listen.
func (s *Server) UseTLS(cfg *tls.Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tls = cfg
}

// TLS returns the configuration UseTLS set, nil when the server is plaintext.
func (s *Server) TLS() *tls.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tls
}

// Wrap puts mw in front of every route (the metrics and health ones too); the middleware
// given last is the outermost. It must be called before Run.
func (s *Server) Wrap(mw func(http.Handler) http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wrap = append(s.wrap, mw)
}

// Listen binds the address now, so that the caller can print it before Run. Run calls it
// when the caller did not.
func (s *Server) Listen() (net.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lis != nil {
		return s.lis.Addr(), nil
	}
	lis, err := net.Listen("tcp", s.addr)
	if err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", s.addr, err)
	}
	if s.tls != nil {
		lis = tls.NewListener(lis, s.tls)
	}
	s.lis = lis
	return lis.Addr(), nil
}

// Run serves until ctx is cancelled, then shuts down within five seconds.
func (s *Server) Run(ctx context.Context) error {
	if _, err := s.Listen(); err != nil {
		return err
	}
	var h http.Handler = s.mux
	s.mu.Lock()
	for _, mw := range s.wrap {
		h = mw(h)
	}
	s.mu.Unlock()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	checks := make(map[string]Check, len(s.checks))
	for n, c := range s.checks {
		checks[n] = c
	}
	s.mu.Unlock()
	sort.Strings(names)

	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var b strings.Builder
	ready := true
	for _, n := range names {
		if err := checks[n](ctx); err != nil {
			ready = false
			fmt.Fprintf(&b, "[-] %s: %v\n", n, err)
		} else {
			fmt.Fprintf(&b, "[+] %s ok\n", n)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		b.WriteString("not ready\n")
	} else {
		b.WriteString("ready\n")
	}
	_, _ = w.Write([]byte(b.String()))
}
