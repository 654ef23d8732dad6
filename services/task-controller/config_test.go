package controller

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"defaults", func(*Config) {}, ""},
		{"listen", func(c *Config) { c.Listen = "7070" }, "listen"},
		{"metrics", func(c *Config) { c.ListenMetrics = "x" }, "listen_metrics"},
		{"replica", func(c *Config) { c.Replica = "a b" }, "replica"},
		{"ttl", func(c *Config) { c.SessionTTL = 100 * time.Millisecond }, "session_ttl"},
		{"backoff", func(c *Config) { c.RetryBackoffMax = time.Millisecond }, "retry_backoff_max"},
		{"poll", func(c *Config) { c.PollInterval = 0 }, "poll_interval"},
		{"coord", func(c *Config) { c.Coord = "a,b:1" }, "coord"},
		{"log", func(c *Config) { c.Log.Format = "xml" }, "log"},
		{"names off", func(c *Config) { c.NamesURL = "" }, ""},
		{"names https prefix", func(c *Config) { c.NamesURL = "https://names.example:8443/berth/" }, ""},
		{"names scheme", func(c *Config) { c.NamesURL = "ftp://127.0.0.1:7071" }, "names_url"},
		{"names host", func(c *Config) { c.NamesURL = "http:///v1" }, "names_url"},
		{"names query", func(c *Config) { c.NamesURL = "http://127.0.0.1:7071/?x=1" }, "names_url"},
		{"names user", func(c *Config) { c.NamesURL = "http://u:p@127.0.0.1:7071" }, "names_url"},
		{"names relative", func(c *Config) { c.NamesURL = "127.0.0.1:7071" }, "names_url"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tc.field != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.field)):
				t.Fatalf("got %v, want an error naming %s", err, tc.field)
			}
		})
	}
}

func TestNewStartsNothing(t *testing.T) {
	c := DefaultConfig()
	c.Listen = "127.0.0.1:0"
	ctl, err := New(c, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{}, Deps{}); err == nil {
		t.Errorf("New with an empty config: want an error")
	}
	_ = ctl
}
