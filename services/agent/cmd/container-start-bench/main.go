// Command container-start-bench measures the agent's container start (scripts/bench/images.sh,
// part 3): a container-deploy deploy of an allocation, from the step's start until the app
// answers HTTP at the allocation's address from the host, against `docker run -d` of the
// same image with the same container settings (network and address, limits, hardening,
// init, restart policy, the same supervisor command) on the same engine, until the same
// endpoint answers. Rounds alternate between the two sides; each side's container is
// removed after its round, outside the timing. Goal: ≤ 1.1×.
//
// Everything runs here: a Docker registry (docker-registry) on loopback the image is pushed
// to (so the plugin runs it by digest, as in production), a base image made from scratch
// and the static busybox, a user-defined bridge network with its own subnet, the plugin
// with an instance manager (no coord: registration is not what is measured), and the
// docker CLI for the other side. The image is on the engine before the first round (it was
// just built), so neither side pulls; the plugin's first deploy of the image reads its
// berth.yaml through a reader container and is reported apart.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berthdev/berth/services/agent/internal/ctrdeploy"
	"github.com/berthdev/berth/services/agent/internal/docker"
	"github.com/berthdev/berth/services/agent/internal/instances"
	"github.com/berthdev/berth/services/agent/internal/plugin"
)

func main() {
	rounds := flag.Int("rounds", 10, "measured rounds on each side")
	busybox := flag.String("busybox", "/bin/busybox", "static busybox for the base image")
	registryBin := flag.String("registry", "/usr/bin/docker-registry", "docker-registry binary")
	goal := flag.Float64("goal", 1.1, "goal for the ratio of the medians")
	flag.Parse()
	if err := run(*rounds, *busybox, *registryBin, *goal); err != nil {
		fmt.Fprintln(os.Stderr, "container-start-bench:", err)
		os.Exit(1)
	}
}

const (
	port        = 8080
	descriptorY = `service: bench/web
port: 8080
scripts:
  start: bin/start
  stop: bin/stop
  health: bin/health
health:
  interval: 100ms
  timeout: 100ms
  rise: 1
  fall: 3
`
)

