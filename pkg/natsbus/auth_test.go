package natsbus_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
)

func TestAuthValidate(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		a    natsbus.Auth
		want string // "" = valid
	}{
		{"zero", natsbus.Auth{}, ""},
		{"user and password file", natsbus.Auth{User: "u", PasswordFile: pw}, ""},
		{"password without user", natsbus.Auth{Password: "p"}, "needs a user"},
		{"password twice", natsbus.Auth{User: "u", Password: "p", PasswordFile: pw}, "set one"},
		{"two logins", natsbus.Auth{User: "u", NKeySeedFile: pw}, "set one"},
		{"missing seed", natsbus.Auth{NKeySeedFile: filepath.Join(dir, "nope.nk")}, "nats_auth.nkey_seed_file"},
		{"cert without key", natsbus.Auth{CertFile: pw}, "go together"},
		{"wildcard inbox", natsbus.Auth{InboxPrefix: "_INBOX_a.>"}, "inbox prefix"},
	}
	for _, tt := range tests {
		err := tt.a.Validate("nats_auth")
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: got %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

// TestAuthLogsIn connects with a user whose password is in a file, and is refused with a
// wrong one.
func TestAuthLogsIn(t *testing.T) {
	s := natstest.RunServer(t, natstest.WithUser("svc", "s3cret"))
	dir := t.TempDir()
	for _, c := range []struct {
		pw string
		ok bool
	}{{"s3cret\n", true}, {"wrong", false}} {
		pw := filepath.Join(dir, "pw")
		if err := os.WriteFile(pw, []byte(c.pw), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := natsbus.Config{URLs: []string{s.URL()}, ConnectTimeout: 2 * time.Second, InboxPrefix: ""}
		if err := (natsbus.Auth{User: "svc", PasswordFile: pw, InboxPrefix: "_INBOX_svc"}).Apply(&cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.InboxPrefix != "_INBOX_svc" {
			t.Fatalf("Apply: inbox prefix %q, want _INBOX_svc", cfg.InboxPrefix)
		}
		b, err := natsbus.Connect(t.Context(), cfg)
		if c.ok != (err == nil) {
			t.Fatalf("password %q: got %v, want ok=%v", c.pw, err, c.ok)
		}
		if b != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = b.Close(ctx)
			cancel()
		}
	}
	// TLS files turn TLS on.
	pki := filepath.Join(t.TempDir(), "pki")
	if _, err := certs.Init(certs.Options{Dir: pki, Services: []string{"controller"}}); err != nil {
		t.Fatal(err)
	}
	cfg := natsbus.Config{}
	if err := (natsbus.Auth{TrustedCAFile: filepath.Join(pki, certs.CACertFile)}).Apply(&cfg); err != nil || cfg.TLS == nil || cfg.TLS.RootCAs == nil {
		t.Fatalf("Apply with a CA: got TLS %v, %v; want a configuration trusting it", cfg.TLS, err)
	}
}
