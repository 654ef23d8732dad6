package config

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type natsCfg struct {
	URL string `yaml:"url" env:"URL" flag:"url" usage:"NATS URL"`
	TLS bool   `yaml:"tls" env:"TLS" flag:"tls"`
}

type testCfg struct {
	Name    string        `yaml:"name" env:"NAME" flag:"name" usage:"the name"`
	Port    int           `yaml:"port" env:"PORT" flag:"port"`
	Timeout time.Duration `yaml:"timeout" env:"TIMEOUT" flag:"timeout"`
	NATS    natsCfg       `yaml:"nats" env:"NATS_" flag:"nats-"`
	Peers   []string      `yaml:"peers" env:"PEERS" flag:"peer"`
}

func (c *testCfg) Validate() error {
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("port %d: want 1..65535", c.Port)
	}
	return nil
}

func defaults() *testCfg {
	return &testCfg{Name: "default", Port: 80, Timeout: time.Second, NATS: natsCfg{URL: "nats://127.0.0.1:4222"}}
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestFiles(t *testing.T) {
	tests := []struct {
		file string
		err  string
	}{
		{"good.yaml", ""},
		{"unknown-field.yaml", `testdata/unknown-field.yaml:4: unknown field "nats.ulr"`},
		{"bad-duration.yaml", `testdata/bad-duration.yaml:2: field "timeout": "soon" is not a duration`},
		{"bad-int.yaml", `testdata/bad-int.yaml:1: field "port": "eighty" is not an integer`},
		{"not-mapping.yaml", `testdata/not-mapping.yaml:1: nats must be a mapping`},
		{"malformed.yaml", `testdata/malformed.yaml: `},
		{"duplicate.yaml", `testdata/duplicate.yaml:2: field "name" given twice`},
		{"list-for-scalar.yaml", `testdata/list-for-scalar.yaml:2: field "name": want a single value`},
		{"invalid-port.yaml", `config testdata/invalid-port.yaml: port 70000: want 1..65535`},
		{"missing.yaml", `config: open testdata/missing.yaml: no such file`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			cfg := defaults()
			err := Load(cfg, []string{"--config", "testdata/" + tt.file}, Options{LookupEnv: env(nil)})
			if tt.err == "" {
				if err != nil {
					t.Fatalf("Load(%s): got %v, want nil", tt.file, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Load(%s): got error %v, want it to contain %q", tt.file, err, tt.err)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	cfg := defaults()
	e := env(map[string]string{
		"BERTH_PORT":     "8000",            // env beats file
		"BERTH_NATS_URL": "nats://env:4222", // env beats file, and the flag beats env
		"BERTH_PEERS":    "x, y",
		"BERTH_TIMEOUT":  "5s",
	})
	args := []string{"--config", "testdata/good.yaml", "--nats-url", "nats://flag:4222", "--peer", "p1", "--peer", "p2", "--nats-tls=false"}
	if err := Load(cfg, args, Options{LookupEnv: e}); err != nil {
		t.Fatal(err)
	}
	want := testCfg{Name: "from-file", Port: 8000, Timeout: 5 * time.Second,
		NATS: natsCfg{URL: "nats://flag:4222", TLS: false}, Peers: []string{"p1", "p2"}}
	if fmt.Sprint(*cfg) != fmt.Sprint(want) {
		t.Fatalf("got %+v, want %+v", *cfg, want)
	}
}

func TestDefaultsStayWithoutSources(t *testing.T) {
	cfg := defaults()
	if err := Load(cfg, nil, Options{LookupEnv: env(nil)}); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(*cfg), fmt.Sprint(*defaults()); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestBadEnvAndFlags(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		err  string
	}{
		{"env int", map[string]string{"BERTH_PORT": "x"}, nil, `environment BERTH_PORT: "x" is not an integer`},
		{"env bool", map[string]string{"BERTH_NATS_TLS": "maybe"}, nil, `environment BERTH_NATS_TLS: "maybe" is not a boolean`},
		{"flag duration", nil, []string{"--timeout", "forever"}, `"forever" is not a duration`},
		{"unknown flag", nil, []string{"--nope"}, "flag provided but not defined: -nope"},
		{"stray arg", nil, []string{"extra"}, `unexpected argument "extra"`},
		{"validate", nil, []string{"--port", "0"}, "config: port 0: want 1..65535"},
		{"config from env", map[string]string{"BERTH_CONFIG": "testdata/bad-int.yaml"}, nil, `bad-int.yaml:1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaults()
			err := Load(cfg, tt.args, Options{LookupEnv: env(tt.env), Name: "test"})
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("got %v, want error containing %q", err, tt.err)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	cfg := defaults()
	err := Load(cfg, []string{"-h"}, Options{LookupEnv: env(nil), Usage: "usage: test", Name: "test"})
	if !errors.Is(err, ErrHelp) {
		t.Fatalf("got %v, want ErrHelp", err)
	}
	_ = io.Discard
}
