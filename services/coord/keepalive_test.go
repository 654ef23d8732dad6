package coord

import (
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestClientPingsAllowed sends HTTP/2 pings on a client connection with no stream, spaced
// like the policy allows, as pkg/coordclient's gRPC keepalive does (every 10s, also
// without streams). gRPC's default policy counts each such ping as a strike and closes the
// connection with GOAWAY "too_many_pings" after the third.
func TestClientPingsAllowed(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 16s")
	}
	t.Parallel()
	c := startCluster(t, 1, nil)
	c.leader()
	conn, err := net.Dial("tcp", c.members[0].cfg.ClientListener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	var wmu sync.Mutex
	write := func(f func() error) {
		wmu.Lock()
		defer wmu.Unlock()
		if err := f(); err != nil {
			t.Errorf("write frame: %v", err)
		}
	}
	write(func() error { return fr.WriteSettings() })
	var mu sync.Mutex
	var goAway *http2.GoAwayFrame
	acks := 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			mu.Lock()
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					write(func() error { return fr.WriteSettingsAck() })
				}
			case *http2.PingFrame:
				if f.IsAck() {
					acks++
				}
			case *http2.GoAwayFrame:
				goAway = f
			}
			mu.Unlock()
		}
	}()
	const pings = 4
	for i := range pings {
		if i > 0 {
			time.Sleep(keepaliveEnforcement.MinTime + 200*time.Millisecond)
		}
		write(func() error { return fr.WritePing(false, [8]byte{byte(i)}) })
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	if goAway != nil {
		t.Errorf("server sent GOAWAY %v %q to a client pinging every %v", goAway.ErrCode, goAway.DebugData(), keepaliveEnforcement.MinTime+200*time.Millisecond)
	}
	if acks != pings {
		t.Errorf("ping acks: got %d, want %d", acks, pings)
	}
	mu.Unlock()
	conn.Close()
	wg.Wait()
}
