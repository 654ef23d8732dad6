package artifactserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/artifact"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs a server on dir with both protocols on loopback and stops it when the test
// ends.
func start(t *testing.T, dir string, tweak func(*Config)) (*Server, Addrs, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{Dir: dir, HTTPAddr: "127.0.0.1:0", FTPAddr: "127.0.0.1:0", Registerer: reg}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10 s of cancel")
		}
	})
	return s, addrs, reg
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func do(t *testing.T, method, url string, body io.Reader, contentType string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestHTTPUploadDownload(t *testing.T) {
	dir := t.TempDir()
	_, addrs, reg := start(t, dir, func(c *Config) { c.MaxUpload = 1 << 20 })
	base := "http://" + addrs.HTTP.String()
	pkg := bytes.Repeat([]byte("berth package "), 1000)

	code, body := do(t, http.MethodPut, base+"/hello-1.0.tar.gz", bytes.NewReader(pkg), "")
	if code != http.StatusCreated {
		t.Fatalf("PUT: got %d %s, want 201", code, body)
	}
	var up Uploaded
	if err := json.Unmarshal(body, &up); err != nil {
		t.Fatal(err)
	}
	want := Uploaded{Name: "hello-1.0.tar.gz", Size: int64(len(pkg)), SHA256: sum(pkg), URL: base + "/hello-1.0.tar.gz",
		FTPURL: "ftp://" + addrs.FTP.String() + "/hello-1.0.tar.gz"}
	if up != want {
		t.Fatalf("PUT answer: got %+v, want %+v", up, want)
	}
	code, got := do(t, http.MethodGet, up.URL, nil, "")
	if code != http.StatusOK || !bytes.Equal(got, pkg) {
		t.Fatalf("GET after PUT: got %d and %d bytes, want 200 and the %d bytes uploaded", code, len(got), len(pkg))
	}
	// Nothing but the file is left in the directory (no temporary upload).
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "hello-1.0.tar.gz" {
		t.Fatalf("directory after upload: got %v, want only hello-1.0.tar.gz", ents)
	}

	// The same bytes again are fine; other bytes under the same name are refused and
	// change nothing.
	if code, body := do(t, http.MethodPut, up.URL, bytes.NewReader(pkg), ""); code != http.StatusOK || !strings.Contains(string(body), `"existed":true`) {
		t.Fatalf("PUT of the same bytes again: got %d %s, want 200 existed", code, body)
	}
	if code, body := do(t, http.MethodPut, up.URL, strings.NewReader("other"), ""); code != http.StatusConflict {
		t.Fatalf("PUT of other bytes: got %d %s, want 409", code, body)
	}
	if _, got := do(t, http.MethodGet, up.URL, nil, ""); !bytes.Equal(got, pkg) {
		t.Fatal("a refused upload changed the stored file")
	}

	// POST with a multipart form stores each file under its file name, below the path.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	fw, _ := mw.CreateFormFile("file", "app-2.0.tar.gz")
	fw.Write([]byte("two"))
	mw.Close()
	code, body = do(t, http.MethodPost, base+"/team/", &mp, mw.FormDataContentType())
	if code != http.StatusCreated || !strings.Contains(string(body), `"name":"team/app-2.0.tar.gz"`) {
		t.Fatalf("multipart POST: got %d %s, want 201 naming team/app-2.0.tar.gz", code, body)
	}
	if code, got := do(t, http.MethodGet, base+"/team/app-2.0.tar.gz", nil, ""); code != 200 || string(got) != "two" {
		t.Fatalf("GET of the multipart upload: got %d %q", code, got)
	}
	// POST with a raw body is PUT.
	if code, body := do(t, http.MethodPost, base+"/raw.bin", strings.NewReader("raw"), "application/octet-stream"); code != http.StatusCreated {
		t.Fatalf("raw POST: got %d %s, want 201", code, body)
	}

	code, list := do(t, http.MethodGet, base+"/", nil, "")
	if code != 200 || !strings.Contains(string(list), "hello-1.0.tar.gz\t14000\t") || !strings.Contains(string(list), "team/app-2.0.tar.gz\t3\t") {
		t.Fatalf("listing: got %d %q, want both files with their sizes", code, list)
	}
	if n := testutil.CollectAndCount(reg, "berth_artifacts_requests_total"); n == 0 {
		t.Fatal("no berth_artifacts_requests_total series after requests")
	}
}

func TestHTTPRefusals(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".hidden"), []byte("x"), 0o644)
	outside := filepath.Join(filepath.Dir(dir), "outside-"+filepath.Base(dir))
	os.WriteFile(outside, []byte("secret"), 0o644)
	t.Cleanup(func() { os.Remove(outside) })
	os.Symlink(outside, filepath.Join(dir, "link"))
	_, addrs, _ := start(t, dir, func(c *Config) { c.MaxUpload = 100 })
	base := "http://" + addrs.HTTP.String()

	cases := []struct {
		method, path string
		body         string
		want         int
	}{
		{"GET", "/missing.tar.gz", "", 404},
		{"GET", "/.hidden", "", 400},
		{"GET", "/link", "", 404}, // a link out of the directory is never followed
		{"GET", "/a%2F..%2F..%2Fetc%2Fpasswd", "", 400},
		{"PUT", "/", "x", 400},
		{"PUT", "/.upload-x", "x", 400},
		{"PUT", "/a b.tgz", "x", 400},
		{"PUT", "/big.tgz", strings.Repeat("x", 101), 413},
		{"DELETE", "/x", "", 405},
	}
	for _, c := range cases {
		t.Run(c.method+c.path, func(t *testing.T) {
			var body io.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
			}
			code, b := do(t, c.method, base+c.path, body, "")
			if code != c.want {
				t.Fatalf("%s %s: got %d %s, want %d", c.method, c.path, code, b, c.want)
			}
			if strings.Contains(string(b), "secret") {
				t.Fatalf("%s %s: answer leaks the file outside the directory", c.method, c.path)
			}
		})
	}
	// A body larger than the limit without Content-Length leaves nothing behind.
	pr, pw := io.Pipe()
	go func() { pw.Write([]byte(strings.Repeat("y", 500))); pw.Close() }()
	if code, b := do(t, "PUT", base+"/stream.tgz", pr, ""); code != 413 {
		t.Fatalf("streamed oversized PUT: got %d %s, want 413", code, b)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != ".hidden" && e.Name() != "link" {
			t.Fatalf("refused uploads left %s in the directory", e.Name())
		}
	}
}

