//go:build e2e

// Package e2e runs Berth as docker-compose.yml describes it — images from
// scripts/images.sh, a compose project of its own with every port published on loopback
// ports Docker picks — and checks it from the outside, with the berth CLI and HTTP and DNS
// against the published ports only: a package deploy through the FTP server, DNS answers
// from both name-service replicas, a container deploy, the coord leader and the controller
// leader killed mid-deploy (docker kill), and an agent killed (its instances leave DNS, its
// allocations are placed again).
//
//	go test -tags e2e -count=1 -timeout 30m ./e2e/    (from test/; needs Docker and docker-compose)
//
// BERTH_E2E_NO_IMAGES=1 skips scripts/images.sh (the images exist already);
// BERTH_E2E_KEEP=1 leaves the project running; BERTH_E2E_LOGS=1 prints the services' logs
// at the end even when the test passed; BERTH_E2E_TLS=1 runs TestComposeTLS too (the stack
// with docker-compose.tls.yml, mutual TLS on every link).
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// zone is the name service's zone in docker-compose.yml.
const zone = "ns.berth.internal"

// TestCompose is one stack and the checks in order: each later check relies on the state
// the earlier ones left (the deployed service, the restarted members).
func TestCompose(t *testing.T) {
	s := newStack(t)
	if len(s.missing) > 0 {
		t.Logf("not running (no image yet): %s", strings.Join(s.missing, ", "))
	}
	waitReady(t, s)
	app := buildApp(t)
	const svc = "e2e/web"
	s.mustBerth(30*time.Second, "tree", "set", svc)

	// ok is false once a check failed, so that the checks that need its outcome skip
	// rather than fail for the same reason again.
	ok := true
	check := func(name string, f func(t *testing.T)) {
		if !ok {
			t.Run(name, func(t *testing.T) { t.Skip("an earlier check failed") })
			return
		}
		ok = t.Run(name, f)
	}
	check("package deploy", func(t *testing.T) {
		p := makePkg(t, s.pkgDir, app, svc, "1.0.0", appPort)
		out := s.mustBerth(2*time.Minute, "deploy", svc, "--version", p.version, "--package", p.url(), "--sha256", p.sha256,
			"--hosts", "agent-1,agent-2", "--wait")
		t.Logf("berth deploy:\n%s", out)
		checkAppVersion(t, s, "1.0.0", "agent-1", "agent-2")
	})
	check("dns", func(t *testing.T) {
		checkDNS(t, s, svc, 2)
	})
	// The container deploy does not gate the checks after it.
	t.Run("container deploy", func(t *testing.T) {
		containerDeploy(t, s, app)
	})
	check("coord leader killed mid-deploy", func(t *testing.T) {
		p := makePkg(t, s.pkgDir, app, svc, "1.0.1", appPort)
		member := coordLeader(t, s)
		deployWhile(t, s, "controller-1", p, func() {
			s.kill(member)
		})
		checkAppVersion(t, s, "1.0.1", "agent-1", "agent-2")
		s.start(member)
		eventually(t, time.Minute, "coord has 3 members answering again", func() error {
			if n := len(strings.Split(s.coordEndpoints(), ",")); n != 3 {
				return fmt.Errorf("%d published coord endpoints", n)
			}
			_, code := s.berth(20*time.Second, "coord", "status")
			if code != 0 {
				return fmt.Errorf("berth coord status: exit %d", code)
			}
			return nil
		})
	})
	check("controller killed mid-deploy", func(t *testing.T) {
		p := makePkg(t, s.pkgDir, app, svc, "1.0.2", appPort)
		leader := controllerLeader(t, s)
		other := "controller-1"
		if leader == "controller-1" {
			other = "controller-2"
		}
		deployWhile(t, s, other, p, func() {
			s.kill(leader)
		})
		checkAppVersion(t, s, "1.0.2", "agent-1", "agent-2")
		s.start(leader)
		eventually(t, time.Minute, leader+" ready again", func() error {
			_, err := httpGet(t.Context(), s.controllerURL(leader)+"/readyz")
			return err
		})
	})
	check("agent killed", func(t *testing.T) {
		agentKilled(t, s, svc)
	})
}

