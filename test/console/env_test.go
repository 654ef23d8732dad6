// Package console_test checks Berth's web console (served by the controller at /ui/)
// against a running Berth: the berth binary built from cmd/berth runs `berth dev` as a
// process, two more berth-agent processes join it as hosts a2 and a3, and real packages
// are deployed through the CLI. The browser tests drive Debian's Chromium headless with
// chromedp and save a screenshot of every page (to $BERTH_TEST_ARTIFACTS, else a
// temporary directory; the path is logged).
package console_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain checks for leaked goroutines and stops the shared Berth after the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(mainRun{m}) }

type mainRun struct{ m *testing.M }

func (r mainRun) Run() int {
	code := r.m.Run()
	shared.stop()
	http.DefaultClient.CloseIdleConnections()
	return code
}

// berth is one running `berth dev` with two extra agents.
type berth struct {
	dir        string // holds the binaries, logs and the extra agents' data
	bin        string // the berth binary
	controller string // http://127.0.0.1:port
	natsURL    string
	coord      string
	namesAPI   string // the name service's own HTTP API, as berth dev printed it
	dataDir    string // berth dev's data directory
	host       string // the host id of berth dev's own agent
	procs      []*exec.Cmd
	err        error
}

// shared is the Berth every test of the package uses; started by the first test that
// asks for it and stopped by TestMain.
var shared = &sharedBerth{}

type sharedBerth struct {
	once sync.Once
	b    *berth
}

// get starts Berth once and returns it; a test fails when it could not start.
func (s *sharedBerth) get(t *testing.T) *berth {
	t.Helper()
	s.once.Do(func() { s.b = startBerth() })
	if s.b.err != nil {
		t.Fatalf("start berth dev: %v\n%s", s.b.err, s.b.logTail())
	}
	return s.b
}

