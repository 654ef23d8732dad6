package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
)

// The coord paths `berth hosts` reads (DESIGN §3).
const (
	hostsPathHosts = "/berth/hosts"
	hostsPathAlive = "/berth/alive"
	hostsPathAlloc = "/berth/alloc"
)

// hostsOptions are the persistent flags of `berth hosts`.
type hostsOptions struct {
	coord   string
	timeout time.Duration
	json    bool
}

func newHostsCmd() *cobra.Command {
	o := &hostsOptions{}
	cmd := &cobra.Command{
		Use:   "hosts",
		Short: "List, inspect, drain and undrain the hosts of the inventory",
		Long: `berth hosts reads the host inventory from coord: what berth-cmdb-sync keeps there from the
CMDB (/berth/hosts), whether each host's agent is alive (/berth/alive) and its allocations
(/berth/alloc). drain stops the scheduler from placing new containers on a host (those
already there stay); undrain lets it place again.

The LIVENESS column is "up" while the host's agent holds its alive node, "down" once
cmdb-sync has marked the host down (its agent gone longer than the grace period), and
"missing" in between or before any agent was seen.

coord is --coord (host:port, comma separated), else $` + hostsEnvCoord + `, else ` + hostsDefaultCoord + `
(berth dev's coord).`,
		Example: `  berth hosts ls
  berth hosts ls --dc dc1 --state draining --json
  berth hosts show h-017
  berth hosts drain h-017 --reason "disk replacement"
  berth hosts undrain h-017`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.coord, "coord", hostsDefaultCoord, "coord members, host:port comma separated (also $"+hostsEnvCoord+")")
	pf.DurationVar(&o.timeout, "timeout", 10*time.Second, "bound of the whole command")
	pf.BoolVar(&o.json, "json", false, "print JSON instead of text")
	cmd.AddCommand(newHostsLsCmd(o), newHostsShowCmd(o), newHostsDrainCmd(o, true), newHostsDrainCmd(o, false))
	return cmd
}

// hostsEnvCoord and hostsDefaultCoord are where `berth hosts` finds coord, as `berth
// coord` does.
const (
	hostsEnvCoord     = "BERTH_COORD_ENDPOINTS"
	hostsDefaultCoord = "127.0.0.1:7379"
)

// run connects to coord and runs fn bounded by --timeout.
func (o *hostsOptions) run(cmd *cobra.Command, fn func(ctx context.Context, cl *coordclient.Client) error) error {
	r, err := resolveSetting(cmd, settingCoord, "coord", o.coord)
	if err != nil {
		return err
	}
	raw := r.Value
	var eps []string
	for ep := range strings.SplitSeq(raw, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		return fmt.Errorf("--coord %q: no endpoint; want host:port[,host:port...]", raw)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", o.timeout)
	}
	tlsCfg, err := cliTLS(cmd.Context())
	if err != nil {
		return err
	}
	cl, err := coordclient.New(cmd.Context(), coordclient.Config{Endpoints: eps, DialTimeout: o.timeout, RequestTimeout: o.timeout, TLS: tlsCfg})
	if err != nil {
		return fmt.Errorf("--coord %q: %w", raw, err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	err = fn(ctx, cl)
	var ce *coordclient.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, coordclient.ErrUnavailable) && errors.As(err, &ce) && ce.MemberID == 0:
		return fmt.Errorf("no coord reachable at %s (is berth dev or berth-coord running? set --coord)", strings.Join(eps, ","))
	case errors.Is(err, context.DeadlineExceeded) && cmd.Context().Err() == nil:
		return fmt.Errorf("no answer from coord at %s within %s: %w", strings.Join(eps, ","), o.timeout, err)
	}
	return err
}

var hostsUnmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}

// hostsRow is one host as `berth hosts` shows it.
type hostsRow struct {
	Host        *inventoryv1.Host
	Alive       bool
	Agent       *agentv1.AgentInfo
	Allocations int
}

// liveness is what the LIVENESS column says.
func (r hostsRow) liveness() string {
	switch {
	case r.Alive:
		return "up"
	case r.Host.GetLiveness() == inventoryv1.Liveness_LIVENESS_DOWN:
		return "down"
	}
	return "missing"
}

