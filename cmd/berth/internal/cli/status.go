package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthdev/berth/pkg/coordclient"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// statusListMax is how many services or hosts the text output lists before it lists only
// those that need attention.
const statusListMax = 30

// statusReport is `berth status`: one section per source; a section that could not be
// read has Error set and the others are still filled.
type statusReport struct {
	Context     string               `json:"context,omitempty"`
	Coord       statusCoord          `json:"coord"`
	Hosts       statusHosts          `json:"hosts"`
	Services    statusServices       `json:"services"`
	Deployments statusDeploymentList `json:"deployments"`
}

type statusCoord struct {
	Endpoints []string     `json:"endpoints"`
	Members   []memberJSON `json:"members"`
	Leader    string       `json:"leader,omitempty"`
	Revision  int64        `json:"revision,omitempty"`
	Error     string       `json:"error,omitempty"`
}

type statusHosts struct {
	Up      int          `json:"up"`
	Down    int          `json:"down"`
	Missing int          `json:"missing"`
	Hosts   []statusHost `json:"hosts"`
	Error   string       `json:"error,omitempty"`
}

type statusHost struct {
	ID       string `json:"id"`
	DC       string `json:"dc"`
	State    string `json:"state"`
	Liveness string `json:"liveness"`
}

type statusServices struct {
	URL      string          `json:"url"`
	Services []statusService `json:"services"`
	Error    string          `json:"error,omitempty"`
}

type statusService struct {
	Service   string `json:"service"`
	Instances int    `json:"instances"`
	Healthy   int    `json:"healthy"`
	// Health is healthy, degraded, down, panic or no_instances.
	Health string `json:"health"`
}

type statusDeploymentList struct {
	URL     string             `json:"url"`
	Running []statusDeployment `json:"running"`
	Error   string             `json:"error,omitempty"`
}

type statusDeployment struct {
	ID        string `json:"id"`
	Service   string `json:"service"`
	Version   string `json:"version"`
	State     string `json:"state"`
	Succeeded int32  `json:"succeeded"`
	Total     int32  `json:"total"`
}

// failed counts the sections that could not be read.
func (r *statusReport) failed() int {
	n := 0
	for _, e := range []string{r.Coord.Error, r.Services.Error, r.Deployments.Error} {
		if e != "" {
			n++
		}
	}
	return n
}

func newStatusCmd() *cobra.Command {
	var (
		coord   string
		timeout time.Duration
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster at a glance: coord, hosts, services' health, running deployments",
		Long: `berth status reads, at once and each bounded by --timeout: coord's members and leader, the
hosts of the inventory and whether their agents are up (/berth/hosts, /berth/alive), every
service the name service knows with its healthy instances (GET /v1/services), and the
deployments that have not ended (the controller's GET /v1/deployments).

A source that does not answer is reported in its section and the others are still shown;
the exit status is then 1. Endpoints come from the flags, the environment, the CLI context
(berth context) or berth dev's defaults.`,
		Example: `  berth status
  berth --context prod status --json`,
		Args: cobra.NoArgs,
	}
	ctrl := controllerFlag(cmd)
	names := addNamesFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&coord, "coord", defaultCoordEndpoint, "coord members, host:port comma separated (also $"+envCoordEndpoints+")")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "bound of each source")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if timeout <= 0 {
			return fmt.Errorf("--timeout %s: want a positive duration", timeout)
		}
		base, err := controllerURL(cmd, *ctrl)
		if err != nil {
			return err
		}
		nc, err := names()
		if err != nil {
			return err
		}
		r, err := resolveSetting(cmd, settingCoord, "coord", coord)
		if err != nil {
			return err
		}
		eps := splitEndpoints(r.Value)
		if len(eps) == 0 {
			return fmt.Errorf("--coord %q: no endpoint; want host:port[,host:port...]", r.Value)
		}
		rep := gatherStatus(cmd.Context(), timeout, eps, nc, newAPIClient(base))
		rep.Context = selectionOf(cmd).name
		if cmd.Context().Err() != nil {
			return &ExitError{Code: 130}
		}
		out := cmd.OutOrStdout()
		if asJSON {
			if err := printJSON(out, rep); err != nil {
				return err
			}
		} else if err := printStatus(out, rep); err != nil {
			return err
		}
		if n := rep.failed(); n > 0 {
			return &ExitError{Code: 1}
		}
		return nil
	}
	return cmd
}

