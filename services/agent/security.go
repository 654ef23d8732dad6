package agent

import (
	"crypto/tls"
	"fmt"
	"net"
)

// validateSecurity checks the TLS and NATS login settings.
func (c *Config) validateSecurity() error {
	if err := c.HTTPTLS.ValidateServer("http_tls"); err != nil {
		return err
	}
	if err := c.CoordTLS.ValidateClient("coord_tls"); err != nil {
		return err
	}
	return c.NATSAuth.Validate("nats_auth")
}

// loopbackOnly reports whether a listen address (host:port) is reachable from this host
// only: a loopback IP or localhost.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// nameAPITLS is the local name API's TLS: http_tls when name_api_listen is reachable from
// other hosts, nil (plain HTTP) on loopback, where the host's own apps call it.
func (c *Config) nameAPITLS() (*tls.Config, error) {
	if loopbackOnly(c.NameAPIListen) {
		return nil, nil
	}
	cfg, err := c.HTTPTLS.ServerTLS()
	if err != nil {
		return nil, fmt.Errorf("http_tls: %w", err)
	}
	return cfg, nil
}