// waitReady waits until both controllers and name services are ready and cmdb-sync shows
// both agents up.
func waitReady(t *testing.T, s *stack) {
	for _, svc := range []string{"controller-1", "controller-2"} {
		eventually(t, 2*time.Minute, svc+" /readyz", func() error {
			_, err := httpGet(t.Context(), s.controllerURL(svc)+"/readyz")
			return err
		})
	}
	for _, svc := range []string{"name-service-1", "name-service-2"} {
		eventually(t, time.Minute, svc+" /readyz", func() error {
			_, err := httpGet(t.Context(), "http://"+s.addr(svc, 7071, "tcp")+"/readyz")
			return err
		})
	}
	took := eventually(t, 2*time.Minute, "berth hosts ls shows agent-1 and agent-2 up", func() error {
		hosts, err := hostsLs(t, s)
		if err != nil {
			return err
		}
		for _, h := range []string{"agent-1", "agent-2"} {
			if hosts[h] != "up" {
				return fmt.Errorf("host %s liveness %q, want up (hosts: %v)", h, hosts[h], hosts)
			}
		}
		return nil
	})
	t.Logf("stack ready; agents up after %s more", took.Round(time.Millisecond))
}

// hostsLs is berth hosts ls --json: host → liveness.
func hostsLs(t *testing.T, s *stack) (map[string]string, error) {
	out, code := s.berth(30*time.Second, "hosts", "ls", "--json")
	if code != 0 {
		return nil, fmt.Errorf("berth hosts ls: exit %d: %s", code, out)
	}
	var rows []struct {
		ID       string `json:"id"`
		State    string `json:"state"`
		Liveness string `json:"liveness"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, fmt.Errorf("berth hosts ls --json: %w: %s", err, out)
	}
	m := map[string]string{}
	for _, r := range rows {
		m[r.ID] = r.Liveness
	}
	return m, nil
}

// checkAppVersion checks that the app on each agent answers version through the agent's
// published app port.
func checkAppVersion(t *testing.T, s *stack, version string, agents ...string) {
	t.Helper()
	for _, a := range agents {
		eventually(t, 30*time.Second, a+" app answers "+version, func() error {
			body, err := httpGet(t.Context(), "http://"+s.addr(a, appPort, "tcp")+"/")
			if err != nil {
				return err
			}
			if body != version {
				return fmt.Errorf("got %q, want %q", body, version)
			}
			return nil
		})
	}
}

// dnsName is the service's name in the zone: hotel/search is search.hotel.<zone>.
func dnsName(service string) string {
	parts := strings.Split(service, "/")
	slices.Reverse(parts)
	return strings.Join(parts, ".") + "." + zone + "."
}

// queryA asks the DNS server at addr for the A records of name over the network ("udp"
// or "tcp"); it returns the rcode and the addresses.
func queryA(ctx context.Context, network, addr, name string) (int, []string, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	r, _, err := c.ExchangeContext(ctx, m, addr)
	if err != nil {
		return 0, nil, fmt.Errorf("%s query %s at %s: %w", network, name, addr, err)
	}
	var ips []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			ips = append(ips, a.A.String())
		}
	}
	slices.Sort(ips)
	return r.Rcode, ips, nil
}

// resolveIPs is the instances' addresses as berth resolve --json lists them.
func resolveIPs(t *testing.T, s *stack, service string) ([]string, error) {
	out, code := s.berth(20*time.Second, "resolve", service, "--json")
	if code != 0 {
		return nil, fmt.Errorf("berth resolve: exit %d: %s", code, out)
	}
	var r struct {
		Instances []struct {
			IP   string `json:"ip"`
			Host string `json:"host"`
		} `json:"instances"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("berth resolve --json: %w: %s", err, out)
	}
	var ips []string
	for _, in := range r.Instances {
		ips = append(ips, in.IP)
	}
	slices.Sort(ips)
	return ips, nil
}

