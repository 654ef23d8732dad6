package dev

import (
	"net/netip"
	"testing"
)

func TestPoolOf(t *testing.T) {
	for _, tc := range []struct{ subnet, want string }{
		{"172.30.0.0/24", "172.30.0.2-172.30.0.254"},
		{"10.1.0.0/16", "10.1.0.2-10.1.255.254"},
		{"192.168.7.8/29", "192.168.7.10-192.168.7.14"},
		{"172.30.0.77/24", "172.30.0.2-172.30.0.254"},
	} {
		if got := poolOf(netip.MustParsePrefix(tc.subnet)); got != tc.want {
			t.Errorf("poolOf(%s): got %s, want %s", tc.subnet, got, tc.want)
		}
	}
}
