package agent

import (
	"path/filepath"
	"testing"

	"github.com/berthdev/berth/pkg/certs"
)

func TestNameAPITLSOnlyBeyondLoopback(t *testing.T) {
	pki := filepath.Join(t.TempDir(), "pki")
	if _, err := certs.Init(certs.Options{Dir: pki, Services: []string{"agent"}}); err != nil {
		t.Fatal(err)
	}
	files := certs.Files{CertFile: filepath.Join(pki, "agent.crt"), KeyFile: filepath.Join(pki, "agent.key"), TrustedCAFile: filepath.Join(pki, certs.CACertFile)}
	tests := []struct {
		listen  string
		files   certs.Files
		wantTLS bool
	}{
		{"127.0.0.1:7391", files, false},
		{"[::1]:7391", files, false},
		{"localhost:7391", files, false},
		{"0.0.0.0:7391", files, true},
		{"10.1.2.3:7391", files, true},
		{"0.0.0.0:7391", certs.Files{}, false},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.NameAPIListen, c.HTTPTLS = tt.listen, tt.files
		cfg, err := c.nameAPITLS()
		if err != nil {
			t.Fatalf("%s: %v", tt.listen, err)
		}
		if (cfg != nil) != tt.wantTLS {
			t.Errorf("name API on %s with http_tls %v: got TLS %v, want %v", tt.listen, tt.files.Enabled(), cfg != nil, tt.wantTLS)
		}
		if tt.wantTLS && len(cfg.Certificates) != 1 {
			t.Errorf("%s: no certificate in the TLS configuration", tt.listen)
		}
	}
	c := DefaultConfig()
	c.HTTPTLS = certs.Files{TrustedCAFile: files.TrustedCAFile}
	if err := c.validateSecurity(); err == nil {
		t.Fatal("http_tls with only a CA: got nil error")
	}
}
