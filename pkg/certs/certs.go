// Package certs makes the private PKI of a Berth installation: an ECDSA P-256 certificate
// authority and, signed by it, one certificate per service for mutual TLS on every link
// (coord client and peer, NATS, the services' HTTP APIs), and a client certificate for the
// berth CLI (DESIGN §10).
//
// Init writes a whole set into a directory (what `berth certs init` does); NewCA, LoadCA
// and CA.Issue are the building blocks; ServerConfig and ClientConfig turn the files into
// tls.Config values that require and verify the peer's certificate.
//
// Every service certificate is valid for both server and client authentication, since
// each service serves an API and calls others with the same identity; the berth CLI's is a
// client certificate only. Keys are written with mode 0600, certificates 0644.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The file names Init writes for the CA.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Default validity periods.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultLeafValidity = 365 * 24 * time.Hour
)

// ErrCAExists is returned by Init when the directory already holds a CA and Force is not
// set: replacing a CA makes every certificate it signed untrusted.
var ErrCAExists = errors.New("certs: CA already exists")

// Usage says what a certificate may authenticate.
type Usage int

// The usages of a certificate.
const (
	// ServerAndClient certificates serve TLS and present themselves as clients.
	ServerAndClient Usage = iota
	// ClientOnly certificates only authenticate a client (the berth CLI).
	ClientOnly
)

// Service is one identity Init issues a certificate for.
type Service struct {
	// Name is the certificate's common name and the base of its file names
	// (<Name>.crt, <Name>.key).
	Name string
	// Hosts are the DNS names and IP addresses the certificate is valid for, besides the
	// loopback names every server certificate gets (localhost, 127.0.0.1, ::1) and
	// Options.Hosts.
	Hosts []string
	// Usage says whether it is a server and client certificate or a client one.
	Usage Usage
}

// DefaultServices returns the identities of a Berth installation, with the host names the
// services have in the docker-compose suite: coord's client API and its peer links (its
// own certificate, used as server and client), NATS, every service, the agents and the
// berth CLI.
func DefaultServices() []Service {
	return []Service{
		{Name: "coord", Hosts: []string{"coord", "coord-1", "coord-2", "coord-3"}},
		{Name: "coord-peer", Hosts: []string{"coord", "coord-1", "coord-2", "coord-3"}},
		{Name: "nats", Hosts: []string{"nats", "nats-1", "nats-2", "nats-3"}},
		{Name: "controller", Hosts: []string{"controller", "controller-1", "controller-2"}},
		{Name: "scheduler", Hosts: []string{"scheduler", "scheduler-1", "scheduler-2"}},
		{Name: "cmdb-sync", Hosts: []string{"cmdb-sync"}},
		{Name: "image-builder", Hosts: []string{"image-builder"}},
		{Name: "name-service", Hosts: []string{"name-service", "name-service-1", "name-service-2"}},
		{Name: "agent", Hosts: []string{"agent", "agent-1", "agent-2"}},
		{Name: "berth", Usage: ClientOnly},
	}
}

// ServiceNames returns the names of DefaultServices in order.
func ServiceNames() []string {
	var names []string
	for _, s := range DefaultServices() {
		names = append(names, s.Name)
	}
	return names
}

// loopbackHosts are in every server certificate, so that a service is reachable on the
// machine it runs on under any of its loopback names.
var loopbackHosts = []string{"localhost", "127.0.0.1", "::1"}

// Options configures Init.
type Options struct {
	// Dir receives the files; it is created (0700) when missing. Required.
	Dir string
	// Services names the identities to issue, from ServiceNames; empty means all.
	Services []string
	// Hosts are extra DNS names or IP addresses added to every server certificate.
	Hosts []string
	// Force replaces an existing CA (and every certificate) instead of refusing.
	Force bool
	// CAValidity and LeafValidity are how long the CA and the service certificates are
	// valid; 0 means DefaultCAValidity and DefaultLeafValidity.
	CAValidity, LeafValidity time.Duration
	// Now is the issue time; zero means time.Now().
	Now time.Time
}

// Written is one file Init wrote.
type Written struct {
	// Path is the file's path.
	Path string `json:"path"`
	// Mode is its permission bits.
	Mode os.FileMode `json:"mode"`
	// What describes it: "CA certificate", "CA key", "certificate", "key".
	What string `json:"what"`
	// Name is the identity (common name) of the certificate or key.
	Name string `json:"name"`
	// Hosts are a certificate's DNS and IP SANs; NotAfter its expiry.
	Hosts    []string  `json:"hosts,omitempty"`
	NotAfter time.Time `json:"not_after,omitzero"`
}

