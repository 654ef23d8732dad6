package cli

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/berthdev/berth/pkg/coordclient"
	coordsrv "github.com/berthdev/berth/services/coord"
)

// envCoordEndpoints names the environment variable that replaces the default of
// --endpoints.
const envCoordEndpoints = "BERTH_COORD_ENDPOINTS"

// defaultCoordEndpoint is where berth dev's coord listens.
const defaultCoordEndpoint = "127.0.0.1:7379"

// maxStdinValue is the most `berth coord put PATH -` reads from stdin: well above the
// store's 4 MiB limit, so that the store refuses an oversized value with its own message,
// but bounded so that a runaway pipe cannot exhaust memory.
const maxStdinValue = 64 << 20

// coordOptions are the persistent flags of `berth coord`.
type coordOptions struct {
	endpoints string
	timeout   time.Duration
	json      bool
}

func newCoordCmd() *cobra.Command {
	o := &coordOptions{}
	cmd := &cobra.Command{
		Use:   "coord",
		Short: "Read and write Berth's coordination store (berth-coord)",
		Long: `berth coord talks to berth-coord, Berth's Raft-replicated store of nodes addressed by slash
paths (/berth/hosts/h-017): read, write, list and watch nodes, and manage the cluster's
members and snapshots.

The members are --endpoints (host:port, comma separated), else $` + envCoordEndpoints + `, else
` + defaultCoordEndpoint + ` (berth dev's coord). Every request is bounded by --timeout, so that a
cluster without quorum gives an error rather than a hang. --json prints machine-readable
output instead of text.`,
		Example: `  berth coord put /berth/config/nginx/upstreams - < upstreams.conf
  berth coord get /berth/config/nginx/upstreams
  berth coord ls /berth/hosts
  berth coord watch /berth/instances --prefix
  berth coord --endpoints 10.0.0.1:7379,10.0.0.2:7379 status`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.endpoints, "endpoints", defaultCoordEndpoint, "coord members, host:port comma separated (also $"+envCoordEndpoints+")")
	pf.DurationVar(&o.timeout, "timeout", 5*time.Second, "bound of each request, retries included")
	pf.BoolVar(&o.json, "json", false, "print JSON instead of text")
	cmd.AddCommand(
		newCoordGetCmd(o),
		newCoordPutCmd(o),
		newCoordDelCmd(o),
		newCoordLsCmd(o),
		newCoordWatchCmd(o),
		newCoordMembersCmd(o),
		newCoordMemberCmd(o),
		newCoordStatusCmd(o),
		newCoordSnapshotCmd(o),
	)
	return cmd
}

// endpointList returns the endpoints from --endpoints or the environment.
func (o *coordOptions) endpointList(cmd *cobra.Command) ([]string, error) {
	r, err := resolveSetting(cmd, settingCoord, "endpoints", o.endpoints)
	if err != nil {
		return nil, err
	}
	raw := r.Value
	var eps []string
	for ep := range strings.SplitSeq(raw, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("--endpoints %q: no endpoint; want host:port[,host:port...]", raw)
	}
	return eps, nil
}

