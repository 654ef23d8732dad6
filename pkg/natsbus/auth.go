package natsbus

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/berthdev/berth/pkg/certs"
)

// Auth is the TLS and login part of a NATS connection as a service's configuration file
// carries it. A service embeds it with the prefix nats (YAML nats_auth, flags
// --nats-cert-file, --nats-trusted-ca-file, --nats-nkey-seed-file, ..., environment
// BERTH_NATS_CERT_FILE, ...), following berth-coord's TLS flag names; Apply copies it into
// a Config. The zero value is a plaintext connection without credentials.
//
// `berth certs nats-config` writes a nats-server configuration with one nkey user per
// service, and the seed file and inbox prefix each service sets here.
type Auth struct {
	// CertFile and KeyFile are the client certificate presented to the server (mutual TLS).
	CertFile string `yaml:"cert_file" env:"CERT_FILE" flag:"cert-file" usage:"client certificate (PEM) presented to NATS (mutual TLS)"`
	KeyFile  string `yaml:"key_file" env:"KEY_FILE" flag:"key-file" usage:"key (PEM) of the NATS client certificate"`
	// TrustedCAFile is the CA the server's certificate must chain to. Any of the three
	// files turns TLS on; with none, TLS is on only for tls:// URLs (system roots).
	TrustedCAFile string `yaml:"trusted_ca_file" env:"TRUSTED_CA_FILE" flag:"trusted-ca-file" usage:"CA bundle (PEM) the NATS server's certificate must chain to (turns TLS on)"`
	// User and Password log in with a user and password; PasswordFile reads the password
	// from a file instead (trailing white space dropped).
	User         string `yaml:"user" env:"USER" flag:"user" usage:"NATS user"`
	Password     string `yaml:"password" env:"PASSWORD" flag:"password" usage:"NATS password (prefer the environment or password_file)"`
	PasswordFile string `yaml:"password_file" env:"PASSWORD_FILE" flag:"password-file" usage:"file holding the NATS password"`
	// NKeySeedFile logs in with the nkey whose seed is in this file.
	NKeySeedFile string `yaml:"nkey_seed_file" env:"NKEY_SEED_FILE" flag:"nkey-seed-file" usage:"file holding this service's NATS nkey seed (berth certs nats-config writes one per service)"`
	// CredsFile logs in with a NATS credentials file (JWT and nkey seed).
	CredsFile string `yaml:"creds_file" env:"CREDS_FILE" flag:"creds-file" usage:"NATS credentials file (JWT and nkey seed)"`
	// InboxPrefix is the prefix of this service's reply subjects; a server that gives
	// every user its own inbox (as berth certs nats-config does: _INBOX_<user>) only lets
	// it subscribe there. Empty means _INBOX.
	InboxPrefix string `yaml:"inbox_prefix" env:"INBOX_PREFIX" flag:"inbox-prefix" usage:"prefix of this service's NATS reply subjects (empty: _INBOX)"`
}

// Validate checks the settings without reading the certificates; name is the
// configuration key the errors name (nats_auth).
func (a Auth) Validate(name string) error {
	tlsFiles := certs.Files{CertFile: a.CertFile, KeyFile: a.KeyFile, TrustedCAFile: a.TrustedCAFile}
	if err := tlsFiles.ValidateClient(name); err != nil {
		return err
	}
	if a.Password != "" && a.PasswordFile != "" {
		return fmt.Errorf("%s: password and password_file: set one", name)
	}
	if (a.Password != "" || a.PasswordFile != "") && a.User == "" {
		return fmt.Errorf("%s: a password needs a user", name)
	}
	logins := 0
	for _, set := range []bool{a.User != "", a.NKeySeedFile != "", a.CredsFile != ""} {
		if set {
			logins++
		}
	}
	if logins > 1 {
		return fmt.Errorf("%s: user, nkey_seed_file and creds_file: set one", name)
	}
	for _, f := range []struct{ field, path string }{{"password_file", a.PasswordFile}, {"nkey_seed_file", a.NKeySeedFile}, {"creds_file", a.CredsFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s.%s: %w", name, f.field, err)
		}
	}
	if a.InboxPrefix != "" {
		if err := (Config{InboxPrefix: a.InboxPrefix}).Validate(); err != nil {
			return fmt.Errorf("%s.inbox_prefix: %w", name, err)
		}
	}
	return nil
}

// Apply loads the certificates and the password file and sets the TLS, login and inbox
// fields of cfg.
func (a Auth) Apply(cfg *Config) error {
	tlsCfg, err := certs.Files{CertFile: a.CertFile, KeyFile: a.KeyFile, TrustedCAFile: a.TrustedCAFile}.ClientTLS("")
	if err != nil {
		return fmt.Errorf("nats tls: %w", err)
	}
	if tlsCfg != nil {
		cfg.TLS = tlsCfg
	}
	if a.User != "" {
		cfg.User, cfg.Password = a.User, a.Password
		if a.PasswordFile != "" {
			b, err := os.ReadFile(a.PasswordFile)
			if err != nil {
				return fmt.Errorf("nats password: %w", err)
			}
			cfg.Password = strings.TrimRight(string(b), " \t\r\n")
			if cfg.Password == "" {
				return errors.New("nats password: file " + a.PasswordFile + " is empty")
			}
		}
	}
	if a.NKeySeedFile != "" {
		cfg.NKeySeedFile = a.NKeySeedFile
	}
	if a.CredsFile != "" {
		cfg.CredsFile = a.CredsFile
	}
	if a.InboxPrefix != "" {
		cfg.InboxPrefix = a.InboxPrefix
	}
	return nil
}