func run(rounds int, busybox, registryBin string, goal float64) error {
	if rounds < 1 {
		return errors.New("-rounds: want at least 1")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	eng, err := docker.New("")
	if err != nil {
		return err
	}
	defer eng.Close()
	if err := eng.Ping(ctx); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "container-start-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tag := strings.ToLower(rand.Text()[:8])

	regAddr, stopRegistry, err := startRegistry(registryBin, dir)
	if err != nil {
		return err
	}
	defer stopRegistry()

	base := "berth-bench/base:" + tag
	if err := buildBase(filepath.Join(dir, "base"), busybox, base); err != nil {
		return err
	}
	defer docker1("rmi", "-f", base)
	ref := regAddr + "/berth-bench/web:" + tag
	image, err := buildApp(filepath.Join(dir, "app"), base, ref)
	if err != nil {
		return err
	}
	defer docker1("rmi", "-f", ref, image)

	netName := "berth-bench-" + tag
	prefix, err := createNetwork(netName)
	if err != nil {
		return err
	}
	defer docker1("network", "rm", netName)

	inst, err := instances.New(instances.Config{Host: "bench", IP: "192.0.2.1", FlapChanges: -1})
	if err != nil {
		return err
	}
	ictx, icancel := context.WithCancel(ctx)
	idone := make(chan struct{})
	go func() { _ = inst.Run(ictx); close(idone) }()
	defer func() { icancel(); <-idone }()
	p, err := ctrdeploy.New(ctrdeploy.Config{Host: "bench", Engine: eng, Network: netName, Instances: inst, StopTimeout: time.Second})
	if err != nil {
		return err
	}

	var names []string
	defer func() {
		for _, n := range names {
			docker1("rm", "-f", n)
		}
	}()
	// deploy returns the time from the step's start until it returned (the health check
	// passed by docker exec, the instance registered) and then the endpoint answered from
	// the host. The endpoint is not polled while the step runs: a SYN to an address no
	// container has yet leaves a failed neighbour entry that delays the first real answer by
	// about a second.
	deploy := func(i int) (time.Duration, error) {
		alloc := fmt.Sprintf("b%s-%d", tag, i)
		names = append(names, ctrdeploy.ContainerName(alloc))
		ip := fmt.Sprintf("%s%d", prefix, 10+i)
		args := map[string]string{"service": "bench/web", "version": "1", "deployment": "bench", "allocation": alloc, "image": image,
			"ip": ip, "cpu_millis": "500", "memory_bytes": fmt.Sprint(64 << 20)}
		out := plugin.NewOutput(nil, 0)
		start := time.Now()
		err := p.Run(ctx, plugin.Request{Plugin: ctrdeploy.Name, Action: ctrdeploy.ActionDeploy, Arguments: args},
			plugin.Writers{Stdout: out.Stdout(), Stderr: out.Stderr()})
		out.Flush()
		if err != nil {
			return 0, fmt.Errorf("deploy %s: %w: %s", alloc, err, strings.Join(out.Tail(), " | "))
		}
		if err := waitHTTP(ctx, net.JoinHostPort(ip, fmt.Sprint(port)), 30*time.Second); err != nil {
			return 0, err
		}
		took := time.Since(start)
		out = plugin.NewOutput(nil, 0)
		if err := p.Run(ctx, plugin.Request{Plugin: ctrdeploy.Name, Action: ctrdeploy.ActionStop, Arguments: map[string]string{"service": "bench/web", "allocation": alloc}},
			plugin.Writers{Stdout: out.Stdout(), Stderr: out.Stderr()}); err != nil {
			return 0, fmt.Errorf("stop %s: %w", alloc, err)
		}
		return took, nil
	}
	// dockerRun returns the time from `docker run -d` until the endpoint answers; with
	// check set, the health script is first run with docker exec (through the engine API,
	// as the plugin does) until it passes, so that both sides do the same work.
	dockerRun := func(i int, check bool) (time.Duration, error) {
		name := fmt.Sprintf("berth-bench-run-%s-%d-%v", tag, i, check)
		names = append(names, name)
		ip := fmt.Sprintf("%s%d", prefix, 100+i)
		if check {
			ip = fmt.Sprintf("%s%d", prefix, 180+i)
		}
		args := []string{"run", "-d", "--name", name, "--network", netName, "--ip", ip, "--cpus", "0.5", "--memory", "64m",
			"--memory-swap", "64m", "--pids-limit", fmt.Sprint(docker.PidsLimit), "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
			"--ipc", "private", "--init", "--restart", "unless-stopped", "--stop-timeout", "1", "-w", "/app",
			"-e", "BERTH_PORT=8080", "-e", "BERTH_IP=" + ip, "-e", "BERTH_SERVICE=bench/web", "-e", "BERTH_VERSION=1",
			"--entrypoint", "/bin/sh", image, "-c", ctrdeploy.Supervisor, "berth-start", "bin/start", "bin/stop"}
		start := time.Now()
		if out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("docker run: %w: %s", err, out)
		}
		for wait := 25 * time.Millisecond; check; wait = min(2*wait, 100*time.Millisecond) {
			code, err := eng.Exec(ctx, name, docker.ExecSpec{Cmd: []string{"/app/bin/health"}, Env: []string{"BERTH_SCRIPT=health"}, WorkDir: "/app"})
			if err == nil && code == 0 {
				break
			}
			time.Sleep(wait)
		}
		if err := waitHTTP(ctx, net.JoinHostPort(ip, fmt.Sprint(port)), 30*time.Second); err != nil {
			return 0, err
		}
		took := time.Since(start)
		docker1("rm", "-f", name)
		return took, nil
	}

	first, err := deploy(0)
	if err != nil {
		return err
	}
	if _, err := dockerRun(0, false); err != nil { // the same warm-up for the other side
		return err
	}
	var plug, run, runCheck []time.Duration
	for i := 1; i <= rounds; i++ {
		d, err := deploy(i)
		if err != nil {
			return err
		}
		r, err := dockerRun(i, false)
		if err != nil {
			return err
		}
		rc, err := dockerRun(i, true)
		if err != nil {
			return err
		}
		plug, run, runCheck = append(plug, d), append(run, r), append(runCheck, rc)
		fmt.Printf("round %2d: container-deploy %6.1f ms   docker run -d %6.1f ms   docker run -d + health exec %6.1f ms\n", i, ms(d), ms(r), ms(rc))
	}
	mp, mr, mrc := median(plug), median(run), median(runCheck)
	fmt.Println()
	fmt.Printf("-- 3. container start, image on the engine, %d rounds, until http://<ip>:%d/ answers from the host\n", rounds, port)
	fmt.Printf("container-deploy deploy  median %6.1f ms  min %6.1f  max %6.1f  (health passed by docker exec, instance registered)\n",
		ms(mp), ms(slices.Min(plug)), ms(slices.Max(plug)))
	fmt.Printf("docker run -d            median %6.1f ms  min %6.1f  max %6.1f\n", ms(mr), ms(slices.Min(run)), ms(slices.Max(run)))
	fmt.Printf("docker run -d + the same health check by docker exec  median %6.1f ms  min %6.1f  max %6.1f\n",
		ms(mrc), ms(slices.Min(runCheck)), ms(slices.Max(runCheck)))
	ratio := float64(mp) / float64(mr)
	verdict := "met"
	if ratio > goal {
		verdict = "NOT met"
	}
	fmt.Printf("ratio %.2fx (goal <= %.1fx: %s); against docker run -d + health exec %.2fx\n", ratio, goal, verdict, float64(mp)/float64(mrc))
	fmt.Printf("first deploy of the image (berth.yaml read through a reader container): %.1f ms\n", ms(first))
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// waitHTTP polls http://addr/ every 2 ms until it answers 200. A connect gives up after
// 10 ms: before the container has its address, a SYN to it waits for an ARP answer that
// never comes.
func waitHTTP(ctx context.Context, addr string, within time.Duration) error {
	d := &net.Dialer{Timeout: 10 * time.Millisecond}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}, Timeout: time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(within)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("http://%s/ did not answer within %s: %v", addr, within, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// docker1 runs the docker CLI, ignoring the outcome (cleanup).
func docker1(args ...string) { _ = exec.Command("docker", args...).Run() }

func dockerOut(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", fmt.Errorf("docker %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// startRegistry runs docker-registry on a free loopback port.
func startRegistry(bin, dir string) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "registry"), addr)
	path := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "serve", path)
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s (apt-get install docker-registry): %w", bin, err)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	for deadline := time.Now().Add(15 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return addr, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("docker-registry at %s did not answer: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// buildBase builds scratch + the static busybox with the applets the app uses.
func buildBase(dir, busybox, tag string) error {
	root := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		return err
	}
	for _, a := range []string{"sh", "sleep", "httpd", "wget", "kill"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n"), 0o644); err != nil {
		return err
	}
	_, err = dockerOut("build", "-q", "-t", tag, dir)
	return err
}

