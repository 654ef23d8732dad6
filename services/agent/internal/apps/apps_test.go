package apps

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berthdev/berth/pkg/coordclient"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseStatic(t *testing.T) {
	tests := []struct {
		name, yaml, err string
	}{
		{"no scripts at all", "service: edge/nginx\nport: 80\n", ""},
		{"health only", "service: edge/nginx\nport: 80\nscripts:\n  health: h.sh\nhealth:\n  rise: 1\n", ""},
		{"four-space indent", "service: edge/nginx\nscripts:\n    reload: r.sh\nport: 80\n", ""},
		{"port out of range", "service: edge/nginx\nport: 70000\n", "nginx.yaml:2: port 70000 out of range 1..65535"},
		{"unknown field", "service: edge/nginx\nscripts:\n  relaod: r.sh\n", `nginx.yaml:3: unknown field "relaod" in scripts (did you mean "reload"?)`},
		{"bad service", "service: Edge/nginx\n", "nginx.yaml:1:"},
	}
	for _, tt := range tests {
		d, err := ParseStatic("nginx.yaml", []byte(tt.yaml))
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%s: got %v, want no error", tt.name, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.err)
		case err == nil && (d.Scripts.Start != "" || d.Scripts.Stop != "" || d.Health.Rise == 0):
			t.Errorf("%s: got scripts %+v health %+v, want no start/stop and defaults applied", tt.name, d.Scripts, d.Health)
		}
	}
}

// fakeTree is a hand-written Tree.
type fakeTree map[string]*controllerv1.ServiceNode

func (f fakeTree) Get(_ context.Context, path string, _ ...coordclient.GetOption) (*coordclient.Node, error) {
	n, ok := f[path]
	if !ok {
		return nil, coordclient.ErrNotFound
	}
	b, _ := protojson.Marshal(n)
	return &coordclient.Node{Path: path, Value: b}, nil
}

func TestTTLInherited(t *testing.T) {
	tree := fakeTree{
		TreePrefix + "hotel":        {Policy: &controllerv1.Policy{DnsTtl: durationpb.New(7 * time.Second)}},
		TreePrefix + "hotel/search": {Description: "no policy of its own"},
		TreePrefix + "hotel/price":  {Policy: &controllerv1.Policy{DnsTtl: durationpb.New(2 * time.Second)}},
	}
	a := &Apps{cfg: Config{Tree: tree, DefaultTTL: 5 * time.Second}}
	tests := map[string]time.Duration{"hotel/search": 7 * time.Second, "hotel/price": 2 * time.Second, "flight/x": 5 * time.Second}
	for svc, want := range tests {
		if got := a.ttl(t.Context(), svc); got != want {
			t.Errorf("ttl(%s): got %s, want %s", svc, got, want)
		}
	}
}
