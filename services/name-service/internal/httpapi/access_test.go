package httpapi

import (
	"net/http/httptest"
	"testing"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/apiaccess"
	"github.com/berthdev/berth/pkg/apitoken"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAccessRules(t *testing.T) {
	tests := []struct {
		method, path string
		kind         apiaccess.Kind
		need         apiaccess.Need
	}{
		{"GET", "/healthz", apiaccess.Open, apiaccess.Need{}},
		{"GET", "/metrics", apiaccess.Open, apiaccess.Need{}},
		{"PUT", "/v1x/traffic/a", apiaccess.Open, apiaccess.Need{}},
		{"GET", "/v1/services", apiaccess.Read, apiaccess.Need{}},
		{"HEAD", "/v1/traffic/hotel", apiaccess.Read, apiaccess.Need{}},
		{"GET", "/v1/traffic/hotel/search", apiaccess.Read, apiaccess.Need{}},
		{"PUT", "/v1/traffic/hotel/search", apiaccess.Write, apiaccess.Need{Service: "hotel/search", Role: apitoken.Deployer}},
		{"DELETE", "/v1/traffic/hotel/search/", apiaccess.Write, apiaccess.Need{Service: "hotel/search", Role: apitoken.Deployer}},
		{"PUT", "/v1/traffic/hotel/../flight", apiaccess.Write, apiaccess.Need{Role: apitoken.Deployer}},
		{"PUT", "/v1/traffic/", apiaccess.Write, apiaccess.Need{Role: apitoken.Deployer}},
		{"POST", "/v1/traffic/hotel", apiaccess.Write, apiaccess.Need{Role: apitoken.Admin}},
		{"PUT", "/v1/services", apiaccess.Write, apiaccess.Need{Role: apitoken.Admin}},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, "http://x"+tt.path, nil)
		if got := (AccessRules{}).Kind(r); got != tt.kind {
			t.Errorf("%s %s: kind %v, want %v", tt.method, tt.path, got, tt.kind)
		}
		if tt.kind != apiaccess.Write {
			continue
		}
		got, err := (AccessRules{}).Need(r)
		if err != nil || got != tt.need {
			t.Errorf("%s %s: need %+v, %v; want %+v", tt.method, tt.path, got, err, tt.need)
		}
	}
}
