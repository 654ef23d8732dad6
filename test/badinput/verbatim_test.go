package badinput

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestArbitraryTextIsKeptVerbatim covers the fields that legitimately take any text: a
// node's description, owners and label values, a task's arguments and payload, the
// requester header, a traffic policy's updated_by, a package URL's path, a callback URL's
// path and an artifact's bytes. Each hostile value is accepted, comes back exactly as
// sent, reaches a plugin as data (never as a command line) and runs nothing.
func TestArbitraryTextIsKeptVerbatim(t *testing.T) {
	b := shared
	ctx := t.Context()
	all := shellPayloads(b.sentinel)
	// Header values and owners cannot hold CR or LF; URLs cannot hold spaces.
	oneLine := without(all, "newline", "crlf")
	noSpace := []payload{}
	for _, p := range all {
		if !strings.ContainsAny(p.value, " \r\n") {
			noSpace = append(noSpace, p)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	start, err := b.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, what string) {
		t.Helper()
		if s := b.sentinels(); len(s) > 0 {
			t.Errorf("%s: a command ran: sentinel %s exists", what, strings.Join(s, ", "))
			for _, p := range s {
				_ = os.Remove(p)
			}
		}
	}
	call := func(t *testing.T, method, server, path string, header http.Header, body any, want int) map[string]any {
		t.Helper()
		var r io.Reader
		if body != nil {
			bb, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			r = bytes.NewReader(bb)
		}
		p, q, _ := strings.Cut(path, "?")
		code, _, out, err := b.do(ctx, method, b.base(server), p, q, header, r)
		if err != nil || code != want {
			t.Fatalf("%s %s: got %d %s (%v), want %d", method, path, code, out, err, want)
		}
		var m map[string]any
		_ = json.Unmarshal(out, &m)
		return m
	}

	t.Run("tree node text", func(t *testing.T) {
		node := "/v1/tree/" + baseService
		for _, p := range all {
			httpTried.Add(3)
			got := call(t, "PATCH", "controller", node, nil, map[string]any{"description": p.value, "labels": map[string]string{"tier": p.value}}, 200)
			if got["description"] != p.value || !reflect.DeepEqual(got["labels"], map[string]any{"tier": p.value}) {
				t.Errorf("description and label %q: got back %v and %v", p.value, got["description"], got["labels"])
			}
			check(t, "description "+p.name)
		}
		for _, p := range oneLine {
			got := call(t, "PATCH", "controller", node, nil, map[string]any{"owners": []string{p.value}}, 200)
			if !reflect.DeepEqual(got["owners"], []any{p.value}) {
				t.Errorf("owner %q: got back %v", p.value, got["owners"])
			}
			check(t, "owner "+p.name)
		}
		call(t, "PATCH", "controller", node, nil, map[string]any{"description": "baseline", "labels": map[string]string{"tier": "test"}, "owners": []string{"badinput"}}, 200)
	})

	t.Run("task arguments reach the plugin as data", func(t *testing.T) {
		for _, p := range oneLine {
			httpTried.Add(4)
			clearDir(t, b.echoOut)
			args := []string{p.value, "--x=" + p.value, "-" + p.value}
			task := call(t, "POST", "controller", "/v1/tasks", http.Header{"X-Berth-User": {p.value}},
				map[string]any{"hosts": []string{b.host}, "plugin": echoPlugin, "action": "run", "arguments": map[string]string{"k": p.value}, "args": args}, 201)
			id, _ := task["id"].(string)
			if task["requested_by"] != p.value {
				t.Errorf("X-Berth-User %q: requested_by %v", p.value, task["requested_by"])
			}
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := b.waitEnded(wctx, "/v1/tasks/"+id)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			argv, stdin := echoRecord(t, b.echoOut)
			if want := []string{"run"}; !slices.Equal(argv[1:], want) {
				t.Errorf("task %s with %q: the plugin's arguments were %q, want %q (the request goes on stdin only)", id, p.value, argv[1:], want)
			}
			var req struct {
				Arguments map[string]string `json:"arguments"`
				Payload   struct {
					Args []string `json:"args"`
				} `json:"payload"`
			}
			if err := json.Unmarshal(stdin, &req); err != nil {
				t.Fatalf("task %s: the plugin's stdin %q: %v", id, stdin, err)
			}
			if req.Arguments["k"] != p.value || !slices.Equal(req.Payload.Args, args) {
				t.Errorf("task %s: the plugin got arguments %q and args %q, want %q and %q", id, req.Arguments, req.Payload.Args, p.value, args)
			}
			check(t, "task "+p.name)
		}
	})

	t.Run("package URL path", func(t *testing.T) {
		for _, p := range noSpace {
			httpTried.Add(1)
			u := "file:///nonexistent/" + p.value + ".tar.gz"
			if _, err := url.Parse(u); err != nil {
				continue
			}
			d := call(t, "POST", "controller", "/v1/deployments", nil, map[string]any{"service": baseService, "version": baseVersion,
				"artifact": map[string]string{"url": u, "sha256": baseSHA}, "strategy": map[string]any{"infra_retries": 0}}, 201)
			id, _ := d["id"].(string)
			if a, _ := d["artifact"].(map[string]any); a["url"] != u {
				t.Errorf("deployment %s: artifact url %v, want %q", id, a["url"], u)
			}
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := b.waitEnded(wctx, "/v1/deployments/"+id)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			check(t, "package URL "+p.name)
		}
	})

	t.Run("traffic policy updated_by", func(t *testing.T) {
		for _, p := range all {
			httpTried.Add(1)
			call(t, "PUT", "names", "/v1/traffic/"+baseService, nil, map[string]any{"updated_by": p.value}, 200)
			got := call(t, "GET", "names", "/v1/traffic/"+baseService, nil, nil, 200)
			if pol, _ := got["policy"].(map[string]any); pol["updated_by"] != p.value {
				t.Errorf("updated_by %q: got back %v", p.value, got["policy"])
			}
			check(t, "updated_by "+p.name)
		}
		call(t, "DELETE", "names", "/v1/traffic/"+baseService, nil, nil, 200)
	})

	t.Run("callback URL path", func(t *testing.T) {
		for _, p := range noSpace {
			httpTried.Add(1)
			u := "http://127.0.0.1:9/" + p.value
			if _, err := url.Parse(u); err != nil {
				continue
			}
			cb := call(t, "POST", "agent", "/v1/callbacks", nil, map[string]string{"service": baseService, "url": u}, 201)
			if cb["url"] != u {
				t.Errorf("callback url %q: got back %v", u, cb["url"])
			}
			id, _ := cb["id"].(string)
			call(t, "DELETE", "agent", "/v1/callbacks/"+id, nil, nil, 200)
			check(t, "callback "+p.name)
		}
	})

	t.Run("artifact bytes", func(t *testing.T) {
		var body bytes.Buffer
		for _, p := range all {
			body.WriteString(p.value + "\n")
		}
		big := bytes.Repeat([]byte("$(touch "+b.sentinel+")\n"), (9<<20)/64)
		for name, content := range map[string][]byte{"badinput-verbatim.txt": body.Bytes(), "badinput-9mib.bin": big} {
			httpTried.Add(1)
			code, _, out, err := b.do(ctx, "PUT", b.artifacts, "/"+name, "", nil, bytes.NewReader(content))
			if err != nil || code != 201 {
				t.Fatalf("PUT %s: got %d %s (%v), want 201", name, code, out, err)
			}
			code, _, got, err := b.do(ctx, "GET", b.artifacts, "/"+name, "", nil, nil)
			if err != nil || code != 200 || len(got) != min(len(content), 1<<20) || !bytes.Equal(got, content[:len(got)]) {
				t.Errorf("GET %s: got %d, %d bytes (%v), want the %d bytes stored", name, code, len(got), err, len(content))
			}
			_ = os.Remove(filepath.Join(b.dataDir, "artifacts", name))
			check(t, "artifact "+name)
		}
	})

	// Everything but the run history is as it was.
	if err := b.waitQuiet(ctx); err != nil {
		t.Fatal(err)
	}
	end, err := b.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"tree", "names services", "agent callbacks", "artifacts", "traffic of base"} {
		if !bytes.Equal(withoutTimes(start.reads[name]), withoutTimes(end.reads[name])) {
			t.Errorf("%s not restored:\n  before: %.500s\n  after:  %.500s", name, start.reads[name], end.reads[name])
		}
	}
}