// TestFTPFetchWithArtifact fetches over FTP with pkg/artifact, the agent's fetcher.
func TestFTPFetchWithArtifact(t *testing.T) {
	dir := t.TempDir()
	pkg := bytes.Repeat([]byte{0, 1, 2, 3, 250, '\r', '\n'}, 300000) // binary, CRLFs kept
	os.MkdirAll(filepath.Join(dir, "pub"), 0o755)
	os.WriteFile(filepath.Join(dir, "pub", "demo-1.0.tar.gz"), pkg, 0o644)
	_, addrs, reg := start(t, dir, nil)

	f, err := artifact.New(artifact.Config{CacheDir: t.TempDir(), Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	base := "ftp://" + addrs.FTP.String()
	p, err := f.Fetch(t.Context(), base+"/pub/demo-1.0.tar.gz", sum(pkg))
	if err != nil {
		t.Fatalf("fetch over ftp: %v", err)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, pkg) {
		t.Fatalf("fetched %d bytes, want the %d bytes served", len(got), len(pkg))
	}
	if v := testutil.ToFloat64(prometheusCounter(t, reg, "ftp", "get", "ok")); v != 1 {
		t.Fatalf("ftp get ok count: got %v, want 1", v)
	}

	errCases := []struct {
		url  string
		want error
	}{
		{base + "/pub/missing.tar.gz", artifact.ErrNotFound},
		{"ftp://someone:pw@" + addrs.FTP.String() + "/pub/demo-1.0.tar.gz", artifact.ErrDenied},
		{base + "/pub", artifact.ErrNotFound},
	}
	for _, c := range errCases {
		if _, err := f.Fetch(t.Context(), c.url, sum([]byte("other"))); !errors.Is(err, c.want) {
			t.Errorf("fetch %s: got %v, want %v", c.url, err, c.want)
		}
	}

	// HTTP serves the same file to the same fetcher.
	f2, _ := artifact.New(artifact.Config{CacheDir: t.TempDir(), Retries: -1})
	defer f2.Close()
	if _, err := f2.Fetch(t.Context(), "http://"+addrs.HTTP.String()+"/pub/demo-1.0.tar.gz", sum(pkg)); err != nil {
		t.Fatalf("fetch over http: %v", err)
	}
}

func prometheusCounter(t *testing.T, reg *prometheus.Registry, labels ...string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() != "berth_artifacts_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			vals := map[string]string{}
			for _, l := range m.GetLabel() {
				vals[l.GetName()] = l.GetValue()
			}
			if vals["protocol"] == labels[0] && vals["op"] == labels[1] && vals["result"] == labels[2] {
				c.Add(m.GetCounter().GetValue())
			}
		}
	}
	return c
}

