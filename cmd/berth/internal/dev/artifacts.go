package dev

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	"github.com/berthdev/berth/cmd/berth/internal/dev/artifactserver"
	"github.com/berthdev/berth/pkg/run"
)

// startArtifacts serves the artifacts directory (<data>/artifacts unless --artifacts) over
// HTTP, with uploads, and over anonymous read-only FTP, so that packages can be deployed
// from URLs the way a fleet deploys them from its package servers.
func startArtifacts(ctx context.Context, e *env, g *run.Group) error {
	dir := e.cfg.ArtifactsDir
	if dir == "" {
		dir = filepath.Join(e.cfg.DataDir, "artifacts")
	}
	httpTLS, err := e.serverTLS("controller")
	if err != nil {
		return err
	}
	s, err := artifactserver.New(artifactserver.Config{
		Dir:        dir,
		HTTPTLS:    httpTLS,
		HTTPAddr:   net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.ArtifactsPort)),
		FTPAddr:    net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.FTPPort)),
		Logger:     e.log.With("service", "artifacts"),
		Registerer: e.reg,
	})
	if err != nil {
		return err
	}
	addrs, err := s.Listen()
	if err != nil {
		return fmt.Errorf("%w (is another berth dev running? pass --artifacts-port / --ftp-port)", err)
	}
	g.Add("artifacts", s.Run)
	e.artifactsDir = dir
	e.artifactsURL = e.scheme() + "://" + addrs.HTTP.String()
	e.ftpURL = "ftp://" + addrs.FTP.String()
	e.announce("artifacts", e.artifactsURL+"/ (GET /<file>; upload with PUT /<file> or a multipart POST /), files in "+dir)
	e.announce("artifacts FTP", e.ftpURL+"/ (anonymous, read-only)")
	return nil
}
