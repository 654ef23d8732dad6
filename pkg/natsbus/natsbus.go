// Package natsbus is Berth's client of the NATS bus (DESIGN §4): connecting with TLS,
// credentials and logged reconnects; creating the JetStream streams BERTH_EVENTS and
// BERTH_WORK; publishing events as CloudEvents 1.0 in binary mode (ce-* headers, protojson
// data, Nats-Msg-Id = ce-id so the stream's duplicate window drops retried publishes) and
// decoding them; typed protobuf request/reply whose failures travel as a
// berth.common.v1.Status and come back as *StatusError; typed subscriptions; and an event
// consumer for ordered or durable consumers on BERTH_EVENTS.
//
// Wire format, for peers not written with this package:
//
//   - Events (PublishEvent): headers ce-specversion "1.0", ce-id, ce-source, ce-type
//     (dev.berth.<domain>.<type>), ce-subject (service path, optional), ce-time
//     (RFC 3339, UTC, nanoseconds), content-type "application/json", Nats-Msg-Id = ce-id;
//     body the protojson of a berth.events.v1 message.
//   - Commands, requests and replies: the same ce-* headers with ce-type the full protobuf
//     name of the body (berth.events.v1.HostEvent) and content-type
//     "application/protobuf"; body binary protobuf. A request carries berth-timeout (a Go
//     duration: how long the requester waits). A failure reply carries berth-status-code
//     (a berth.common.v1.Code name) and a berth.common.v1.Status body; a success reply has
//     no berth-status-code.
//
// Metrics (on Config.Registerer): berth_natsbus_events_published_total{outcome},
// berth_natsbus_requests_total{class,outcome}, berth_natsbus_request_duration_seconds{class}
// and berth_natsbus_handled_total{class,outcome}; class is the subject's domain and verb
// (rpc.build, agent.step), never an id.
//
// A Bus is safe for concurrent use. Connect starts nothing but the NATS client's own
// goroutines; Close drains the connection and waits for every handler goroutine the Bus
// started.
package natsbus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultURL is the NATS URL used when Config.URLs is empty.
const DefaultURL = "nats://127.0.0.1:4222"

// Defaults of Config.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultReconnectWait  = 2 * time.Second
	DefaultRequestTimeout = 5 * time.Second
)

// Config says how to reach NATS. The zero value connects to DefaultURL without
// credentials.
type Config struct {
	// URLs are the servers to connect to (nats://, tls://, ws:// or wss://); the client picks
	// among them and learns the rest of the cluster from the server. Empty means DefaultURL.
	URLs []string
	// Name is the client name the server shows in its monitoring (berth-controller/h-01).
	Name string
	// Source is the ce-source of the commands and replies this Bus sends; empty means Name,
	// or "berth" when Name is empty too.
	Source string
	// TLS, when set, makes the connection use TLS with this configuration (for mTLS, with
	// client certificates).
	TLS *tls.Config
	// User and Password log in with a user and password.
	User, Password string
	// Token logs in with a token.
	Token string
	// CredsFile logs in with a NATS credentials file (JWT and nkey seed).
	CredsFile string
	// NKeySeedFile logs in with an nkey whose seed is in this file.
	NKeySeedFile string
	// InboxPrefix, when set, replaces _INBOX as the prefix of this connection's reply
	// subjects, so that a server can allow each user to subscribe to its own replies only
	// (<prefix>.>) instead of everyone's.
	InboxPrefix string
	// ConnectTimeout bounds each attempt to reach a server when connecting; Connect fails
	// once every server has been tried once. Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// ReconnectWait is the pause between reconnect attempts to the same server after the
	// connection was lost. Zero means DefaultReconnectWait.
	ReconnectWait time.Duration
	// MaxReconnects is how many reconnect attempts are made after the connection was lost
	// before the Bus gives up and closes; -1 and 0 both mean forever.
	MaxReconnects int
	// RequestTimeout bounds a Request whose context has no deadline. Zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Logger receives connection events (disconnects, reconnects, async errors) and handler
	// failures. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the Bus's metrics (namespace berth, subsystem natsbus). Nil means
	// they are not exported. Several Buses may share one Registerer.
	Registerer prometheus.Registerer
}

