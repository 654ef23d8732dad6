package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// linkMode is what a faultProxy does with the bytes of one peer link.
type linkMode int

const (
	// linkPass forwards bytes both ways (after the link's delay, if any).
	linkPass linkMode = iota
	// linkBlackhole keeps connections open but discards every byte both ways and accepts
	// new connections without forwarding them: the peer sees silence, as in a network
	// partition. Connections that lost bytes are closed when the link heals, since their
	// byte streams are no longer intact (as TCP would end them after retransmissions).
	linkBlackhole
)

func (m linkMode) String() string {
	if m == linkBlackhole {
		return "blackhole"
	}
	return "pass"
}

// faultProxy is a TCP proxy from its own loopback listener to one member's peer address;
// the member at the other end dials it instead of the peer. Each directed peer link of a
// cluster has its own, so faults are per link. Build it with newFaultProxy, run it with
// Run; set faults at any time.
type faultProxy struct {
	target string
	l      net.Listener

	// mu guards the fields below.
	mu    sync.Mutex
	mode  linkMode
	delay time.Duration
	conns map[*proxyConn]struct{}
}

// proxyConn is one proxied connection: the accepted side and, once dialled, the target's.
type proxyConn struct {
	client, upstream net.Conn
	// tainted is set (under faultProxy.mu) when the connection lost bytes to a blackhole.
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

func newFaultProxy(target string) (*faultProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy to %s: %w", target, err)
	}
	return &faultProxy{target: target, l: l, conns: map[*proxyConn]struct{}{}}, nil
}

// Addr is where the proxy listens.
func (p *faultProxy) Addr() string { return p.l.Addr().String() }

// SetMode switches the link to m; healing (linkPass) closes the connections a blackhole
// tainted.
func (p *faultProxy) SetMode(m linkMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	for c := range p.conns {
		switch m {
		case linkBlackhole:
			c.tainted = true
		case linkPass:
			if c.tainted {
				c.close()
			}
		}
	}
}

// SetDelay delays every chunk of bytes by d in both directions, keeping their order.
func (p *faultProxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Run accepts and forwards connections until ctx ends, then closes the listener and every
// connection and returns once all its goroutines have exited.
func (p *faultProxy) Run(ctx context.Context) error {
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
func (p *faultProxy) serve(ctx context.Context, client net.Conn) {
	pc := &proxyConn{client: client}
	p.mu.Lock()
	if ctx.Err() != nil {
		p.mu.Unlock()
		client.Close()
		return
	}
	mode := p.mode
	pc.tainted = mode == linkBlackhole
	p.conns[pc] = struct{}{}
	p.mu.Unlock()
	defer func() {
		pc.close()
		p.mu.Lock()
		delete(p.conns, pc)
		p.mu.Unlock()
	}()
	if mode == linkBlackhole {
		// Swallow whatever arrives; the connection is closed on heal or by the peer.
		buf := make([]byte, 32<<10)
		for {
			if _, err := client.Read(buf); err != nil {
				return
			}
		}
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	up, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	pc.upstream = up
	_, live := p.conns[pc]
	p.mu.Unlock()
	if !live {
		up.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(pc, up, client) }()
	go func() { defer wg.Done(); p.pipe(pc, client, up) }()
	wg.Wait()
}

// chunk is bytes read from one side, to be written to the other at release.
type chunk struct {
	b       []byte
	release time.Time
}

// pipe copies src to dst, each chunk after the link's delay at the time it was read, in
// order; in blackhole mode it reads and discards. It closes both sides when either
// fails, so that its sibling returns too; it returns after its writer goroutine has.
func (p *faultProxy) pipe(pc *proxyConn, dst, src net.Conn) {
	defer pc.close()
	q := make(chan chunk, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range q {
			if d := time.Until(c.release); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(c.b); err != nil {
				pc.close()
				// Drain so that the reader never blocks on a full queue.
				for range q {
				}
				return
			}
		}
	}()
	defer func() { close(q); <-done }()
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			mode, delay := p.mode, p.delay
			if mode == linkBlackhole {
				pc.tainted = true
			}
			p.mu.Unlock()
			if mode == linkPass {
				q <- chunk{b: buf[:n], release: time.Now().Add(delay)}
			}
		}
		if err != nil {
			return
		}
	}
}
