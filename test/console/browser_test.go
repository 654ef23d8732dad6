package console_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// chromiumPath finds a Chromium (Debian's chromium package) or Chrome binary; "" when
// there is none.
func chromiumPath() string {
	if p := os.Getenv("BERTH_TEST_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// page is a headless Chromium tab on the console.
type page struct {
	t    *testing.T
	ctx  context.Context
	base string
	dir  string

	mu       sync.Mutex
	requests []capturedRequest
}

type capturedRequest struct {
	method, url, auth string
}

func newPage(t *testing.T, base string) *page {
	t.Helper()
	exe := chromiumPath()
	if exe == "" {
		t.Skip("no chromium binary (apt-get install chromium, or set BERTH_TEST_CHROMIUM): the browser tests need one")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	p := &page{t: t, ctx: ctx, base: base, dir: artifacts(t)}
	// Start the browser, then record every request the page sends with its
	// Authorization header.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium %s: %v", exe, err)
	}
	err := chromedp.Listen(ctx, func(ev any) {
		var e *network.EventRequestWillBeSent
		switch v := ev.(type) {
		case *network.EventRequestWillBeSent:
			e = v
		case network.EventRequestWillBeSent:
			e = &v
		default:
			return
		}
		auth, _ := e.Request.Headers["Authorization"].(string)
		p.mu.Lock()
		p.requests = append(p.requests, capturedRequest{method: e.Request.Method, url: e.Request.URL, auth: auth})
		p.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("listen to the tab: %v", err)
	}
	return p
}

// do runs actions with a bound, failing the test with what.
func (p *page) do(what string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.shot("failed-" + fileName(what))
		p.t.Fatalf("%s: %v", what, err)
	}
}

// open navigates to a console route (#/deployments) and waits for the page to show sel.
func (p *page) open(route, sel string) {
	p.t.Helper()
	p.do("open "+route, 30*time.Second, chromedp.Navigate(p.base+"/ui/"+route), chromedp.WaitVisible(chromedp.CSS(sel)))
}

// waitJS waits until the JavaScript expression is true.
func (p *page) waitJS(what, expr string, timeout time.Duration) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(timeout))); err != nil {
		p.shot("failed-" + fileName(what))
		p.t.Fatalf("%s: not seen within %s (%s): %v", what, timeout, expr, err)
	}
}

// eval returns the value of a JavaScript expression.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// fileName makes a file name of a description.
func fileName(s string) string {
	return strings.Trim(nonWord.ReplaceAllString(strings.ToLower(s), "-"), "-")
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

// shot saves a screenshot of the whole page as name.png in the artifacts directory.
func (p *page) shot(name string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	path := filepath.Join(p.dir, name+".png")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		p.t.Errorf("screenshot %s: %v", name, err)
	}
	return path
}