// Init makes a CA and a certificate per service in opts.Dir. It checks every option and
// creates every key and certificate in memory before it writes any file, and refuses
// (ErrCAExists) when the directory already holds ca.crt or ca.key unless opts.Force is set.
// Each file is written to a temporary name and renamed into place. It returns the files
// written, in order.
func Init(opts Options) ([]Written, error) {
	services, err := opts.resolve()
	if err != nil {
		return nil, err
	}
	if !opts.Force {
		for _, f := range []string{CACertFile, CAKeyFile} {
			p := filepath.Join(opts.Dir, f)
			if _, err := os.Lstat(p); err == nil {
				return nil, fmt.Errorf("certs init %s: %w (%s); pass --force to replace it and every certificate it signed", opts.Dir, ErrCAExists, p)
			} else if !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("certs init %s: %w", opts.Dir, err)
			}
		}
	}
	ca, err := NewCA("Berth CA", opts.Now, opts.CAValidity)
	if err != nil {
		return nil, fmt.Errorf("certs init %s: %w", opts.Dir, err)
	}
	type file struct {
		w    Written
		data []byte
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return nil, fmt.Errorf("certs init %s: %w", opts.Dir, err)
	}
	files := []file{
		{Written{Path: filepath.Join(opts.Dir, CACertFile), Mode: 0o644, What: "CA certificate", Name: ca.Cert.Subject.CommonName, NotAfter: ca.Cert.NotAfter}, ca.CertPEM()},
		{Written{Path: filepath.Join(opts.Dir, CAKeyFile), Mode: 0o600, What: "CA key", Name: ca.Cert.Subject.CommonName}, caKey},
	}
	for _, s := range services {
		hosts := s.Hosts
		if s.Usage == ServerAndClient {
			hosts = dedupe(slices.Concat(loopbackHosts, s.Hosts, opts.Hosts))
		}
		certPEM, keyPEM, err := ca.Issue(Request{Name: s.Name, Hosts: hosts, Usage: s.Usage, Now: opts.Now, Validity: opts.LeafValidity})
		if err != nil {
			return nil, fmt.Errorf("certs init %s: %w", opts.Dir, err)
		}
		leaf, err := ParseCertPEM(certPEM)
		if err != nil {
			return nil, fmt.Errorf("certs init %s: %w", opts.Dir, err)
		}
		files = append(files,
			file{Written{Path: filepath.Join(opts.Dir, s.Name+".crt"), Mode: 0o644, What: "certificate", Name: s.Name, Hosts: hosts, NotAfter: leaf.NotAfter}, certPEM},
			file{Written{Path: filepath.Join(opts.Dir, s.Name+".key"), Mode: 0o600, What: "key", Name: s.Name}, keyPEM})
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("certs init: %w", err)
	}
	var out []Written
	for _, f := range files {
		if err := writeFileAtomic(f.w.Path, f.data, f.w.Mode); err != nil {
			return out, fmt.Errorf("certs init %s: %w", opts.Dir, err)
		}
		out = append(out, f.w)
	}
	return out, nil
}

// resolve validates opts and returns the services to issue, with defaults applied to opts.
func (o *Options) resolve() ([]Service, error) {
	if strings.TrimSpace(o.Dir) == "" {
		return nil, errors.New("certs init: dir: required")
	}
	if o.CAValidity < 0 || o.LeafValidity < 0 {
		return nil, fmt.Errorf("certs init: validity: negative (CA %v, certificates %v)", o.CAValidity, o.LeafValidity)
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	for _, h := range o.Hosts {
		if err := ValidateHost(h); err != nil {
			return nil, fmt.Errorf("certs init: hosts: %w", err)
		}
	}
	all := DefaultServices()
	if len(o.Services) == 0 {
		return all, nil
	}
	var out []Service
	for _, name := range o.Services {
		i := slices.IndexFunc(all, func(s Service) bool { return s.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("certs init: services: unknown service %q (known: %s)", name, strings.Join(ServiceNames(), ", "))
		}
		if slices.ContainsFunc(out, func(s Service) bool { return s.Name == name }) {
			return nil, fmt.Errorf("certs init: services: %q is listed twice", name)
		}
		out = append(out, all[i])
	}
	return out, nil
}

// ValidateHost checks that h is an IP address or a DNS name (letters, digits, '-' and
// '.', labels of 1 to 63 characters, a leading "*." wildcard allowed).
func ValidateHost(h string) error {
	if net.ParseIP(h) != nil {
		return nil
	}
	name := strings.TrimPrefix(h, "*.")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("host %q: not an IP address or a DNS name of 1 to 253 characters", h)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %q: label %q: want 1 to 63 characters", h, label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %q: label %q: starts or ends with '-'", h, label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("host %q: character %q is not allowed in a DNS name", h, r)
			}
		}
	}
	return nil
}