// withoutTimes drops the RFC 3339 times and revisions from a JSON answer, which the
// restoring writes move.
func withoutTimes(b []byte) []byte {
	var v any
	if json.Unmarshal(bytes.TrimLeft(b, "0123456789 "), &v) != nil {
		return b
	}
	var strip func(any) any
	strip = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if k == "updated_at" || k == "revision" {
					delete(x, k)
					continue
				}
				x[k] = strip(e)
			}
		case []any:
			for i, e := range x {
				x[i] = strip(e)
			}
		}
		return v
	}
	out, _ := json.Marshal(strip(v))
	return out
}

func clearDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		_ = os.Remove(filepath.Join(dir, e.Name()))
	}
}

// echoRecord reads what the echo plugin recorded of its one run: its argv and its stdin.
func echoRecord(t *testing.T, dir string) ([]string, []byte) {
	t.Helper()
	argvFiles, _ := filepath.Glob(filepath.Join(dir, "argv.*"))
	stdinFiles, _ := filepath.Glob(filepath.Join(dir, "stdin.*"))
	if len(argvFiles) != 1 || len(stdinFiles) != 1 {
		t.Fatalf("the echo plugin ran %d times (argv %v, stdin %v), want once", len(argvFiles), argvFiles, stdinFiles)
	}
	argv, err := os.ReadFile(argvFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := os.ReadFile(stdinFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(argv), "\x00"), "\x00"), stdin
}