// gatherStatus reads the three sources concurrently, each bounded by timeout, and returns
// when all have answered or timed out.
func gatherStatus(ctx context.Context, timeout time.Duration, eps []string, nc *namesClient, ac *apiClient) *statusReport {
	rep := &statusReport{
		Coord:       statusCoord{Endpoints: eps, Members: []memberJSON{}},
		Hosts:       statusHosts{Hosts: []statusHost{}},
		Services:    statusServices{URL: nc.base, Services: []statusService{}},
		Deployments: statusDeploymentList{URL: ac.base, Running: []statusDeployment{}},
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		statusFromCoord(ctx, timeout, rep)
	})
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		statusFromNames(ctx, nc, rep)
	})
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		statusFromController(ctx, ac, rep)
	})
	wg.Wait()
	return rep
}

func statusFromCoord(ctx context.Context, timeout time.Duration, rep *statusReport) {
	eps := rep.Coord.Endpoints
	at := strings.Join(eps, ",")
	explain := func(err error) string {
		switch {
		case errors.Is(err, coordclient.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
			return fmt.Sprintf("no coord reachable at %s: is `berth dev` running? set --coord, or pick a context with `berth context use`", at)
		case errors.Is(err, coordclient.ErrNoLeader):
			return fmt.Sprintf("coord at %s has no leader (an election is in progress or quorum is lost)", at)
		}
		return fmt.Sprintf("coord at %s: %v", at, err)
	}
	tlsCfg, err := cliTLS(ctx)
	if err != nil {
		rep.Coord.Error = err.Error()
		rep.Hosts.Error = rep.Coord.Error
		return
	}
	cl, err := coordclient.New(ctx, coordclient.Config{Endpoints: eps, DialTimeout: timeout, RequestTimeout: timeout, TLS: tlsCfg})
	if err != nil {
		rep.Coord.Error = explain(err)
		rep.Hosts.Error = rep.Coord.Error
		return
	}
	defer cl.Close()
	ms, err := cl.Members(ctx)
	if err != nil {
		rep.Coord.Error = explain(err)
		rep.Hosts.Error = rep.Coord.Error
		return
	}
	rep.Coord.Members = toMembersJSON(ms)
	for _, m := range ms {
		if m.IsLeader {
			rep.Coord.Leader = m.Name
		}
	}
	if st, err := cl.Status(ctx, eps[0]); err == nil {
		rep.Coord.Revision = st.Revision
	}
	rows, err := hostsRead(ctx, cl)
	if err != nil {
		rep.Hosts.Error = explain(err)
		return
	}
	for _, r := range rows {
		h := statusHost{ID: r.Host.GetId(), DC: r.Host.GetDc(), State: hostsState(r.Host.GetState()), Liveness: r.liveness()}
		switch h.Liveness {
		case "up":
			rep.Hosts.Up++
		case "down":
			rep.Hosts.Down++
		default:
			rep.Hosts.Missing++
		}
		rep.Hosts.Hosts = append(rep.Hosts.Hosts, h)
	}
}

func statusFromNames(ctx context.Context, nc *namesClient, rep *statusReport) {
	var body struct {
		Services []struct {
			Service    string `json:"service"`
			Instances  int    `json:"instances"`
			Selectable int    `json:"selectable"`
			Panic      bool   `json:"panic"`
		} `json:"services"`
	}
	if _, err := nc.do(ctx, http.MethodGet, "/v1/services", nil, &body); err != nil {
		if ctx.Err() != nil {
			err = unreachable("name service", nc.base, "--names", ctx.Err())
		}
		rep.Services.Error = err.Error()
		return
	}
	for _, s := range body.Services {
		h := "healthy"
		switch {
		case s.Panic:
			h = "panic"
		case s.Instances == 0:
			h = "no_instances"
		case s.Selectable == 0:
			h = "down"
		case s.Selectable < s.Instances:
			h = "degraded"
		}
		rep.Services.Services = append(rep.Services.Services, statusService{Service: s.Service, Instances: s.Instances, Healthy: s.Selectable, Health: h})
	}
}

func statusFromController(ctx context.Context, ac *apiClient, rep *statusReport) {
	b, err := ac.call(ctx, http.MethodGet, "/v1/deployments?limit=1000", nil)
	if err == nil {
		var deps []*controllerv1.Deployment
		deps, err = listOf(b, "deployments", func() *controllerv1.Deployment { return &controllerv1.Deployment{} })
		for _, d := range deps {
			if terminalState(d.GetStatus().GetState()) {
				continue
			}
			c := d.GetStatus().GetCounts()
			rep.Deployments.Running = append(rep.Deployments.Running, statusDeployment{ID: d.GetId(), Service: d.GetService(),
				Version: d.GetVersion(), State: d.GetStatus().GetState(), Succeeded: c.GetSucceeded(), Total: c.GetTotal()})
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = unreachable("controller", ac.base, "--controller", ctx.Err())
		}
		rep.Deployments.Error = err.Error()
	}
}

// printStatus writes the report as text: a summary line per source, then the details that
// need attention.
func printStatus(w io.Writer, r *statusReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if r.Context != "" {
		fmt.Fprintf(tw, "context\t%s\n", r.Context)
	}
	switch {
	case r.Coord.Error != "":
		fmt.Fprintf(tw, "coord\t%s\n", r.Coord.Error)
	default:
		leader := "no leader"
		for _, m := range r.Coord.Members {
			if m.IsLeader {
				leader = "leader " + m.Name
				if m.ClientAddr != "" {
					leader += " (" + m.ClientAddr + ")"
				}
			}
		}
		fmt.Fprintf(tw, "coord\t%s, %d member%s, revision %d\n", leader, len(r.Coord.Members), plural(len(r.Coord.Members)), r.Coord.Revision)
	}
	if r.Hosts.Error != "" {
		if r.Hosts.Error != r.Coord.Error {
			fmt.Fprintf(tw, "hosts\t%s\n", r.Hosts.Error)
		}
	} else {
		fmt.Fprintf(tw, "hosts\t%d up, %d down, %d missing\n", r.Hosts.Up, r.Hosts.Down, r.Hosts.Missing)
	}
	if r.Services.Error != "" {
		fmt.Fprintf(tw, "services\t%s\n", r.Services.Error)
	} else {
		healthy := 0
		for _, s := range r.Services.Services {
			if s.Health == "healthy" {
				healthy++
			}
		}
		fmt.Fprintf(tw, "services\t%d, %d healthy\n", len(r.Services.Services), healthy)
	}
	if r.Deployments.Error != "" {
		fmt.Fprintf(tw, "deployments\t%s\n", r.Deployments.Error)
	} else if len(r.Deployments.Running) == 0 {
		fmt.Fprintln(tw, "deployments\tnone running")
	} else {
		fmt.Fprintf(tw, "deployments\t%d running\n", len(r.Deployments.Running))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(r.Coord.Members) > 1 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MEMBER\tCLIENT\tLEADER")
		for _, m := range r.Coord.Members {
			l := ""
			if m.IsLeader {
				l = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, dash(m.ClientAddr), l)
		}
		tw.Flush()
	}
	if hosts := r.Hosts.Hosts; len(hosts) > 0 {
		shown := hosts
		if len(hosts) > statusListMax {
			shown = nil
			for _, h := range hosts {
				if h.Liveness != "up" {
					shown = append(shown, h)
				}
			}
		}
		if len(shown) > 0 {
			fmt.Fprintln(w)
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HOST\tDC\tSTATE\tLIVENESS")
			for _, h := range shown {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.ID, dash(h.DC), h.State, h.Liveness)
			}
			tw.Flush()
		}
	}
	if svcs := r.Services.Services; len(svcs) > 0 {
		shown := svcs
		if len(svcs) > statusListMax {
			shown = nil
			for _, s := range svcs {
				if s.Health != "healthy" {
					shown = append(shown, s)
				}
			}
		}
		if len(shown) > 0 {
			fmt.Fprintln(w)
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tINSTANCES\tHEALTHY\tHEALTH")
			for _, s := range shown {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", s.Service, s.Instances, s.Healthy, strings.ReplaceAll(s.Health, "_", " "))
			}
			tw.Flush()
		}
	}
	if deps := r.Deployments.Running; len(deps) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEPLOYMENT\tSERVICE\tVERSION\tSTATE\tTARGETS DONE")
		for _, d := range deps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\n", d.ID, d.Service, d.Version, d.State, d.Succeeded, d.Total)
		}
		tw.Flush()
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