func hostsState(s inventoryv1.HostState) string {
	switch s {
	case inventoryv1.HostState_HOST_STATE_READY:
		return "ready"
	case inventoryv1.HostState_HOST_STATE_DRAINING:
		return "draining"
	case inventoryv1.HostState_HOST_STATE_DOWN:
		return "down"
	}
	return "unknown"
}

// note is the NOTE column: why a host drains, and fingerprint mismatches.
func (r hostsRow) note() string {
	h := r.Host
	var n []string
	if h.GetDrained() {
		d := "drained"
		if h.GetDrainReason() != "" {
			d += ": " + h.GetDrainReason()
		}
		n = append(n, d)
	}
	if h.GetCmdbDraining() {
		n = append(n, "CMDB maintenance")
	}
	if !h.GetInCmdb() {
		n = append(n, "left the CMDB")
	}
	if h.GetMismatch() != "" {
		n = append(n, "mismatch: "+h.GetMismatch())
	}
	return strings.Join(n, "; ")
}

// hostsRead reads every host with its liveness and allocation count.
func hostsRead(ctx context.Context, cl *coordclient.Client) ([]hostsRow, error) {
	hosts, err := cl.List(ctx, hostsPathHosts)
	if err != nil {
		return nil, err
	}
	alive, err := cl.List(ctx, hostsPathAlive)
	if err != nil {
		return nil, err
	}
	guards, err := cl.List(ctx, hostsPathAlloc)
	if err != nil {
		return nil, err
	}
	agents := map[string]*agentv1.AgentInfo{}
	for _, n := range alive.Nodes {
		if n.Version == 0 {
			continue
		}
		a := &agentv1.AgentInfo{}
		_ = hostsUnmarshal.Unmarshal(n.Value, a)
		agents[strings.TrimPrefix(n.Path, hostsPathAlive+"/")] = a
	}
	counts := map[string]int{}
	for _, n := range guards.Nodes {
		g := &inventoryv1.AllocationGuard{}
		if n.Version > 0 && hostsUnmarshal.Unmarshal(n.Value, g) == nil {
			counts[strings.TrimPrefix(n.Path, hostsPathAlloc+"/")] = int(g.GetCount())
		}
	}
	var out []hostsRow
	for _, n := range hosts.Nodes {
		if n.Version == 0 {
			continue
		}
		h := &inventoryv1.Host{}
		if err := hostsUnmarshal.Unmarshal(n.Value, h); err != nil {
			return nil, fmt.Errorf("read %s: %w", n.Path, err)
		}
		a, ok := agents[h.GetId()]
		out = append(out, hostsRow{Host: h, Alive: ok, Agent: a, Allocations: counts[h.GetId()]})
	}
	slices.SortFunc(out, func(a, b hostsRow) int { return strings.Compare(a.Host.GetId(), b.Host.GetId()) })
	return out, nil
}

// hostsJSON is a host in --json output.
type hostsJSON struct {
	ID          string          `json:"id"`
	DC          string          `json:"dc"`
	State       string          `json:"state"`
	Liveness    string          `json:"liveness"`
	Allocations int             `json:"allocations"`
	Host        json.RawMessage `json:"host"`
	Agent       json.RawMessage `json:"agent,omitempty"`
}

func hostsToJSON(r hostsRow) hostsJSON {
	j := hostsJSON{ID: r.Host.GetId(), DC: r.Host.GetDc(), State: hostsState(r.Host.GetState()), Liveness: r.liveness(),
		Allocations: r.Allocations}
	j.Host, _ = protojson.Marshal(r.Host)
	if r.Agent != nil {
		j.Agent, _ = protojson.Marshal(r.Agent)
	}
	return j
}

func hostsBytes(b uint64) string {
	if b == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(b)/(1<<30), 'f', 1, 64) + "GiB"
}

func newHostsLsCmd(o *hostsOptions) *cobra.Command {
	var dc, state string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the hosts with their state, liveness and allocations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch state {
			case "", "ready", "draining", "down":
			default:
				return fmt.Errorf("--state %q: want ready, draining or down", state)
			}
			return o.run(cmd, func(ctx context.Context, cl *coordclient.Client) error {
				rows, err := hostsRead(ctx, cl)
				if err != nil {
					return err
				}
				rows = slices.DeleteFunc(rows, func(r hostsRow) bool {
					return (dc != "" && r.Host.GetDc() != dc) || (state != "" && hostsState(r.Host.GetState()) != state)
				})
				return hostsPrintList(cmd.OutOrStdout(), rows, o.json)
			})
		},
	}
	cmd.Flags().StringVar(&dc, "dc", "", "only the hosts of this datacenter")
	cmd.Flags().StringVar(&state, "state", "", "only the hosts in this state (ready, draining, down)")
	return cmd
}

