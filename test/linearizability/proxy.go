package linearizability

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Mode is what a Proxy does with traffic.
type Mode int

// The proxy modes.
const (
	// Pass forwards traffic both ways.
	Pass Mode = iota
	// Drop closes every connection and closes new ones as soon as they are accepted: the
	// peer sees resets, as when a process or host is gone.
	Drop
	// Blackhole keeps connections open but discards every byte in both directions, and
	// accepts new connections without forwarding them: the peer sees silence, as in a
	// network partition. Connections that lost bytes are closed when the mode returns to
	// Pass (their byte streams are no longer intact).
	Blackhole
)

var modeNames = map[Mode]string{Pass: "pass", Drop: "drop", Blackhole: "blackhole"}

// String returns the mode's name.
func (m Mode) String() string { return modeNames[m] }

// Proxy is a TCP proxy from its own loopback listener to one target address, whose
// traffic can be dropped or blackholed. Tests put one on every directed peer link of a
// cluster. Build it with NewProxy, run it with Run; SetMode may be called at any time.
type Proxy struct {
	target string
	l      net.Listener

	// mu guards the fields below.
	mu    sync.Mutex
	mode  Mode
	conns map[*proxyConn]struct{}
}

// proxyConn is one proxied connection: the accepted side and, once dialled, the target's.
type proxyConn struct {
	client, upstream net.Conn
	// tainted is set (under Proxy.mu) when the connection lost bytes to a blackhole.
	tainted bool
	once    sync.Once
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		c.client.Close()
		if c.upstream != nil {
			c.upstream.Close()
		}
	})
}

// NewProxy listens on 127.0.0.1:0 for connections to forward to target.
func NewProxy(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("new proxy to %q: %w", target, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("new proxy to %s: %w", target, err)
	}
	return &Proxy{target: target, l: l, conns: map[*proxyConn]struct{}{}}, nil
}

// Addr returns the address the proxy listens on.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Mode returns the current mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// SetMode switches the proxy to m: Drop closes every open connection at once; going back
// to Pass closes the connections a blackhole tainted.
func (p *Proxy) SetMode(m Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	for c := range p.conns {
		switch {
		case m == Drop:
			c.close()
		case m == Blackhole:
			c.tainted = true
		case m == Pass && c.tainted:
			c.close()
		}
	}
}

// Run accepts and forwards connections until ctx ends, then closes the listener and every
// connection and returns after all its goroutines have exited.
func (p *Proxy) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { p.l.Close() })
	defer stop()
	var err error
	for {
		c, aerr := p.l.Accept()
		if aerr != nil {
			if ctx.Err() == nil && !errors.Is(aerr, net.ErrClosed) {
				err = fmt.Errorf("proxy %s: accept: %w", p.Addr(), aerr)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.serve(ctx, c)
		}()
	}
	p.l.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.close()
	}
	p.mu.Unlock()
	wg.Wait()
	return err
}

// serve forwards one accepted connection until either side closes or ctx ends.
func (p *Proxy) serve(ctx context.Context, client net.Conn) {
	pc := &proxyConn{client: client}
	p.mu.Lock()
	mode := p.mode
	if mode == Drop || ctx.Err() != nil {
		p.mu.Unlock()
		client.Close()
		return
	}
	pc.tainted = mode == Blackhole
	p.conns[pc] = struct{}{}
	p.mu.Unlock()
	defer func() {
		pc.close()
		p.mu.Lock()
		delete(p.conns, pc)
		p.mu.Unlock()
	}()
	if mode == Blackhole {
		// Swallow whatever arrives; the connection is closed on heal or by the peer.
		io.Copy(io.Discard, client)
		return
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	up, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	pc.upstream = up
	if _, live := p.conns[pc]; !live || p.mode == Drop {
		p.mu.Unlock()
		up.Close()
		return
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(pc, up, client) }()
	go func() { defer wg.Done(); p.pipe(pc, client, up) }()
	wg.Wait()
}

// pipe copies src to dst while the mode is Pass; in Blackhole it reads and discards. It
// closes both sides when either fails, so that its sibling returns too.
func (p *Proxy) pipe(pc *proxyConn, dst, src net.Conn) {
	defer pc.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			mode := p.mode
			if mode == Blackhole {
				pc.tainted = true
			}
			p.mu.Unlock()
			switch mode {
			case Drop:
				return
			case Pass:
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}
