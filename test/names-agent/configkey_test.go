package namesagent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTemplateFollowsConfigKey(t *testing.T) {
	e := startEnv(t)
	e.tree("app/cfg", time.Second)
	e.tree("app/web", time.Second)
	if _, err := e.coord.Put(t.Context(), "/berth/config/app/cfg/flags", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	cfg := e.agentCfg("h-key")
	web := freePort(t)
	static(t, cfg, "web", fmt.Sprintf("service: app/web\nport: %d\n", web), nil)
	base := static(t, cfg, "cfg", fmt.Sprintf(`service: app/cfg
port: %d
templates:
  - source: t.tmpl
    destination: out/t.conf
    keys: [app/cfg/flags]
    services: [app/web]
`, freePort(t)), map[string]string{"t.tmpl": "flags={{ key \"app/cfg/flags\" }} n={{ len (service \"app/web\") }}\n"})
	out := filepath.Join(base, "out", "t.conf")
	e.startAgent(cfg)
	read := func() string { b, _ := os.ReadFile(out); return strings.TrimSpace(string(b)) }
	eventually(t, 10*time.Second, "first render", func() bool { return read() == "flags=v1 n=1" })
	// A change of the key (seen through the one shared watch on /berth/config/) renders
	// again.
	if _, err := e.coord.Put(t.Context(), "/berth/config/app/cfg/flags", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 5*time.Second, "render after the key changed", func() bool { return read() == "flags=v2 n=1" })
	t.Logf("re-rendered %s after the key changed", took.Round(time.Millisecond))
	// Another key under /berth/config/ changing does not matter.
	if _, err := e.coord.Put(t.Context(), "/berth/config/other/x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(out + ".bak"); err != nil {
		t.Errorf("backup after the second render: %v", err)
	}
	// The key is deleted: the render fails and the last file stays.
	if _, err := e.coord.Delete(t.Context(), "/berth/config/app/cfg/flags"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := read(); got != "flags=v2 n=1" {
		t.Errorf("after the key was deleted: got %q, want the last good file", got)
	}
}