// TestFTPSession drives the rest of the command set with a plain FTP client.
func TestFTPSession(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "pub"), 0o755)
	os.WriteFile(filepath.Join(dir, "pub", "a.tar.gz"), []byte("aaaa"), 0o644)
	os.WriteFile(filepath.Join(dir, "top.tgz"), []byte("t"), 0o644)
	_, addrs, _ := start(t, dir, nil)

	c, err := ftp.Dial(addrs.FTP.String(), ftp.DialWithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Quit()
	if err := c.Login("anonymous", "me@example.com"); err != nil {
		t.Fatalf("anonymous login: %v", err)
	}
	names, err := c.NameList("")
	if err != nil || strings.Join(names, ",") != "pub,top.tgz" {
		t.Fatalf("NLST /: got %v, %v; want pub,top.tgz", names, err)
	}
	if err := c.ChangeDir("pub"); err != nil {
		t.Fatalf("CWD pub: %v", err)
	}
	if d, err := c.CurrentDir(); err != nil || d != "/pub" {
		t.Fatalf("PWD: got %q, %v; want /pub", d, err)
	}
	entries, err := c.List("")
	if err != nil || len(entries) != 1 || entries[0].Name != "a.tar.gz" || entries[0].Size != 4 {
		t.Fatalf("LIST /pub: got %+v, %v; want a.tar.gz of 4 bytes", entries, err)
	}
	if n, err := c.FileSize("a.tar.gz"); err != nil || n != 4 {
		t.Fatalf("SIZE: got %d, %v; want 4", n, err)
	}
	r, err := c.RetrFrom("a.tar.gz", 2)
	if err != nil {
		t.Fatalf("REST 2 + RETR: %v", err)
	}
	b, _ := io.ReadAll(r)
	r.Close()
	if string(b) != "aa" {
		t.Fatalf("RETR from offset 2: got %q, want %q", b, "aa")
	}
	if err := c.ChangeDir("../../.."); err != nil {
		t.Fatalf("CWD above the root: %v (want it clamped to /)", err)
	}
	if d, _ := c.CurrentDir(); d != "/" {
		t.Fatalf("PWD after CWD ../../..: got %q, want /", d)
	}
	if err := c.ChangeDir("nope"); err == nil {
		t.Fatal("CWD to a missing directory: got nil, want an error")
	}
	if err := c.Stor("up.tgz", strings.NewReader("x")); err == nil {
		t.Fatal("STOR: got nil, want read-only refusal")
	}
	if _, err := os.Stat(filepath.Join(dir, "up.tgz")); err == nil {
		t.Fatal("STOR wrote a file")
	}
	if err := c.Delete("top.tgz"); err == nil {
		t.Fatal("DELE: got nil, want read-only refusal")
	}
	if err := c.NoOp(); err != nil {
		t.Fatalf("session unusable after refusals: %v", err)
	}
}