// buildApp builds the app image, pushes it and returns its reference by digest.
func buildApp(dir, base, ref string) (string, error) {
	files := map[string]string{
		"berth.yaml":     descriptorY,
		"bin/start":      "#!/bin/sh\nexec httpd -p \"$BERTH_PORT\" -h /app/www\n",
		"bin/stop":       "#!/bin/sh\nexit 0\n",
		"bin/health":     "#!/bin/sh\nexec wget -q -O /dev/null \"http://127.0.0.1:$BERTH_PORT/\"\n",
		"www/index.html": "ok\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, "app", filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(name, "bin/") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+base+"\nCOPY app/ /app/\n"), 0o644); err != nil {
		return "", err
	}
	if _, err := dockerOut("build", "-q", "-t", ref, dir); err != nil {
		return "", err
	}
	if _, err := dockerOut("push", "-q", ref); err != nil {
		return "", err
	}
	out, err := dockerOut("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
	if err != nil {
		return "", err
	}
	var ds []string
	if err := json.Unmarshal([]byte(out), &ds); err != nil || len(ds) == 0 {
		return "", fmt.Errorf("no digest of %s after the push: %s", ref, out)
	}
	return ds[0], nil
}

// createNetwork creates a bridge network with a free /24 and returns "a.b.c." of it.
func createNetwork(name string) (string, error) {
	var last error
	for i := range 20 {
		prefix := fmt.Sprintf("10.%d.%d.", 150+i, int(time.Now().UnixNano()%250))
		if _, err := dockerOut("network", "create", "--driver", "bridge", "--subnet", prefix+"0/24", name); err != nil {
			last = err
			continue
		}
		return prefix, nil
	}
	return "", fmt.Errorf("create network %s: %w", name, last)
}
