package dev

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/berthdev/berth/pkg/run"
	nameservice "github.com/berthdev/berth/services/name-service"
)

// startNames runs berth-name-service: the DNS server on the DNS port (UDP and TCP) and
// the HTTP resolve API on the names port (the CLI's default for berth resolve).
func startNames(ctx context.Context, e *env, g *run.Group) error {
	cfg := nameservice.DefaultConfig()
	cfg.Name = "dev"
	cfg.DNSAddr = net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.DNSPort))
	cfg.HTTPAddr = net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.NamesPort))
	cfg.HTTPTLS = e.serverFiles("name-service")
	cfg.TokensFile = e.cfg.TokensFile
	s, err := nameservice.New(cfg, nameservice.Deps{Bus: e.bus, Coord: e.coord, Logger: e.log, Registerer: e.reg})
	if err != nil {
		return fmt.Errorf("name service: %w", err)
	}
	addrs, err := s.Listen()
	if err != nil {
		return fmt.Errorf("name service: %w (is another berth dev running? pass --dns-port / --names-port)", err)
	}
	g.Add("name-service", s.Run)
	e.namesURL = e.scheme() + "://" + addrs.HTTP.String()
	e.announce("names API", e.namesURL)
	e.announce("DNS", addrs.DNSUDP.String()+" (udp and tcp), zone ns.berth.internal")
	e.dnsAddr = addrs.DNSUDP.String()
	return nil
}