func (s *sharedBerth) stop() {
	if s.b != nil {
		s.b.close()
	}
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

func startBerth() *berth {
	b := &berth{}
	dir, err := os.MkdirTemp("", "berth-console-test-")
	if err != nil {
		b.err = err
		return b
	}
	b.dir = dir
	b.bin = filepath.Join(dir, "berth")
	b.err = b.start()
	return b
}

func (b *berth) start() error {
	agentBin := filepath.Join(b.dir, "berth-agent")
	for _, build := range [][]string{{b.bin, "../../cmd/berth", "BERTH_TEST_BERTH_BIN"}, {agentBin, "../../services/agent/cmd/berth-agent", "BERTH_TEST_AGENT_BIN"}} {
		// A binary built beforehand may be given instead (to test a release build).
		if prebuilt := os.Getenv(build[2]); prebuilt != "" {
			if build[0] == b.bin {
				b.bin = prebuilt
			} else {
				agentBin = prebuilt
			}
			continue
		}
		out, err := exec.Command("go", "build", "-o", build[0], build[1]).CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s: %w\n%s", build[1], err, out)
		}
	}
	coordPort, err := freePort(true)
	if err != nil {
		return err
	}
	ctlPort, err := freePort(false)
	if err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(b.dir, "dev.log"))
	if err != nil {
		return err
	}
	dev := exec.Command(b.bin, "dev", "--ephemeral", "--nats-port", "0", "--coord-port", strconv.Itoa(coordPort),
		"--admin-port", "0", "--controller-port", strconv.Itoa(ctlPort), "--dns-port", "0", "--names-port", "0", "--artifacts-port", "0", "--ftp-port", "0", "--resolver-port", "0", "--agent-api-port", "0", "--log-level", "info")
	dev.Stderr = logf
	stdout, err := dev.StdoutPipe()
	if err != nil {
		return err
	}
	if err := dev.Start(); err != nil {
		return fmt.Errorf("start berth dev: %w", err)
	}
	b.procs = append(b.procs, dev)
	// berth dev prints its endpoints once everything is up.
	up := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var sent bool
		endpoint := regexp.MustCompile(`^\s+(NATS|coord|names API|controller|agent)\s+(\S+)`)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, "stdout:", line)
			if m := regexp.MustCompile(`data in (\S+)`).FindStringSubmatch(line); m != nil {
				b.dataDir = m[1]
			}
			if m := endpoint.FindStringSubmatch(line); m != nil {
				switch m[1] {
				case "NATS":
					b.natsURL = m[2]
				case "coord":
					b.coord = m[2]
				case "names API":
					b.namesAPI = m[2]
				case "controller":
					b.controller = m[2]
				case "agent": // "agent   host <id>, apps in ..."
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
			return err
		}
	case <-time.After(90 * time.Second):
		return errors.New("berth dev not up within 90 s")
	}
	if b.controller == "" || b.natsURL == "" || b.host == "" {
		return fmt.Errorf("berth dev's endpoints not found in its output (controller %q, NATS %q, agent host %q)", b.controller, b.natsURL, b.host)
	}
	// Two more hosts: berth-agent processes on the same NATS and coord, in DC dev2.
	for _, id := range []string{"a2", "a3"} {
		data := filepath.Join(b.dir, id)
		if err := os.MkdirAll(data, 0o755); err != nil {
			return err
		}
		alog, err := os.Create(filepath.Join(b.dir, id+".log"))
		if err != nil {
			return err
		}
		a := exec.Command(agentBin, "--host-id", id, "--dc", "dev2", "--data-dir", data, "--config-dir", data,
			"--nats", b.natsURL, "--coord", b.coord, "--dns-listen", "", "--name-api-listen", "", "--listen-metrics", "",
			"--docker-host", "-", "--advertise-ip", "127.0.0.1", "--log-format", "text")
		a.Stdout, a.Stderr = alog, alog
		if err := a.Start(); err != nil {
			return fmt.Errorf("start agent %s: %w", id, err)
		}
		b.procs = append(b.procs, a)
	}
	// a2 joins the inventory too (rack, capacity, labels); a3 stays an agent the CMDB
	// does not know, which the hosts page shows as such.
	if b.dataDir != "" {
		f, err := os.OpenFile(filepath.Join(b.dataDir, "cmdb.yaml"), os.O_APPEND|os.O_WRONLY, 0)
		if err == nil {
			_, _ = f.WriteString("    - id: a2\n      dc: dev2\n      rack: r1\n      ip: 127.0.0.1\n      cpu: 4\n      memory: 8589934592\n" +
				"      disk: 107374182400\n      max_containers: 32\n      labels:\n        role: web\n")
			f.Close()
		}
	}
	// The agents are up when their liveness nodes are: wait for them in /v1/hosts.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var hv hostsView
		err := getJSON(context.Background(), b.controller+"/v1/hosts", &hv)
		alive := 0
		for _, h := range hv.Hosts {
			if h.Alive {
				alive++
			}
		}
		if err == nil && alive >= 3 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("3 agents not alive within 30 s (got %d, err %v)", alive, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// close stops the agents and berth dev (SIGTERM, then SIGKILL) and removes the directory.
func (b *berth) close() {
	for i := len(b.procs) - 1; i >= 0; i-- {
		p := b.procs[i]
		_ = p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	if b.dir != "" && os.Getenv("BERTH_TEST_KEEP") == "" {
		os.RemoveAll(b.dir)
	}
}

func (b *berth) logTail() string {
	if b.dir == "" {
		return ""
	}
	out, _ := os.ReadFile(filepath.Join(b.dir, "dev.log"))
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return string(out)
}

// cli runs the berth CLI against the controller and returns its output.
func (b *berth) cli(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), b.bin, args...)
	cmd.Env = append(os.Environ(), "BERTH_CONTROLLER_URL="+b.controller)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var idRE = regexp.MustCompile(`\bd-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\b`)

// deploy deploys a package of service to hosts through the CLI and returns the
// deployment's id; extra are more `berth deploy` flags.
func (b *berth) deploy(t *testing.T, service, version string, hosts []string, extra ...string) string {
	t.Helper()
	pkg, sum := makePackage(t, service, version)
	args := append([]string{"deploy", service, "--version", version, "--package", "file://" + pkg, "--sha256", sum,
		"--hosts", strings.Join(hosts, ","), "--controller", b.controller}, extra...)
	out := b.cli(t, args...)
	id := idRE.FindString(out)
	if id == "" {
		t.Fatalf("berth deploy: no deployment id in %q", out)
	}
	return id
}

// makePackage writes a package of service: berth.yaml and the four scripts of an app
// that is a process living as long as its release directory (so that removing the test's
// directories ends it). It returns the path and the sha256.
func makePackage(t *testing.T, service, version string) (string, string) {
	t.Helper()
	files := []struct {
		name, body string
		mode       int64
	}{
		{"berth.yaml", "service: " + service + "\nport: 18080\nscripts:\n  start: bin/start\n  stop: bin/stop\n  health: bin/health\n  reload: bin/reload\n" +
			"health:\n  interval: 1s\n  timeout: 1s\n  rise: 1\n  fall: 2\n", 0o644},
		{"bin/start", "#!/bin/sh\ncd \"$(dirname \"$0\")/..\" || exit 1\nnohup sh -c 'while [ -d bin ]; do sleep 1; done' >/dev/null 2>&1 &\n" +
			"echo $! > app.pid\necho \"started " + service + " " + version + " as pid $(cat app.pid)\"\n", 0o755},
		{"bin/stop", "#!/bin/sh\np=\"$(dirname \"$0\")/../app.pid\"; [ -f \"$p\" ] && kill \"$(cat \"$p\")\" 2>/dev/null; rm -f \"$p\"; exit 0\n", 0o755},
		{"bin/health", "#!/bin/sh\nkill -0 \"$(cat \"$(dirname \"$0\")/../app.pid\")\" 2>/dev/null\n", 0o755},
		{"bin/reload", "#!/bin/sh\nexit 0\n", 0o755},
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), strings.ReplaceAll(service, "/", "-")+"-"+version+".tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(buf.Bytes())
	return path, hex.EncodeToString(s[:])
}

// getJSON GETs url and decodes a 200 answer into v.
func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return json.Unmarshal(body, v)
}

