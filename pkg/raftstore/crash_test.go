package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test runs each member as a child process (this test binary re-executed with
// childEnv set), writes through them over HTTP, kills all of them with SIGKILL while
// writes are in flight, restarts them and checks that every acknowledged write is there.

const (
	childEnv      = "RAFTSTORE_CHILD"
	childDirEnv   = "RAFTSTORE_CHILD_DIR"
	childPeersEnv = "RAFTSTORE_CHILD_PEERS"
	childAddrEnv  = "RAFTSTORE_CHILD_HTTP_FILE"
	crashCluster  = 0xc4a54
)

// runChild is the body of a child member. The peer listener is inherited as fd 3. It
// serves POST /put?k=&v= (Propose) and GET /state (ReadIndex, then the state) on a
// loopback HTTP port written to the file named by childAddrEnv.
func runChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	id, err := strconv.ParseUint(os.Getenv(childEnv), 10, 64)
	if err != nil {
		return fail(err)
	}
	var peers []Peer
	for _, p := range strings.Split(os.Getenv(childPeersEnv), ",") {
		sid, addr, _ := strings.Cut(p, "=")
		pid, err := strconv.ParseUint(sid, 10, 64)
		if err != nil {
			return fail(err)
		}
		peers = append(peers, Peer{ID: pid, Addr: addr})
	}
	lis, err := net.FileListener(os.NewFile(3, "peer-listener"))
	if err != nil {
		return fail(err)
	}
	sm := newKVSM()
	n, err := NewNode(Config{
		ID: id, DataDir: os.Getenv(childDirEnv), Peers: peers, ClusterID: crashCluster,
		TickInterval: 10 * time.Millisecond, SnapshotEntries: 200, SnapshotCatchUpEntries: 50,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, sm)
	if err != nil {
		return fail(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /put", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		k, v := r.URL.Query().Get("k"), r.URL.Query().Get("v")
		if _, err := n.Propose(ctx, []byte(k+"="+v)); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := n.ReadIndex(ctx); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		sm.mu.Lock()
		defer sm.mu.Unlock()
		for k, v := range sm.data {
			fmt.Fprintf(w, "%s=%s\n", k, v)
		}
	})
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	addrFile := os.Getenv(childAddrEnv)
	if err := os.WriteFile(addrFile+".tmp", []byte(hl.Addr().String()), 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(addrFile+".tmp", addrFile); err != nil {
		return fail(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(hl)
	go n.ServePeers(ctx, lis)
	err = n.Run(ctx)
	srv.Close()
	if err != nil {
		return fail(err)
	}
	return 0
}

// crashMember is one child process slot.
type crashMember struct {
	id       uint64
	dir      string
	lisFile  *os.File
	addrFile string
	cmd      *exec.Cmd
	stderr   *bytes.Buffer
	httpAddr string
}

func startChild(t *testing.T, m *crashMember, peers string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(m.addrFile)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childEnv+"="+strconv.FormatUint(m.id, 10),
		childDirEnv+"="+m.dir,
		childPeersEnv+"="+peers,
		childAddrEnv+"="+m.addrFile,
	)
	cmd.ExtraFiles = []*os.File{m.lisFile}
	m.stderr = &bytes.Buffer{}
	cmd.Stderr = m.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.cmd = cmd
	waitFor(t, 10*time.Second, fmt.Sprintf("child %d to listen", m.id), func() (bool, string) {
		b, err := os.ReadFile(m.addrFile)
		if err != nil {
			return false, err.Error()
		}
		m.httpAddr = string(b)
		return true, ""
	})
}

func TestClusterSurvivesKillAll(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	root := t.TempDir()
	var members []*crashMember
	var peerList []string
	for i := uint64(1); i <= 3; i++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := lis.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		lis.Close() // f keeps the socket (and the port) open for the children
		t.Cleanup(func() { f.Close() })
		m := &crashMember{id: i, dir: filepath.Join(root, fmt.Sprintf("m%d", i)), lisFile: f, addrFile: filepath.Join(root, fmt.Sprintf("http%d", i))}
		members = append(members, m)
		peerList = append(peerList, fmt.Sprintf("%d=%s", i, lis.Addr()))
	}
	peers := strings.Join(peerList, ",")
	kill := func() {
		for _, m := range members {
			if m.cmd != nil {
				m.cmd.Process.Kill()
				m.cmd.Wait()
				m.cmd = nil
			}
		}
	}
	t.Cleanup(kill)
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range members {
				if m.stderr != nil {
					t.Logf("child %d stderr:\n%s", m.id, m.stderr.String())
				}
			}
		}
	})
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	for _, m := range members {
		startChild(t, m, peers)
	}

	// Writers put distinct keys through all members until the kill.
	var mu sync.Mutex
	acked := map[string]bool{}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				m := members[w%3]
				key := fmt.Sprintf("w%d-%d", w, i)
				resp, err := client.Post("http://"+m.httpAddr+"/put?"+url.Values{"k": {key}, "v": {"x"}}.Encode(), "text/plain", nil)
				if err != nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					acked[key] = true
					mu.Unlock()
				}
			}
		})
	}
	waitFor(t, 20*time.Second, "300 acknowledged writes", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 300, fmt.Sprintf("%d acked", len(acked))
	})
	// SIGKILL every member at once, writes in flight.
	for _, m := range members {
		m.cmd.Process.Kill()
	}
	kill()
	cancel()
	wg.Wait()
	mu.Lock()
	want := len(acked)
	mu.Unlock()

	for _, m := range members {
		startChild(t, m, peers)
	}
	var states []map[string]string
	waitFor(t, 20*time.Second, "identical states on all members after restart", func() (bool, string) {
		states = states[:0]
		for _, m := range members {
			resp, err := client.Get("http://" + m.httpAddr + "/state")
			if err != nil {
				return false, err.Error()
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false, fmt.Sprintf("member %d: %s", m.id, body)
			}
			st := map[string]string{}
			for line := range strings.Lines(string(body)) {
				k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
				st[k] = v
			}
			states = append(states, st)
		}
		for _, st := range states[1:] {
			if len(st) != len(states[0]) {
				return false, fmt.Sprintf("sizes differ: %d vs %d", len(st), len(states[0]))
			}
		}
		return true, ""
	})
	lost := 0
	for key := range acked {
		for i, st := range states {
			if st[key] != "x" {
				lost++
				t.Errorf("member %d lost acknowledged write %s", i+1, key)
			}
		}
	}
	for i, st := range states[1:] {
		for k, v := range st {
			if states[0][k] != v {
				t.Fatalf("members 1 and %d differ at %s: %q vs %q", i+2, k, states[0][k], v)
			}
		}
	}
	t.Logf("%d writes acknowledged before SIGKILL of all members, %d lost; %d keys after restart", want, lost, len(states[0]))
	// Clean shutdown of the children.
	for _, m := range members {
		m.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, m := range members {
		done := make(chan error, 1)
		go func() { done <- m.cmd.Wait() }()
		select {
		case err := <-done:
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				t.Errorf("child %d: %v", m.id, err)
			} else if err != nil {
				t.Errorf("child %d exited with %v after SIGTERM", m.id, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("child %d ignored SIGTERM", m.id)
			m.cmd.Process.Kill()
			<-done
		}
		m.cmd = nil
	}
}
