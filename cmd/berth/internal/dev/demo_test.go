package dev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// freePort returns a loopback port that was free for TCP (and, with udp, for UDP too) a
// moment ago.
func testFreePort(t *testing.T, udp bool) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		if !udp {
			l.Close()
			return p
		}
		u, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err == nil {
			u.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// runDev runs berth dev with cfg until the returned stop is called.
func runDev(t *testing.T, cfg Config) (out *syncBuffer, stop func() error) {
	t.Helper()
	out = &syncBuffer{}
	cfg.Out, cfg.Log = out, out
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- Run(ctx, cfg) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(15 * time.Second):
			t.Fatal("berth dev did not stop within 15 s of cancel")
			return nil
		}
	}
	t.Cleanup(func() { _ = stop() })
	return out, stop
}

// waitOutput waits until re matches the output, failing on a demo error or when berth dev
// ends.
func waitOutput(t *testing.T, out *syncBuffer, re *regexp.Regexp, d time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := out.String()
		if m := re.FindStringSubmatch(s); m != nil {
			return m
		}
		if strings.Contains(s, "berth dev keeps running") || strings.Contains(s, "berth dev stopped") {
			t.Fatalf("berth dev --demo failed; output:\n%s", s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no match for %s within %s; output:\n%s", re, d, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	deployedLine = regexp.MustCompile(`is deployed \(deployment (d-[0-9a-z-]+)\)\. See it with:\n(?s:.*?)  curl (http://\S+)\n`)
	controllerEP = regexp.MustCompile(`controller\s+(http://127\.0\.0\.1:\d+)`)
)

// killDemoApp ends the app the demo started, found by its pid file, so that no process
// outlives the test.
func killDemoApp(dataDir string) {
	b, err := os.ReadFile(filepath.Join(dataDir, "agent", "apps", "demo", "hello", "current", "app.pid"))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// TestDemo runs berth dev --demo on free ports: the demo is built, packed, deployed
// through the controller to the local agent, answers HTTP and DNS; then berth dev stops
// and starts again on the same data, and the demo is still deployed and resolvable.
func TestDemo(t *testing.T) {
	if _, err := findGo(); err != nil {
		t.Skipf("berth dev --demo needs Go: %v", err)
	}
	dir := t.TempDir()
	cfg := Config{
		DataDir: dir, LogLevel: "warn", Host: "127.0.0.1",
		CoordPort: freePortPair(t), NATSPort: testFreePort(t, false), ControllerPort: testFreePort(t, false),
		NamesPort: testFreePort(t, false), DNSPort: testFreePort(t, true), AdminPort: testFreePort(t, false),
		ArtifactsPort: testFreePort(t, false), FTPPort: testFreePort(t, false),
		Demo: true, DemoPort: testFreePort(t, false), DemoSource: filepath.Join("..", "..", "..", "..", "examples", "demo"),
	}
	t.Cleanup(func() { killDemoApp(dir) })
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

	started := time.Now()
	out, stop := runDev(t, cfg)
	m := waitOutput(t, out, deployedLine, 90*time.Second)
	id, appURL := m[1], m[2]
	t.Logf("demo deployed in %s", time.Since(started).Round(time.Millisecond))
	if want := fmt.Sprintf("http://127.0.0.1:%d/", cfg.DemoPort); appURL != want {
		t.Fatalf("printed curl URL: got %s, want %s", appURL, want)
	}
	ctrl := controllerEP.FindStringSubmatch(out.String())[1]
	for _, want := range []string{
		"berth deployments show " + id + " --controller " + ctrl,
		fmt.Sprintf("berth resolve demo/hello --names http://127.0.0.1:%d", cfg.NamesPort),
		fmt.Sprintf("dig @127.0.0.1 -p %d hello.demo.ns.berth.internal", cfg.DNSPort),
		fmt.Sprintf("console        %s/ui/", ctrl),
		fmt.Sprintf("artifacts FTP  ftp://127.0.0.1:%d/", cfg.FTPPort),
		"containers     ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	checkDeployed := func() {
		t.Helper()
		dep := getDeployment(t, hc, ctrl, id)
		if dep.GetStatus().GetState() != "succeeded" || dep.GetService() != "demo/hello" || !strings.HasPrefix(dep.GetVersion(), "1.0-") {
			t.Fatalf("deployment %s: got %s %s %s, want demo/hello 1.0-... succeeded", id, dep.GetService(), dep.GetVersion(), dep.GetStatus().GetState())
		}
		if got := dep.GetStrategy().GetBatches(); len(got) != 2 {
			t.Fatalf("deployment %s batches: got %v, want the ramp 1, 100%%", id, got)
		}
		body := httpGet(t, hc, appURL)
		if !strings.HasPrefix(body, "hello from demo/hello "+dep.GetVersion()) {
			t.Fatalf("GET %s: got %q, want the demo's hello with version %s", appURL, body, dep.GetVersion())
		}
	}
	checkDNS := func(within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			ips, err := queryA(fmt.Sprintf("127.0.0.1:%d", cfg.DNSPort), "hello.demo.ns.berth.internal")
			if err == nil && len(ips) > 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("DNS A hello.demo.ns.berth.internal: got %v, %v; want an address", ips, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	checkDeployed()
	checkDNS(5 * time.Second)
	if err := stop(); err != nil {
		t.Fatalf("berth dev stopped with %v", err)
	}

	// Again on the same data: the deployment is still there, the app (never owned by the
	// agent) still answers, the demo is not deployed twice, and the restarted agent
	// registers the running app again.
	out, stop = runDev(t, cfg)
	m = waitOutput(t, out, deployedLine, 60*time.Second)
	if m[1] != id {
		t.Fatalf("second berth dev --demo: got deployment %s, want the first one %s kept", m[1], id)
	}
	if !strings.Contains(out.String(), "is already deployed") {
		t.Fatalf("second berth dev --demo does not say the demo is already deployed:\n%s", out)
	}
	checkDeployed()
	checkDNS(15 * time.Second)
	if err := stop(); err != nil {
		t.Fatalf("second berth dev stopped with %v", err)
	}
}

func getDeployment(t *testing.T, hc *http.Client, ctrl, id string) *controllerv1.Deployment {
	t.Helper()
	dep := &controllerv1.Deployment{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(httpGet(t, hc, ctrl+"/v1/deployments/"+id)), dep); err != nil {
		t.Fatalf("decode deployment %s: %v", id, err)
	}
	return dep
}

func httpGet(t *testing.T, hc *http.Client, url string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: got %s %s, want 200", url, resp.Status, b)
	}
	return string(b)
}

// queryA sends one DNS query for the A records of name over UDP and returns the addresses
// of the answer section.
func queryA(server, name string) ([]net.IP, error) {
	q := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for l := range strings.SplitSeq(strings.TrimSuffix(name, "."), ".") {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	q = append(q, 0, 0, 1, 0, 1)
	c, err := net.Dial("udp", server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	b := make([]byte, 4096)
	n, err := c.Read(b)
	if err != nil {
		return nil, err
	}
	b = b[:n]
	if n < 12 || b[0] != 0x12 || b[1] != 0x34 {
		return nil, errors.New("not an answer to the query")
	}
	if rcode := b[3] & 0x0f; rcode != 0 {
		return nil, fmt.Errorf("rcode %d", rcode)
	}
	an := int(binary.BigEndian.Uint16(b[6:8]))
	i := len(q) // the question is echoed as sent
	skipName := func() {
		for i < len(b) {
			l := int(b[i])
			if l == 0 {
				i++
				return
			}
			if l&0xc0 == 0xc0 {
				i += 2
				return
			}
			i += l + 1
		}
	}
	var ips []net.IP
	for range an {
		skipName()
		if i+10 > len(b) {
			return ips, errors.New("short answer")
		}
		typ, rdlen := binary.BigEndian.Uint16(b[i:]), int(binary.BigEndian.Uint16(b[i+8:]))
		i += 10
		if i+rdlen > len(b) {
			return ips, errors.New("short answer")
		}
		if typ == 1 && rdlen == 4 {
			ips = append(ips, net.IP(b[i:i+4]))
		}
		i += rdlen
	}
	return ips, nil
}
