package dev

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/certs"
)

// Security in berth dev is off unless asked for: --tls DIR (a `berth certs init`
// directory) serves the controller's API, the name service's API, the artifact server's
// HTTP and /metrics over HTTPS that requires client certificates of DIR's CA; --tokens FILE
// makes the controller's API take tokens and audit every write. NATS, coord and the local
// agent's loopback name API stay in-process or on loopback, in plaintext.

// tlsIdentities are the certificates of DIR that --tls uses: the name service presents
// its own, every other endpoint of berth dev the controller's; the demo calls them as the
// berth CLI.
var tlsIdentities = []string{"controller", "name-service", "berth"}

// validateSecurity checks --tls and --tokens.
func (c *Config) validateSecurity() error {
	if c.TLSDir != "" {
		for _, f := range append([]string{certs.CACertFile}, identityFiles(tlsIdentities)...) {
			if _, err := os.Stat(filepath.Join(c.TLSDir, f)); err != nil {
				return fmt.Errorf("--tls %s: %w (make the directory with `berth certs init --dir %s`)", c.TLSDir, err, c.TLSDir)
			}
		}
	}
	if c.TokensFile != "" {
		if _, err := apitoken.Load(c.TokensFile); err != nil {
			return fmt.Errorf("--tokens: %w", err)
		}
	}
	return nil
}

func identityFiles(names []string) []string {
	var out []string
	for _, n := range names {
		out = append(out, n+".crt", n+".key")
	}
	return out
}

// serverFiles are the TLS files of an endpoint presenting identity; zero (plaintext)
// without --tls.
func (e *env) serverFiles(identity string) certs.Files {
	if e.cfg.TLSDir == "" {
		return certs.Files{}
	}
	d := e.cfg.TLSDir
	return certs.Files{CertFile: filepath.Join(d, identity+".crt"), KeyFile: filepath.Join(d, identity+".key"), TrustedCAFile: filepath.Join(d, certs.CACertFile)}
}

// serverTLS loads serverFiles(identity); nil without --tls.
func (e *env) serverTLS(identity string) (*tls.Config, error) {
	return e.serverFiles(identity).ServerTLS()
}

// scheme is the scheme of berth dev's HTTP endpoints.
func (e *env) scheme() string {
	if e.cfg.TLSDir != "" {
		return "https"
	}
	return "http"
}

// clientTLS is the TLS of berth dev's own calls to its endpoints (the demo): the berth
// CLI's certificate; nil without --tls.
func (e *env) clientTLS() (*tls.Config, error) {
	return e.serverFiles("berth").ClientTLS("")
}

// announceSecurity prints how the endpoints are secured, and how to point the CLI at them.
func (e *env) announceSecurity() {
	switch {
	case e.cfg.TLSDir == "" && e.cfg.TokensFile == "":
		e.announce("security", "off: plaintext HTTP, no API tokens (see berth dev --help: --tls, --tokens)")
		return
	case e.cfg.TLSDir != "":
		d := e.cfg.TLSDir
		e.announce("TLS", fmt.Sprintf("HTTPS with client certificates of %s; the CLI: berth context set dev --controller %s --names %s --ca-file %s --cert-file %s --key-file %s",
			filepath.Join(d, certs.CACertFile), e.controllerURL, e.namesURL, filepath.Join(d, certs.CACertFile), filepath.Join(d, "berth.crt"), filepath.Join(d, "berth.key")))
	}
	if e.cfg.TokensFile != "" {
		e.announce("API tokens", e.cfg.TokensFile+" (writes audited under /berth/audit; the CLI sends $BERTH_TOKEN or its context's token)")
	} else {
		e.announce("API tokens", "off: the API is open (--tokens FILE to require them)")
	}
}
