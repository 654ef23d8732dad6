// Package artifactserver serves the packages of one directory to agents, as Elong's package
// servers did: over HTTP (GET and HEAD of /<name>, a listing at /, and uploads with PUT or
// POST) and over FTP (anonymous, read-only, passive mode only, the subset of RFC 959 that
// FTP clients such as pkg/artifact's use). It is berth dev's artifact server; a fleet uses
// its own.
//
// Names are paths below the directory made of letters, digits and . _ + - (no component
// starts with a dot); nothing outside the directory is ever read or written (os.Root).
// Uploads are written to a hidden temporary file and renamed into place, so a reader never
// sees half a package; an existing name is never replaced by different bytes.
package artifactserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/certs"
)

// Defaults of Config.
const (
	DefaultMaxUpload   int64 = 2 << 30 // 2 GiB, pkg/artifact's download limit
	DefaultMaxSessions       = 64
	DefaultIdleTimeout       = 5 * time.Minute
)

// Limits on names.
const (
	maxNameLen       = 1024
	maxComponentLen  = 255
	maxNameDepth     = 16
	maxListedEntries = 10000
)

// ErrBadName is wrapped by the errors about a name that is not allowed.
var ErrBadName = errors.New("artifactserver: bad name")

// Config says what to serve and where.
type Config struct {
	// Dir is the served directory; created when missing.
	Dir string
	// HTTPAddr is the HTTP listen address (host:port, port 0 picks one); empty: no HTTP.
	HTTPAddr string
	// HTTPTLS, when set, serves HTTP over TLS with it (HTTPS; mutual TLS when it requires
	// client certificates); plaintext HTTP is then refused. FTP stays plaintext.
	HTTPTLS *tls.Config
	// FTPAddr is the FTP control listen address; empty: no FTP. Passive data connections
	// listen on the same IP, on a port the system picks.
	FTPAddr string
	// MaxUpload bounds one uploaded file; 0 means DefaultMaxUpload.
	MaxUpload int64
	// MaxSessions bounds concurrent FTP sessions; 0 means DefaultMaxSessions.
	MaxSessions int
	// IdleTimeout closes an FTP session (or stalls a transfer) idle this long; 0 means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics (namespace berth, subsystem artifacts); nil: none.
	Registerer prometheus.Registerer
}

// Server serves Config.Dir. Create it with New, then Listen (optional) and Run.
type Server struct {
	cfg Config
	log *slog.Logger
	m   metrics

	mu      sync.Mutex
	root    *os.Root
	httpLis net.Listener
	ftpLis  net.Listener

	// uploadMu serializes the check-then-rename of uploads.
	uploadMu sync.Mutex
}

// Addrs are the bound addresses; a nil one is not served.
type Addrs struct {
	HTTP net.Addr
	FTP  net.Addr
}

type metrics struct {
	requests *prometheus.CounterVec
	sent     *prometheus.CounterVec
	received prometheus.Counter
	sessions prometheus.Gauge
}