// checkDNS checks that both name-service replicas answer want A records for the service,
// over UDP and TCP, the same addresses berth resolve lists, and NXDOMAIN for a name that
// does not exist.
func checkDNS(t *testing.T, s *stack, service string, want int) {
	t.Helper()
	name := dnsName(service)
	var ips []string
	took := eventually(t, 15*time.Second, fmt.Sprintf("berth resolve %s lists %d instances", service, want), func() error {
		var err error
		ips, err = resolveIPs(t, s, service)
		if err != nil {
			return err
		}
		if len(ips) != want {
			return fmt.Errorf("got %v, want %d addresses", ips, want)
		}
		return nil
	})
	t.Logf("berth resolve %s: %v (after %s)", service, ips, took.Round(time.Millisecond))
	for _, ns := range []string{"name-service-1", "name-service-2"} {
		for _, network := range []string{"udp", "tcp"} {
			addr := s.addr(ns, 53, network)
			eventually(t, 10*time.Second, fmt.Sprintf("%s answers %s over %s", ns, name, network), func() error {
				rcode, got, err := queryA(t.Context(), network, addr, name)
				if err != nil {
					return err
				}
				if rcode != dns.RcodeSuccess || !slices.Equal(got, ips) {
					return fmt.Errorf("got %s %v, want NOERROR %v", dns.RcodeToString[rcode], got, ips)
				}
				return nil
			})
			rcode, got, err := queryA(t.Context(), network, addr, "nosuch."+name)
			if err != nil {
				t.Fatal(err)
			}
			if rcode != dns.RcodeNameError || len(got) != 0 {
				t.Errorf("%s over %s, nosuch.%s: got %s %v, want NXDOMAIN and no address", ns, network, name, dns.RcodeToString[rcode], got)
			}
		}
	}
}

// deploymentID finds the id in berth deploy --wait's first line.
var deploymentID = regexp.MustCompile(`deployment (d-[0-9a-z-]+) of`)

// deployWhile deploys p to both agents in two batches with a pause between them, following
// it with berth deploy --wait through the controller replica via; once the first batch
// succeeded it calls during (which kills something), and then requires the deployment to
// succeed.
func deployWhile(t *testing.T, s *stack, via string, p pkg, during func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var out syncBuffer
	cmd := s.berthCmd(ctx, via, "deploy", p.service, "--version", p.version, "--package", p.url(), "--sha256", p.sha256,
		"--hosts", "agent-1,agent-2", "--batches", "1,100%", "--pause", "6s", "--wait")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var id string
	eventually(t, time.Minute, "the first batch succeeded", func() error {
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("berth deploy ended early: %v\n%s", err, out.String())
		default:
		}
		if id == "" {
			m := deploymentID.FindStringSubmatch(out.String())
			if m == nil {
				return fmt.Errorf("no deployment id printed yet: %q", out.String())
			}
			id = m[1]
		}
		d, err := showDeployment(t, s, via, id)
		if err != nil {
			return err
		}
		if d.Status.State != "paused" && d.Status.State != "running" {
			return fmt.Errorf("deployment %s is %s, want running or paused", id, d.Status.State)
		}
		for _, tg := range d.Targets {
			if tg.State == "succeeded" {
				return nil
			}
		}
		return fmt.Errorf("deployment %s: no target succeeded yet", id)
	})
	start := time.Now()
	during()
	select {
	case err := <-done:
		if err != nil {
			code := -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			t.Fatalf("berth deploy --wait (via %s): exit %d, want 0 (succeeded)\n%s", via, code, out.String())
		}
	case <-ctx.Done():
		t.Fatalf("berth deploy --wait (via %s) did not end within 3 minutes\n%s", via, out.String())
	}
	t.Logf("deployment %s succeeded %s after the kill", id, time.Since(start).Round(time.Millisecond))
}

