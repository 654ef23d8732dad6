package dev

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/berthdev/berth/cmd/berth/internal/dev/dockernet"
)

// TestContainerMode runs berth dev with container mode on a network of its own, deploys a
// package as 2 containers through the controller, and checks what the issue asks of
// berth dev: the image was built (and recorded), the containers run with addresses of the
// local host's pool, and they answer HTTP and DNS. A second deploy of the same version
// builds nothing.
func TestContainerMode(t *testing.T) {
	if err := dialDocker(t.Context(), defaultDockerHost); err != nil {
		t.Skipf("no Docker engine at %s: %v", defaultDockerHost, err)
	}
	for _, f := range []string{registryBinary, "/bin/busybox"} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("container mode needs %s (apt-get install docker-registry busybox-static): %v", f, err)
		}
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(100))
	network := "berth-devtest-" + strings.ToLower(rand.Text()[:8])
	subnet := fmt.Sprintf("172.30.%d.0/24", 128+n.Int64())
	dir := t.TempDir()
	cfg := Config{
		DataDir: dir, LogLevel: "warn", Host: "127.0.0.1",
		CoordPort: freePortPair(t), NATSPort: testFreePort(t, false), ControllerPort: testFreePort(t, false),
		NamesPort: testFreePort(t, false), DNSPort: testFreePort(t, true), AdminPort: testFreePort(t, false),
		ArtifactsPort: testFreePort(t, false), FTPPort: testFreePort(t, false), ResolverPort: -1, AgentAPIPort: -1,
		ContainerNetwork: network, ContainerSubnet: subnet,
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = dockernet.RemoveOrphans(ctx, defaultDockerHost, network, hostname(t), nil)
		if out, err := exec.CommandContext(ctx, "docker", "network", "rm", network).CombinedOutput(); err != nil {
			t.Logf("remove network %s: %v: %s", network, err, out)
		}
		if ids, err := exec.CommandContext(ctx, "docker", "images", "-q", "--filter", "label=dev.berth.service=devtest/web").Output(); err == nil && len(strings.Fields(string(ids))) > 0 {
			_ = exec.CommandContext(ctx, "docker", append([]string{"rmi", "-f"}, strings.Fields(string(ids))...)...).Run()
		}
	})
	out, stop := runDev(t, cfg)
	waitOutput(t, out, regexp.MustCompile(`Press Ctrl-C to stop`), 2*time.Minute)
	if !strings.Contains(out.String(), "containers     on: network "+network) {
		t.Fatalf("container mode is not on:\n%s", out)
	}
	ctrl := controllerEP.FindStringSubmatch(out.String())[1]
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	do := func(method, path string, body any, want int) []byte {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(t.Context(), method, ctrl+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: got %d %s, want %d", method, path, resp.StatusCode, rb, want)
		}
		return rb
	}
	const svc = "devtest/web"
	do("PATCH", "/v1/tree/"+svc, map[string]any{}, 201)
	pkg, sum := webPackage(t, dir, svc, "1.0")
	deploy := func() string {
		t.Helper()
		var d struct {
			ID string `json:"id"`
		}
		b := do("POST", "/v1/deployments", map[string]any{"service": svc, "version": "1.0", "mode": "container",
			"placement": map[string]any{"replicas": 2, "cpu_millis": 100, "memory_bytes": 64 << 20},
			"artifact":  map[string]string{"url": "file://" + pkg, "sha256": sum}}, 201)
		if err := json.Unmarshal(b, &d); err != nil || d.ID == "" {
			t.Fatalf("deployment: %v: %s", err, b)
		}
		deadline := time.Now().Add(3 * time.Minute)
		for {
			dep := getDeployment(t, hc, ctrl, d.ID)
			switch st := dep.GetStatus().GetState(); st {
			case "succeeded":
				if !dep.GetStatus().GetDraining() {
					if dep.GetImage().GetDigest() == "" || len(dep.GetAllocations()) != 2 {
						t.Fatalf("deployment %s: image %v, %d allocations; want a digest and 2", d.ID, dep.GetImage(), len(dep.GetAllocations()))
					}
					return dep.GetImage().GetDigest()
				}
			case "failed", "aborted", "rolled_back":
				t.Fatalf("deployment %s ended %s: %s (%v)", d.ID, st, dep.GetStatus().GetMessage(), dep.GetTargets())
			}
			if time.Now().After(deadline) {
				t.Fatalf("deployment %s still %s", d.ID, dep.GetStatus().GetState())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	digest := deploy()
	// The images of this service (other tests may tag images meanwhile).
	images := func() string {
		b, _ := exec.Command("docker", "images", "-q", "--no-trunc", "--filter", "label=dev.berth.service="+svc).Output()
		return string(b)
	}
	before := images()

	// The containers run on the network with addresses of the pool, and answer.
	ids, err := exec.Command("docker", "ps", "-q", "--filter", "label=dev.berth.service="+svc, "--filter", "network="+network).Output()
	if err != nil || len(strings.Fields(string(ids))) != 2 {
		t.Fatalf("running containers of %s: %q (%v), want 2", svc, ids, err)
	}
	prefix := strings.TrimSuffix(subnet, "0/24")
	var resolved struct {
		Instances []struct {
			IP   string `json:"ip"`
			Port int    `json:"port"`
		} `json:"instances"`
	}
	namesURL := fmt.Sprintf("http://127.0.0.1:%d/v1/resolve/%s", cfg.NamesPort, svc)
	deadline := time.Now().Add(15 * time.Second)
	for {
		_ = json.Unmarshal([]byte(httpGet(t, hc, namesURL)), &resolved)
		if len(resolved.Instances) == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(resolved.Instances) != 2 {
		t.Fatalf("resolve %s: got %+v, want 2 instances", svc, resolved.Instances)
	}
	for _, in := range resolved.Instances {
		if !strings.HasPrefix(in.IP, prefix) {
			t.Errorf("instance at %s, want an address of %s", in.IP, subnet)
		}
		if body := httpGet(t, hc, fmt.Sprintf("http://%s:%d/", in.IP, in.Port)); body != "1.0" {
			t.Errorf("GET http://%s:%d/: got %q, want 1.0", in.IP, in.Port, body)
		}
	}
	ips, err := queryA(fmt.Sprintf("127.0.0.1:%d", cfg.DNSPort), "web.devtest.ns.berth.internal")
	if err != nil || len(ips) != 2 {
		t.Errorf("DNS A web.devtest.ns.berth.internal: got %v (%v), want the 2 containers", ips, err)
	}

	// The same version again: the image is found, nothing is built.
	if again := deploy(); again != digest {
		t.Errorf("second deploy: image %s, want the first one's %s", again, digest)
	}
	if after := images(); after != before || strings.TrimSpace(before) == "" {
		t.Errorf("images of %s: %q before the second deploy, %q after; want the same one", svc, before, after)
	}
	if err := stop(); err != nil {
		t.Fatalf("berth dev stopped with %v", err)
	}
}

func hostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// webPackage writes a package of service at version into dir: busybox httpd serving the
// version on the container's port 8080, its health a GET through nc (the static busybox's
// wget crashes resolving names).
func webPackage(t *testing.T, dir, service, version string) (path, sum string) {
	t.Helper()
	files := map[string]string{
		"berth.yaml": "service: " + service + "\nport: 8080\nscripts:\n  start: bin/start\n  stop: bin/stop\n  health: bin/health\n" +
			"health:\n  interval: 1s\n  timeout: 1s\n  rise: 1\n  fall: 2\n",
		"bin/start":      "#!/bin/sh\nexec httpd -f -p 8080 -h /app/www\n",
		"bin/stop":       "#!/bin/sh\nexit 0\n",
		"bin/health":     "#!/bin/sh\nprintf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 127.0.0.1 8080 | head -1 | grep -q ' 200 '\n",
		"www/index.html": version,
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, n := range names {
		mode := int64(0o644)
		if strings.HasPrefix(n, "bin/") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(files[n])), Typeflag: tar.TypeReg, ModTime: time.Unix(1, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[n])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, strings.ReplaceAll(service, "/", "-")+"-"+version+".tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(buf.Bytes())
	return path, hex.EncodeToString(s[:])
}
