package model

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestChecks(t *testing.T) {
	cases := []struct {
		name  string
		check func(string) error
		in    string
		ok    bool
	}{
		{"service", CheckService, "hotel/search", true},
		{"service", CheckService, "a/b/c/d/e/f/g/h", true},
		{"service", CheckService, "a/b/c/d/e/f/g/h/i", false},
		{"service", CheckService, "hotel//search", false},
		{"service", CheckService, "hotel/../search", false},
		{"service", CheckService, "Hotel", false},
		{"service", CheckService, "hotel.search", false},
		{"service", CheckService, "-hotel", false},
		{"service", CheckService, "", false},
		{"version", CheckVersion, "1.4.2", true},
		{"version", CheckVersion, "1.4.2+build.7", true},
		{"version", CheckVersion, "1.0/../../etc", false},
		{"version", CheckVersion, "..", false},
		{"version", CheckVersion, "1..2", false},
		{"version", CheckVersion, ".hidden", false},
		{"version", CheckVersion, strings.Repeat("1", 129), false},
		{"host", CheckHost, "h-017", true},
		{"host", CheckHost, "h.017", false},
		{"host", CheckHost, "progress", false},
		{"host", CheckHost, strings.Repeat("h", MaxHostLen+1), false},
		{"host", CheckHost, "a/b", false},
		{"id", CheckID, NewID("d", time.Now()), true},
		{"id", CheckID, NewID("t", time.Now()), true},
		{"id", CheckID, "d-1", false},
		{"sha256", CheckSHA256, strings.Repeat("ab", 32), true},
		{"sha256", CheckSHA256, strings.Repeat("AB", 32), false},
		{"sha256", CheckSHA256, "", false},
	}
	for _, tc := range cases {
		err := tc.check(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("check %s %q: got error %v, want ok %t", tc.name, tc.in, err, tc.ok)
		}
	}
}

func TestPaths(t *testing.T) {
	if got := LockPath("hotel/search"); got != "/berth/controller/locks/hotel.search" {
		t.Errorf("LockPath: got %s", got)
	}
	if got := ReleasePath("hotel/search", "h1"); got != "/berth/controller/releases/hotel.search/h1" {
		t.Errorf("ReleasePath: got %s", got)
	}
	if got := ServiceAncestors("a/b/c"); strings.Join(got, " ") != "a a/b a/b/c" {
		t.Errorf("ServiceAncestors: got %v, want [a a/b a/b/c]", got)
	}
	if KindOf("t-20260101-000000-abcdef") != KindTask || KindOf("d-20260101-000000-abcdef") != KindDeployment {
		t.Errorf("KindOf does not tell tasks from deployments")
	}
}
