package dev

import (
	"context"
	"net"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/berthdev/berth/pkg/admin"
	"github.com/berthdev/berth/pkg/run"
)

// startAdmin serves /metrics (every embedded service's metrics and the process's),
// /healthz and /readyz for the whole of berth dev on one address.
func startAdmin(ctx context.Context, e *env, g *run.Group) error {
	e.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gather := append(prometheus.Gatherers{e.reg}, e.ownRegs...)
	if e.coordReg != nil {
		gather = append(gather, e.coordReg)
	}
	srv := admin.New(net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.AdminPort)), gather)
	httpTLS, err := e.serverTLS("controller")
	if err != nil {
		return err
	}
	srv.UseTLS(httpTLS)
	for _, c := range e.readyChecks {
		srv.AddCheck(c.name, c.check)
	}
	addr, err := srv.Listen()
	if err != nil {
		return err
	}
	g.Add("admin", srv.Run)
	e.announce("metrics", e.scheme()+"://"+addr.String()+"/metrics")
	return nil
}