// client connects to the endpoints; the caller closes it.
func (o *coordOptions) client(cmd *cobra.Command) (*coordclient.Client, []string, error) {
	if o.timeout <= 0 {
		return nil, nil, fmt.Errorf("--timeout %s: want a positive duration", o.timeout)
	}
	eps, err := o.endpointList(cmd)
	if err != nil {
		return nil, nil, err
	}
	tlsCfg, err := cliTLS(cmd.Context())
	if err != nil {
		return nil, nil, err
	}
	cl, err := coordclient.New(cmd.Context(), coordclient.Config{
		Endpoints: eps, DialTimeout: o.timeout, RequestTimeout: o.timeout, TLS: tlsCfg,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("--endpoints %q: %w", strings.Join(eps, ","), errors.Unwrap(err))
	}
	return cl, eps, nil
}

// run connects, runs fn with a context bounded by --timeout, closes, and turns the error
// into one line that says what to do.
func (o *coordOptions) run(cmd *cobra.Command, bounded bool, fn func(ctx context.Context, cl *coordclient.Client) error) error {
	cl, eps, err := o.client(cmd)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx := cmd.Context()
	if bounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	return o.explain(cmd.Context(), eps, fn(ctx, cl))
}

// explain rewrites the errors a user can act on as one line naming what was wrong and
// what to do; others pass through.
func (o *coordOptions) explain(parent context.Context, eps []string, err error) error {
	if err == nil {
		return nil
	}
	at := strings.Join(eps, ",")
	var ce *coordclient.Error
	switch {
	case parent.Err() != nil:
		// Interrupted by the user: not an error worth a message.
		return &ExitError{Code: 130}
	case errors.Is(err, coordclient.ErrNoLeader):
		return fmt.Errorf("coord at %s has no leader (an election is in progress or quorum is lost); retry, or check `berth coord status`", at)
	case errors.Is(err, coordclient.ErrUnavailable) && errors.As(err, &ce) && ce.MemberID == 0:
		return fmt.Errorf("no coord reachable at %s (is berth dev or berth-coord running? set --endpoints)", at)
	case errors.Is(err, coordclient.ErrUnavailable):
		return fmt.Errorf("coord at %s is unavailable (%v); retry, or check `berth coord status`", at, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("no answer from coord at %s within %s (quorum lost? raise --timeout)", at, o.timeout)
	}
	return err
}

// nodeJSON is a node in --json output. The value is a string when it is UTF-8, else
// base64 in value_base64.
type nodeJSON struct {
	Path        string  `json:"path"`
	Value       *string `json:"value,omitempty"`
	ValueBase64 string  `json:"value_base64,omitempty"`
	Version     int64   `json:"version"`
	CreateRev   int64   `json:"create_rev"`
	ModRev      int64   `json:"mod_rev"`
	Session     int64   `json:"session,omitempty"`
}

func toNodeJSON(n coordclient.Node, withValue bool) nodeJSON {
	j := nodeJSON{Path: n.Path, Version: n.Version, CreateRev: n.CreateRev, ModRev: n.ModRev, Session: n.Session}
	if withValue {
		if utf8.Valid(n.Value) {
			v := string(n.Value)
			j.Value = &v
		} else {
			j.ValueBase64 = base64.StdEncoding.EncodeToString(n.Value)
		}
	}
	return j
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func newCoordGetCmd(o *coordOptions) *cobra.Command {
	var serializable bool
	cmd := &cobra.Command{
		Use:   "get PATH",
		Short: "Print a node's value",
		Long: `berth coord get prints the value of the node at PATH exactly as stored (a newline is added
only on a terminal), so that "berth coord get PATH > file" copies it. --json prints the node
with its version and revisions.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			return o.run(cmd, true, func(ctx context.Context, cl *coordclient.Client) error {
				var opts []coordclient.GetOption
				if serializable {
					opts = append(opts, coordclient.Serializable())
				}
				n, err := cl.Get(ctx, path, opts...)
				switch {
				case errors.Is(err, coordclient.ErrNotFound):
					return fmt.Errorf("%s: no such node", path)
				case err != nil:
					return err
				}
				out := cmd.OutOrStdout()
				if o.json {
					return printJSON(out, toNodeJSON(*n, true))
				}
				if _, err := out.Write(n.Value); err != nil {
					return err
				}
				if len(n.Value) > 0 && n.Value[len(n.Value)-1] != '\n' && isTerminal(out) {
					fmt.Fprintln(out)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&serializable, "serializable", false, "answer from any member's own state (possibly stale)")
	return cmd
}

func newCoordPutCmd(o *coordOptions) *cobra.Command {
	var expect int64
	var sequential bool
	cmd := &cobra.Command{
		Use:   "put PATH VALUE",
		Short: "Create or replace a node",
		Long: `berth coord put writes VALUE to the node at PATH; VALUE "-" reads it from stdin. Values are
at most 4 MiB. --expect-version N writes only if the node's version is N (0: only if it does
not exist). --sequential appends a 10-digit sequence number to PATH and prints the path made.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			value := []byte(args[1])
			if args[1] == "-" {
				var err error
				if value, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxStdinValue+1)); err != nil {
					return fmt.Errorf("read value from stdin: %w", err)
				}
				if len(value) > maxStdinValue {
					return fmt.Errorf("value on stdin is over %d MiB; coord takes values up to 4 MiB", maxStdinValue>>20)
				}
			}
			var opts []coordclient.PutOption
			if cmd.Flags().Changed("expect-version") {
				if expect < 0 {
					return fmt.Errorf("--expect-version %d: want 0 (create only) or a version > 0", expect)
				}
				opts = append(opts, coordclient.ExpectVersion(expect))
			}
			if sequential {
				opts = append(opts, coordclient.Sequential())
			}
			return o.run(cmd, true, func(ctx context.Context, cl *coordclient.Client) error {
				res, err := cl.Put(ctx, path, value, opts...)
				switch {
				case errors.Is(err, coordclient.ErrTooLarge):
					return fmt.Errorf("%s: value of %d bytes refused: over the %d-byte (4 MiB) limit of coord", path, len(value), coordclient.MaxValueBytes)
				case errors.Is(err, coordclient.ErrConflict) && expect == 0:
					return fmt.Errorf("%s: already exists (--expect-version 0 creates only)", path)
				case errors.Is(err, coordclient.ErrConflict):
					return fmt.Errorf("%s: version is not %d (re-read it with `berth coord get --json`)", path, expect)
				case err != nil:
					return err
				}
				if o.json {
					return printJSON(cmd.OutOrStdout(), map[string]any{
						"path": res.Path, "revision": res.Revision, "version": res.Version, "create_rev": res.CreateRev,
					})
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s version %d at revision %d\n", res.Path, res.Version, res.Revision)
				return nil
			})
		},
	}
	cmd.Flags().Int64Var(&expect, "expect-version", 0, "write only if the node has this version (0: only if absent)")
	cmd.Flags().BoolVar(&sequential, "sequential", false, "append a sequence number to PATH")
	return cmd
}

