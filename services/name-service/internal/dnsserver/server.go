package dnsserver

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/services/name-service/internal/catalog"
)

// Defaults of Config.
const (
	DefaultMaxUDPSize     = 1232 // the DNS flag day 2020 recommendation
	DefaultTCPIdleTimeout = 10 * time.Second
	DefaultTCPMaxConns    = 1000
	DefaultTTL            = 5 * time.Second
)

// Config configures a Server.
type Config struct {
	// Zones are the zones the server is authoritative for (ns.berth.internal).
	Zones []string
	// TTL is the TTL of the SOA and NS records and of negative answers.
	TTL time.Duration
	// NSAddrs are the addresses ns.<zone> resolves to; empty leaves it without address
	// records.
	NSAddrs []netip.Addr
	// MaxUDPSize caps the EDNS buffer size the server uses over UDP, from 512 to 65535.
	MaxUDPSize int
	// UDPWorkers is the number of goroutines reading the UDP socket; 0 means GOMAXPROCS.
	UDPWorkers int
	// TCPIdleTimeout closes a TCP connection idle this long.
	TCPIdleTimeout time.Duration
	// TCPMaxConns caps open TCP connections; more are closed at once.
	TCPMaxConns int
	// RateLimit, when above 0, limits UDP responses per second to each client network
	// (IPv4 /24, IPv6 /56), with bursts of RateBurst; over the limit one response in
	// RateSlip is sent truncated (so that a real client retries over TCP) and the others
	// are dropped. RateSlip 0 drops them all.
	RateLimit float64
	RateBurst int
	RateSlip  int
	// Logger receives errors of the listeners.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.TTL <= 0 {
		c.TTL = DefaultTTL
	}
	if c.MaxUDPSize == 0 {
		c.MaxUDPSize = DefaultMaxUDPSize
	}
	if c.UDPWorkers <= 0 {
		c.UDPWorkers = runtime.GOMAXPROCS(0)
	}
	if c.TCPIdleTimeout <= 0 {
		c.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if c.TCPMaxConns <= 0 {
		c.TCPMaxConns = DefaultTCPMaxConns
	}
	if c.RateBurst <= 0 {
		c.RateBurst = max(int(c.RateLimit), 1)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server is the DNS server. Create it with New, then Listen (optional) and Run.
type Server struct {
	cfg     Config
	cat     *catalog.Catalog // concrete: an interface would make the fast path's buffers escape
	zones   []*zone
	ttl     uint32
	metrics *metrics
	limiter *limiter
	log     *slog.Logger

	mu  sync.Mutex
	udp *net.UDPConn
	tcp *net.TCPListener
}

// New checks cfg and returns a server over cat; it starts nothing.
func New(cfg Config, cat *catalog.Catalog, reg prometheus.Registerer) (*Server, error) {
	cfg.setDefaults()
	if len(cfg.Zones) == 0 {
		return nil, errors.New("dns: no zone")
	}
	if cfg.MaxUDPSize < dns.MinMsgSize || cfg.MaxUDPSize > dns.MaxMsgSize {
		return nil, fmt.Errorf("dns: max udp size %d: want %d to %d", cfg.MaxUDPSize, dns.MinMsgSize, dns.MaxMsgSize)
	}
	if cfg.RateLimit < 0 || cfg.RateSlip < 0 {
		return nil, fmt.Errorf("dns: rate limit %v, slip %d: want 0 or more", cfg.RateLimit, cfg.RateSlip)
	}
	s := &Server{cfg: cfg, cat: cat, ttl: uint32(max(cfg.TTL/time.Second, 1)), log: cfg.Logger}
	seen := map[string]bool{}
	for _, zn := range cfg.Zones {
		name, err := dnsview.CanonicalZone(zn)
		if err != nil {
			return nil, fmt.Errorf("dns: %w", err)
		}
		if seen[name] {
			return nil, fmt.Errorf("dns: zone %s is listed twice", name)
		}
		seen[name] = true
		s.zones = append(s.zones, &zone{name: name, nsName: "ns." + name, labels: strings.Count(name, ".")})
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	if cfg.RateLimit > 0 {
		s.limiter = newLimiter(cfg.RateLimit, cfg.RateBurst, cfg.RateSlip, time.Now)
	}
	return s, nil
}

// Listen binds the UDP socket and the TCP listener on addr (host:port; port 0 picks one
// port, the same for both) and returns their addresses. Run calls it when the caller did
// not.
func (s *Server) Listen(addr string) (udp, tcp net.Addr, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp != nil {
		return s.udp.LocalAddr(), s.tcp.Addr(), nil
	}
	for attempt := 0; ; attempt++ {
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns listen %s: %w", addr, err)
		}
		uc, err := net.ListenUDP("udp", ua)
		if err != nil {
			return nil, nil, fmt.Errorf("dns listen udp %s: %w", addr, err)
		}
		// TCP takes the port UDP got, so that port 0 gives one port for both.
		ta := &net.TCPAddr{IP: ua.IP, Port: uc.LocalAddr().(*net.UDPAddr).Port, Zone: ua.Zone}
		tl, err := net.ListenTCP("tcp", ta)
		if err != nil {
			uc.Close()
			if ua.Port == 0 && attempt < 10 {
				continue // the TCP port was taken: try another
			}
			return nil, nil, fmt.Errorf("dns listen tcp %s: %w", ta, err)
		}
		_ = uc.SetReadBuffer(4 << 20)
		_ = uc.SetWriteBuffer(4 << 20)
		s.udp, s.tcp = uc, tl
		return uc.LocalAddr(), tl.Addr(), nil
	}
}

// Run serves on addr (ignored when Listen was called) until ctx ends, then closes the
// sockets and waits for every goroutine it started.
func (s *Server) Run(ctx context.Context, addr string) error {
	if _, _, err := s.Listen(addr); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, s.cfg.UDPWorkers+1)
	for range s.cfg.UDPWorkers {
		wg.Go(func() { errc <- s.serveUDP(ctx) })
	}
	conns := &connSet{m: map[net.Conn]struct{}{}}
	wg.Go(func() { errc <- s.serveTCP(ctx, conns, &wg) })
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		cancel()
	}
	s.udp.Close()
	s.tcp.Close()
	conns.closeAll()
	wg.Wait()
	return err
}

