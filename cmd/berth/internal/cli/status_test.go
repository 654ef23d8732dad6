package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthdev/berth/cmd/berth/internal/dev"
)

// hangServer accepts connections and never answers, until the test ends: an artifact
// server that keeps a deployment running.
func hangServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func apiDo(t *testing.T, ctx context.Context, method, url string, body any) map[string]any {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(ctx, method, url, rd)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %s %s", method, url, resp.Status, b)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

// TestStatusAgainstDev runs berth dev in process and checks that berth status shows its
// coord, its host, a service and a running deployment, through a CLI context.
func TestStatusAgainstDev(t *testing.T) {
	out := &syncBuffer{}
	var coordPort int
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l.Close()
		if err == nil {
			l2.Close()
			coordPort = p
			break
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		errc <- dev.Run(ctx, dev.Config{DataDir: t.TempDir(), Host: "127.0.0.1", CoordPort: coordPort, LogLevel: "error", Out: out, Log: out})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("berth dev stopped with %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("berth dev did not stop within 20 s")
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "Press Ctrl-C") {
		if time.Now().After(deadline) {
			t.Fatalf("berth dev not up in 30 s:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	find := func(name string) string {
		m := regexp.MustCompile(name + `\s+(http://127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("berth dev printed no %s URL:\n%s", name, out)
		}
		return m[1]
	}
	ctrl, names := find("controller"), find("names API")
	coord := "127.0.0.1:" + strconv.Itoa(coordPort)
	host, _ := os.Hostname()

	// A deployment whose artifact never arrives stays running while status looks.
	apiDo(t, t.Context(), http.MethodPatch, ctrl+"/v1/tree/status/app", map[string]any{"hosts": []string{host}})
	dep := apiDo(t, t.Context(), http.MethodPost, ctrl+"/v1/deployments", map[string]any{
		"service": "status/app", "version": "1.0", "hosts": []string{host},
		"artifact": map[string]string{"url": "http://" + hangServer(t) + "/app.tar.gz", "sha256": strings.Repeat("ab", 32)},
	})
	id, _ := dep["id"].(string)
	t.Cleanup(func() { apiDo(t, context.Background(), http.MethodPost, ctrl+"/v1/deployments/"+id+"/abort", nil) })
	for {
		d := apiDo(t, t.Context(), http.MethodGet, ctrl+"/v1/deployments/"+id+"?targets=false", nil)
		if st, _ := d["status"].(map[string]any); st != nil && st["state"] == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s not running in time: %v", id, d)
		}
		time.Sleep(50 * time.Millisecond)
	}

	writeConfig(t, fmt.Sprintf("current_context: local\ncontexts:\n  local:\n    controller: %s\n    names: %s\n    coord: %s\n", ctrl, names, coord))
	var rep statusReport
	deadline = time.Now().Add(30 * time.Second)
	for {
		js, err := runCLI(t, "", "status", "--json")
		if err != nil {
			t.Fatalf("berth status --json: %v\n%s", err, js)
		}
		rep = statusReport{}
		if err := json.Unmarshal([]byte(js), &rep); err != nil {
			t.Fatalf("berth status --json: %v\n%s", err, js)
		}
		if hasService(rep, "status/app") && rep.Hosts.Up == 1 || time.Now().After(deadline) {
			t.Logf("status complete after %s", time.Since(deadline.Add(-30*time.Second)).Round(time.Millisecond))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rep.Context != "local" || rep.Coord.Leader != "dev" || len(rep.Coord.Members) != 1 || rep.Coord.Revision == 0 {
		t.Errorf("coord section: got context %q, %+v; want context local, leader dev, one member, a revision", rep.Context, rep.Coord)
	}
	if rep.Hosts.Up != 1 || rep.Hosts.Down != 0 || len(rep.Hosts.Hosts) != 1 || rep.Hosts.Hosts[0].ID != host || rep.Hosts.Hosts[0].Liveness != "up" {
		t.Errorf("hosts section: got %+v, want %s up", rep.Hosts, host)
	}
	if !hasService(rep, "status/app") {
		t.Errorf("services section: got %+v, want status/app", rep.Services)
	}
	if len(rep.Deployments.Running) != 1 || rep.Deployments.Running[0].ID != id || rep.Deployments.Running[0].Service != "status/app" || rep.Deployments.Running[0].Total != 1 {
		t.Errorf("deployments section: got %+v, want %s of status/app running on 1 target", rep.Deployments, id)
	}

	text, err := runCLI(t, "", "status")
	if err != nil {
		t.Fatalf("berth status: %v\n%s", err, text)
	}
	for _, want := range []string{`context\s+local\n`, `coord\s+leader dev \(` + regexp.QuoteMeta(coord) + `\), 1 member, revision \d+\n`,
		`hosts\s+1 up, 0 down, 0 missing\n`, `services\s+1, 0 healthy\n`, `deployments\s+1 running\n`,
		`\n` + regexp.QuoteMeta(host) + `\s+dev\s+ready\s+up\n`, `\nstatus/app\s+0\s+0\s+no instances\n`, `\n` + id + `\s+status/app\s+1\.0\s+running\s+0/1\n`} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("berth status lacks %s:\n%s", want, text)
		}
	}
}

func hasService(r statusReport, name string) bool {
	for _, s := range r.Services.Services {
		if s.Service == name {
			return true
		}
	}
	return false
}