func hostsPrintList(w io.Writer, rows []hostsRow, asJSON bool) error {
	if asJSON {
		out := make([]hostsJSON, 0, len(rows))
		for _, r := range rows {
			out = append(out, hostsToJSON(r))
		}
		return printJSON(w, out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tDC\tRACK\tIP\tSTATE\tLIVENESS\tALLOCS\tCPU\tMEMORY\tNOTE")
	for _, r := range rows {
		h := r.Host
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%g\t%s\t%s\n", h.GetId(), h.GetDc(), hostsDash(h.GetRack()), hostsDash(h.GetIp()),
			hostsState(h.GetState()), r.liveness(), r.Allocations, h.GetMaxContainers(), float64(h.GetCpuMillis())/1000,
			hostsBytes(h.GetMemoryBytes()), r.note())
	}
	return tw.Flush()
}

func hostsDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newHostsShowCmd(o *hostsOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show HOST",
		Short: "Show one host: its inventory record, its agent and its allocations",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := coordclient.ValidatePath(hostsPathHosts+"/"+id, false); err != nil || strings.Contains(id, "/") {
				return fmt.Errorf("host %q: not a host id", id)
			}
			return o.run(cmd, func(ctx context.Context, cl *coordclient.Client) error {
				n, err := cl.Get(ctx, hostsPathHosts+"/"+id)
				if errors.Is(err, coordclient.ErrNotFound) {
					return fmt.Errorf("host %s is not in the inventory (berth hosts ls lists them)", id)
				}
				if err != nil {
					return err
				}
				h := &inventoryv1.Host{}
				if err := hostsUnmarshal.Unmarshal(n.Value, h); err != nil {
					return fmt.Errorf("read %s: %w", n.Path, err)
				}
				row := hostsRow{Host: h}
				if a, err := cl.Get(ctx, hostsPathAlive+"/"+id); err == nil {
					row.Alive, row.Agent = true, &agentv1.AgentInfo{}
					_ = hostsUnmarshal.Unmarshal(a.Value, row.Agent)
				} else if !errors.Is(err, coordclient.ErrNotFound) {
					return err
				}
				list, err := cl.List(ctx, hostsPathAlloc+"/"+id)
				if err != nil {
					return err
				}
				var allocs []*inventoryv1.Allocation
				for _, an := range list.Nodes {
					a := &inventoryv1.Allocation{}
					if an.Version > 0 && hostsUnmarshal.Unmarshal(an.Value, a) == nil {
						allocs = append(allocs, a)
					}
				}
				row.Allocations = len(allocs)
				return hostsPrintOne(cmd.OutOrStdout(), row, allocs, o.json)
			})
		},
	}
}

