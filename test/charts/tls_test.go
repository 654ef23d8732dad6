package charts

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// tlsSets turn TLS on for two agent hosts, with a NATS cluster and the ServiceMonitor.
var tlsSets = []string{"tls.enabled=true", "tls.nats.agentHosts={node-1,node-2}", "nats.replicas=3", "metrics.serviceMonitor.enabled=true"}

// tlsDir is where the chart mounts every pod's TLS files.
const tlsDir = "/etc/berth/tls"

// tlsWant is, per workload (by name suffix), the TLS Secret its "tls" volume projects and
// the NATS users whose seeds it gets (nil for coord and NATS, which log in to nothing).
var tlsWant = map[string]struct {
	secrets []string
	users   []string
}{
	"-coord":         {[]string{"rel-berth-coord-tls", "rel-berth-coord-peer-tls"}, nil},
	"-nats":          {[]string{"rel-berth-nats-tls"}, nil},
	"-controller":    {[]string{"rel-berth-controller-tls"}, []string{"controller"}},
	"-scheduler":     {[]string{"rel-berth-scheduler-tls"}, []string{"scheduler"}},
	"-cmdb-sync":     {[]string{"rel-berth-cmdb-sync-tls"}, []string{"cmdb-sync"}},
	"-image-builder": {[]string{"rel-berth-image-builder-tls"}, []string{"image-builder"}},
	"-name-service":  {[]string{"rel-berth-name-service-tls"}, []string{"name-service"}},
	"-agent":         {[]string{"rel-berth-agent-tls"}, []string{"agent-node-1", "agent-node-2"}},
}

// suffixOf is the tlsWant key of a workload.
func suffixOf(w obj) string {
	for s := range tlsWant {
		if strings.HasSuffix(w.name(), s) {
			return s
		}
	}
	return ""
}

// tlsVolume returns the pod's projected volume named "tls": the files it holds (paths
// under the mount) by Secret, and its Secrets in order.
func tlsVolume(t *testing.T, w obj) (files map[string][]string, secrets []string) {
	t.Helper()
	files = map[string][]string{}
	for _, v := range list(podSpec(w), "volumes") {
		if str(v, "name") != "tls" {
			continue
		}
		if get(v, "projected", "defaultMode") != 0o440 {
			t.Errorf("%s: tls volume defaultMode %v, want 0440", w.name(), get(v, "projected", "defaultMode"))
		}
		for _, src := range list(v, "projected", "sources") {
			name := str(src, "secret", "name")
			if name == "" {
				t.Errorf("%s: tls volume source %v is not a Secret", w.name(), src)
				continue
			}
			secrets = append(secrets, name)
			for _, it := range list(src, "secret", "items") {
				files[name] = append(files[name], str(it, "path"))
			}
		}
	}
	return files, secrets
}

// berthContainer is the workload's Berth container (image berth/berth-* or NATS's).
func berthContainer(w obj) any {
	for _, c := range list(podSpec(w), "containers") {
		if img := str(c, "image"); strings.HasPrefix(img, "berth/") {
			return c
		}
	}
	return nil
}

func argsOf(c any) []string {
	var out []string
	for _, a := range list(c, "args") {
		out = append(out, fmt.Sprint(a))
	}
	return out
}