// TestFTPRaw checks what a library client never sends: commands before login, an
// overlong line, active mode.
func TestFTPRaw(t *testing.T) {
	_, addrs, _ := start(t, t.TempDir(), nil)
	conn, err := net.DialTimeout("tcp", addrs.FTP.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	read := func() string {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return string(buf[:n])
	}
	if g := read(); !strings.HasPrefix(g, "220 ") {
		t.Fatalf("greeting: got %q, want 220", g)
	}
	steps := []struct{ send, want string }{
		{"RETR x", "530 "},
		{"USER bob", "530 "},
		{"PASS x", "503 "},
		{"USER anonymous", "331 "},
		{"PASS a@b", "230 "},
		{"PORT 127,0,0,1,4,1", "502 "},
		{"RETR x", "550 "},
		{"EPSV", "229 "},
		{"RETR ../../etc/passwd", "550 "},
		{"PASV", "227 Entering Passive Mode (127,0,0,1,"},
		{"TYPE X", "504 "},
		{"BOGUS", "502 "},
		{strings.Repeat("A", maxFTPLine+10), "500 "},
	}
	for _, s := range steps {
		fmt.Fprintf(conn, "%s\r\n", s.send)
		if g := read(); !strings.HasPrefix(g, s.want) {
			t.Fatalf("%.20s: got %q, want %q", s.send, g, s.want)
		}
	}
}

// TestFTPStopsWithIdleSessions checks that Run returns while clients hold sessions and
// passive listeners open (goleak checks the goroutines).
func TestFTPStopsWithIdleSessions(t *testing.T) {
	s, err := New(Config{Dir: t.TempDir(), FTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	if addrs.HTTP != nil {
		t.Fatalf("HTTP served without HTTPAddr: %v", addrs.HTTP)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addrs.FTP.String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "USER anonymous\r\nPASS x\r\nEPSV\r\n")
		conns = append(conns, c)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5 s with idle sessions open")
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestConfigAndNames(t *testing.T) {
	for _, c := range []Config{{}, {Dir: "x"}, {Dir: "x", HTTPAddr: ":0", MaxUpload: -1}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v): got nil, want an error", c)
		}
	}
	names := []struct {
		in   string
		dir  bool
		want string
		ok   bool
	}{
		{"/a/b-1.0+x_y.tar.gz", false, "a/b-1.0+x_y.tar.gz", true},
		{"", false, "", false},
		{"", true, ".", true},
		{"a/../b", false, "", false},
		{"a//b", false, "", false},
		{".x", false, "", false},
		{"a/.x/b", false, "", false},
		{"a\\b", false, "", false},
		{"é", false, "", false},
		{strings.Repeat("a/", 17) + "a", false, "", false},
	}
	for _, n := range names {
		got, err := CheckName(n.in, n.dir)
		if (err == nil) != n.ok || got != n.want {
			t.Errorf("CheckName(%q, %v): got %q, %v; want %q, ok=%v", n.in, n.dir, got, err, n.want, n.ok)
		}
		if err != nil && !errors.Is(err, ErrBadName) {
			t.Errorf("CheckName(%q): error %v does not wrap ErrBadName", n.in, err)
		}
	}
}

// TestMultipartAllOrNothing checks that a refused multipart form stores none of its
// files, whatever part is refused: a bad name, a conflict with a stored file, or one name
// twice with different content.
func TestMultipartAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	_, addrs, _ := start(t, dir, nil)
	base := "http://" + addrs.HTTP.String()
	if code, body := do(t, http.MethodPut, base+"/kept.tar.gz", strings.NewReader("kept"), ""); code != http.StatusCreated {
		t.Fatalf("PUT kept.tar.gz: got %d %s", code, body)
	}
	form := func(files ...[2]string) (*bytes.Buffer, string) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		for _, f := range files {
			fw, err := mw.CreateFormFile("file", f[0])
			if err != nil {
				t.Fatal(err)
			}
			fw.Write([]byte(f[1]))
		}
		mw.Close()
		return &b, mw.FormDataContentType()
	}
	for _, tc := range []struct {
		name  string
		files [][2]string
		want  int
	}{
		{"bad name", [][2]string{{"first.tar.gz", "1"}, {"a;b", "2"}}, http.StatusBadRequest},
		{"conflict", [][2]string{{"first.tar.gz", "1"}, {"kept.tar.gz", "other"}}, http.StatusConflict},
		{"twice", [][2]string{{"first.tar.gz", "1"}, {"second.tar.gz", "2"}, {"second.tar.gz", "3"}}, http.StatusConflict},
		// multipart.Part.FileName would keep only "passwd": the name is refused instead.
		{"directories in the file name", [][2]string{{"first.tar.gz", "1"}, {"../../etc/passwd", "x"}}, http.StatusBadRequest},
	} {
		body, ct := form(tc.files...)
		if code, out := do(t, http.MethodPost, base+"/", body, ct); code != tc.want {
			t.Errorf("%s: got %d %s, want %d", tc.name, code, out, tc.want)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != "kept.tar.gz" {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("%s: the directory holds %v after the refused form, want only kept.tar.gz", tc.name, names)
		}
	}
	// A form cut short is the client's fault, not the server's.
	cut := "--x\r\nContent-Disposition: form-data; name=\"f\"; filename=\"cut.tar.gz\"\r\n\r\nabc"
	if code, out := do(t, http.MethodPost, base+"/", strings.NewReader(cut), "multipart/form-data; boundary=x"); code != http.StatusBadRequest {
		t.Errorf("truncated form: got %d %s, want 400", code, out)
	}
	// The same form without the refused part is stored whole.
	body, ct := form([2]string{"first.tar.gz", "1"}, [2]string{"kept.tar.gz", "kept"})
	if code, out := do(t, http.MethodPost, base+"/", body, ct); code != http.StatusCreated || !strings.Contains(string(out), `"existed":true`) {
		t.Fatalf("good form: got %d %s, want 201 with kept.tar.gz existed", code, out)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "first.tar.gz")); err != nil || string(got) != "1" {
		t.Fatalf("first.tar.gz after the good form: %q, %v", got, err)
	}
}