func newCoordDelCmd(o *coordOptions) *cobra.Command {
	var expect int64
	var recursive bool
	cmd := &cobra.Command{
		Use:     "del PATH",
		Aliases: []string{"delete", "rm"},
		Short:   "Delete a node, or with --recursive its subtree",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			var opts []coordclient.DeleteOption
			if cmd.Flags().Changed("expect-version") {
				if expect <= 0 {
					return fmt.Errorf("--expect-version %d: want a version > 0", expect)
				}
				opts = append(opts, coordclient.ExpectVersion(expect))
			}
			if recursive {
				opts = append(opts, coordclient.Recursive())
			}
			return o.run(cmd, true, func(ctx context.Context, cl *coordclient.Client) error {
				res, err := cl.Delete(ctx, path, opts...)
				switch {
				case errors.Is(err, coordclient.ErrNotFound) && recursive:
					return fmt.Errorf("%s: no such node or subtree", path)
				case errors.Is(err, coordclient.ErrNotFound):
					return fmt.Errorf("%s: no such node (a subtree needs --recursive)", path)
				case errors.Is(err, coordclient.ErrConflict):
					return fmt.Errorf("%s: version is not %d (re-read it with `berth coord get --json`)", path, expect)
				case err != nil:
					return err
				}
				if o.json {
					return printJSON(cmd.OutOrStdout(), map[string]any{"deleted": res.Deleted, "revision": res.Revision})
				}
				noun := "nodes"
				if res.Deleted == 1 {
					noun = "node"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted %d %s at revision %d\n", res.Deleted, noun, res.Revision)
				return nil
			})
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "delete the node and everything under it")
	cmd.Flags().Int64Var(&expect, "expect-version", 0, "delete only if the node has this version")
	return cmd
}

func newCoordLsCmd(o *coordOptions) *cobra.Command {
	var recursive, long, serializable bool
	var limit int64
	cmd := &cobra.Command{
		Use:   "ls [PATH]",
		Short: "List a node's children, or with --recursive its subtree",
		Long: `berth coord ls prints the children of PATH (default "/"), one path a line; a child that is
not a node itself but has nodes under it ends with "/". --recursive lists the whole
subtree, --long adds each node's version, last write revision, size and owning session.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/"
			if len(args) == 1 {
				path = args[0]
			}
			if limit < 0 {
				return fmt.Errorf("--limit %d: want 0 (no limit) or more", limit)
			}
			opts := []coordclient.ListOption{coordclient.Limit(limit)}
			if recursive {
				opts = append(opts, coordclient.Recursive())
			}
			if serializable {
				opts = append(opts, coordclient.Serializable())
			}
			if !long && !o.json {
				opts = append(opts, coordclient.KeysOnly())
			}
			return o.run(cmd, true, func(ctx context.Context, cl *coordclient.Client) error {
				res, err := cl.List(ctx, path, opts...)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if o.json {
					nodes := make([]nodeJSON, 0, len(res.Nodes))
					for _, n := range res.Nodes {
						nodes = append(nodes, toNodeJSON(n, n.Version > 0))
					}
					return printJSON(out, map[string]any{"revision": res.Revision, "more": res.More, "nodes": nodes})
				}
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				if long {
					fmt.Fprintln(tw, "VERSION\tMOD_REV\tBYTES\tSESSION\tPATH")
				}
				for _, n := range res.Nodes {
					p := n.Path
					if n.Version == 0 {
						p += "/"
					}
					switch {
					case !long:
						fmt.Fprintln(tw, p)
					case n.Version == 0:
						fmt.Fprintf(tw, "-\t-\t-\t-\t%s\n", p)
					default:
						session := "-"
						if n.Session != 0 {
							session = strconv.FormatInt(n.Session, 10)
						}
						fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\n", n.Version, n.ModRev, len(n.Value), session, p)
					}
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				if res.More {
					fmt.Fprintf(cmd.ErrOrStderr(), "(more nodes left out by --limit %d)\n", limit)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&recursive, "recursive", "r", false, "list the whole subtree")
	f.BoolVarP(&long, "long", "l", false, "print version, revision, size and session")
	f.Int64Var(&limit, "limit", 0, "list at most this many nodes (0: all)")
	f.BoolVar(&serializable, "serializable", false, "answer from any member's own state (possibly stale)")
	return cmd
}

// eventJSON is a watch event in --json output.
type eventJSON struct {
	Type     string `json:"type"`
	Revision int64  `json:"revision"`
	nodeJSON
}

func newCoordWatchCmd(o *coordOptions) *cobra.Command {
	var prefix bool
	var rev int64
	cmd := &cobra.Command{
		Use:   "watch PATH",
		Short: "Print the changes to a node (or with --prefix its subtree) until Ctrl-C",
		Long: `berth coord watch prints one line per change to the node at PATH, or with --prefix to any
node under it: the revision, PUT or DELETE, the path and the value. It starts with the next
change, or with --rev N at revision N (older revisions than the members keep are refused).
It follows the cluster through member failures without losing or repeating a change, and
runs until interrupted. --json prints one JSON object per change.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if rev < 0 {
				return fmt.Errorf("--rev %d: want a revision > 0", rev)
			}
			return o.run(cmd, false, func(ctx context.Context, cl *coordclient.Client) error {
				// The watch retries forever once started; make sure the cluster is there.
				sctx, cancel := context.WithTimeout(ctx, o.timeout)
				_, err := cl.Status(sctx, "")
				cancel()
				if err != nil {
					return err
				}
				var opts []coordclient.WatchOption
				if prefix {
					opts = append(opts, coordclient.Recursive())
				}
				w := bufio.NewWriter(cmd.OutOrStdout())
				enc := json.NewEncoder(w)
				enc.SetEscapeHTML(false)
				for r := range cl.Watch(ctx, path, rev, opts...) {
					var ce *coordclient.CompactedError
					switch {
					case errors.As(r.Err, &ce):
						return fmt.Errorf("--rev %d: the members no longer keep the changes up to revision %d; watch from %d or later (or without --rev after reading with `berth coord ls`)",
							rev, ce.CompactRevision, ce.CompactRevision+1)
					case r.Err != nil:
						return r.Err
					}
					for _, ev := range r.Events {
						if o.json {
							if err := enc.Encode(eventJSON{Type: ev.Type.String(), Revision: ev.Revision, nodeJSON: toNodeJSON(ev.Node, ev.Type == coordclient.EventPut)}); err != nil {
								return err
							}
							continue
						}
						line := fmt.Sprintf("%d %s %s", ev.Revision, ev.Type, ev.Node.Path)
						if ev.Type == coordclient.EventPut {
							line += " " + displayValue(ev.Node.Value)
						}
						fmt.Fprintln(w, line)
					}
					if err := w.Flush(); err != nil {
						return err
					}
				}
				// The channel closes when ctx ends (Ctrl-C): a normal end of the command.
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&prefix, "prefix", false, "watch every node under PATH too")
	cmd.Flags().Int64Var(&rev, "rev", 0, "start at this revision instead of the next change")
	return cmd
}

// displayValue renders a value on one line: quoted, and cut after 200 bytes.
func displayValue(v []byte) string {
	const max = 200
	if len(v) > max {
		return strconv.Quote(string(v[:max])) + fmt.Sprintf("... (%d bytes)", len(v))
	}
	return strconv.Quote(string(v))
}

// memberJSON is a member in --json output; ids are hex, as berth-coord prints them.
type memberJSON struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	PeerAddr   string `json:"peer_addr"`
	ClientAddr string `json:"client_addr"`
	IsLeader   bool   `json:"is_leader"`
}

func toMembersJSON(ms []coordclient.Member) []memberJSON {
	out := make([]memberJSON, 0, len(ms))
	for _, m := range ms {
		out = append(out, memberJSON{ID: coordsrv.FormatID(m.ID), Name: m.Name, PeerAddr: m.PeerAddr, ClientAddr: m.ClientAddr, IsLeader: m.IsLeader})
	}
	return out
}

func printMembers(w io.Writer, ms []coordclient.Member) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tPEER\tCLIENT\tLEADER")
	for _, m := range ms {
		leader := ""
		if m.IsLeader {
			leader = "*"
		}
		client := m.ClientAddr
		if client == "" {
			client = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", coordsrv.FormatID(m.ID), m.Name, m.PeerAddr, client, leader)
	}
	return tw.Flush()
}

func newCoordMembersCmd(o *coordOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "members",
		Short: "List the cluster's members",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, true, func(ctx context.Context, cl *coordclient.Client) error {
				ms, err := cl.Members(ctx)
				if err != nil {
					return err
				}
				if o.json {
					return printJSON(cmd.OutOrStdout(), toMembersJSON(ms))
				}
				return printMembers(cmd.OutOrStdout(), ms)
			})
		},
	}
}

