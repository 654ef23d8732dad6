package nameservice

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/apitoken"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	d := DefaultConfig()
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults: got %v, want valid", err)
	}
	if d.DNSAddr != "127.0.0.1:5354" || d.HTTPAddr != "127.0.0.1:7071" {
		t.Fatalf("defaults: got dns %s http %s, want berth dev's 127.0.0.1:5354 and :7071", d.DNSAddr, d.HTTPAddr)
	}
	tests := []struct {
		field string
		edit  func(*Config)
	}{
		{"dns_listen", func(c *Config) { c.DNSAddr = "5354" }},
		{"http_listen", func(c *Config) { c.HTTPAddr = "" }},
		{"zones", func(c *Config) { c.Zones = nil }},
		{"zones[1]", func(c *Config) { c.Zones = []string{"a.b", "a..b"} }},
		{"zones[1]", func(c *Config) { c.Zones = []string{"a.b", "A.B."} }},
		{"ttl", func(c *Config) { c.TTL = 0 }},
		{"dc_subnets[0]", func(c *Config) { c.DCSubnets = []string{"10.0.0.0/8"} }},
		{"ns_addresses[0]", func(c *Config) { c.NSAddrs = []string{"ns1"} }},
		{"max_udp_size", func(c *Config) { c.MaxUDPSize = 100 }},
		{"rate_limit", func(c *Config) { c.RateLimit = -1 }},
		{"name", func(c *Config) { c.Name = "" }},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		tt.edit(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tt.field) {
			t.Errorf("%s: got %v, want an error naming %s", tt.field, err, tt.field)
		}
	}
	if _, err := New(DefaultConfig(), Deps{}); err == nil {
		t.Errorf("New without Bus and Coord: got nil error")
	}
}

func TestConfigTokensFile(t *testing.T) {
	dir := t.TempDir()
	tok, _ := apitoken.New()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", "tokens:\n"+apitoken.FormatEntry("alice", apitoken.Deployer, []string{"hotel"}, tok))
	tests := []struct {
		name, file, want string
	}{
		{"missing file", filepath.Join(dir, "nope.yaml"), "tokens_file: token file:"},
		{"a token instead of its hash", write("plain.yaml", "tokens:\n  - {name: a, role: admin, scopes: [/], sha256: "+tok+"}\n"), "this is a token, not its hash"},
		{"an unknown role", write("role.yaml", "tokens:\n  - {name: a, role: root, scopes: [/], sha256: "+apitoken.Hash(tok)+"}\n"), "role \"root\""},
		{"no tokens", write("empty.yaml", "tokens: []\n"), "holds no tokens"},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.TokensFile = tt.file
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), "tokens_file") || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error naming tokens_file and containing %q", tt.name, err, tt.want)
		}
	}
	c := DefaultConfig()
	c.TokensFile = good
	if err := c.Validate(); err != nil {
		t.Errorf("a good token file: got %v, want valid", err)
	}
}
