// Package badinput throws malformed and hostile input at every HTTP endpoint and every
// CLI command of one running Berth (`berth dev --ephemeral`, built from cmd/berth) and
// checks that each is refused with a 4xx or a non-zero exit and a clear error, and that
// nothing happened: no command ran (a sentinel file that every shell payload would create
// never appears), coord's revision did not move, and the state read back from the APIs
// (deployments, tasks, tree, hosts, names, callbacks, artifacts) is byte for byte the same.
// Fields that legitimately take any text (a description, a task's arguments) are checked
// the other way round: the value is accepted, comes back verbatim, and still nothing runs.
//
// The number of hostile inputs tried is logged at the end ("hostile inputs tried: N").
// BERTH_TEST_BERTH_BIN runs the suite against a berth binary built beforehand (for
// instance one built with a validation deliberately broken, to see the suite fail).
package badinput

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/coordclient"
)

// TestMain starts the one Berth every test uses, runs the tests, stops Berth and checks
// for leaked goroutines.
func TestMain(m *testing.M) { goleak.VerifyTestMain(mainRun{m}) }

type mainRun struct{ m *testing.M }

func (r mainRun) Run() int {
	b, err := startBerth()
	if err != nil {
		fmt.Fprintf(os.Stderr, "badinput: start berth dev: %v\n", err)
		if b != nil {
			fmt.Fprintln(os.Stderr, b.logTail())
			b.close()
		}
		return 1
	}
	shared = b
	code := r.m.Run()
	fmt.Printf("badinput: hostile inputs tried: %d (HTTP %d, CLI %d)\n", httpTried.Load()+cliTried.Load(), httpTried.Load(), cliTried.Load())
	b.close()
	return code
}

// Counts of the hostile inputs tried, by kind.
var httpTried, cliTried atomic.Int64

// shared is the running Berth, set by TestMain.
var shared *berth

// sentinelName is the file every shell payload creates: as an absolute path in the
// sentinel directory, and as a bare name relative to whatever directory a shell would run
// in (berth dev runs in the sentinel directory, so both land there when run by berth dev
// itself; the data directory is searched too).
const sentinelName = "BERTH_SENTINEL"

// berth is one running `berth dev`.
type berth struct {
	dir      string // the test's directory: binary, logs, CLI config, sentinel directory
	bin      string // the berth binary
	cwd      string // berth dev's working directory, where the sentinel would appear
	sentinel string // cwd/BERTH_SENTINEL
	dataDir  string // berth dev's data directory
	host     string // the host id of berth dev's agent

	controller, names, agentAPI, artifacts, metrics, natsURL, coordAddr string

	echoOut string // where the echo plugin records what it got

	cmd   *exec.Cmd
	logf  *os.File
	coord *coordclient.Client
	http  *http.Client

	// mu serializes the cases that look for side effects: a change seen must be the
	// case's own.
	mu sync.Mutex
}

// freePort returns a loopback TCP port that was free a moment ago; with pair, the next
// port was free too (coord's peer port is its client port + 1).
func freePort(pair bool) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !pair {
			return port, nil
		}
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)))
		if err == nil {
			l2.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port pair")
}

