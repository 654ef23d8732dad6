package inventory_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	cmdbsync "github.com/berthdev/berth/services/cmdb-sync"
)

// startPostgres runs a throwaway PostgreSQL server (initdb in a temporary directory,
// postgres on a free port with its socket in that directory) and returns its DSN. As
// root it runs the server as the postgres user, since postgres refuses to run as root.
// The test is skipped when the binaries are missing.
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

// TestPostgresAsTheCMDB keeps the inventory in step with a PostgreSQL table whose
// columns have the CMDB's own names, through a field mapping.
func TestPostgresAsTheCMDB(t *testing.T) {
	dsn := startPostgres(t)
	ctx := t.Context()
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.WithoutCancel(ctx))
	for _, q := range []string{
		`CREATE TABLE machines (hostname text PRIMARY KEY, site text, addr inet, cores int, ram_gb int, pool cidr, status text)`,
		`INSERT INTO machines VALUES ('pg1','east','10.1.0.1',16,64,'172.20.1.0/24','online'),
		                             ('pg2','west','10.1.0.2',8,32,'172.20.2.0/24','maintenance'),
		                             ('pg3','west','10.1.0.2',8,32,'172.20.3.0/24','online')`, // duplicate address
	} {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	e := newEnv(t)
	wait := e.events("berth.v1.events.host.>")
	s, _ := e.startSync("pg", func(c *cmdbsync.Config) {
		c.Source = cmdbsync.SourceConfig{Kind: "postgres", DSN: dsn, Timeout: 5 * time.Second,
			Query:   `SELECT hostname, site, addr, cores, ram_gb || 'GiB' AS memory, pool, status FROM machines ORDER BY hostname`,
			Mapping: cmdbsync.Mapping{ID: "hostname", DC: "site", IP: "addr", CPU: "cores", IPPool: "pool", State: "status"}}
	})
	hostEvent(t, wait, "added", "pg1")
	hostEvent(t, wait, "rejected", "pg3")
	h1, h2 := e.getHost("pg1"), e.getHost("pg2")
	if h1.GetDc() != "east" || h1.GetMemoryBytes() != 64<<30 || h1.GetCpuMillis() != 16000 || h1.GetIp() != "10.1.0.1" || h1.GetIpPools()[0] != "172.20.1.0/24" {
		t.Fatalf("pg1: got %v", h1)
	}
	if !h2.GetCmdbDraining() || h2.GetState() != inventoryv1.HostState_HOST_STATE_DRAINING {
		t.Fatalf("pg2: got %v, want draining (maintenance)", h2)
	}
	if e.getHost("pg3") != nil {
		t.Fatal("pg3 (duplicate address) applied")
	}
	if _, err := db.Exec(ctx, `UPDATE machines SET addr = '10.1.0.3' WHERE hostname = 'pg3'`); err != nil {
		t.Fatal(err)
	}
	hostEvent(t, wait, "added", "pg3")
	if _, err := db.Exec(ctx, `DELETE FROM machines WHERE hostname = 'pg1'`); err != nil {
		t.Fatal(err)
	}
	hostEvent(t, wait, "removed", "pg1")
	if err := s.SourceHealthy(ctx); err != nil {
		t.Fatal(err)
	}
}
