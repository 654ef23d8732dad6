package cli

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseBytes(t *testing.T) {
	cases := []struct {
		in   string
		want uint64
		err  bool
	}{
		{"64Mi", 64 << 20, false},
		{"1Gi", 1 << 30, false},
		{"512Ki", 512 << 10, false},
		{"1.5Gi", 3 << 29, false},
		{"67108864", 67108864, false},
		{"64MiB", 64 << 20, false},
		{"64M", 0, true},
		{"1G", 0, true},
		{"1.5", 0, true},
		{"", 0, true},
		{"Mi", 0, true},
		{"-1Mi", 0, true},
		{"lots", 0, true},
	}
	for _, tc := range cases {
		got, err := parseBytes(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseBytes(%q): got %d, %v; want %d, error %t", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestDeployBodyContainer(t *testing.T) {
	const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	base := []string{"--version", "1.0", "--package", "https://pkgs/web.tar.gz", "--sha256", sum}
	cases := []struct {
		name string
		args []string
		want string // the placement as printed, or the error's text
		err  bool
	}{
		{"container", append([]string{"--mode", "container", "--replicas", "3", "--cpu", "0.1", "--memory", "64Mi", "--spread", "rack",
			"--constraints", "dc=bj", "--max-per-host", "2"}, base...),
			"map[constraints:dc=bj cpu_millis:100 max_per_host:2 memory_bytes:67108864 replicas:3 spread:rack]", false},
		{"plain bytes", append([]string{"--mode", "container", "--replicas", "1", "--cpu", "2", "--memory", "6291456"}, base...),
			"map[cpu_millis:2000 memory_bytes:6291456 replicas:1]", false},
		{"no replicas", append([]string{"--mode", "container", "--cpu", "0.1", "--memory", "64Mi"}, base...), "--replicas", true},
		{"no memory", append([]string{"--mode", "container", "--replicas", "1", "--cpu", "0.1"}, base...), "--memory", true},
		{"zero replicas", append([]string{"--mode", "container", "--replicas", "0", "--cpu", "0.1", "--memory", "64Mi"}, base...), "--replicas 0", true},
		{"cpu zero", append([]string{"--mode", "container", "--replicas", "1", "--cpu", "0", "--memory", "64Mi"}, base...), "--cpu", true},
		{"cpu tiny", append([]string{"--mode", "container", "--replicas", "1", "--cpu", "0.0001", "--memory", "64Mi"}, base...), "thousandth", true},
		{"memory small", append([]string{"--mode", "container", "--replicas", "1", "--cpu", "0.1", "--memory", "4Mi"}, base...), "at least 6Mi", true},
		{"memory unit", append([]string{"--mode", "container", "--replicas", "1", "--cpu", "0.1", "--memory", "64MB"}, base...), "Ki, Mi, Gi", true},
		{"spread", append([]string{"--mode", "container", "--replicas", "1", "--cpu", "0.1", "--memory", "64Mi", "--spread", "zone"}, base...), "--spread", true},
		{"hosts", append([]string{"--mode", "container", "--replicas", "1", "--cpu", "0.1", "--memory", "64Mi", "--hosts", "h1"}, base...), "--hosts", true},
		{"mode", append([]string{"--mode", "vm"}, base...), "--mode", true},
		{"placement without container", append([]string{"--replicas", "2", "--cpu", "1"}, base...), "--replicas, --cpu: only with --mode container", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := newDeployCmd()
			if err := cmd.ParseFlags(tc.args); err != nil {
				t.Fatal(err)
			}
			var o deployOptions
			f := cmd.Flags()
			o.version, _ = f.GetString("version")
			o.pkg, _ = f.GetString("package")
			o.sha256, _ = f.GetString("sha256")
			o.hosts, _ = f.GetString("hosts")
			o.container.mode, _ = f.GetString("mode")
			o.container.replicas, _ = f.GetUint32("replicas")
			o.container.cpu, _ = f.GetFloat64("cpu")
			o.container.memory, _ = f.GetString("memory")
			o.container.spread, _ = f.GetString("spread")
			o.container.constraints, _ = f.GetString("constraints")
			o.container.maxPerHost, _ = f.GetUint32("max-per-host")
			body, err := deployBody(f, o, []string{"acc/web"})
			if tc.err {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v (body %v), want an error naming %s", err, body, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(body["placement"]); got != tc.want || body["mode"] != "container" {
				t.Errorf("placement: got %s, mode %v; want %s, container", got, body["mode"], tc.want)
			}
		})
	}
}