func dedupe(xs []string) []string {
	var out []string
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// CA is a certificate authority: its certificate and private key.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// Key is its private key.
	Key crypto.Signer
}

// NewCA makes a self-signed ECDSA P-256 CA named commonName, valid from now (less a
// minute, for clocks slightly behind) for validity (0: DefaultCAValidity).
func NewCA(commonName string, now time.Time, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("new CA: empty common name")
	}
	if now.IsZero() {
		now = time.Now()
	}
	if validity == 0 {
		validity = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"berth"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA: parse: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA certificate and its PKCS#8 key from PEM files and checks that they
// belong together and that the certificate is a CA.
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certFile, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA %s: not a CA certificate", certFile)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load CA %s: key %s cannot sign", certFile, keyFile)
	}
	return &CA{Cert: cert, Key: signer}, nil
}

// CertPEM returns the CA certificate as PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM returns the CA key as PKCS#8 PEM.
func (ca *CA) KeyPEM() ([]byte, error) { return keyPEM(ca.Key) }

// Request describes a certificate to issue.
type Request struct {
	// Name is the common name. Required.
	Name string
	// Hosts are the DNS names and IP addresses the certificate is valid for; a server
	// certificate needs at least one.
	Hosts []string
	// Usage is server and client, or client only.
	Usage Usage
	// Now is the issue time (zero: time.Now()); Validity the lifetime (0:
	// DefaultLeafValidity). The certificate never outlives the CA.
	Now      time.Time
	Validity time.Duration
}

// Issue makes a new ECDSA P-256 key and a certificate for it signed by ca, and returns
// both as PEM (the key as PKCS#8).
func (ca *CA) Issue(req Request) (certPEM, keyPEMBytes []byte, err error) {
	if req.Name == "" {
		return nil, nil, errors.New("issue certificate: empty name")
	}
	if req.Usage == ServerAndClient && len(req.Hosts) == 0 {
		return nil, nil, fmt.Errorf("issue certificate %s: a server certificate needs at least one host", req.Name)
	}
	if req.Usage != ServerAndClient && req.Usage != ClientOnly {
		return nil, nil, fmt.Errorf("issue certificate %s: unknown usage %d", req.Name, req.Usage)
	}
	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	validity := req.Validity
	if validity == 0 {
		validity = DefaultLeafValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate %s: generate key: %w", req.Name, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate %s: %w", req.Name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: req.Name, Organization: []string{"berth"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	switch req.Usage {
	case ServerAndClient:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	case ClientOnly:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, h := range req.Hosts {
		if err := ValidateHost(h); err != nil {
			return nil, nil, fmt.Errorf("issue certificate %s: %w", req.Name, err)
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate %s: sign: %w", req.Name, err)
	}
	kp, err := keyPEM(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate %s: %w", req.Name, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp, nil
}

// ParseCertPEM parses the first certificate of a PEM block.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("parse certificate: no CERTIFICATE PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, nil
}

// ServerConfig returns a TLS server configuration that presents certFile/keyFile and
// requires client certificates that chain to caFile (mutual TLS). TLS 1.2 is the minimum.
func ServerConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server TLS %s: %w", certFile, err)
	}
	pool, err := LoadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// ClientConfig returns a TLS client configuration that trusts only servers whose
// certificate chains to caFile and, when certFile is set, presents certFile/keyFile.
// serverName, when set, overrides the name checked against the server's certificate
// (default: the host dialled).
func ClientConfig(certFile, keyFile, caFile, serverName string) (*tls.Config, error) {
	pool, err := LoadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("client TLS: %w", err)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if certFile != "" || keyFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client TLS %s: %w", certFile, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// LoadPool reads a PEM bundle of CA certificates.
func LoadPool(caFile string) (*x509.CertPool, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("load CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("load CA bundle %s: no PEM certificate found", caFile)
	}
	return pool, nil
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// writeFileAtomic writes data to a temporary file in path's directory with mode, syncs
// it, and renames it to path, so that a reader never sees a partial file and a key is
// never readable by others, not even for a moment.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
