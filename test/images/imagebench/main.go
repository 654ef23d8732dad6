// Command imagebench measures berth-image-builder on this machine (scripts/bench/images.sh):
//
//  1. the cache-hit decision: requests over NATS request/reply for a version whose image
//     exists, one at a time, p50 and p99 (goal ≤ 20 ms);
//  2. a cold build: a new version of a package that nothing has built before (fetch,
//     unpack, build, push, record), beside `docker build` plus `docker push` of the same
//     context — the Dockerfile the builder writes and the unpacked package — on the same
//     engine and registry (goal ≤ 1.1×). Rounds alternate between the two sides, and each
//     round's package differs (a nonce file), so neither side reuses the other's layers.
//
// Everything runs here: a Docker registry (docker-registry) on loopback, one berth-coord
// member and a NATS server in process, the machine's Docker engine. Images are labelled
// dev.berth.bench=<run> and removed at the end.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	"github.com/berthdev/berth/proto/subjects"
	coordsrv "github.com/berthdev/berth/services/coord"
	imagebuilder "github.com/berthdev/berth/services/image-builder"
)

func main() {
	hits := flag.Int("hits", 1000, "cache-hit requests")
	rounds := flag.Int("rounds", 5, "cold builds on each side")
	files := flag.Int("files", 200, "files in the package")
	size := flag.Int("size", 8<<20, "bytes in the package, spread over the files")
	registryBin := flag.String("registry", "/usr/bin/docker-registry", "docker-registry binary")
	confirmTTL := flag.Duration("confirm-ttl", imagebuilder.DefaultConfig().ConfirmTTL, "the builder's confirm_ttl (0: the registry is asked on every hit)")
	flag.Parse()
	if err := run(*hits, *rounds, *files, *size, *registryBin, *confirmTTL); err != nil {
		fmt.Fprintln(os.Stderr, "imagebench:", err)
		os.Exit(1)
	}
}