// deployment is the part of a deployment's JSON the tests read.
type deployment struct {
	ID     string `json:"id"`
	Status struct {
		State       string `json:"state"`
		PauseReason string `json:"pause_reason"`
		PauseCount  int    `json:"pause_count"`
	} `json:"status"`
	Targets []struct {
		Host  string `json:"host"`
		State string `json:"state"`
	} `json:"targets"`
}

func (d deployment) target(host string) string {
	for _, t := range d.Targets {
		if t.Host == host {
			return t.State
		}
	}
	return ""
}

// waitDeployment polls the API until ok accepts the deployment, or fails the test after
// timeout with the last state seen.
func (b *berth) waitDeployment(t *testing.T, id string, timeout time.Duration, what string, ok func(deployment) bool) deployment {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var d deployment
	for {
		err := getJSON(t.Context(), b.controller+"/v1/deployments/"+id, &d)
		if err == nil && ok(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s: %s not seen within %s; last: %+v (err %v)", id, what, timeout, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type hostsView struct {
	Hosts []struct {
		ID             string          `json:"id"`
		InInventory    bool            `json:"in_inventory"`
		Alive          bool            `json:"alive"`
		Host           json.RawMessage `json:"host"`
		Agent          json.RawMessage `json:"agent"`
		MaxContainers  int             `json:"max_containers"`
		FreeContainers int             `json:"free_containers"`
	} `json:"hosts"`
	DCs []string `json:"dcs"`
}

// artifacts returns the directory screenshots go to: $BERTH_TEST_ARTIFACTS/console, else
// a temporary directory of the test.
func artifacts(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if base := os.Getenv("BERTH_TEST_ARTIFACTS"); base != "" {
		dir = filepath.Join(base, "console")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", dir)
	return dir
}