func newCoordMemberCmd(o *coordOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "member",
		Short: "Add or remove a cluster member",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	add := &cobra.Command{
		Use:   "add NAME PEER_ADDR",
		Short: "Add a member; then start it with --initial-cluster-state existing",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, peer := args[0], args[1]
			return o.run(cmd, true, func(ctx context.Context, cl *coordclient.Client) error {
				res, err := cl.MemberAdd(ctx, name, peer)
				switch {
				case errors.Is(err, coordclient.ErrAlreadyExists):
					return fmt.Errorf("member %s is already in the cluster (see `berth coord members`)", name)
				case err != nil:
					return err
				}
				var initial []string
				for _, m := range res.Members {
					initial = append(initial, m.Name+"="+m.PeerAddr)
				}
				if o.json {
					return printJSON(cmd.OutOrStdout(), map[string]any{
						"member": toMembersJSON([]coordclient.Member{res.Member})[0], "members": toMembersJSON(res.Members),
						"cluster_id": coordsrv.FormatID(res.ClusterID), "initial_cluster": strings.Join(initial, ","),
					})
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "added member %s (id %s, peer %s)\n", name, coordsrv.FormatID(res.Member.ID), peer)
				fmt.Fprintf(out, "start it with:\n  berth-coord --name %s --listen-peer %s --initial-cluster %s --initial-cluster-state existing", name, peer, strings.Join(initial, ","))
				if res.ClusterID != 0 {
					fmt.Fprintf(out, " --cluster-id %s", coordsrv.FormatID(res.ClusterID))
				}
				fmt.Fprintln(out)
				return nil
			})
		},
	}
	remove := &cobra.Command{
		Use:     "remove NAME|ID",
		Aliases: []string{"rm"},
		Short:   "Remove a member (by name, or by hex id)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			who := args[0]
			return o.run(cmd, true, func(ctx context.Context, cl *coordclient.Client) error {
				ms, err := cl.Members(ctx)
				if err != nil {
					return err
				}
				var id uint64
				for _, m := range ms {
					if m.Name == who || coordsrv.FormatID(m.ID) == strings.ToLower(who) {
						id = m.ID
					}
				}
				if id == 0 {
					return fmt.Errorf("no member named or with id %q (see `berth coord members`)", who)
				}
				left, err := cl.MemberRemove(ctx, id)
				switch {
				case errors.Is(err, coordclient.ErrLastMember):
					return fmt.Errorf("member %s is the cluster's last member and cannot be removed", who)
				case err != nil:
					return err
				}
				if o.json {
					return printJSON(cmd.OutOrStdout(), map[string]any{"removed": coordsrv.FormatID(id), "members": toMembersJSON(left)})
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed member %s (id %s)\n", who, coordsrv.FormatID(id))
				return printMembers(cmd.OutOrStdout(), left)
			})
		},
	}
	cmd.AddCommand(add, remove)
	return cmd
}

