package certs

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
)

// Files names the PEM files of one side of a link, as every Berth service's configuration
// carries them. The names follow berth-coord's flags (--client-cert-file,
// --client-key-file, --client-trusted-ca-file): a service embeds Files once per link with a
// prefix, so that its HTTP side is --http-cert-file, --http-key-file and
// --http-trusted-ca-file (YAML http_tls: {cert_file, key_file, trusted_ca_file},
// environment BERTH_HTTP_CERT_FILE, ...), its coord client --coord-cert-file and so on.
//
// On a serving side, CertFile and KeyFile turn TLS on and TrustedCAFile, when set as well,
// requires client certificates that chain to it (mutual TLS). On a client side,
// TrustedCAFile is the CA the server's certificate must chain to (empty: the system's
// roots) and CertFile/KeyFile the client's own certificate for mutual TLS; any of them
// turns TLS on.
//
// The zero value is plaintext.
type Files struct {
	// CertFile is the certificate (PEM).
	CertFile string `yaml:"cert_file" env:"CERT_FILE" flag:"cert-file" usage:"TLS certificate (PEM)"`
	// KeyFile is the certificate's private key (PEM).
	KeyFile string `yaml:"key_file" env:"KEY_FILE" flag:"key-file" usage:"TLS private key (PEM)"`
	// TrustedCAFile is the CA bundle the peer's certificate must chain to.
	TrustedCAFile string `yaml:"trusted_ca_file" env:"TRUSTED_CA_FILE" flag:"trusted-ca-file" usage:"CA bundle (PEM) the peer's certificate must chain to (on a server: requires client certificates)"`
}

// Enabled reports whether any file is set.
func (f Files) Enabled() bool { return f.CertFile != "" || f.KeyFile != "" || f.TrustedCAFile != "" }

// Mutual reports whether a server with these files requires client certificates.
func (f Files) Mutual() bool { return f.TrustedCAFile != "" }

// ValidateServer checks the files of a serving side without reading them: certificate and
// key together, and no CA without them. name is the configuration key the errors name
// (http_tls).
func (f Files) ValidateServer(name string) error {
	if !f.Enabled() {
		return nil
	}
	if f.CertFile == "" || f.KeyFile == "" {
		return fmt.Errorf("%s: cert_file and key_file are both required to serve TLS (trusted_ca_file alone is not enough)", name)
	}
	return f.checkReadable(name)
}

// ValidateClient checks the files of a client side without reading them: a client
// certificate needs its key and the other way round.
func (f Files) ValidateClient(name string) error {
	if !f.Enabled() {
		return nil
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return fmt.Errorf("%s: cert_file and key_file go together (a client certificate needs its key)", name)
	}
	return f.checkReadable(name)
}

func (f Files) checkReadable(name string) error {
	for _, p := range []struct{ field, path string }{{"cert_file", f.CertFile}, {"key_file", f.KeyFile}, {"trusted_ca_file", f.TrustedCAFile}} {
		if p.path == "" {
			continue
		}
		if _, err := os.Stat(p.path); err != nil {
			return fmt.Errorf("%s.%s: %w", name, p.field, err)
		}
	}
	return nil
}

// ServerTLS returns the TLS configuration of a serving side: nil when no file is set
// (plaintext), server TLS with CertFile/KeyFile, mutual TLS when TrustedCAFile is set too.
// TLS 1.2 is the minimum.
func (f Files) ServerTLS() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, errors.New("server TLS: cert_file and key_file are both required")
	}
	if f.TrustedCAFile != "" {
		return ServerConfig(f.CertFile, f.KeyFile, f.TrustedCAFile)
	}
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("server TLS %s: %w", f.CertFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// ClientTLS returns the TLS configuration of a client side: nil when no file is set
// (plaintext), else one that trusts TrustedCAFile (empty: the system's roots) and presents
// CertFile/KeyFile when set. serverName, when set, overrides the name checked against the
// server's certificate.
func (f Files) ClientTLS(serverName string) (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if f.TrustedCAFile != "" {
		return ClientConfig(f.CertFile, f.KeyFile, f.TrustedCAFile, serverName)
	}
	cfg := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if f.CertFile != "" || f.KeyFile != "" {
		pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client TLS %s: %w", f.CertFile, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// Listen listens on addr (host:port) and, when cfg is not nil, wraps the listener so that
// every connection must complete a TLS handshake with cfg: a plaintext client gets a
// handshake error (an HTTP server answers it "400 Client sent an HTTP request to an HTTPS
// server") and a client without an accepted certificate is refused during the handshake.
func Listen(addr string, cfg *tls.Config) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return l, nil
	}
	return tls.NewListener(l, cfg), nil
}

// Scheme is "https" when cfg is set and "http" when it is nil, for the URLs a service
// prints.
func Scheme(cfg *tls.Config) string {
	if cfg != nil {
		return "https"
	}
	return "http"
}