func run(hits, rounds, files, size int, registryBin string, confirmTTL time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "imagebench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tag := strings.ToLower(rand.Text()[:10])
	label := "dev.berth.bench=" + tag
	defer removeImages(label)

	regAddr, stopRegistry, err := startRegistry(registryBin, dir)
	if err != nil {
		return err
	}
	defer stopRegistry()

	// coord, one member.
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	csrv, err := coordsrv.New(coordsrv.Config{Name: "b", DataDir: filepath.Join(dir, "coord"), ClientListener: cl, PeerListener: pl,
		InitialCluster: "b=" + pl.Addr().String(), HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
		RequestTimeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	cctx, ccancel := context.WithCancel(ctx)
	cdone := make(chan error, 1)
	go func() { cdone <- csrv.Run(cctx) }()
	defer func() { ccancel(); <-cdone }()
	coord, err := coordclient.New(ctx, coordclient.Config{Endpoints: []string{cl.Addr().String()}, RequestTimeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer coord.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := coord.Put(ctx, "/probe", nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("coord has no leader: %w", err)
		}
	}

	// NATS with JetStream.
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(dir, "nats"), NoLog: true, NoSigs: true})
	if err != nil {
		return err
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("nats did not start")
	}
	bus, err := natsbus.Connect(ctx, natsbus.Config{URLs: []string{ns.ClientURL()}, Name: "bench-builder"})
	if err != nil {
		return err
	}
	defer bus.Close(context.Background())
	client, err := natsbus.Connect(ctx, natsbus.Config{URLs: []string{ns.ClientURL()}, Name: "bench-client"})
	if err != nil {
		return err
	}
	defer client.Close(context.Background())
	if err := bus.EnsureStreams(ctx, natsbus.StreamConfig{}); err != nil {
		return err
	}

	fmt.Printf("== berth-image-builder, %d CPUs, docker engine %s, %s\n", numCPU(), engineVersion(), time.Now().UTC().Format("2006-01-02T15:04Z"))
	base, err := imagebuilder.MakeBaseImage(ctx, imagebuilder.BaseOptions{Name: "berth-bench/base:" + tag, Registry: regAddr,
		Labels: map[string]string{"dev.berth.bench": tag}})
	if err != nil {
		return fmt.Errorf("base image: %w", err)
	}
	cfg := imagebuilder.DefaultConfig()
	cfg.Name, cfg.ListenMetrics, cfg.Registry, cfg.WorkDir = "bench", "", regAddr, filepath.Join(dir, "work")
	cfg.DefaultBaseImage, cfg.ImageLabels = base.Reference, []string{"dev.berth.bench=" + tag}
	cfg.ConfirmTTL = confirmTTL
	reg := prometheus.NewRegistry()
	b, err := imagebuilder.New(cfg, imagebuilder.Deps{Bus: bus, Coord: coord, Registerer: reg})
	if err != nil {
		return err
	}
	bctx, bcancel := context.WithCancel(ctx)
	bdone := make(chan error, 1)
	go func() { bdone <- b.Run(bctx) }()
	defer func() {
		bcancel()
		if err := <-bdone; err != nil {
			fmt.Fprintln(os.Stderr, "builder:", err)
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); !b.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return errors.New("builder not ready")
		}
	}

	svc := "bench/app" + tag
	request := func(version, url, sum string) (*imagev1.BuildReply, time.Duration, error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		reply := &imagev1.BuildReply{}
		start := time.Now()
		err := client.Request(rctx, subjects.RPCBuild, &imagev1.BuildRequest{Service: svc, Version: version, PackageUrl: url, PackageSha256: sum}, reply)
		return reply, time.Since(start), err
	}

	// 1. Cache hits.
	pkg, err := writePackage(dir, svc, files, size, "hit")
	if err != nil {
		return err
	}
	if _, _, err := request("hit", pkg.url, pkg.sum); err != nil {
		return fmt.Errorf("first build: %w", err)
	}
	var lat []time.Duration
	for i := range hits {
		reply, d, err := request("hit", pkg.url, pkg.sum)
		if err != nil {
			return fmt.Errorf("hit %d: %w", i, err)
		}
		if !reply.GetCached() {
			return fmt.Errorf("hit %d was not cached", i)
		}
		lat = append(lat, d)
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	how := "coord record, registry HEAD at most every " + confirmTTL.String()
	if confirmTTL == 0 {
		how = "coord record + registry HEAD every time"
	}
	fmt.Printf("-- 1. cache-hit decision over NATS request/reply (%s), %d requests\n", how, hits)
	fmt.Printf("  p50 %s  p99 %s  max %s  (goal p99 <= 20ms)\n", ms(p50), ms(p99), ms(lat[len(lat)-1]))

	// 2. Cold builds, alternating sides.
	if rounds < 1 {
		return nil
	}
	fmt.Printf("-- 2. cold build of a package of %d files, %d KiB: berth-image-builder (fetch, unpack, build, push, record) vs docker build + docker push\n",
		files, size>>10)
	var berth, docker, dockerBuild []time.Duration
	for i := range rounds {
		pb, err := writePackage(dir, svc, files, size, fmt.Sprintf("berth-%d", i))
		if err != nil {
			return err
		}
		reply, d, err := request(fmt.Sprintf("cold-%d", i), pb.url, pb.sum)
		if err != nil {
			return fmt.Errorf("cold build %d: %w", i, err)
		}
		if reply.GetCached() {
			return fmt.Errorf("cold build %d was cached", i)
		}
		berth = append(berth, d)

		pd, err := writePackage(dir, svc, files, size, fmt.Sprintf("docker-%d", i))
		if err != nil {
			return err
		}
		ref := fmt.Sprintf("%s/bench/docker%s:cold-%d", regAddr, tag, i)
		labels := map[string]string{"dev.berth.service": svc, "dev.berth.version": fmt.Sprintf("cold-%d", i),
			"dev.berth.package-sha256": pd.sum, "dev.berth.base": base.Reference, "dev.berth.bench": tag}
		bd, total, err := dockerSide(dir, pd, base.Reference, labels, ref)
		if err != nil {
			return fmt.Errorf("docker side %d: %w", i, err)
		}
		dockerBuild = append(dockerBuild, bd)
		docker = append(docker, total)
		fmt.Printf("  round %d: berth %s  docker build+push %s (build %s)\n", i+1, ms(d), ms(total), ms(bd))
	}
	mb, md, mdb := median(berth), median(docker), median(dockerBuild)
	fmt.Printf("  median: berth %s  docker build+push %s  docker build alone %s\n", ms(mb), ms(md), ms(mdb))
	fmt.Printf("  ratio berth / (docker build + push): %.2fx  (goal <= 1.10x)\n", float64(mb)/float64(md))
	if phases := phaseMeans(reg); phases != "" {
		fmt.Printf("  berth phases, mean of %d builds: %s\n", rounds+1, phases)
	}
	fmt.Println()
	fmt.Println("== summary")
	fmt.Printf("%-60s p50 %s  p99 %s\n", "cache-hit decision over NATS", ms(p50), ms(p99))
	fmt.Printf("%-60s %.2fx\n", "cold build, berth-image-builder / docker build+push", float64(mb)/float64(md))
	return nil
}

// pkgInfo is a package written for the bench.
type pkgInfo struct {
	url, sum string
	// files are the package's files, for the docker side's context.
	files map[string][]byte
}

// writePackage writes a .tar.gz with a berth.yaml, scripts and n files of about size/n
// bytes each (half random, half text, as a real application's files would compress),
// plus a nonce file so that every package differs.
func writePackage(dir, svc string, n, size int, nonce string) (*pkgInfo, error) {
	files := map[string][]byte{
		"berth.yaml":   []byte("service: " + svc + "\nport: 8080\nscripts:\n  start: bin/start.sh\n  stop: bin/stop.sh\n"),
		"bin/start.sh": []byte("#!/bin/sh\nexec sleep 3600\n"),
		"bin/stop.sh":  []byte("#!/bin/sh\n"),
		"NONCE":        []byte(nonce + rand.Text()),
	}
	per := size / max(n, 1)
	for i := range n {
		b := make([]byte, per)
		_, _ = rand.Read(b[:per/2])
		for j := per / 2; j < per; j++ {
			b[j] = "abcdefghij klmnop\n"[mrand.IntN(18)]
		}
		files[fmt.Sprintf("lib/m%02d/f%04d.dat", i%16, i)] = b
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		mode := int64(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(files[name])), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(files[name]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(buf.Bytes())
	path := filepath.Join(dir, "pkg-"+nonce+".tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	return &pkgInfo{url: "file://" + path, sum: hex.EncodeToString(sum[:]), files: files}, nil
}

// dockerSide writes the same context the builder makes (its Dockerfile and the unpacked
// package under app/) and times `docker build` and `docker push` of it.
func dockerSide(dir string, p *pkgInfo, base string, labels map[string]string, ref string) (build, total time.Duration, err error) {
	ctxDir, err := os.MkdirTemp(dir, "docker-ctx-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(ctxDir)
	for name, data := range p.files {
		path := filepath.Join(ctxDir, "app", name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return 0, 0, err
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(path, data, mode); err != nil {
			return 0, 0, err
		}
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var df strings.Builder
	fmt.Fprintf(&df, "FROM %s\nCOPY app/ /app/\nLABEL", base)
	for _, k := range keys {
		fmt.Fprintf(&df, " %s=%q", k, labels[k])
	}
	df.WriteString("\n")
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(df.String()), 0o644); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if out, err := exec.Command("docker", "build", "-q", "-t", ref, ctxDir).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("docker build: %w: %s", err, out)
	}
	build = time.Since(start)
	if out, err := exec.Command("docker", "push", "-q", ref).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("docker push: %w: %s", err, out)
	}
	return build, time.Since(start), nil
}

// startRegistry runs docker-registry on a free loopback port.
func startRegistry(bin, dir string) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(dir, "registry.yml")
	data := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "registry"), addr)
	if err := os.WriteFile(cfg, []byte(data), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "serve", cfg)
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s (apt-get install docker-registry): %w", bin, err)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return addr, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("registry at %s did not start: %w", addr, err)
		}
	}
}

