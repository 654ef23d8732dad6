package artifact

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vsftpd is a real FTP server on loopback, serving root anonymously.
type vsftpd struct {
	addr string
	root string
	log  string
}

// startVsftpd runs vsftpd with a generated configuration until the test ends. extra lines
// are appended to the configuration.
func startVsftpd(t *testing.T, extra ...string) *vsftpd {
	t.Helper()
	bin, err := exec.LookPath("vsftpd")
	if err != nil {
		bin = "/usr/sbin/vsftpd"
		if _, err := os.Stat(bin); err != nil {
			t.Skip("vsftpd is not installed (apt-get install vsftpd): skipping the tests against a real FTP server")
		}
	}
	dir := t.TempDir()
	s := &vsftpd{root: filepath.Join(dir, "root"), log: filepath.Join(dir, "vsftpd.log")}
	for _, d := range []string{s.root, filepath.Join(dir, "empty")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port, pasv := freePort(t), freePort(t)
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)
	conf := []string{
		"listen=YES",
		"listen_ipv6=NO",
		"listen_address=127.0.0.1",
		fmt.Sprintf("listen_port=%d", port),
		"background=NO",
		"anonymous_enable=YES",
		"local_enable=NO",
		"no_anon_password=YES",
		"anon_root=" + s.root,
		"write_enable=NO",
		"pasv_enable=YES",
		"pasv_address=127.0.0.1",
		fmt.Sprintf("pasv_min_port=%d", pasv),
		fmt.Sprintf("pasv_max_port=%d", pasv),
		"connect_from_port_20=NO",
		"seccomp_sandbox=NO",
		// Runs as whoever runs the test, root or not, without chroot.
		"run_as_launching_user=YES",
		"secure_chroot_dir=" + filepath.Join(dir, "empty"),
		"xferlog_enable=YES",
		"log_ftp_protocol=YES",
		"vsftpd_log_file=" + s.log,
	}
	conf = append(conf, extra...)
	confPath := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(confPath, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "vsftpd.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, confPath)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start vsftpd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "vsftpd.out"))
			l, _ := os.ReadFile(s.log)
			t.Logf("vsftpd output:\n%s\nvsftpd log:\n%s", b, l)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "vsftpd.out"))
			t.Fatalf("vsftpd did not listen on %s: %v\n%s", s.addr, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

func (s *vsftpd) put(t *testing.T, name string, data []byte) {
	t.Helper()
	p := filepath.Join(s.root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFetchFTP(t *testing.T) {
	s := startVsftpd(t)
	s.put(t, "pub/hotel/search-1.4.2.tgz", payload)
	ok := "ftp://" + s.addr + "/pub/hotel/search-1.4.2.tgz"
	cases := []struct {
		name, url, sum string
		cfg            Config
		want           error
	}{
		{name: "anonymous", url: ok},
		{name: "anonymous in the url", url: "ftp://anonymous:berth@" + s.addr + "/pub/hotel/search-1.4.2.tgz"},
		{name: "checksum mismatch", url: ok, sum: otherSum, want: ErrChecksum},
		{name: "missing file", url: "ftp://" + s.addr + "/pub/hotel/nope.tgz", want: ErrNotFound},
		{name: "missing directory", url: "ftp://" + s.addr + "/nope/x.tgz", want: ErrNotFound},
		{name: "a directory", url: "ftp://" + s.addr + "/pub/hotel", want: ErrNotFound},
		{name: "login refused", url: "ftp://bob:secret@" + s.addr + "/pub/hotel/search-1.4.2.tgz", want: ErrDenied},
		{name: "too large", url: ok, cfg: Config{MaxBytes: 1000}, want: ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, reg := newFetcher(t, c.cfg)
			sum := c.sum
			if sum == "" {
				sum = payloadSum
			}
			p, err := f.Fetch(t.Context(), c.url, sum)
			if got := metric(t, reg, "berth_artifact_fetch_retries_total", nil); got != 0 {
				t.Errorf("retries: got %v, want 0", got)
			}
			if c.want == nil {
				if err != nil {
					t.Fatalf("Fetch: %v", err)
				}
				checkCached(t, f, p, payload)
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("Fetch: got %v, want %v", err, c.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the password", err)
			}
			checkEmptyCache(t, f)
		})
	}
}

// TestFetchFTPBusyRetried holds the server's only slot for this client, so that vsftpd
// answers 421 (a temporary FTP error), and frees it while Fetch backs off.
func TestFetchFTPBusyRetried(t *testing.T) {
	s := startVsftpd(t, "max_per_ip=1")
	s.put(t, "pkg.tgz", payload)
	// The session of startVsftpd's readiness probe may take a moment to end.
	var hold net.Conn
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		banner := make([]byte, 64)
		n, err := c.Read(banner)
		if err == nil && strings.HasPrefix(string(banner[:n]), "220") {
			hold = c
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("holding connection: got %q, %v; want a 220 banner", banner[:n], err)
		}
	}
	defer hold.Close()
	f, reg := newFetcher(t, Config{Backoff: 300 * time.Millisecond, Retries: 5})
	time.AfterFunc(150*time.Millisecond, func() { hold.Close() })
	p, err := f.Fetch(t.Context(), "ftp://"+s.addr+"/pkg.tgz", payloadSum)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	checkCached(t, f, p, payload)
	if got := metric(t, reg, "berth_artifact_fetch_retries_total", nil); got < 1 {
		t.Errorf("retries: got %v, want at least 1 (the first attempt met a busy server)", got)
	}
}

func TestFetchFTPUnreachable(t *testing.T) {
	port := freePort(t) // Closed again: connections are refused.
	f, reg := newFetcher(t, Config{Retries: 2})
	_, err := f.Fetch(t.Context(), fmt.Sprintf("ftp://127.0.0.1:%d/pkg.tgz", port), payloadSum)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch: got %v, want %v", err, ErrUnavailable)
	}
	if !strings.Contains(err.Error(), "(3 attempts)") {
		t.Errorf("error %q: want it to say 3 attempts", err)
	}
	if got := metric(t, reg, "berth_artifact_fetch_retries_total", map[string]string{"scheme": "ftp"}); got != 2 {
		t.Errorf("retries: got %v, want 2", got)
	}
	if got := metric(t, reg, "berth_artifact_fetches_total", map[string]string{"scheme": "ftp", "result": "unavailable"}); got != 1 {
		t.Errorf("unavailable fetches: got %v, want 1", got)
	}
	checkEmptyCache(t, f)
}

// TestFetchFTPSlowTimesOut checks that an attempt's timeout interrupts a transfer in
// progress: the ftp package takes no context, so Fetch closes its connections.
func TestFetchFTPSlowTimesOut(t *testing.T) {
	s := startVsftpd(t, "anon_max_rate=50000") // 4 MB take 80 s.
	big := bytes.Repeat(payload, 40)
	s.put(t, "pkg.tgz", big)
	f, _ := newFetcher(t, Config{Timeout: 300 * time.Millisecond, Retries: -1})
	start := time.Now()
	_, err := f.Fetch(t.Context(), "ftp://"+s.addr+"/pkg.tgz", digest(big))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch: got %v, want %v", err, ErrUnavailable)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Fetch returned after %v, want soon after the 300ms attempt timeout", d)
	}
	checkEmptyCache(t, f)
}
