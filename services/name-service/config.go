package nameservice

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/pkg/logging"
	"github.com/berthdev/berth/pkg/natsbus"
)

// Defaults.
const (
	DefaultDNSAddr  = "127.0.0.1:5354"
	DefaultHTTPAddr = "127.0.0.1:7071"
	DefaultZone     = "ns.berth.internal"
	DefaultTTL      = 5 * time.Second
)

// Config is berth-name-service's configuration. Load it with pkg/config (defaults from
// DefaultConfig, then a YAML file, then BERTH_* variables, then flags); every field says its
// key, variable and flag. An embedding process (berth dev) fills it directly.
type Config struct {
	// Name names this replica in logs and in the ce-source of its messages.
	Name string `yaml:"name" env:"NAME" flag:"name" usage:"replica name (ce-source berth-name-service/<name>)"`
	// NATS is the NATS server URL (several, comma separated); unused when embedded.
	NATS string `yaml:"nats" env:"NATS_URL" flag:"nats" usage:"NATS server URL(s), comma separated"`
	// Coord lists coord members' client addresses (host:port, comma separated); unused when
	// embedded.
	Coord string `yaml:"coord" env:"COORD" flag:"coord" usage:"coord members (host:port, comma separated)"`
	// DNSAddr is host:port of the DNS server (UDP and TCP).
	DNSAddr string `yaml:"dns_listen" env:"DNS_LISTEN" flag:"dns-listen" usage:"host:port of the DNS server, UDP and TCP"`
	// HTTPAddr is host:port of the HTTP API, /metrics, /healthz and /readyz.
	HTTPAddr string `yaml:"http_listen" env:"HTTP_LISTEN" flag:"http-listen" usage:"host:port of the HTTP API and /metrics"`
	// Zones are the DNS zones served; every service has a name in each.
	Zones []string `yaml:"zones" env:"ZONES" flag:"zone" usage:"DNS zone to serve"`
	// TTL is the TTL of answers for services whose tree node sets none, and of the SOA,
	// NS and negative answers.
	TTL time.Duration `yaml:"ttl" env:"TTL" flag:"ttl" usage:"DNS TTL when the service tree sets none"`
	// DCSubnets map client subnets to datacenters ("10.1.0.0/16=dc1"), in addition to the
	// inventory's host addresses.
	DCSubnets []string `yaml:"dc_subnets" env:"DC_SUBNETS" flag:"dc-subnet" usage:"client subnet to datacenter, SUBNET=DC"`
	// NSAddrs are the addresses ns.<zone> resolves to.
	NSAddrs []string `yaml:"ns_addresses" env:"NS_ADDRESSES" flag:"ns-address" usage:"address of ns.<zone>"`
	// MaxUDPSize caps the EDNS buffer size used over UDP.
	MaxUDPSize int `yaml:"max_udp_size" env:"MAX_UDP_SIZE" flag:"max-udp-size" usage:"largest UDP response, 512 to 65535"`
	// UDPWorkers is the number of goroutines reading the UDP socket; 0 means one per CPU.
	UDPWorkers int `yaml:"udp_workers" env:"UDP_WORKERS" flag:"udp-workers" usage:"goroutines reading the UDP socket (0: one per CPU)"`
	// RateLimit enables per-source response rate limiting (responses per second per /24 or
	// /56); 0 disables it.
	RateLimit float64 `yaml:"rate_limit" env:"RATE_LIMIT" flag:"rate-limit" usage:"UDP responses per second per client network (0: off)"`
	// RateBurst is the burst allowed above RateLimit; 0 means RateLimit.
	RateBurst int `yaml:"rate_burst" env:"RATE_BURST" flag:"rate-burst" usage:"burst above --rate-limit"`
	// RateSlip sends one response in RateSlip truncated (instead of dropping it) when over
	// the limit; 0 drops all.
	RateSlip int `yaml:"rate_slip" env:"RATE_SLIP" flag:"rate-slip" usage:"over the limit, every Nth response is sent truncated (0: drop all)"`
	// HTTPTLS serves the HTTP API over HTTPS (--http-cert-file, --http-key-file); with
	// trusted_ca_file (--http-trusted-ca-file) clients need a certificate of that CA.
	HTTPTLS certs.Files `yaml:"http_tls" env:"HTTP_" flag:"http-"`
	// TokensFile names the API token file (pkg/apitoken, the controller's format); empty
	// leaves the API open to anyone who reaches it, and unaudited.
	TokensFile string `yaml:"tokens_file" env:"TOKENS_FILE" flag:"tokens-file" usage:"API token file (roles and scopes; empty: the API is open and unaudited)"`
	// CoordTLS secures the link to coord (--coord-cert-file, ...); unused when embedded.
	CoordTLS certs.Files `yaml:"coord_tls" env:"COORD_" flag:"coord-"`
	// NATSAuth is NATS's TLS and login (--nats-cert-file, --nats-nkey-seed-file, ...);
	// unused when embedded.
	NATSAuth natsbus.Auth `yaml:"nats_auth" env:"NATS_" flag:"nats-"`
	// Log selects the log format and level.
	Log logging.Config `yaml:"log"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Name:       "default",
		NATS:       "nats://127.0.0.1:4222",
		Coord:      "127.0.0.1:7379",
		DNSAddr:    DefaultDNSAddr,
		HTTPAddr:   DefaultHTTPAddr,
		Zones:      []string{DefaultZone},
		TTL:        DefaultTTL,
		MaxUDPSize: 1232,
		RateSlip:   2,
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	if c.Name == "" {
		return errors.New("name: empty")
	}
	if _, _, err := net.SplitHostPort(c.DNSAddr); err != nil {
		return fmt.Errorf("dns_listen %q: want host:port", c.DNSAddr)
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return fmt.Errorf("http_listen %q: want host:port", c.HTTPAddr)
	}
	if len(c.Zones) == 0 {
		return errors.New("zones: at least one zone is required")
	}
	seen := map[string]bool{}
	for i, z := range c.Zones {
		name, err := dnsview.CanonicalZone(z)
		if err != nil {
			return fmt.Errorf("zones[%d]: %w", i, err)
		}
		if seen[name] {
			return fmt.Errorf("zones[%d]: %s is listed twice", i, z)
		}
		seen[name] = true
	}
	if c.TTL < time.Second || c.TTL > 24*time.Hour {
		return fmt.Errorf("ttl %s: want 1s to 24h", c.TTL)
	}
	if _, err := dnsview.ParseSubnets("dc_subnets", c.DCSubnets); err != nil {
		return err
	}
	if _, err := c.nsAddrs(); err != nil {
		return err
	}
	switch {
	case c.MaxUDPSize < 512 || c.MaxUDPSize > 65535:
		return fmt.Errorf("max_udp_size %d: want 512 to 65535", c.MaxUDPSize)
	case c.UDPWorkers < 0:
		return fmt.Errorf("udp_workers %d: want 0 or more", c.UDPWorkers)
	case c.RateLimit < 0:
		return fmt.Errorf("rate_limit %v: want 0 (off) or more", c.RateLimit)
	case c.RateBurst < 0:
		return fmt.Errorf("rate_burst %d: want 0 or more", c.RateBurst)
	case c.RateSlip < 0:
		return fmt.Errorf("rate_slip %d: want 0 or more", c.RateSlip)
	}
	if c.TokensFile != "" {
		set, err := apitoken.Load(c.TokensFile)
		if err != nil {
			return fmt.Errorf("tokens_file: %w", err)
		}
		if set.Len() == 0 {
			return fmt.Errorf("tokens_file %s: holds no tokens (leave tokens_file empty for an open API)", c.TokensFile)
		}
	}
	if err := c.HTTPTLS.ValidateServer("http_tls"); err != nil {
		return err
	}
	if err := c.CoordTLS.ValidateClient("coord_tls"); err != nil {
		return err
	}
	if err := c.NATSAuth.Validate("nats_auth"); err != nil {
		return err
	}
	return c.Log.Validate()
}

func (c *Config) nsAddrs() ([]netip.Addr, error) {
	var out []netip.Addr
	for i, s := range c.NSAddrs {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("ns_addresses[%d] %q: not an IP address", i, s)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// NATSURLs splits NATS.
func (c *Config) NATSURLs() []string { return splitList(c.NATS) }

// CoordEndpoints splits Coord.
func (c *Config) CoordEndpoints() []string { return splitList(c.Coord) }

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
