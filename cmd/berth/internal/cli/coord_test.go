package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/raftstore"
	coordsrv "github.com/berthdev/berth/services/coord"
)

// coordMember is a real berth-coord member running in process.
type coordMember struct {
	name, clientAddr, peerAddr, dataDir string
	stop                                func()
}

// startCoord runs a berth-coord member on loopback ports chosen by the kernel, as a
// one-member cluster (initial empty) or joining one (state "existing"); it is stopped at
// the end of the test. dataDir may be pre-seeded.
func startCoord(t *testing.T, name, dataDir, initialCluster, state string, peerL net.Listener) *coordMember {
	t.Helper()
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if peerL == nil {
		if peerL, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	if initialCluster == "" {
		initialCluster = name + "=" + peerL.Addr().String()
	}
	srv, err := coordsrv.New(coordsrv.Config{
		Name: name, DataDir: dataDir, ClientListener: cl, PeerListener: peerL,
		InitialCluster: initialCluster, InitialClusterState: state,
		HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond, RequestTimeout: 2 * time.Second,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("new coord %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	m := &coordMember{name: name, clientAddr: cl.Addr().String(), peerAddr: peerL.Addr().String(), dataDir: dataDir}
	m.stop = func() {
		once.Do(func() {
			cancel()
			// A member removed from its cluster ends with ErrRemoved: that is its job done.
			if err := <-done; err != nil && !errors.Is(err, raftstore.ErrRemoved) {
				t.Errorf("run coord %s: %v", name, err)
			}
		})
	}
	t.Cleanup(m.stop)
	return m
}

// waitLeader waits until the member at addr serves linearizable reads.
func waitLeader(t *testing.T, addr string) {
	t.Helper()
	cl, err := coordclient.New(t.Context(), coordclient.Config{Endpoints: []string{addr}, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := cl.List(ctx, "/")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("coord at %s not ready: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockedBuffer is a bytes.Buffer safe for a command writing while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *lockedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *lockedBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// coordCLI runs `berth coord --endpoints addr args...` in process with stdin and returns
// stdout and the error.
func coordCLI(ctx context.Context, addr string, stdin io.Reader, out io.Writer, args ...string) error {
	root := NewRoot()
	root.SetArgs(append([]string{"coord", "--endpoints", addr}, args...))
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	root.SetIn(stdin)
	root.SetOut(out)
	root.SetErr(io.Discard)
	return root.ExecuteContext(ctx)
}

// mustCoord runs the CLI and fails the test on error.
func mustCoord(t *testing.T, addr string, stdin io.Reader, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := coordCLI(t.Context(), addr, stdin, &out, args...); err != nil {
		t.Fatalf("berth coord %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

// failCoord runs the CLI, expects an error containing want and returns it.
func failCoord(t *testing.T, addr string, stdin io.Reader, want string, args ...string) {
	t.Helper()
	var out bytes.Buffer
	err := coordCLI(t.Context(), addr, stdin, &out, args...)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("berth coord %s: got error %v, want one containing %q", strings.Join(args, " "), err, want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("berth coord %s: got a multi-line error %q, want one line", strings.Join(args, " "), err)
	}
}

func TestCoordCLIReadWrite(t *testing.T) {
	m := startCoord(t, "n1", t.TempDir(), "", "", nil)
	waitLeader(t, m.clientAddr)
	addr := m.clientAddr

	if got := mustCoord(t, addr, nil, "put", "/berth/config/a", "hello"); !strings.Contains(got, "/berth/config/a version 1 at revision") {
		t.Fatalf("put: got %q", got)
	}
	if got := mustCoord(t, addr, nil, "get", "/berth/config/a"); got != "hello" {
		t.Fatalf("get: got %q, want the value exactly", got)
	}
	var node struct {
		Path    string `json:"path"`
		Value   string `json:"value"`
		Version int64  `json:"version"`
	}
	if err := json.Unmarshal([]byte(mustCoord(t, addr, nil, "--json", "get", "/berth/config/a")), &node); err != nil {
		t.Fatal(err)
	}
	if node.Path != "/berth/config/a" || node.Value != "hello" || node.Version != 1 {
		t.Fatalf("get --json: got %+v", node)
	}
	mustCoord(t, addr, nil, "put", "--expect-version", "1", "/berth/config/a", "hello2")
	failCoord(t, addr, nil, "version is not 1", "put", "--expect-version", "1", "/berth/config/a", "x")
	failCoord(t, addr, nil, "already exists", "put", "--expect-version", "0", "/berth/config/a", "x")
	mustCoord(t, addr, nil, "put", "/berth/config/b/c", "deep")

	if got, want := mustCoord(t, addr, nil, "ls", "/berth/config"), "/berth/config/a\n/berth/config/b/\n"; got != want {
		t.Fatalf("ls: got %q, want %q", got, want)
	}
	if got, want := mustCoord(t, addr, nil, "ls", "-r", "/berth"), "/berth/config/a\n/berth/config/b/c\n"; got != want {
		t.Fatalf("ls -r: got %q, want %q", got, want)
	}
	if got := mustCoord(t, addr, nil, "ls", "-l", "/berth/config"); !strings.Contains(got, "VERSION") || !strings.Contains(got, "2 ") {
		t.Fatalf("ls -l: got %q, want a header and version 2", got)
	}
	var list struct {
		Revision int64             `json:"revision"`
		Nodes    []json.RawMessage `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(mustCoord(t, addr, nil, "--json", "ls", "-r", "/")), &list); err != nil || len(list.Nodes) != 2 || list.Revision == 0 {
		t.Fatalf("ls --json: got %+v, %v", list, err)
	}

	// Values from stdin, up to 4 MiB; one byte more is refused by the store.
	big := bytes.Repeat([]byte("z"), coordclient.MaxValueBytes)
	mustCoord(t, addr, bytes.NewReader(big), "put", "/berth/config/big", "-")
	if got := mustCoord(t, addr, nil, "get", "/berth/config/big"); got != string(big) {
		t.Fatalf("get of a 4 MiB value: got %d bytes, want %d", len(got), len(big))
	}
	failCoord(t, addr, bytes.NewReader(append(big, 'z')), "over the 4194304-byte (4 MiB) limit", "put", "/berth/config/big", "-")
	if got := mustCoord(t, addr, nil, "--json", "get", "/berth/config/big"); !strings.Contains(got, `"version": 1`) {
		t.Fatalf("refused put changed the node: %s", got)
	}

	failCoord(t, addr, nil, "/berth/config/b: no such node (a subtree needs --recursive)", "del", "/berth/config/b")
	if got := mustCoord(t, addr, nil, "del", "-r", "/berth/config"); got != "deleted 3 nodes at revision 5\n" {
		t.Fatalf("del -r: got %q", got)
	}
	failCoord(t, addr, nil, "/berth/config/a: no such node", "get", "/berth/config/a")
	failCoord(t, addr, nil, `coord: invalid path: "/a//b" has an empty segment`, "get", "/a//b")
}

func TestCoordCLIUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := time.Now()
	failCoord(t, addr, nil, "no coord reachable at "+addr+" (is berth dev or berth-coord running? set --endpoints)", "--timeout", "1s", "get", "/a")
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("unreachable coord: took %s with --timeout 1s", took)
	}
	failCoord(t, "127.0.0.1", nil, `--endpoints "127.0.0.1"`, "get", "/a")

	// A member whose cluster has no quorum: an error within the timeout, not a hang.
	peerL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lonely := startCoord(t, "n1", t.TempDir(), "n1="+peerL.Addr().String()+",n2=127.0.0.1:"+freePort(t), "", peerL)
	start = time.Now()
	// The member answers "no leader" once an election timeout has passed without one; a
	// request that beats that runs into the CLI's own timeout. Either is a clear, bounded error.
	var out bytes.Buffer
	err = coordCLI(t.Context(), lonely.clientAddr, nil, &out, "--timeout", "2s", "put", "/a", "x")
	if err == nil || !(strings.Contains(err.Error(), "has no leader") || strings.Contains(err.Error(), "within 2s (quorum lost? raise --timeout)")) {
		t.Fatalf("put without quorum: got error %v, want a no-leader or timeout error", err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("no quorum: took %s with --timeout 2s", took)
	}

	t.Setenv(envCoordEndpoints, addr)
	root := NewRoot()
	root.SetArgs([]string{"coord", "--timeout", "500ms", "get", "/a"})
	root.SetOut(io.Discard)
	if err := root.ExecuteContext(t.Context()); err == nil || !strings.Contains(err.Error(), "no coord reachable at "+addr) {
		t.Fatalf("$%s: got %v, want the endpoint from the environment", envCoordEndpoints, err)
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

func TestCoordCLIWatch(t *testing.T) {
	m := startCoord(t, "n1", t.TempDir(), "", "", nil)
	waitLeader(t, m.clientAddr)
	addr := m.clientAddr
	mustCoord(t, addr, nil, "put", "/w/old", "0")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() { done <- coordCLI(ctx, addr, nil, &out, "watch", "/w", "--prefix", "--rev", "1") }()
	// The watch from revision 1 replays the first put; then live changes follow.
	waitFor(t, &out, 1)
	mustCoord(t, addr, nil, "put", "/w/a", "1")
	mustCoord(t, addr, nil, "del", "/w/old")
	mustCoord(t, addr, nil, "put", "/other", "x")
	lines := waitFor(t, &out, 3)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("watch ended with %v after Ctrl-C, want nil", err)
	}
	want := []string{`1 PUT /w/old "0"`, `2 PUT /w/a "1"`, `3 DELETE /w/old`}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("watch: got %q, want %q", lines, want)
	}

	// A compacted --rev is refused with what to do; --json prints one object per change.
	var jsonOut lockedBuffer
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	go func() { done <- coordCLI(ctx2, addr, nil, &jsonOut, "--json", "watch", "/w/a") }()
	time.Sleep(200 * time.Millisecond)
	mustCoord(t, addr, nil, "put", "/w/a", "2")
	lines = waitFor(t, &jsonOut, 1)
	cancel2()
	<-done
	var ev struct {
		Type     string `json:"type"`
		Revision int64  `json:"revision"`
		Path     string `json:"path"`
		Value    string `json:"value"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &ev); err != nil || ev.Type != "PUT" || ev.Path != "/w/a" || ev.Value != "2" || ev.Revision != 5 {
		t.Fatalf("watch --json: got %q (%v)", lines[0], err)
	}
}

// waitFor waits until out holds n lines and returns them.
func waitFor(t *testing.T, out *lockedBuffer, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := strings.TrimRight(out.String(), "\n")
		var lines []string
		if s != "" {
			lines = strings.Split(s, "\n")
		}
		if len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d lines %q, want %d", len(lines), lines, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCoordCLICluster(t *testing.T) {
	m := startCoord(t, "n1", t.TempDir(), "", "", nil)
	waitLeader(t, m.clientAddr)
	addr := m.clientAddr
	mustCoord(t, addr, nil, "put", "/berth/hosts/h1", "rack-1")

	if got := mustCoord(t, addr, nil, "members"); !strings.Contains(got, "n1") || !strings.Contains(got, m.peerAddr) || !strings.Contains(got, "*") {
		t.Fatalf("members: got %q, want n1 at %s marked leader", got, m.peerAddr)
	}
	var status []struct {
		Endpoint string `json:"endpoint"`
		Name     string `json:"name"`
		IsLeader bool   `json:"is_leader"`
		Revision int64  `json:"revision"`
		Nodes    int64  `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(mustCoord(t, addr, nil, "--json", "status")), &status); err != nil {
		t.Fatal(err)
	}
	if len(status) != 1 || status[0].Name != "n1" || !status[0].IsLeader || status[0].Revision != 1 || status[0].Nodes != 1 {
		t.Fatalf("status --json: got %+v", status)
	}
	failCoord(t, addr, nil, "last member", "member", "remove", "n1")
	failCoord(t, addr, nil, `no member named or with id "n9"`, "member", "remove", "n9")

	// Add a second member, start it, see it, remove it.
	peer2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out := mustCoord(t, addr, nil, "member", "add", "n2", peer2.Addr().String())
	if !strings.Contains(out, "added member n2") || !strings.Contains(out, "--initial-cluster-state existing") {
		t.Fatalf("member add: got %q", out)
	}
	m2 := startCoord(t, "n2", t.TempDir(), "n1="+m.peerAddr+",n2="+peer2.Addr().String(), coordsrv.ClusterStateExisting, peer2)
	waitLeader(t, m2.clientAddr)
	if got := mustCoord(t, m2.clientAddr, nil, "get", "/berth/hosts/h1"); got != "rack-1" {
		t.Fatalf("get on the new member: got %q", got)
	}
	// The new member's name reaches the member list once it has announced itself.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(mustCoord(t, addr, nil, "members"), "n2") && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if got := mustCoord(t, addr, nil, "member", "remove", "n2"); !strings.Contains(got, "removed member n2") || strings.Contains(got, peer2.Addr().String()) {
		t.Fatalf("member remove: got %q", got)
	}
	m2.stop()

	// Snapshot, restore into a new data dir, start a new cluster from it.
	file := filepath.Join(t.TempDir(), "coord.snap")
	if got := mustCoord(t, addr, nil, "snapshot", "save", file); !strings.Contains(got, "saved snapshot at revision 1 to "+file) {
		t.Fatalf("snapshot save: got %q", got)
	}
	if st, err := os.Stat(file); err != nil || st.Size() == 0 {
		t.Fatalf("snapshot file: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	peer3, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	initial := "r1=" + peer3.Addr().String()
	failCoord(t, addr, nil, `--name "r9" is not in --initial-cluster`, "snapshot", "restore", file, "--data-dir", dir, "--name", "r9", "--initial-cluster", initial)
	failCoord(t, addr, nil, "--data-dir: required", "snapshot", "restore", file, "--name", "r1", "--initial-cluster", initial)
	if got := mustCoord(t, addr, nil, "snapshot", "restore", file, "--data-dir", dir, "--name", "r1", "--initial-cluster", initial); !strings.Contains(got, "seeded "+dir) {
		t.Fatalf("snapshot restore: got %q", got)
	}
	r := startCoord(t, "r1", dir, initial, "", peer3)
	waitLeader(t, r.clientAddr)
	if got := mustCoord(t, r.clientAddr, nil, "get", "/berth/hosts/h1"); got != "rack-1" {
		t.Fatalf("get on the restored cluster: got %q, want rack-1", got)
	}
	if err := coordCLI(t.Context(), addr, nil, io.Discard, "snapshot", "restore", filepath.Join(t.TempDir(), "missing.snap"), "--data-dir", t.TempDir(), "--name", "r1", "--initial-cluster", initial); err == nil {
		t.Fatal("restore of a missing file: got nil, want an error")
	}
}