// removeImages removes the images carrying label.
func removeImages(label string) {
	out, err := exec.Command("docker", "images", "-q", "--filter", "label="+label).Output()
	if err != nil {
		return
	}
	for id := range strings.FieldsSeq(string(out)) {
		_ = exec.Command("docker", "rmi", "-f", id).Run()
	}
}

func engineVersion() string {
	out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

func numCPU() int {
	out, err := exec.Command("nproc").Output()
	if err != nil {
		return 0
	}
	var n int
	fmt.Sscan(strings.TrimSpace(string(out)), &n)
	return n
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// phaseMeans is the mean time of each build phase the builder measured.
func phaseMeans(reg *prometheus.Registry) string {
	mfs, err := reg.Gather()
	if err != nil {
		return ""
	}
	var parts []string
	for _, mf := range mfs {
		if mf.GetName() != "berth_image_builder_build_phase_duration_seconds" {
			continue
		}
		for _, phase := range []string{"fetch", "unpack", "base", "build", "push", "record", "total"} {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == phase && m.GetHistogram().GetSampleCount() > 0 {
					h := m.GetHistogram()
					mean := time.Duration(h.GetSampleSum() / float64(h.GetSampleCount()) * float64(time.Second))
					parts = append(parts, phase+" "+ms(mean))
				}
			}
		}
	}
	return strings.Join(parts, ", ")
}