// statusJSON is one endpoint's status in --json output.
type statusJSON struct {
	Endpoint        string `json:"endpoint"`
	Name            string `json:"name,omitempty"`
	ID              string `json:"id,omitempty"`
	Leader          string `json:"leader,omitempty"`
	IsLeader        bool   `json:"is_leader"`
	RaftTerm        uint64 `json:"raft_term,omitempty"`
	Revision        int64  `json:"revision"`
	CommitIndex     uint64 `json:"commit_index,omitempty"`
	AppliedIndex    uint64 `json:"applied_index,omitempty"`
	CompactRevision int64  `json:"compact_revision"`
	Nodes           int64  `json:"nodes"`
	Sessions        int64  `json:"sessions"`
	Watchers        int64  `json:"watchers"`
	ClusterID       string `json:"cluster_id,omitempty"`
	Error           string `json:"error,omitempty"`
}

func newCoordStatusCmd(o *coordOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show each endpoint's view of the cluster",
		Long: `berth coord status asks every endpoint for its status: its name and id, the leader it
knows, its Raft term and indexes, the store's revision and counts. It exits non-zero when
an endpoint does not answer.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, false, func(ctx context.Context, cl *coordclient.Client) error {
				var rows []statusJSON
				failed := 0
				for _, ep := range cl.Endpoints() {
					sctx, cancel := context.WithTimeout(ctx, o.timeout)
					st, err := cl.Status(sctx, ep)
					cancel()
					if err != nil {
						failed++
						rows = append(rows, statusJSON{Endpoint: ep, Error: o.explain(ctx, []string{ep}, err).Error()})
						continue
					}
					leader := ""
					if st.LeaderID != 0 {
						leader = coordsrv.FormatID(st.LeaderID)
					}
					rows = append(rows, statusJSON{
						Endpoint: ep, Name: st.Name, ID: coordsrv.FormatID(st.ID), Leader: leader, IsLeader: st.IsLeader,
						RaftTerm: st.RaftTerm, Revision: st.Revision, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex,
						CompactRevision: st.CompactRevision, Nodes: st.Nodes, Sessions: st.Sessions, Watchers: st.Watchers,
						ClusterID: coordsrv.FormatID(st.ClusterID),
					})
				}
				out := cmd.OutOrStdout()
				if o.json {
					if err := printJSON(out, rows); err != nil {
						return err
					}
				} else {
					tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "ENDPOINT\tNAME\tID\tLEADER\tTERM\tREVISION\tAPPLIED\tNODES\tSESSIONS\tWATCHERS")
					for _, r := range rows {
						if r.Error != "" {
							fmt.Fprintf(tw, "%s\t%s\n", r.Endpoint, r.Error)
							continue
						}
						leader := r.Leader
						switch {
						case r.IsLeader:
							leader = "self"
						case leader == "":
							leader = "none"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", r.Endpoint, r.Name, r.ID, leader,
							r.RaftTerm, r.Revision, r.AppliedIndex, r.Nodes, r.Sessions, r.Watchers)
					}
					if err := tw.Flush(); err != nil {
						return err
					}
				}
				if failed > 0 {
					return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d endpoints did not answer", failed, len(rows))}
				}
				return nil
			})
		},
	}
}

func newCoordSnapshotCmd(o *coordOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save a snapshot of the store, or seed a member's data dir from one",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Stream a point-in-time copy of the store into FILE",
		Long: `berth coord snapshot save streams a copy of the store (every node, session and recent request
id, as of a linearizable point) from a member into FILE. FILE appears only once the copy is
complete.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			return o.run(cmd, false, func(ctx context.Context, cl *coordclient.Client) error {
				tmp, err := os.CreateTemp(filepath.Dir(file), filepath.Base(file)+".part*")
				if err != nil {
					return fmt.Errorf("snapshot save: %w", err)
				}
				defer os.Remove(tmp.Name())
				w := bufio.NewWriterSize(tmp, 1<<20)
				rev, err := cl.Snapshot(ctx, w)
				if err == nil {
					err = w.Flush()
				}
				if err == nil {
					err = tmp.Sync()
				}
				if cerr := tmp.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
				st, err := os.Stat(tmp.Name())
				if err != nil {
					return fmt.Errorf("snapshot save: %w", err)
				}
				if err := os.Rename(tmp.Name(), file); err != nil {
					return fmt.Errorf("snapshot save: %w", err)
				}
				if o.json {
					return printJSON(cmd.OutOrStdout(), map[string]any{"file": file, "revision": rev, "bytes": st.Size()})
				}
				fmt.Fprintf(cmd.OutOrStdout(), "saved snapshot at revision %d to %s (%d bytes)\n", rev, file, st.Size())
				return nil
			})
		},
	}
	var dataDir, name, initial string
	restore := &cobra.Command{
		Use:   "restore FILE --data-dir DIR --name NAME --initial-cluster NAME=HOST:PORT,...",
		Short: "Seed a new member's data dir from a snapshot (offline)",
		Long: `berth coord snapshot restore seeds the empty data dir of one member of a new cluster from a
snapshot file; it needs no running coord. Seed every member of the new cluster from the same
file, then start each with --initial-cluster-state new and the same --initial-cluster. The
restored cluster starts with the snapshot's nodes and sessions (sessions get their TTL anew
from the first leader).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			switch {
			case dataDir == "":
				return errors.New("--data-dir: required (the new member's data directory)")
			case name == "":
				return errors.New("--name: required (the new member's name, as in --initial-cluster)")
			case initial == "":
				return errors.New("--initial-cluster: required (name=peer-host:port for every member of the new cluster)")
			}
			members, err := coordsrv.ParseInitialCluster(initial)
			if err != nil {
				return fmt.Errorf("--initial-cluster %q: %w", initial, err)
			}
			var self *coordsrv.Member
			for i := range members {
				if members[i].Name == name {
					self = &members[i]
				}
			}
			if self == nil {
				return fmt.Errorf("--name %q is not in --initial-cluster %q", name, initial)
			}
			if err := coordsrv.RestoreSnapshot(file, dataDir); err != nil {
				return err
			}
			if o.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"file": file, "data_dir": dataDir, "name": name, "initial_cluster": initial})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "seeded %s from %s\nstart the member with:\n  berth-coord --name %s --data-dir %s --listen-peer %s --initial-cluster %s --initial-cluster-state new\n",
				dataDir, file, name, dataDir, self.PeerAddr, initial)
			return nil
		},
	}
	rf := restore.Flags()
	rf.StringVar(&dataDir, "data-dir", "", "the new member's data directory (must hold no Raft log)")
	rf.StringVar(&name, "name", "", "the new member's name")
	rf.StringVar(&initial, "initial-cluster", "", "every member of the new cluster as name=peer-host:port, comma separated")
	cmd.AddCommand(save, restore)
	return cmd
}