func newRand() *rand.Rand {
	var seed [16]byte
	_, _ = crand.Read(seed[:])
	return rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))
}

// udpBatch is the number of datagrams read (recvmmsg) and written (sendmmsg) per system
// call on Linux.
const udpBatch = 64

// batchConn is the batch I/O of golang.org/x/net's ipv4 and ipv6 PacketConns.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// serveUDP reads requests in batches, answers each, and writes the answers in one batch.
func (s *Server) serveUDP(ctx context.Context) error {
	var bc batchConn = ipv4.NewPacketConn(s.udp)
	if la, ok := s.udp.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		bc = ipv6.NewPacketConn(s.udp)
	}
	r := newRand()
	in := make([]ipv4.Message, udpBatch)
	out := make([]ipv4.Message, 0, udpBatch)
	outBufs := make([][]byte, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, dns.MaxMsgSize)}
		outBufs[i] = make([]byte, 0, dns.MaxMsgSize)
	}
	results := make([]Result, udpBatch)
	starts := make([]time.Time, udpBatch)
	for {
		n, err := bc.ReadBatch(in, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.log.Warn("dns: udp read", "err", err)
			continue
		}
		out = out[:0]
		for i := range n {
			start := time.Now()
			ua, ok := in[i].Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			src := ua.AddrPort().Addr().Unmap()
			slip := false
			if s.limiter != nil {
				var allowed bool
				allowed, slip = s.limiter.allow(src)
				if !allowed && !slip {
					s.metrics.rateLimited("drop")
					continue
				}
			}
			resp, res := s.Respond(in[i].Buffers[0][:in[i].N], src, false, r, outBufs[len(out)][:0])
			if res.drop {
				s.metrics.dropped.Inc()
				continue
			}
			if slip {
				// Over the limit: an empty truncated reply sends a real client to TCP.
				s.metrics.rateLimited("slip")
				resp = slipReply(resp)
			}
			results[len(out)], starts[len(out)] = res, start
			out = append(out, ipv4.Message{Buffers: [][]byte{resp}, Addr: ua})
		}
		for sent := 0; sent < len(out); {
			k, err := bc.WriteBatch(out[sent:], 0)
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return nil
				}
				s.log.Debug("dns: udp write", "err", err)
				sent++ // skip the datagram that failed
				continue
			}
			sent += k
		}
		for i := range out {
			s.metrics.observe("udp", results[i], time.Since(starts[i]))
		}
	}
}