func hostsPrintOne(w io.Writer, r hostsRow, allocs []*inventoryv1.Allocation, asJSON bool) error {
	if asJSON {
		type showJSON struct {
			hostsJSON
			AllocationList []json.RawMessage `json:"allocation_list"`
		}
		out := showJSON{hostsJSON: hostsToJSON(r), AllocationList: []json.RawMessage{}}
		for _, a := range allocs {
			b, _ := protojson.Marshal(a)
			out.AllocationList = append(out.AllocationList, b)
		}
		return printJSON(w, out)
	}
	h := r.Host
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	labels := make([]string, 0, len(h.GetLabels()))
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range h.GetLabels() {
			if !yield(k) {
				return
			}
		}
	}) {
		labels = append(labels, k+"="+h.GetLabels()[k])
	}
	for _, kv := range [][2]string{
		{"host", h.GetId()}, {"dc", h.GetDc()}, {"rack", hostsDash(h.GetRack())}, {"ip", hostsDash(h.GetIp())},
		{"state", hostsState(h.GetState())}, {"liveness", r.liveness()}, {"note", hostsDash(r.note())},
		{"cpu", fmt.Sprintf("%g cores", float64(h.GetCpuMillis())/1000)}, {"memory", hostsBytes(h.GetMemoryBytes())},
		{"disk", hostsBytes(h.GetDiskBytes())}, {"labels", hostsDash(strings.Join(labels, ","))},
		{"containers", fmt.Sprintf("%d of %d", r.Allocations, h.GetMaxContainers())},
		{"ip pools", hostsDash(strings.Join(h.GetIpPools(), ","))}, {"source", hostsDash(h.GetSource())},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	if a := r.Agent; a != nil {
		fmt.Fprintf(tw, "agent:\t%s, %d CPUs, %s, %s %s\n", hostsDash(a.GetAgentVersion()), a.GetCpuCount(), hostsBytes(a.GetMemoryBytes()), a.GetOs(), a.GetKernel())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(allocs) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ALLOCATION\tSERVICE\tDEPLOYMENT\tIP\tCPU\tMEMORY")
	for _, a := range allocs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g\t%s\n", a.GetId(), a.GetService(), hostsDash(a.GetDeploymentId()), a.GetIp(),
			float64(a.GetResources().GetCpuMillis())/1000, hostsBytes(a.GetResources().GetMemoryBytes()))
	}
	return tw.Flush()
}

// newHostsDrainCmd is `berth hosts drain` (drain true) or `berth hosts undrain`.
func newHostsDrainCmd(o *hostsOptions, drain bool) *cobra.Command {
	var reason string
	use, short := "drain HOST", "Stop placing new containers on a host (those there stay)"
	if !drain {
		use, short = "undrain HOST", "Let the scheduler place containers on a drained host again"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := coordclient.ValidatePath(hostsPathHosts+"/"+id, false); err != nil || strings.Contains(id, "/") {
				return fmt.Errorf("host %q: not a host id", id)
			}
			return o.run(cmd, func(ctx context.Context, cl *coordclient.Client) error {
				h, err := hostsSetDrained(ctx, cl, id, drain, reason)
				if err != nil {
					return err
				}
				if o.json {
					return printJSON(cmd.OutOrStdout(), hostsToJSON(hostsRow{Host: h}))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "host %s is %s\n", id, hostsState(h.GetState()))
				return nil
			})
		},
	}
	if drain {
		cmd.Flags().StringVar(&reason, "reason", "", "why the host is drained (shown by berth hosts ls)")
	}
	return cmd
}

// hostsSetDrained flips the operator's drain flag of host id with a compare-and-swap, again
// when berth-cmdb-sync wrote the host in between.
func hostsSetDrained(ctx context.Context, cl *coordclient.Client, id string, drain bool, reason string) (*inventoryv1.Host, error) {
	path := hostsPathHosts + "/" + id
	for attempt := 1; ; attempt++ {
		n, err := cl.Get(ctx, path)
		if errors.Is(err, coordclient.ErrNotFound) {
			return nil, fmt.Errorf("host %s is not in the inventory (berth hosts ls lists them)", id)
		}
		if err != nil {
			return nil, err
		}
		h := &inventoryv1.Host{}
		if err := hostsUnmarshal.Unmarshal(n.Value, h); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		h.Drained, h.DrainReason = drain, reason
		if !drain {
			h.DrainReason = ""
		}
		// The state as berth-cmdb-sync derives it, so that the scheduler sees the drain at
		// once.
		switch {
		case h.GetLiveness() == inventoryv1.Liveness_LIVENESS_DOWN:
			h.State = inventoryv1.HostState_HOST_STATE_DOWN
		case h.GetDrained() || h.GetCmdbDraining() || !h.GetInCmdb():
			h.State = inventoryv1.HostState_HOST_STATE_DRAINING
		default:
			h.State = inventoryv1.HostState_HOST_STATE_READY
		}
		h.UpdatedAt = timestamppb.Now()
		b, err := protojson.Marshal(h)
		if err != nil {
			return nil, err
		}
		_, err = cl.Put(ctx, path, b, coordclient.ExpectVersion(n.Version))
		if err == nil {
			return h, nil
		}
		if !errors.Is(err, coordclient.ErrConflict) || attempt >= 10 {
			return nil, err
		}
	}
}