// Validate checks the configuration without contacting any server.
func (c Config) Validate() error {
	for _, raw := range c.URLs {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("natsbus config: url %q: %w", raw, err)
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("natsbus config: url %q: scheme %q, want nats, tls, ws or wss", u.Redacted(), u.Scheme)
		}
		if u.Host == "" {
			return fmt.Errorf("natsbus config: url %q: no host", u.Redacted())
		}
	}
	if c.Password != "" && c.User == "" {
		return errors.New("natsbus config: password without user")
	}
	auth := 0
	for _, set := range []bool{c.User != "", c.Token != "", c.CredsFile != "", c.NKeySeedFile != ""} {
		if set {
			auth++
		}
	}
	if auth > 1 {
		return errors.New("natsbus config: more than one of user, token, creds file and nkey seed file")
	}
	if c.InboxPrefix != "" {
		if err := checkSubject(c.InboxPrefix, false); err != nil || strings.HasPrefix(c.InboxPrefix, "$") {
			return fmt.Errorf("natsbus config: inbox prefix %q: want subject tokens without wildcards, not starting with $", c.InboxPrefix)
		}
	}
	if c.ConnectTimeout < 0 || c.ReconnectWait < 0 || c.RequestTimeout < 0 {
		return errors.New("natsbus config: negative timeout")
	}
	if c.MaxReconnects < -1 {
		return fmt.Errorf("natsbus config: max reconnects %d, want -1 (forever) or more", c.MaxReconnects)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if len(c.URLs) == 0 {
		c.URLs = []string{DefaultURL}
	}
	if c.Source == "" {
		c.Source = c.Name
	}
	if c.Source == "" {
		c.Source = "berth"
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.ReconnectWait == 0 {
		c.ReconnectWait = DefaultReconnectWait
	}
	if c.MaxReconnects == 0 {
		c.MaxReconnects = -1
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Bus is a connection to NATS with JetStream.
type Bus struct {
	cfg     Config
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	metrics *metrics
	urls    string

	// handlers counts the handler goroutines started for concurrent subscriptions; Close
	// waits for them.
	handlers sync.WaitGroup

	closeOnce sync.Once
	closed    chan struct{}
}

// Connect validates cfg and connects to the first reachable server. A server that cannot
// be reached is not retried at start: Connect fails within ConnectTimeout per server (or
// earlier when ctx ends) with one line naming the URLs. Once connected, a lost connection
// is retried MaxReconnects times, every ReconnectWait, and each disconnect and reconnect is
// logged.
func Connect(ctx context.Context, cfg Config) (*Bus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	urls := redactedURLs(cfg.URLs)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect %s: %w", urls, err)
	}
	timeout := cfg.ConnectTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
		if timeout <= 0 {
			return nil, fmt.Errorf("connect %s: %w", urls, context.DeadlineExceeded)
		}
	}
	b := &Bus{cfg: cfg, log: cfg.Logger, closed: make(chan struct{}), urls: urls}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.Timeout(timeout),
		nats.ReconnectWait(cfg.ReconnectWait),
		nats.MaxReconnects(cfg.MaxReconnects),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				b.log.Warn("nats disconnected", "url", nc.ConnectedUrlRedacted(), "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			b.closeOnce.Do(func() { close(b.closed) })
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			b.log.Warn("nats async error", "subject", subject, "err", err)
		}),
	}
	if cfg.TLS != nil {
		opts = append(opts, nats.Secure(cfg.TLS))
	}
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	switch {
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.NKeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("connect %s: nkey seed file %s: %w", urls, cfg.NKeySeedFile, err)
		}
		opts = append(opts, o)
	}
	nc, err := nats.Connect(strings.Join(cfg.URLs, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", urls, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connect %s: jetstream: %w", urls, err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connect %s: %w", urls, err)
	}
	b.nc, b.js, b.metrics = nc, js, m
	b.log.Debug("nats connected", "url", nc.ConnectedUrlRedacted())
	return b, nil
}

// redactedURLs joins the URLs with passwords hidden, for errors and logs.
func redactedURLs(raw []string) string {
	out := make([]string, len(raw))
	for i, r := range raw {
		out[i] = r
		if u, err := url.Parse(r); err == nil {
			out[i] = u.Redacted()
		}
	}
	return strings.Join(out, ",")
}

// URL is the server URLs the Bus was configured with, passwords redacted.
func (b *Bus) URL() string { return b.urls }

// Conn is the underlying NATS connection, for the calls this package does not wrap. The
// Bus owns it: do not close or drain it.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// JetStream is the JetStream context of the connection (key-value buckets, other streams).
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Source is the ce-source of the messages this Bus sends.
func (b *Bus) Source() string { return b.cfg.Source }

// Close drains the connection: subscriptions stop taking new messages, the messages they
// hold are handled, pending publishes are flushed, then the connection closes. When ctx
// ends first the connection is closed at once and ctx's error returned. Close waits for
// every handler goroutine the Bus started; it may be called more than once.
func (b *Bus) Close(ctx context.Context) error {
	if err := b.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		b.nc.Close()
	}
	var err error
	select {
	case <-b.closed:
	case <-ctx.Done():
		b.nc.Close()
		<-b.closed
		err = fmt.Errorf("close nats connection: drain: %w", ctx.Err())
	}
	b.handlers.Wait()
	return err
}
