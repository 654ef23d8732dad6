package source

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ids(recs []Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, fmt.Sprint(r.Fields["id"]))
	}
	return out
}

func TestFileFormatsAndChanges(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, body string
		want       []string
	}{
		{"hosts.yaml", "hosts:\n  - id: h1\n    cpu: 16\n  - id: h2\n", []string{"h1", "h2"}},
		{"list.yml", "- id: h1\n- {id: h2, labels: {a: b}}\n", []string{"h1", "h2"}},
		{"hosts.json", `[{"id":"h1","cpu":16,"memory":68719476736},{"id":"h2"}]`, []string{"h1", "h2"}},
		{"wrapped.json", `{"hosts":[{"id":"h1"}]}`, []string{"h1"}},
		{"hosts.csv", "id,dc,cpu\n# a comment\nh1,dc1,16\nh2, dc1 ,8\n", []string{"h1", "h2"}},
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.name)
		if err := os.WriteFile(p, []byte(tt.body), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := NewFile(p, "", "")
		if err != nil {
			t.Fatal(err)
		}
		recs, changed, err := f.Fetch(t.Context())
		if err != nil || !changed {
			t.Fatalf("%s: got changed %v err %v", tt.name, changed, err)
		}
		if got := fmt.Sprint(ids(recs)); got != fmt.Sprint(tt.want) {
			t.Errorf("%s: got ids %s, want %v", tt.name, got, tt.want)
		}
		if _, changed, _ := f.Fetch(t.Context()); changed {
			t.Errorf("%s: second fetch of an unchanged file: got changed", tt.name)
		}
	}
	// The JSON numbers stay exact.
	f, _ := NewFile(filepath.Join(dir, "hosts.json"), "", "")
	recs, _, _ := f.Fetch(t.Context())
	if got := recs[0].Fields["memory"]; got != int64(68719476736) {
		t.Errorf("json memory: got %v (%T), want int64 68719476736", got, got)
	}
	// A change (same size, new mtime) is seen.
	p := filepath.Join(dir, "hosts.yaml")
	if err := os.WriteFile(p, []byte("hosts:\n  - id: h9\n    cpu: 16\n  - id: h8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, time.Now(), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	f, _ = NewFile(p, "", "")
	_, _, _ = f.Fetch(t.Context())
	if err := os.WriteFile(p, []byte("hosts:\n  - id: h7\n    cpu: 16\n  - id: h6\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, time.Now(), time.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	recs, changed, err := f.Fetch(t.Context())
	if err != nil || !changed || fmt.Sprint(ids(recs)) != "[h7 h6]" {
		t.Fatalf("after a change: got %v changed %v err %v", ids(recs), changed, err)
	}
	// Unreadable and unparsable files are errors.
	if err := os.WriteFile(p, []byte("hosts: [unclosed"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(p, time.Now(), time.Now().Add(3*time.Second))
	if _, _, err := f.Fetch(t.Context()); !errors.Is(err, ErrFormat) {
		t.Fatalf("broken yaml: got %v, want ErrFormat", err)
	}
	os.Remove(p)
	if _, _, err := f.Fetch(t.Context()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: got %v, want ErrNotExist", err)
	}
	if _, err := NewFile(filepath.Join(dir, "hosts.txt"), "", ""); err == nil {
		t.Fatal("unknown extension: got no error")
	}
}

func TestCSVBadLineIsOneBadRecord(t *testing.T) {
	recs, err := parseCSV([]byte("id,dc\nh1,dc1\nh2\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[1].Fields["$error"] == nil || recs[1].Pos != "line 3" {
		t.Fatalf("got %+v, want line 3 marked bad", recs)
	}
}

func TestHTTPConditionalRequests(t *testing.T) {
	var version atomic.Int64
	var requests, conditional, down atomic.Int64
	version.Store(1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if down.Load() == 1 {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		etag := fmt.Sprintf(`"v%d"`, version.Load())
		if r.Header.Get("If-None-Match") == etag {
			conditional.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		fmt.Fprintf(w, `{"data":{"items":[{"id":"h%d"}]}}`, version.Load())
	}))
	defer srv.Close()
	h, err := NewHTTP(srv.URL+"/hosts", "data.items", http.Header{"Authorization": {"Bearer s3cret"}}, srv.Client(), 0)
	if err != nil {
		t.Fatal(err)
	}
	recs, changed, err := h.Fetch(t.Context())
	if err != nil || !changed || fmt.Sprint(ids(recs)) != "[h1]" {
		t.Fatalf("first fetch: got %v %v %v", ids(recs), changed, err)
	}
	if _, changed, err := h.Fetch(t.Context()); err != nil || changed || conditional.Load() != 1 {
		t.Fatalf("second fetch: got changed %v err %v, %d conditional answers; want not modified via If-None-Match", changed, err, conditional.Load())
	}
	version.Store(2)
	if recs, changed, err := h.Fetch(t.Context()); err != nil || !changed || fmt.Sprint(ids(recs)) != "[h2]" {
		t.Fatalf("after a change: got %v %v %v", ids(recs), changed, err)
	}
	down.Store(1)
	if _, _, err := h.Fetch(t.Context()); err == nil {
		t.Fatal("503: got no error")
	}
	if requests.Load() != 4 {
		t.Fatalf("requests: got %d, want 4", requests.Load())
	}
	if _, err := NewHTTP("ftp://x/y", "", nil, nil, time.Second); err == nil {
		t.Fatal("ftp url: got no error")
	}
}

// startPostgres runs a throwaway PostgreSQL server (initdb in a temporary directory,
// postgres on a free port, its socket in that directory) and returns its DSN. As root,
// it runs the server as the postgres user, since postgres refuses to run as root.
func startPostgres(t *testing.T) string {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		t.Skip("PostgreSQL binaries missing (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql")
	}
	bin := filepath.Dir(bins[len(bins)-1])
	dir, err := os.MkdirTemp("", "berth-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root and there is no postgres user to run the server as")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	command := func(name string, args ...string) *exec.Cmd {
		c := exec.Command(filepath.Join(bin, name), args...)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		c.Dir = dir
		return c
	}
	data := filepath.Join(dir, "data")
	if out, err := command("initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := command("postgres", "-D", data, "-p", strconv.Itoa(port), "-k", dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
	logf, _ := os.Create(filepath.Join(dir, "log"))
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGINT)
		_ = srv.Wait()
		logf.Close()
	})
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		c, err := pgx.Connect(ctx, dsn)
		cancel()
		if err == nil {
			c.Close(t.Context())
			return dsn
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("postgres did not accept connections: %v\n%s", err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestPostgres(t *testing.T) {
	dsn := startPostgres(t)
	ctx := t.Context()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	for _, q := range []string{
		`CREATE TABLE hosts (id text PRIMARY KEY, dc text, ip inet, cpu numeric, memory bigint, pools cidr[], labels jsonb, retired boolean)`,
		`INSERT INTO hosts VALUES ('h1','dc1','10.1.0.1',16,68719476736,'{10.200.0.0/24}','{"ssd":"true"}',false),
		                          ('h2','dc2','10.1.0.2',8.5,34359738368,'{10.200.1.0/24,10.200.2.0/24}',NULL,false),
		                          ('h3','dc2','10.1.0.3',8,1,NULL,NULL,true)`,
	} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	p, err := NewPostgres(dsn, `SELECT id, dc, ip, cpu, memory, pools AS ip_pool, labels FROM hosts WHERE NOT retired ORDER BY id`, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.WithoutCancel(ctx))
	recs, changed, err := p.Fetch(ctx)
	if err != nil || !changed {
		t.Fatalf("fetch: got changed %v err %v", changed, err)
	}
	if got := fmt.Sprint(ids(recs)); got != "[h1 h2]" {
		t.Fatalf("ids: got %s, want [h1 h2]", got)
	}
	r := recs[1].Fields
	if r["cpu"] != 8.5 || r["memory"] != int64(34359738368) || r["ip"] != "10.1.0.2" || fmt.Sprint(r["ip_pool"]) != "[10.200.1.0/24 10.200.2.0/24]" {
		t.Fatalf("h2: got %#v", r)
	}
	if recs[0].Fields["cpu"] != int64(16) || fmt.Sprint(recs[0].Fields["labels"]) != "map[ssd:true]" {
		t.Fatalf("h1: got %#v", recs[0].Fields)
	}
	if _, changed, err := p.Fetch(ctx); err != nil || changed {
		t.Fatalf("unchanged table: got changed %v err %v", changed, err)
	}
	if _, err := c.Exec(ctx, `UPDATE hosts SET retired = false WHERE id = 'h3'`); err != nil {
		t.Fatal(err)
	}
	if recs, changed, err := p.Fetch(ctx); err != nil || !changed || len(recs) != 3 {
		t.Fatalf("after an update: got %d records changed %v err %v", len(recs), changed, err)
	}
	// A table name alone is a SELECT * of it.
	pt, _ := NewPostgres(dsn, "hosts", time.Second)
	defer pt.Close(context.WithoutCancel(ctx))
	if recs, _, err := pt.Fetch(ctx); err != nil || len(recs) != 3 || recs[0].Fields["retired"] == nil {
		t.Fatalf("table source: got %d records err %v", len(recs), err)
	}
	// A bad query and an unreachable server are errors.
	pb, _ := NewPostgres(dsn, "SELECT nope FROM hosts", time.Second)
	if _, _, err := pb.Fetch(ctx); err == nil {
		t.Fatal("bad query: got no error")
	}
	pu, _ := NewPostgres("postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=1", "hosts", time.Second)
	if _, _, err := pu.Fetch(ctx); err == nil {
		t.Fatal("unreachable server: got no error")
	}
}