// flagValue is the value of --name=value in args, "" when absent.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// TestTLS checks the tls.enabled render: every workload mounts a projected "tls" volume
// read-only at /etc/berth/tls with its own identity's Secret and only its own NATS seeds;
// every TLS flag a container is given names a file that volume holds; coord gets client,
// peer and HTTP TLS, every other Berth service HTTP, coord and NATS TLS and its NATS login;
// the probes and scrapes still work; and the Docker socket rule is unchanged.
func TestTLS(t *testing.T) {
	objs := render(t, tlsSets...)
	ws := workloads(objs)
	if len(ws) != 8 {
		t.Fatalf("got %d workloads, want 8", len(ws))
	}
	for _, w := range ws {
		suffix := suffixOf(w)
		want, ok := tlsWant[suffix]
		if !ok {
			t.Errorf("unexpected workload %s", w.name())
			continue
		}
		c := berthContainer(w)
		if c == nil {
			t.Errorf("%s: no Berth container", w.name())
			continue
		}
		mounted := false
		for _, m := range list(c, "volumeMounts") {
			if str(m, "name") == "tls" {
				mounted = str(m, "mountPath") == tlsDir && get(m, "readOnly") == true
			}
		}
		if !mounted {
			t.Errorf("%s: container %s does not mount the tls volume read-only at %s: %v", w.name(), str(c, "name"), tlsDir, list(c, "volumeMounts"))
		}
		files, secrets := tlsVolume(t, w)
		wantSecrets := slices.Clone(want.secrets)
		if want.users != nil {
			wantSecrets = append(wantSecrets, "rel-berth-nats-auth")
		}
		if !slices.Equal(secrets, wantSecrets) {
			t.Errorf("%s: tls volume Secrets %v, want %v", w.name(), secrets, wantSecrets)
		}
		var seeds []string
		for _, p := range files["rel-berth-nats-auth"] {
			seeds = append(seeds, strings.TrimSuffix(strings.TrimPrefix(p, "nats/"), ".nk"))
		}
		if !slices.Equal(seeds, want.users) {
			t.Errorf("%s: NATS seeds mounted %v, want exactly %v (no other service's)", w.name(), seeds, want.users)
		}
		var all []string
		for _, fs := range files {
			all = append(all, fs...)
		}
		for _, f := range all {
			if strings.Contains(f, "ca.key") {
				t.Errorf("%s: the CA key is mounted (%s)", w.name(), f)
			}
		}
		// Every file a flag names is in the volume.
		args := argsOf(c)
		for _, a := range args {
			_, v, ok := strings.Cut(a, "=")
			if !ok || !strings.HasPrefix(v, tlsDir+"/") {
				continue
			}
			p := strings.TrimPrefix(v, tlsDir+"/")
			if suffix == "-agent" {
				p = strings.ReplaceAll(p, "$(NODE_NAME)", "node-1")
			}
			if !slices.Contains(all, p) {
				t.Errorf("%s: %s names %s, which the tls volume does not hold (it holds %v)", w.name(), a, p, all)
			}
		}
		// Non-root pods read the 0440 files through their group.
		root := get(c, "securityContext", "runAsUser") == 0
		if fsg := get(podSpec(w), "securityContext", "fsGroup"); !root && fsg != 65532 {
			t.Errorf("%s: runs as %v with fsGroup %v; the 0440 TLS files need fsGroup 65532", w.name(), get(c, "securityContext", "runAsUser"), fsg)
		}

		switch suffix {
		case "-nats":
			continue
		case "-coord":
			for _, f := range []string{"client-cert-file", "client-key-file", "client-trusted-ca-file", "peer-cert-file", "peer-key-file", "peer-trusted-ca-file", "http-cert-file", "http-key-file", "http-trusted-ca-file"} {
				if flagValue(args, f) == "" {
					t.Errorf("coord args lack --%s: %v", f, args)
				}
			}
			if files["rel-berth-coord-peer-tls"] == nil || !slices.Contains(files["rel-berth-coord-peer-tls"], strings.TrimPrefix(flagValue(args, "peer-cert-file"), tlsDir+"/")) {
				t.Errorf("coord --peer-cert-file=%s is not the coord-peer Secret's certificate (%v)", flagValue(args, "peer-cert-file"), files)
			}
		default:
			user := want.users[0]
			if suffix == "-agent" {
				user = "agent-$(NODE_NAME)"
			}
			for _, f := range []string{"http-cert-file", "http-key-file", "http-trusted-ca-file", "coord-cert-file", "coord-key-file", "coord-trusted-ca-file", "nats-cert-file", "nats-key-file", "nats-trusted-ca-file"} {
				if flagValue(args, f) == "" {
					t.Errorf("%s args lack --%s: %v", w.name(), f, args)
				}
			}
			if got, wantSeed := flagValue(args, "nats-nkey-seed-file"), tlsDir+"/nats/"+user+".nk"; got != wantSeed {
				t.Errorf("%s --nats-nkey-seed-file: got %q, want %q", w.name(), got, wantSeed)
			}
			if got := flagValue(args, "nats-inbox-prefix"); got != "_INBOX_"+user {
				t.Errorf("%s --nats-inbox-prefix: got %q, want %q (the inbox berth certs nats-config allows the user)", w.name(), got, "_INBOX_"+user)
			}
		}
		// mTLS on HTTP: the kubelet cannot present a client certificate, so the probes
		// connect only.
		for _, p := range []string{"livenessProbe", "readinessProbe"} {
			if get(c, p, "tcpSocket", "port") == nil || get(c, p, "httpGet") != nil {
				t.Errorf("%s %s: got %v, want a tcpSocket probe (HTTP requires client certificates)", w.name(), p, get(c, p))
			}
		}
		if ann := get(w, "spec", "template", "metadata", "annotations"); str(ann, "prometheus.io/scheme") != "https" {
			t.Errorf("%s: prometheus.io/scheme %q, want https", w.name(), str(ann, "prometheus.io/scheme"))
		}
	}

	nats := find(t, objs, "StatefulSet", "-nats")
	nc := berthContainer(nats)
	for _, p := range []string{"livenessProbe", "readinessProbe"} {
		if str(nc, p, "httpGet", "scheme") != "HTTPS" {
			t.Errorf("nats %s: got %v, want an HTTPS GET of the monitoring port", p, get(nc, p))
		}
	}
	conf := str(find(t, objs, "ConfigMap", "-nats"), "data", "nats.conf")
	for _, want := range []string{`include "nats-server.conf"`, "https_port:", "tls {", "verify: true", `listen: "0.0.0.0:4222"`} {
		if !strings.Contains(conf, want) {
			t.Errorf("nats.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, "http_port:") {
		t.Errorf("nats.conf has a plaintext http_port with TLS on:\n%s", conf)
	}
	var natsConfFrom string
	for _, v := range list(podSpec(nats), "volumes") {
		if str(v, "name") != "config" {
			continue
		}
		for _, src := range list(v, "projected", "sources") {
			for _, it := range list(src, "secret", "items") {
				if str(it, "path") == "nats-server.conf" {
					natsConfFrom = str(src, "secret", "name")
				}
			}
		}
	}
	if natsConfFrom != "rel-berth-nats-auth" {
		t.Errorf("nats config volume: nats-server.conf from Secret %q, want rel-berth-nats-auth beside nats.conf", natsConfFrom)
	}
	files, _ := tlsVolume(t, nats)
	// berth certs nats-config --path /etc/berth/tls names these files.
	if got := files["rel-berth-nats-tls"]; !slices.Equal(got, []string{"nats.crt", "nats.key", "ca.crt"}) {
		t.Errorf("nats tls volume: got %v, want nats.crt, nats.key, ca.crt", got)
	}

	if got := dockerSocketUsers(objs); !slices.Equal(got, []string{"DaemonSet/rel-berth-agent"}) {
		t.Errorf("with TLS: docker.sock hostPath in %v, want the agent's only", got)
	}

	sm := find(t, objs, "ServiceMonitor", "rel-berth")
	ep := list(sm, "spec", "endpoints")[0]
	if str(ep, "scheme") != "https" || str(ep, "tlsConfig", "keySecret", "name") != "rel-berth-scrape-tls" || str(ep, "tlsConfig", "cert", "secret", "name") != "rel-berth-scrape-tls" || str(ep, "tlsConfig", "serverName") != "localhost" {
		t.Errorf("ServiceMonitor endpoint with TLS: got %v, want https with the rel-berth-scrape-tls client certificate and serverName localhost", ep)
	}
}

// TestTLSWithoutHTTPClientAuth checks tls.httpClientAuth=false: HTTPS without client
// certificates on the HTTP endpoints, so the probes are HTTPS GETs of /healthz and /readyz
// again, while coord and NATS keep requiring certificates.
func TestTLSWithoutHTTPClientAuth(t *testing.T) {
	objs := render(t, append(slices.Clone(tlsSets), "tls.httpClientAuth=false")...)
	for _, w := range workloads(objs) {
		if strings.HasSuffix(w.name(), "-nats") {
			continue
		}
		c := berthContainer(w)
		args := argsOf(c)
		if v := flagValue(args, "http-trusted-ca-file"); v != "" {
			t.Errorf("%s: --http-trusted-ca-file=%s with httpClientAuth=false", w.name(), v)
		}
		if flagValue(args, "http-cert-file") == "" {
			t.Errorf("%s: no --http-cert-file: HTTP must still be TLS", w.name())
		}
		ca := "coord-trusted-ca-file"
		if strings.HasSuffix(w.name(), "-coord") {
			ca = "client-trusted-ca-file"
		}
		if flagValue(args, ca) == "" {
			t.Errorf("%s: no --%s: coord links keep mutual TLS", w.name(), ca)
		}
		for p, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
			if str(c, p, "httpGet", "scheme") != "HTTPS" || str(c, p, "httpGet", "path") != path {
				t.Errorf("%s %s: got %v, want an HTTPS GET of %s", w.name(), p, get(c, p), path)
			}
		}
	}
}

// TestTLSOff checks that TLS is opt-in: the default render has no TLS volume or flag.
func TestTLSOff(t *testing.T) {
	for _, w := range workloads(render(t)) {
		for _, v := range list(podSpec(w), "volumes") {
			if str(v, "name") == "tls" {
				t.Errorf("default render: %s has a tls volume", w.name())
			}
		}
		for _, a := range argsOf(berthContainer(w)) {
			if strings.Contains(a, "-cert-file") || strings.Contains(a, "nkey") {
				t.Errorf("default render: %s has TLS flag %s", w.name(), a)
			}
		}
	}
}

// TestTLSValues checks the values the TLS render refuses, and the Secret names it takes.
func TestTLSValues(t *testing.T) {
	for _, tc := range []struct {
		sets []string
		want string
	}{
		{[]string{"tls.enabled=true"}, "tls.nats.agentHosts: required"},
		{[]string{"tls.enabled=true", "tls.nats.agentHosts={a.b}"}, "is not a host id"},
		{[]string{"tls.enabled=true", "tls.nats.agentHosts={progress}"}, "is not a host id"},
		{[]string{"tls.enabled=true", "tls.nats.agentHosts={h1,h1}"}, "listed twice"},
	} {
		args := []string{"template", "rel", chartDir}
		for _, s := range tc.sets {
			args = append(args, "--set", s)
		}
		if _, err := helm(t, args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("with %v: got error %v, want one containing %q", tc.sets, err, tc.want)
		}
	}
	// Without agents no agent host is needed.
	render(t, "tls.enabled=true", "agent.enabled=false")

	objs := render(t, "tls.enabled=true", "tls.nats.agentHosts={n1}", "tls.secrets.controller=ctl-from-cert-manager", "tls.nats.authSecret=my-nats")
	_, secrets := tlsVolume(t, find(t, objs, "Deployment", "-controller"))
	if !slices.Equal(secrets, []string{"ctl-from-cert-manager", "my-nats"}) {
		t.Errorf("controller tls volume with tls.secrets.controller and tls.nats.authSecret set: got %v", secrets)
	}

	args := []string{"lint", "--strict", chartDir}
	for _, s := range tlsSets {
		args = append(args, "--set", s)
	}
	if out, err := helm(t, args...); err != nil {
		t.Errorf("helm lint --strict with TLS: %v\n%s", err, out)
	}
}