// TestConsoleBrowser drives the console in headless Chromium against berth dev while a
// deployment rolls out in three batches with a manual pause: the deployment appears in
// the list; its page follows the rollout live (a resume from the CLI shows without a
// reload); the page's pause and resume buttons change the deployment's state in coord
// (read back through the API) and send the saved token; a refused action shows the
// controller's reason; the services, hosts and names pages show the service, its
// effective policy and instances, the hosts, and the DNS answer. Every page is saved as a
// screenshot, and the deployment page is checked to fit a phone's width.
func TestConsoleBrowser(t *testing.T) {
	b := shared.get(t)
	p := newPage(t, b.controller)

	b.cli(t, "tree", "set", "console", "--owner", "web-team", "--label", "tier=frontend", "--description", "console test services", "--ttl", "10s")
	b.cli(t, "tree", "set", "console/web", "--description", "the web app the console test deploys")
	id := b.deploy(t, "console/web", "1.0.0", []string{b.host, "a2", "a3"}, "--batches", "1,2,100%", "--pause", "manual")
	t.Logf("deployment %s", id)

	// The list shows the deployment.
	p.open("#/deployments", fmt.Sprintf(`#deployments tr[data-id=%q]`, id))
	p.waitJS("list shows the deployment paused after batch 1",
		fmt.Sprintf(`!!document.querySelector('#deployments tr[data-id=%q] .state [data-state="paused"]')`, id), 60*time.Second)
	p.shot("deployments")

	// The deployment page, paused after the first batch.
	b.waitDeployment(t, id, 60*time.Second, "paused after batch 1", func(d deployment) bool {
		return d.Status.State == "paused" && d.Status.PauseReason == "batch" && d.target(b.host) == "succeeded"
	})
	p.open("#/deployments/"+id, `#dep-state [data-state="paused"]`)
	p.waitJS("live stream connected", `document.getElementById("live").classList.contains("on")`, 20*time.Second)
	p.waitJS("first target succeeded on the page", fmt.Sprintf(`!!document.querySelector('#targets tr[data-host=%q][data-state="succeeded"]')`, b.host), 20*time.Second)
	_ = eval[bool](p, `window.__berthNoReload = true`)
	p.shot("deployment-paused")

	// A resume from the CLI shows on the page without a reload: a2 succeeds and the
	// rollout pauses again after batch 2.
	b.cli(t, "deployments", "resume", id, "--controller", b.controller)
	p.waitJS("a2 succeeded, live", `!!document.querySelector('#targets tr[data-host="a2"][data-state="succeeded"]')`, 60*time.Second)
	p.waitJS("paused after batch 2, live", `!!document.querySelector('#dep-state [data-state="paused"]') && document.getElementById("dep-message").textContent.includes("batch 2")`, 60*time.Second)
	if !eval[bool](p, `window.__berthNoReload === true`) {
		t.Fatalf("the deployment page reloaded; want live updates in place")
	}
	if got := eval[string](p, `document.querySelector('#targets tr[data-host="a3"]').dataset.state`); got != "pending" {
		t.Errorf("a3 on the page: got %s, want pending while paused", got)
	}
	p.shot("deployment-live")

	// Save a token: the page's requests carry it from now on.
	const token = "console-test-token-42"
	p.do("save the token", 10*time.Second, chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("#token-save")))
	if got := eval[string](p, `localStorage.getItem("berth.token")`); got != token {
		t.Fatalf("token in localStorage: got %q, want %q", got, token)
	}

	// Pause from the page, while paused after a batch: the pause becomes a manual one.
	p.do("click pause", 10*time.Second, chromedp.Click(chromedp.CSS("#act-pause")))
	b.waitDeployment(t, id, 20*time.Second, "manual pause from the page", func(d deployment) bool {
		return d.Status.State == "paused" && d.Status.PauseReason == "manual"
	})
	p.waitJS("pause acknowledged", `document.getElementById("action-msg").classList.contains("ok")`, 10*time.Second)
	p.waitJS("manual pause shown live", `(document.getElementById("dep-pause")||{}).textContent === "pause: manual"`, 20*time.Second)

	// Resume from the page: the rollout goes on to the end.
	p.do("click resume", 10*time.Second, chromedp.Click(chromedp.CSS("#act-resume")))
	b.waitDeployment(t, id, 60*time.Second, "resumed from the page and succeeded", func(d deployment) bool {
		return d.Status.State == "succeeded" && d.target("a3") == "succeeded"
	})
	p.waitJS("succeeded, live", `!!document.querySelector('#dep-state [data-state="succeeded"]') && !!document.querySelector('#targets tr[data-host="a3"][data-state="succeeded"]')`, 30*time.Second)
	p.shot("deployment-succeeded")

	// A refused action shows the controller's reason.
	p.do("click roll back twice", 10*time.Second, chromedp.Click(chromedp.CSS("#act-rollback")), chromedp.Click(chromedp.CSS("#act-rollback")))
	p.waitJS("refusal shown", `document.getElementById("action-msg").classList.contains("error") && document.getElementById("action-msg").textContent.includes("has ended")`, 10*time.Second)
	p.shot("deployment-refused")

	p.mu.Lock()
	var actions []capturedRequest
	for _, r := range p.requests {
		if r.method == "POST" && strings.Contains(r.url, "/v1/deployments/"+id+"/") {
			actions = append(actions, r)
		}
	}
	p.mu.Unlock()
	if len(actions) != 3 {
		t.Errorf("actions sent by the page: got %d (%+v), want pause, resume and rollback", len(actions), actions)
	}
	for _, r := range actions {
		if r.auth != "Bearer "+token {
			t.Errorf("%s %s: got Authorization %q, want %q", r.method, r.url, r.auth, "Bearer "+token)
		}
	}

	// The same page on a phone: nothing wider than the screen but the tables' own
	// scrolling.
	p.do("phone viewport", 10*time.Second, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	p.waitJS("page fits a phone", `document.documentElement.scrollWidth <= window.innerWidth + 1`, 10*time.Second)
	p.shot("deployment-phone")
	p.do("laptop viewport", 10*time.Second, chromedp.EmulateViewport(1280, 900))

	// Services: the tree, the effective policy with its sources, the instances.
	p.open("#/services/console/web", `#policy`)
	p.waitJS("dns_ttl inherited from console", `(document.querySelector('#policy tr[data-field="dns_ttl"] .source')||{}).textContent === "console"`, 20*time.Second)
	p.waitJS("batches from the defaults", `(document.querySelector('#policy tr[data-field="strategy.batches"] .source')||{}).textContent === "default"`, 5*time.Second)
	p.waitJS("three instances", `document.querySelectorAll('#instances tr[data-instance]').length === 3`, 30*time.Second)
	p.waitJS("the deployment listed", fmt.Sprintf(`!!document.querySelector('#svc-deployments tr[data-id=%q]')`, id), 20*time.Second)
	if got := eval[string](p, `document.querySelector('#tree a.active').dataset.path`); got != "console/web" {
		t.Errorf("tree selection: got %q, want console/web", got)
	}
	p.shot("services")

	// Hosts: the three agents, with DC and liveness.
	p.open("#/hosts", `#hosts`)
	for _, h := range []string{b.host, "a2", "a3"} {
		p.waitJS("host "+h+" up", fmt.Sprintf(`!!document.querySelector('#hosts tr[data-host=%q] .liveness [data-state="up"]')`, h), 20*time.Second)
	}
	p.shot("hosts")

	// Names: the DNS answer for a client in DC dev2 with the policy's explanation.
	t.Run("names", func(t *testing.T) {
		parent := p.t
		p.t = t
		defer func() { p.t = parent }()
		p.open("#/names?service=console/web&dc=dev2", `#names-form`)
		p.waitJS("answer with instances", `document.querySelectorAll('#answer tbody tr').length >= 1 && !!document.querySelector('#explain li')`, 30*time.Second)
		p.shot("names")
	})
}