// deployment is the part of berth deployments show --json the suite reads.
type deployment struct {
	Status struct {
		State string `json:"state"`
	} `json:"status"`
	Targets []struct {
		Host  string `json:"host"`
		State string `json:"state"`
	} `json:"targets"`
}

func showDeployment(t *testing.T, s *stack, via, id string) (deployment, error) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	b, err := s.berthCmd(ctx, via, "deployments", "show", id, "--json").CombinedOutput()
	if err != nil {
		return deployment{}, fmt.Errorf("berth deployments show %s: %w: %s", id, err, b)
	}
	var d deployment
	if err := json.Unmarshal(b, &d); err != nil {
		return deployment{}, fmt.Errorf("berth deployments show --json: %w: %s", err, b)
	}
	return d, nil
}

// coordLeader is the compose service of the coord leader (members are named after their
// services).
func coordLeader(t *testing.T, s *stack) string {
	t.Helper()
	var leader string
	eventually(t, 30*time.Second, "coord has a leader", func() error {
		out, code := s.berth(20*time.Second, "coord", "members", "--json")
		if code != 0 {
			return fmt.Errorf("berth coord members: exit %d: %s", code, out)
		}
		var ms []struct {
			Name     string `json:"name"`
			IsLeader bool   `json:"is_leader"`
		}
		if err := json.Unmarshal([]byte(out), &ms); err != nil {
			return fmt.Errorf("berth coord members --json: %w: %s", err, out)
		}
		for _, m := range ms {
			if m.IsLeader {
				leader = m.Name
				return nil
			}
		}
		return fmt.Errorf("no leader among %s", out)
	})
	t.Logf("coord leader: %s", leader)
	return leader
}

// controllerLeader is the compose service of the controller leader (replicas are named
// after their services).
func controllerLeader(t *testing.T, s *stack) string {
	t.Helper()
	var leader string
	eventually(t, 30*time.Second, "a controller leads", func() error {
		body, err := httpGet(t.Context(), s.controllerURL("controller-1")+"/v1/leader")
		if err != nil {
			return err
		}
		var l struct {
			Replica string `json:"replica"`
		}
		if err := json.Unmarshal([]byte(body), &l); err != nil {
			return fmt.Errorf("GET /v1/leader: %w: %s", err, body)
		}
		if !s.has(l.Replica) {
			return fmt.Errorf("leader %q is not a service of the stack", l.Replica)
		}
		leader = l.Replica
		return nil
	})
	t.Logf("controller leader: %s", leader)
	return leader
}