func startBerth() (*berth, error) {
	dir, err := os.MkdirTemp("", "berth-badinput-")
	if err != nil {
		return nil, err
	}
	b := &berth{dir: dir, bin: filepath.Join(dir, "berth"), cwd: filepath.Join(dir, "cwd"), echoOut: filepath.Join(dir, "echo")}
	b.sentinel = filepath.Join(b.cwd, sentinelName)
	b.http = &http.Client{Timeout: 20 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16}}
	for _, d := range []string{b.cwd, b.echoOut, filepath.Join(dir, "home")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return b, err
		}
	}
	if prebuilt := os.Getenv("BERTH_TEST_BERTH_BIN"); prebuilt != "" {
		b.bin = prebuilt
	} else {
		out, err := exec.Command("go", "build", "-o", b.bin, "../../cmd/berth").CombinedOutput()
		if err != nil {
			return b, fmt.Errorf("go build ../../cmd/berth: %w\n%s", err, out)
		}
	}
	coordPort, err := freePort(true)
	if err != nil {
		return b, err
	}
	ctlPort, err := freePort(false)
	if err != nil {
		return b, err
	}
	// The agent's name API gets a port of its own choosing too: berth dev prints it only
	// when the agent bound it within 5 s, which a loaded machine can miss.
	agentAPIPort, err := freePort(false)
	if err != nil {
		return b, err
	}
	b.logf, err = os.Create(filepath.Join(dir, "dev.log"))
	if err != nil {
		return b, err
	}
	args := []string{"dev", "--ephemeral", "--nats-port", "0", "--coord-port", strconv.Itoa(coordPort),
		"--admin-port", "0", "--controller-port", strconv.Itoa(ctlPort), "--dns-port", "0", "--names-port", "0",
		"--artifacts-port", "0", "--ftp-port", "0", "--resolver-port", "0", "--agent-api-port", strconv.Itoa(agentAPIPort), "--log-level", "warn",
		// No Docker engine: berth dev must not touch the containers of anything else
		// running on this machine.
		"--docker-host", "unix://" + filepath.Join(dir, "no-docker.sock")}
	// Container mode needs a registry and Docker; the cases here need neither (they are
	// refused before), so it stays off where the binary can turn it off.
	if help, _ := exec.Command(b.bin, "dev", "--help").CombinedOutput(); strings.Contains(string(help), "--registry-port") {
		args = append(args, "--registry-port", "-1")
	}
	b.cmd = exec.Command(b.bin, args...)
	b.cmd.Dir = b.cwd
	b.cmd.Env = append(os.Environ(), "HOME="+filepath.Join(dir, "home"))
	b.cmd.Stderr = b.logf
	stdout, err := b.cmd.StdoutPipe()
	if err != nil {
		return b, err
	}
	if err := b.cmd.Start(); err != nil {
		return b, fmt.Errorf("start berth dev: %w", err)
	}
	// berth dev prints its endpoints once everything is up; the reader goroutine ends
	// when berth dev closes its stdout (it exits).
	up := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		endpoint := regexp.MustCompile(`^\s+(NATS|coord|names API|controller|local names|artifacts|metrics|agent)\s+(\S+)`)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(b.logf, "stdout:", line)
			if m := regexp.MustCompile(`^berth dev is up .*; data in (\S+)`).FindStringSubmatch(line); m != nil {
				b.dataDir = m[1]
			}
			if m := endpoint.FindStringSubmatch(line); m != nil {
				switch m[1] {
				case "NATS":
					b.natsURL = m[2]
				case "coord":
					b.coordAddr = m[2]
				case "names API":
					b.names = m[2]
				case "controller":
					b.controller = m[2]
				case "local names":
					b.agentAPI = m[2]
				case "artifacts":
					if !strings.HasPrefix(m[2], "http") {
						break // the FTP line
					}
					b.artifacts = strings.TrimSuffix(m[2], "/")
				case "metrics":
					b.metrics = strings.TrimSuffix(m[2], "/metrics")
				case "agent":
					if f := strings.Fields(line); len(f) > 2 && f[1] == "host" {
						b.host = strings.TrimSuffix(f[2], ",")
					}
				}
			}
			if strings.HasPrefix(line, "Press Ctrl-C") && !sent {
				sent = true
				up <- nil
			}
		}
		if !sent {
			up <- errors.New("berth dev exited before it was up")
		}
	}()
	select {
	case err := <-up:
		if err != nil {
			return b, err
		}
	case <-time.After(90 * time.Second):
		return b, errors.New("berth dev not up within 90 s")
	}
	if b.agentAPI == "" {
		b.agentAPI = "http://127.0.0.1:" + strconv.Itoa(agentAPIPort)
	}
	for name, v := range map[string]string{"controller": b.controller, "names API": b.names, "local names": b.agentAPI,
		"artifacts": b.artifacts, "metrics": b.metrics, "NATS": b.natsURL, "coord": b.coordAddr, "agent host": b.host, "data": b.dataDir} {
		if v == "" {
			return b, fmt.Errorf("berth dev did not print its %s", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b.coord, err = coordclient.New(ctx, coordclient.Config{Endpoints: []string{b.coordAddr}})
	if err != nil {
		return b, fmt.Errorf("coord client: %w", err)
	}
	for {
		code, _, _, err := b.do(ctx, "GET", b.agentAPI, "/v1/callbacks", "", nil, nil)
		if err == nil && code == 200 {
			break
		}
		if ctx.Err() != nil {
			return b, fmt.Errorf("the agent's name API at %s does not answer: %v", b.agentAPI, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := b.installEchoPlugin(); err != nil {
		return b, err
	}
	if err := b.seed(ctx); err != nil {
		return b, fmt.Errorf("seed: %w", err)
	}
	return b, nil
}

// installEchoPlugin drops the badinput-echo plugin into the agent's plugin directory: it
// records its argv and its request (stdin) in echoOut and evaluates neither, so a task's
// arguments can be compared with what the plugin received.
func (b *berth) installEchoPlugin() error {
	script := "#!/bin/sh\n" +
		"out='" + b.echoOut + "'\n" +
		"printf '%s\\0' \"$0\" \"$@\" > \"$out/argv.$$\"\n" +
		"cat > \"$out/stdin.$$\"\n" +
		"echo recorded\n"
	return os.WriteFile(filepath.Join(b.dataDir, "plugins", "badinput-echo"), []byte(script), 0o755)
}

// close stops berth dev (SIGTERM, then SIGKILL) and removes the directory.
func (b *berth) close() {
	if b.coord != nil {
		b.coord.Close()
	}
	if b.http != nil {
		b.http.CloseIdleConnections()
	}
	if b.cmd != nil && b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = b.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = b.cmd.Process.Kill()
			<-done
		}
	}
	if b.logf != nil {
		b.logf.Close()
	}
	if b.dir != "" && os.Getenv("BERTH_TEST_KEEP") == "" {
		os.RemoveAll(b.dir)
	}
}

func (b *berth) logTail() string {
	out, _ := os.ReadFile(filepath.Join(b.dir, "dev.log"))
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return string(out)
}

// do sends one request and returns the status, the content type and the body.
func (b *berth) do(ctx context.Context, method, base, rawPath, rawQuery string, header http.Header, body io.Reader) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, base+"/", body)
	if err != nil {
		return 0, nil, nil, err
	}
	// The path goes out exactly as given: dot segments, encoded slashes and all.
	req.URL.Opaque = rawPath
	req.URL.RawQuery = rawQuery
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, out, err
}