// New checks cfg and returns a server; it opens nothing.
func New(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("artifactserver: config: Dir is required")
	}
	if cfg.HTTPAddr == "" && cfg.FTPAddr == "" {
		return nil, errors.New("artifactserver: config: neither HTTPAddr nor FTPAddr is set")
	}
	if cfg.MaxUpload < 0 || cfg.MaxSessions < 0 || cfg.IdleTimeout < 0 {
		return nil, fmt.Errorf("artifactserver: config: negative MaxUpload %d, MaxSessions %d or IdleTimeout %s", cfg.MaxUpload, cfg.MaxSessions, cfg.IdleTimeout)
	}
	if cfg.MaxUpload == 0 {
		cfg.MaxUpload = DefaultMaxUpload
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.m = metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "artifacts", Name: "requests_total",
			Help: "Artifact server requests by protocol (http, ftp), operation (get, list, put) and result (ok, not_found, bad_request, denied, conflict, error).",
		}, []string{"protocol", "op", "result"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "artifacts", Name: "sent_bytes_total",
			Help: "Bytes of files sent, by protocol.",
		}, []string{"protocol"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "artifacts", Name: "received_bytes_total",
			Help: "Bytes of uploads received, including refused ones.",
		}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "berth", Subsystem: "artifacts", Name: "ftp_sessions",
			Help: "FTP control connections open now.",
		}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.m.requests, s.m.sent, s.m.received, s.m.sessions} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("artifactserver: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Listen creates the directory and binds the addresses now, so that the caller can print
// them before Run; Run calls it when the caller did not.
func (s *Server) Listen() (Addrs, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.root == nil {
		if err := os.MkdirAll(s.cfg.Dir, 0o755); err != nil {
			return Addrs{}, fmt.Errorf("artifact directory: %w", err)
		}
		root, err := os.OpenRoot(s.cfg.Dir)
		if err != nil {
			return Addrs{}, fmt.Errorf("artifact directory: %w", err)
		}
		s.root = root
	}
	if s.cfg.HTTPAddr != "" && s.httpLis == nil {
		l, err := certs.Listen(s.cfg.HTTPAddr, s.cfg.HTTPTLS)
		if err != nil {
			return Addrs{}, fmt.Errorf("artifact server: listen http %s: %w", s.cfg.HTTPAddr, err)
		}
		s.httpLis = l
	}
	if s.cfg.FTPAddr != "" && s.ftpLis == nil {
		l, err := net.Listen("tcp", s.cfg.FTPAddr)
		if err != nil {
			return Addrs{}, fmt.Errorf("artifact server: listen ftp %s: %w", s.cfg.FTPAddr, err)
		}
		s.ftpLis = l
	}
	var a Addrs
	if s.httpLis != nil {
		a.HTTP = s.httpLis.Addr()
	}
	if s.ftpLis != nil {
		a.FTP = s.ftpLis.Addr()
	}
	return a, nil
}

// Run serves until ctx is cancelled, then closes every listener and connection and returns
// once every goroutine it started has ended.
func (s *Server) Run(ctx context.Context) error {
	if _, err := s.Listen(); err != nil {
		s.closeListeners()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	serve := func(fn func(context.Context, net.Listener) error, lis net.Listener) {
		if lis == nil {
			return
		}
		wg.Go(func() {
			if err := fn(ctx, lis); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
				cancel() // one protocol failing stops the other
			}
		})
	}
	serve(s.serveHTTP, s.httpLis)
	serve(s.serveFTP, s.ftpLis)
	wg.Wait()
	s.closeListeners()
	s.mu.Lock()
	s.root.Close()
	s.mu.Unlock()
	return errors.Join(errs...)
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.httpLis != nil {
		s.httpLis.Close()
	}
	if s.ftpLis != nil {
		s.ftpLis.Close()
	}
}

// CheckName checks a name (a slash-separated path below the directory, leading slashes
// ignored) and returns it cleaned; "" (the directory itself) is allowed only when dir is
// true.
func CheckName(name string, dir bool) (string, error) {
	name = strings.Trim(name, "/")
	if name == "" || name == "." {
		if dir {
			return ".", nil
		}
		return "", fmt.Errorf("%w: empty name", ErrBadName)
	}
	if len(name) > maxNameLen {
		return "", fmt.Errorf("%w: %d bytes, at most %d", ErrBadName, len(name), maxNameLen)
	}
	parts := strings.Split(name, "/")
	if len(parts) > maxNameDepth {
		return "", fmt.Errorf("%w: %d levels, at most %d", ErrBadName, len(parts), maxNameDepth)
	}
	for _, p := range parts {
		if err := checkComponent(p); err != nil {
			return "", fmt.Errorf("%w: %q: %v", ErrBadName, name, err)
		}
	}
	return name, nil
}

func checkComponent(p string) error {
	switch {
	case p == "":
		return errors.New("empty path component")
	case len(p) > maxComponentLen:
		return fmt.Errorf("component of %d bytes, at most %d", len(p), maxComponentLen)
	case p[0] == '.':
		return fmt.Errorf("component %q starts with a dot", p)
	}
	for _, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '+' || r == '-'
		if !ok {
			return fmt.Errorf("character %q in %q: want letters, digits and . _ + -", r, p)
		}
	}
	return nil
}

// hidden reports whether a directory entry is not served (temporary uploads, dot files).
func hidden(name string) bool { return strings.HasPrefix(name, ".") }
