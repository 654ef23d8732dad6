package console

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// external matches what would make the console load or reach something outside its own
// origin: absolute or protocol-relative URLs, CSS imports and url() of anything but data:.
var external = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\b(https?|wss?|ftp):`),
	regexp.MustCompile(`(?i)(src|href|action|poster|srcset)\s*=\s*["']?\s*//`),
	regexp.MustCompile(`(?i)url\(\s*["']?\s*(//|[a-z]+:)`),
	regexp.MustCompile(`(?i)@import`),
	regexp.MustCompile(`(?i)fetch\(\s*["'](//|[a-z]+:)`),
	regexp.MustCompile(`(?i)new\s+(EventSource|WebSocket)\(\s*["'](//|[a-z]+:)`),
}

// allowedScheme lists schemes that stay in the page (data: for the empty favicon).
var allowedScheme = regexp.MustCompile(`(?i)url\(\s*["']?\s*data:`)

func TestFilesAreSelfContained(t *testing.T) {
	n := 0
	err := fs.WalkDir(Files(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(Files(), path)
		if err != nil {
			return err
		}
		for _, re := range external {
			for _, loc := range re.FindAllIndex(b, -1) {
				if allowedScheme.Match(b[loc[0]:]) {
					continue
				}
				line := 1 + strings.Count(string(b[:loc[0]]), "\n")
				t.Errorf("%s:%d: got %q, want no reference outside the controller's origin", path, line, b[loc[0]:loc[1]])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 3 {
		t.Fatalf("got %d embedded files, want index.html, console.css and console.js", n)
	}
}

// TestReferencedFilesExist checks that every relative src and href of index.html is an
// embedded file, so the page never asks the controller for a file it lacks.
func TestReferencedFilesExist(t *testing.T) {
	b, err := fs.ReadFile(Files(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile(`(?i)(?:src|href)="([^"]*)"`).FindAllSubmatch(b, -1)
	if len(refs) == 0 {
		t.Fatal("index.html references nothing; want console.css and console.js")
	}
	for _, m := range refs {
		ref := string(m[1])
		switch {
		case strings.HasPrefix(ref, "#"), strings.HasPrefix(ref, "data:"):
		case strings.HasPrefix(ref, "/"):
			// The controller's own endpoints (/metrics, /readyz).
			if ref != "/metrics" && ref != "/readyz" {
				t.Errorf("index.html: got root-relative %q, want only /metrics and /readyz", ref)
			}
		default:
			if _, err := fs.Stat(Files(), ref); err != nil {
				t.Errorf("index.html: %q is not embedded: %v", ref, err)
			}
		}
	}
}

func TestHandler(t *testing.T) {
	mux := http.NewServeMux()
	Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	cases := []struct {
		path     string
		code     int
		ctype    string
		contains string
		location string
	}{
		{"/ui/", 200, "text/html", "Deployments", ""},
		{"/ui/console.js", 200, "javascript", "use strict", ""},
		{"/ui/console.css", 200, "text/css", "@media", ""},
		{"/ui", 302, "", "", "/ui/"},
		{"/", 302, "", "", "/ui/"},
		{"/ui/missing.js", 404, "", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := client.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Fatalf("GET %s: got %d, want %d", tc.path, resp.StatusCode, tc.code)
			}
			if ct := resp.Header.Get("Content-Type"); tc.ctype != "" && !strings.Contains(ct, tc.ctype) {
				t.Errorf("GET %s: got Content-Type %q, want %s", tc.path, ct, tc.ctype)
			}
			if tc.contains != "" && !strings.Contains(string(body), tc.contains) {
				t.Errorf("GET %s: body does not contain %q", tc.path, tc.contains)
			}
			if tc.location != "" && resp.Header.Get("Location") != tc.location {
				t.Errorf("GET %s: got Location %q, want %q", tc.path, resp.Header.Get("Location"), tc.location)
			}
			if tc.code == 200 {
				csp := resp.Header.Get("Content-Security-Policy")
				for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'"} {
					if !strings.Contains(csp, want) {
						t.Errorf("GET %s: got CSP %q, want it to contain %q", tc.path, csp, want)
					}
				}
			}
		})
	}
}