// TestMalformedHTTPIsRefused sends requests that are not proper HTTP to every server: an
// oversized header, a request line with a space or a NUL in the path, a bad method, no
// Host, and a body framed two ways at once. Each must get a 4xx status line.
func TestMalformedHTTPIsRefused(t *testing.T) {
	b := shared
	raws := []struct{ name, req string }{
		{"header-2MiB", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n"},
		{"space-in-path", "GET /v1/a b HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"nul-in-path", "GET /v1/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"bad-method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"no-host", "GET / HTTP/1.1\r\n\r\n"},
		{"smuggling", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n"},
		{"bad-chunk", "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"},
		{"header-injection", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rX-B: b\r\n\r\n"},
	}
	for _, server := range []string{"controller", "names", "agent", "artifacts", "admin"} {
		u, err := url.Parse(b.base(server))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range raws {
			httpTried.Add(1)
			t.Run(server+"/"+r.name, func(t *testing.T) {
				b.noSideEffect(t, server+" "+r.name, "", func() error {
					conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
					if err != nil {
						return err
					}
					defer conn.Close()
					_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
					go func() { _, _ = io.WriteString(conn, r.req) }()
					line, err := bufio.NewReader(conn).ReadString('\n')
					if err != nil {
						return fmt.Errorf("no status line: %v", err)
					}
					var proto string
					var code int
					if _, err := fmt.Sscanf(line, "%s %d", &proto, &code); err != nil || code < 400 || code >= 500 {
						return fmt.Errorf("status line %q, want 4xx", strings.TrimSpace(line))
					}
					return nil
				})
			})
		}
	}
}

// TestCoordMemberAddIsRefused tries `berth coord member add` with hostile member names
// and peer addresses. It is the package's last test on purpose: a member add that got
// through would cost berth dev's single-member coord its quorum and fail everything after
// it. Names go with a valid address, so that only the name can refuse them.
func TestCoordMemberAddIsRefused(t *testing.T) {
	b := shared
	s := b.sentinel
	var cases []cliCase
	names := pick(identPayloads(s), "subst", "backticks", "semicolon", "subst-bare", "semicolon-bare", "pipe-bare", "dotdot", "dotdot-only",
		"dot", "encoded-dotdot", "escape", "blank", "fullwidth", "long-300")
	cases = append(cases, flagCases("coord member add", []string{"coord", "member", "add", "evil", "127.0.0.1:1"}, "arg:3", names, "")...)
	cases = append(cases, flagCases("coord member add", []string{"coord", "member", "add", "evil", "127.0.0.1:1"}, "arg:4", []payload{
		{"subst", "$(touch " + s + "):1"}, {"semicolon", "a;touch${IFS}x:1"}, {"backticks", "`id`:1"}, {"space", "a b:1"}, {"port-0", "127.0.0.1:0"},
		{"port-big", "127.0.0.1:99999"}, {"no-port", "127.0.0.1"}, {"newline", "a\n:1"}, {"fullwidth", "ｈｏｓｔ:1"}}, "")...)
	b.runCLIRefused(t, cases)
}
