package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

func newTreeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tree",
		Short: "Read and change the service tree (owners, labels, bound hosts, inherited policy)",
		Long: `berth tree manages the service tree: one node per service path (hotel, hotel/search),
holding owners, labels, the hosts bound to the service, and a policy (deployment strategy
defaults, health-check defaults, DNS TTL) that the nodes below inherit field by field
unless they set the field themselves.`,
	}
	ctrl := controllerFlag(cmd)
	cmd.AddCommand(newTreeLsCmd(ctrl), newTreeGetCmd(ctrl), newTreeSetCmd(ctrl), newTreeRmCmd(ctrl))
	return cmd
}

func newTreeLsCmd(ctrl *string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [PATH]",
		Short: "List the nodes of the tree, or of the subtree at PATH",
		Args:  cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			path := "/v1/tree"
			if len(args) == 1 {
				path += "?prefix=" + url.QueryEscape(strings.Trim(args[0], "/"))
			}
			b, err := newAPIClient(base).call(cmd.Context(), "GET", path, nil)
			if err != nil {
				return err
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(b)
				return err
			}
			nodes, err := listOf(b, "nodes", func() *controllerv1.ServiceNode { return &controllerv1.ServiceNode{} })
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PATH\tOWNERS\tHOSTS\tLABELS")
			for _, n := range nodes {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", n.GetPath(), strings.Join(n.GetOwners(), ","), len(n.GetHosts()), labelString(n.GetLabels()))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

func newTreeGetCmd(ctrl *string) *cobra.Command {
	var asJSON, effective bool
	cmd := &cobra.Command{
		Use:   "get PATH",
		Short: "Show a node; --effective adds every policy value in effect and the node it comes from",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			seg, err := pathArg("path", strings.Trim(args[0], "/"))
			if err != nil {
				return err
			}
			path := "/v1/tree/" + seg
			if effective {
				path += "?effective=true"
			}
			b, err := newAPIClient(base).call(cmd.Context(), "GET", path, nil)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				_, err := out.Write(b)
				return err
			}
			node := &controllerv1.ServiceNode{}
			eff := &controllerv1.EffectivePolicy{}
			if effective {
				var raw struct {
					Node      json.RawMessage `json:"node"`
					Effective json.RawMessage `json:"effective"`
				}
				if err := json.Unmarshal(b, &raw); err != nil {
					return fmt.Errorf("decode answer: %w", err)
				}
				if err := protojson.Unmarshal(raw.Node, node); err != nil {
					return fmt.Errorf("decode node: %w", err)
				}
				if err := protojson.Unmarshal(raw.Effective, eff); err != nil {
					return fmt.Errorf("decode effective policy: %w", err)
				}
			} else if err := protojson.Unmarshal(b, node); err != nil {
				return fmt.Errorf("decode node: %w", err)
			}
			printNode(out, node)
			if effective {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "FIELD\tVALUE\tFROM")
				for _, v := range eff.GetValues() {
					vb, _ := protojson.Marshal(v.GetValue())
					fmt.Fprintf(tw, "%s\t%s\t%s\n", v.GetField(), strings.ReplaceAll(string(vb), " ", ""), v.GetSource())
				}
				return tw.Flush()
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&effective, "effective", false, "show the policy in effect, with each value's source node")
	return cmd
}

func printNode(w io.Writer, n *controllerv1.ServiceNode) {
	fmt.Fprintf(w, "%s\n", n.GetPath())
	if n.GetDescription() != "" {
		fmt.Fprintf(w, "  description: %s\n", n.GetDescription())
	}
	fmt.Fprintf(w, "  owners:      %s\n", strings.Join(n.GetOwners(), ", "))
	fmt.Fprintf(w, "  labels:      %s\n", labelString(n.GetLabels()))
	fmt.Fprintf(w, "  hosts:       %s\n", strings.Join(n.GetHosts(), ", "))
	if p := n.GetPolicy(); p != nil {
		b, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(p)
		if s := string(b); s != "{}" {
			fmt.Fprintf(w, "  policy:      %s\n", s)
		}
	}
	if t := n.GetUpdatedAt(); t != nil {
		fmt.Fprintf(w, "  updated:     %s\n", fmtTime(t.AsTime()))
	}
}

// treeSetOptions are the flags of berth tree set.
type treeSetOptions struct {
	owners, labels, hosts, unset []string
	hostList, description        string
	healthInterval, healthTO     time.Duration
	healthRise, healthFall       uint32
	ttl                          time.Duration
	strategy                     strategyFlags
	asJSON                       bool
}

func newTreeSetCmd(ctrl *string) *cobra.Command {
	var o treeSetOptions
	cmd := &cobra.Command{
		Use:   "set PATH [flags]",
		Short: "Create a node (when missing) and set the fields given; other fields stay",
		Long: `berth tree set creates the node at PATH when it does not exist and sets what the flags
give, leaving everything else as it was. With no flag it only makes sure the node exists.
--owner, --label and --host replace the node's whole list with the flags' values (give
each flag again for more); --unset clears a policy field so that it is inherited again
(strategy.max_parallel, health.rise, dns_ttl, ...).`,
		Example: `  berth tree set hotel --owner team-hotel --batches 1,10%,50%,100% --max-failures 5%
  berth tree set hotel/search --host h1 --host h2 --label tier=web --min-healthy-time 30s
  berth tree set hotel/search --unset strategy.max_failures`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			body, err := treeBody(cmd, o)
			if err != nil {
				return err
			}
			seg, err := pathArg("path", strings.Trim(args[0], "/"))
			if err != nil {
				return err
			}
			node := &controllerv1.ServiceNode{}
			if err := newAPIClient(base).get(cmd.Context(), "PATCH", "/v1/tree/"+seg, body, node); err != nil {
				return err
			}
			if o.asJSON {
				return printProto(cmd.OutOrStdout(), node)
			}
			printNode(cmd.OutOrStdout(), node)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.owners, "owner", nil, "owner (repeatable; replaces the list)")
	f.StringArrayVar(&o.labels, "label", nil, "label KEY=VALUE (repeatable; replaces the labels)")
	f.StringArrayVar(&o.hosts, "host", nil, "bound host (repeatable; replaces the list)")
	f.StringVar(&o.hostList, "hosts", "", "bound hosts, comma separated (replaces the list; empty clears it)")
	f.StringVar(&o.description, "description", "", "one line about the service")
	f.DurationVar(&o.healthInterval, "health-interval", 0, "time between instance health checks")
	f.DurationVar(&o.healthTO, "health-timeout", 0, "bound of one health check")
	f.Uint32Var(&o.healthRise, "health-rise", 0, "passing checks in a row that make an instance healthy")
	f.Uint32Var(&o.healthFall, "health-fall", 0, "failing checks in a row that make it unhealthy")
	f.DurationVar(&o.ttl, "ttl", 0, "TTL of the service's DNS answers")
	f.StringArrayVar(&o.unset, "unset", nil, "policy field to clear so that it is inherited (repeatable)")
	f.BoolVar(&o.asJSON, "json", false, "print the node as JSON")
	o.strategy.add(f, true)
	return cmd
}

// treeBody builds the PATCH body from the flags that were given.
func treeBody(cmd *cobra.Command, o treeSetOptions) (map[string]any, error) {
	f := cmd.Flags()
	body := map[string]any{}
	if f.Changed("owner") {
		body["owners"] = o.owners
	}
	if f.Changed("label") {
		labels := map[string]string{}
		for _, l := range o.labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("--label %q: want KEY=VALUE", l)
			}
			labels[k] = v
		}
		body["labels"] = labels
	}
	switch {
	case f.Changed("host") && f.Changed("hosts"):
		return nil, fmt.Errorf("give --host or --hosts, not both")
	case f.Changed("host"):
		body["hosts"] = o.hosts
	case f.Changed("hosts"):
		body["hosts"] = splitHosts(o.hostList)
	}
	if f.Changed("description") {
		body["description"] = o.description
	}
	policy := map[string]any{}
	st := map[string]any{}
	if err := o.strategy.apply(f, st); err != nil {
		return nil, err
	}
	if len(st) > 0 {
		policy["strategy"] = st
	}
	health := map[string]any{}
	if f.Changed("health-interval") {
		health["interval"] = o.healthInterval.String()
	}
	if f.Changed("health-timeout") {
		health["timeout"] = o.healthTO.String()
	}
	if f.Changed("health-rise") {
		health["rise"] = o.healthRise
	}
	if f.Changed("health-fall") {
		health["fall"] = o.healthFall
	}
	if len(health) > 0 {
		policy["health"] = health
	}
	if f.Changed("ttl") {
		policy["dns_ttl"] = o.ttl.String()
	}
	if len(policy) > 0 {
		body["policy"] = policy
	}
	if len(o.unset) > 0 {
		body["unset"] = o.unset
	}
	return body, nil
}

func newTreeRmCmd(ctrl *string) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "rm PATH",
		Short: "Delete a node (--recursive: with the nodes below it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			seg, err := pathArg("path", strings.Trim(args[0], "/"))
			if err != nil {
				return err
			}
			path := "/v1/tree/" + seg
			if recursive {
				path += "?recursive=true"
			}
			b, err := newAPIClient(base).call(cmd.Context(), "DELETE", path, nil)
			if err != nil {
				return err
			}
			var res struct {
				Deleted int `json:"deleted"`
			}
			_ = json.Unmarshal(b, &res)
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %d nodes\n", res.Deleted)
			return nil
		},
	}
	cmd.Flags().BoolVar(&recursive, "recursive", false, "also delete the nodes below")
	return cmd
}