// slipReply turns a packed response into its header alone with TC set and no records.
func slipReply(resp []byte) []byte {
	if len(resp) < 12 {
		return resp
	}
	resp = resp[:12]
	resp[2] |= 0x02 // TC
	clear(resp[4:12])
	return resp
}

// Respond answers one request from src (over TCP when tcp is set), drawing randomness
// from r and appending the response to out[:0]. A panic (a bug) is recovered and answered
// with SERVFAIL, never propagated.
func (s *Server) Respond(req []byte, src netip.Addr, tcp bool, r *rand.Rand, out []byte) (resp []byte, res Result) {
	defer func() {
		if p := recover(); p != nil {
			s.metrics.panics.Inc()
			s.log.Error("dns: panic answering a query", "panic", p)
			if len(req) < 12 {
				resp, res = nil, Result{drop: true}
				return
			}
			resp = append(out[:0], req[0], req[1], 0x80|req[2]&0x79, byte(dns.RcodeServerFailure), 0, 0, 0, 0, 0, 0, 0, 0)
			res = Result{rcode: dns.RcodeServerFailure}
		}
	}()
	if resp, res, ok := s.fastRespond(req, src, tcp, r, out); ok {
		return resp, res
	}
	return s.respond(req, src, tcp, r, out)
}

// connSet tracks open TCP connections so that Run can close them.
type connSet struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

func (c *connSet) add(conn net.Conn, limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= limit {
		return false
	}
	c.m[conn] = struct{}{}
	return true
}

func (c *connSet) remove(conn net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, conn)
}

func (c *connSet) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn := range c.m {
		conn.Close()
	}
	c.m = nil
}

func (s *Server) serveTCP(ctx context.Context, conns *connSet, wg *sync.WaitGroup) error {
	for {
		conn, err := s.tcp.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.log.Warn("dns: tcp accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !conns.add(conn, s.cfg.TCPMaxConns) {
			s.metrics.tcpRefused.Inc()
			conn.Close()
			continue
		}
		wg.Go(func() {
			defer conns.remove(conn)
			defer conn.Close()
			s.serveConn(conn)
		})
	}
}

// serveConn answers the length-prefixed messages of one TCP connection in order until the
// client closes it, it idles TCPIdleTimeout, or it sends garbage.
func (s *Server) serveConn(conn net.Conn) {
	r := newRand()
	var src netip.Addr
	if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		src = ta.AddrPort().Addr().Unmap()
	}
	var lenBuf [2]byte
	buf := make([]byte, dns.MaxMsgSize)
	out := make([]byte, 2, dns.MaxMsgSize+2)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		if _, err := io.ReadFull(conn, lenBuf[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(conn, buf[:n]); err != nil {
			return
		}
		start := time.Now()
		resp, res := s.Respond(buf[:n], src, true, r, out[2:2])
		if res.drop {
			s.metrics.dropped.Inc()
			return
		}
		msg := append(out[:2], resp...)
		binary.BigEndian.PutUint16(msg, uint16(len(resp)))
		_ = conn.SetWriteDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		if _, err := conn.Write(msg); err != nil {
			return
		}
		s.metrics.observe("tcp", res, time.Since(start))
	}
}