// containerDeploy deploys the package as two containers, one per rack (so one on each agent), when the controller, the CLI and
// the image builder support it.
func containerDeploy(t *testing.T, s *stack, app []byte) {
	help, _ := s.berth(20*time.Second, "deploy", "--help")
	if !strings.Contains(help, "--mode") {
		t.Skip("container mode is not there yet: berth deploy has no --mode flag")
	}
	if !s.has("image-builder") {
		t.Skip("container mode needs berth-image-builder, which has no image yet (no main package)")
	}
	// The engine has no registry to pull a base image from: make it and push it to the
	// stack's registry, where the builder's default base is.
	var registry string
	for _, kv := range s.env {
		if v, ok := strings.CutPrefix(kv, "BERTH_REGISTRY_PORT="); ok {
			registry = "127.0.0.1:" + v
		}
	}
	s.mustBerth(3*time.Minute, "images", "base", "--registry", registry)
	const svc = "e2e/ctr"
	s.mustBerth(30*time.Second, "tree", "set", svc)
	p := makePkg(t, s.pkgDir, app, svc, "1.0.0", appPort)
	out := s.mustBerth(5*time.Minute, "deploy", svc, "--version", p.version, "--mode", "container", "--replicas", "2",
		"--cpu", "0.1", "--memory", "64Mi", "--spread", "rack", "--package", p.url(), "--sha256", p.sha256, "--wait")
	t.Logf("berth deploy --mode container:\n%s", out)
	var ips []string
	eventually(t, 30*time.Second, "berth resolve e2e/ctr lists 2 containers from the hosts' pools", func() error {
		var err error
		if ips, err = resolveIPs(t, s, svc); err != nil {
			return err
		}
		if len(ips) != 2 {
			return fmt.Errorf("got %v, want 2 addresses", ips)
		}
		for _, ip := range ips {
			if !strings.HasPrefix(ip, "10.213.1.") && !strings.HasPrefix(ip, "10.213.2.") {
				return fmt.Errorf("address %s is in neither pool (10.213.1.0/24, 10.213.2.0/24)", ip)
			}
		}
		return nil
	})
	if ips[0] == ips[1] {
		t.Errorf("both containers have address %s, want one each", ips[0])
	}
	allocs, err := allocations(t, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("allocations after the container deploy: %v", allocs)
}

// allocations counts the allocations per host under /berth/alloc.
func allocations(t *testing.T, s *stack) (map[string]int, error) {
	out, code := s.berth(20*time.Second, "hosts", "ls", "--json")
	if code != 0 {
		return nil, fmt.Errorf("berth hosts ls: exit %d: %s", code, out)
	}
	var rows []struct {
		ID          string `json:"id"`
		Allocations int    `json:"allocations"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, fmt.Errorf("berth hosts ls --json: %w: %s", err, out)
	}
	m := map[string]int{}
	for _, r := range rows {
		m[r.ID] = r.Allocations
	}
	return m, nil
}

// agentKilled kills agent-2: its package instance must leave DNS (the agent's session
// expires with its ephemeral nodes), cmdb-sync must mark the host down, and its
// allocations, if it had any, must be placed on agent-1.
func agentKilled(t *testing.T, s *stack, service string) {
	before, err := resolveIPs(t, s, service)
	if err != nil {
		t.Fatal(err)
	}
	allocsBefore, err := allocations(t, s)
	if err != nil {
		t.Fatal(err)
	}
	ns := s.addr("name-service-1", 53, "udp")
	s.kill("agent-2")
	var left []string
	took := eventually(t, 30*time.Second, "agent-2's instance leaves DNS", func() error {
		_, got, err := queryA(t.Context(), "udp", ns, dnsName(service))
		if err != nil {
			return err
		}
		if len(got) != len(before)-1 {
			return fmt.Errorf("DNS answers %v (before the kill %v), want one address fewer", got, before)
		}
		left = got
		return nil
	})
	t.Logf("agent-2's instance left DNS %s after the kill (the agent's session TTL is 10s); DNS answers %v", took.Round(time.Millisecond), left)
	took = eventually(t, 60*time.Second, "cmdb-sync marks agent-2 down", func() error {
		hosts, err := hostsLs(t, s)
		if err != nil {
			return err
		}
		if hosts["agent-2"] != "down" {
			return fmt.Errorf("agent-2 liveness %q, want down", hosts["agent-2"])
		}
		return nil
	})
	t.Logf("agent-2 down %s after its instance left (grace period 10s)", took.Round(time.Millisecond))
	t.Run("allocations re-placed", func(t *testing.T) {
		if allocsBefore["agent-2"] == 0 {
			t.Skip("agent-2 held no allocations (the container deploy did not run), so there is nothing to place again")
		}
		eventually(t, 60*time.Second, "agent-2's allocations placed on agent-1", func() error {
			now, err := allocations(t, s)
			if err != nil {
				return err
			}
			if now["agent-2"] != 0 || now["agent-1"] != allocsBefore["agent-1"]+allocsBefore["agent-2"] {
				return fmt.Errorf("allocations %v (before the kill %v), want all on agent-1", now, allocsBefore)
			}
			return nil
		})
	})
}
