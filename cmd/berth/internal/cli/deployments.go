package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// envControllerURL names the environment variable that replaces the default of
// --controller.
const envControllerURL = "BERTH_CONTROLLER_URL"

// defaultControllerURL is where berth dev's controller listens.
const defaultControllerURL = "http://127.0.0.1:7070"

// Exit codes of commands that wait for a deployment or task, one per terminal state.
const (
	ExitSucceeded  = 0
	ExitFailed     = 3
	ExitAborted    = 4
	ExitRolledBack = 5
)

// exitCodeOf maps a terminal state to the exit code.
func exitCodeOf(state string) int {
	switch state {
	case "succeeded":
		return ExitSucceeded
	case "aborted":
		return ExitAborted
	case "rolled_back":
		return ExitRolledBack
	}
	return ExitFailed
}

// controllerFlag adds --controller to cmd and returns where its value lands.
func controllerFlag(cmd *cobra.Command) *string {
	s := new(string)
	cmd.PersistentFlags().StringVar(s, "controller", defaultControllerURL, "berth-controller API URL (also $"+envControllerURL+")")
	return s
}

// controllerURL resolves --controller, $BERTH_CONTROLLER_URL, the CLI context and the
// default.
func controllerURL(cmd *cobra.Command, flag string) (string, error) {
	r, err := resolveSetting(cmd, settingController, "controller", flag)
	if err != nil {
		return "", err
	}
	u := r.Value
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return "", fmt.Errorf("--controller %q (from %s): want an http:// or https:// URL", u, r.Source)
	}
	return strings.TrimRight(u, "/"), nil
}

// apiClient talks to berth-controller's HTTP API.
type apiClient struct {
	base string
	hc   *http.Client
}

func newAPIClient(base string) *apiClient {
	return &apiClient{base: base, hc: &http.Client{Timeout: 90 * time.Second}}
}

// apiError is an error answer of the API.
type apiError struct {
	Status  int               `json:"-"`
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Field   string            `json:"field"`
	Details map[string]string `json:"details"`
}

func (e *apiError) Error() string {
	if e.Field != "" && !strings.HasPrefix(e.Message, e.Field) {
		return fmt.Sprintf("%s (field %s)", e.Message, e.Field)
	}
	return e.Message
}

// call sends a request with a JSON body (nil: none) and returns the answer's body; an
// error answer becomes an *apiError.
func (c *apiClient) call(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if u := os.Getenv("USER"); u != "" {
		req.Header.Set("X-Berth-User", u)
	}
	if tok := bearerToken(ctx); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if err := tlsClient(ctx, c.hc); err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, unreachable("controller", c.base, "--controller", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read answer of %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		ae := &apiError{Status: resp.StatusCode}
		if json.Unmarshal(b, ae) != nil || ae.Message == "" {
			ae.Message = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
		}
		ae.Message = accessHint(ctx, resp.StatusCode, "controller", c.base, ae.Message)
		return nil, ae
	}
	return b, nil
}

// get decodes an answer into a proto message.
func (c *apiClient) get(ctx context.Context, method, path string, body any, m proto.Message) error {
	b, err := c.call(ctx, method, path, body)
	if err != nil {
		return err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
	}
	return nil
}

// list decodes a {"key": [...]} answer.
func listOf[M proto.Message](b []byte, key string, mk func() M) ([]M, error) {
	var raw map[string][]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("decode list: %w", err)
	}
	out := make([]M, 0, len(raw[key]))
	for _, r := range raw[key] {
		m := mk()
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r, m); err != nil {
			return nil, fmt.Errorf("decode list: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

// printProto writes m as indented protojson with proto field names.
func printProto(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func newDeploymentsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "deployments",
		Aliases: []string{"deployment", "deps"},
		Short:   "List, show and control deployments",
		Long: `berth deployments lists deployments, shows one with every target, and pauses, resumes,
aborts or rolls back a running one. The controller is --controller, else
$` + envControllerURL + `, else ` + defaultControllerURL + ` (berth dev's).`,
	}
	ctrl := controllerFlag(cmd)
	cmd.AddCommand(newDeploymentsLsCmd(ctrl), newDeploymentsShowCmd(ctrl))
	for _, a := range []struct{ name, short string }{
		{"pause", "Pause a deployment: no new target is dispatched until resume (steps out finish)"},
		{"resume", "Resume a paused deployment"},
		{"abort", "Abort a deployment at once: nothing more is dispatched; it ends aborted"},
		{"rollback", "Stop a running deployment and roll every touched host back to its previous version"},
	} {
		cmd.AddCommand(newDeploymentsActionCmd(ctrl, a.name, a.short))
	}
	return cmd
}

func newDeploymentsLsCmd(ctrl *string) *cobra.Command {
	var service, state string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List deployments, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			q := url.Values{}
			if service != "" {
				q.Set("service", service)
			}
			if state != "" {
				q.Set("state", state)
			}
			q.Set("limit", fmt.Sprint(limit))
			b, err := newAPIClient(base).call(cmd.Context(), "GET", "/v1/deployments?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			deps, err := listOf(b, "deployments", func() *controllerv1.Deployment { return &controllerv1.Deployment{} })
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				list := make([]json.RawMessage, 0, len(deps))
				for _, d := range deps {
					b, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(d)
					list = append(list, b)
				}
				return printJSON(out, map[string]any{"deployments": list})
			}
			return printDeploymentList(out, deps)
		},
	}
	f := cmd.Flags()
	f.StringVar(&service, "service", "", "only deployments of this service")
	f.StringVar(&state, "state", "", "only deployments in this state (running, paused, succeeded, failed, ...)")
	f.IntVar(&limit, "limit", 50, "at most this many deployments")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printDeploymentList writes a table of deployments.
func printDeploymentList(w io.Writer, deps []*controllerv1.Deployment) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERVICE\tVERSION\tSTATE\tTARGETS\tCREATED")
	for _, d := range deps {
		c := d.GetStatus().GetCounts()
		targets := fmt.Sprintf("%d", len(d.GetHosts()))
		if c != nil {
			targets = fmt.Sprintf("%d/%d ok", c.GetSucceeded(), c.GetTotal())
			if n := c.GetFailed() + c.GetUnreachable(); n > 0 {
				targets += fmt.Sprintf(", %d failed", n)
			}
		}
		created := ""
		if t := d.GetStatus().GetCreatedAt(); t != nil {
			created = t.AsTime().Local().Format("2006-01-02 15:04:05")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.GetId(), d.GetService(), d.GetVersion(), d.GetStatus().GetState(), targets, created)
	}
	return tw.Flush()
}

func newDeploymentsShowCmd(ctrl *string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a deployment and every target's state, attempts, last output lines and timings",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			id, err := pathArg("id", args[0])
			if err != nil {
				return err
			}
			d := &controllerv1.Deployment{}
			if err := newAPIClient(base).get(cmd.Context(), "GET", "/v1/deployments/"+id, nil, d); err != nil {
				return err
			}
			if asJSON {
				return printProto(cmd.OutOrStdout(), d)
			}
			return printDeployment(cmd.OutOrStdout(), d)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printDeployment writes a deployment with its targets.
func printDeployment(w io.Writer, d *controllerv1.Deployment) error {
	st := d.GetStatus()
	fmt.Fprintf(w, "deployment %s: %s %s\n", d.GetId(), d.GetService(), d.GetVersion())
	fmt.Fprintf(w, "  state:     %s", st.GetState())
	if st.GetMessage() != "" {
		fmt.Fprintf(w, " (%s)", st.GetMessage())
	}
	fmt.Fprintln(w)
	if d.GetArtifact() != nil {
		fmt.Fprintf(w, "  package:   %s sha256 %s\n", d.GetArtifact().GetUrl(), d.GetArtifact().GetSha256())
	}
	if d.GetMode() == "container" {
		p := d.GetPlacement()
		fmt.Fprintf(w, "  placement: %d containers of %g cores, %d MiB", p.GetReplicas(), float64(p.GetCpuMillis())/1000, p.GetMemoryBytes()>>20)
		if p.GetSpread() != "" {
			fmt.Fprintf(w, ", spread by %s", p.GetSpread())
		}
		if p.GetConstraints() != "" {
			fmt.Fprintf(w, ", on %s", p.GetConstraints())
		}
		fmt.Fprintln(w)
		if img := d.GetImage(); img != nil {
			fmt.Fprintf(w, "  image:     %s\n", img.GetPull())
		}
		if d.GetPreviousVersion() != "" {
			fmt.Fprintf(w, "  previous:  %s %s\n", d.GetPreviousVersion(), d.GetPreviousImage())
		}
	}
	fmt.Fprintf(w, "  requested: by %s at %s\n", d.GetRequestedBy(), fmtTime(st.GetCreatedAt().AsTime()))
	if st.GetStartedAt() != nil {
		end := time.Now()
		if st.GetEndedAt() != nil {
			end = st.GetEndedAt().AsTime()
		}
		fmt.Fprintf(w, "  ran:       %s\n", end.Sub(st.GetStartedAt().AsTime()).Round(time.Millisecond))
	}
	s := d.GetStrategy()
	fmt.Fprintf(w, "  strategy:  batches %s, max_parallel %d, pause %s, max_failures %s, auto_rollback %t\n",
		strings.Join(s.GetBatches(), ","), s.GetMaxParallel(), s.GetPause(), s.GetMaxFailures(), s.GetAutoRollback())
	for _, b := range st.GetBatches() {
		c := countRange(d.GetTargets(), int(b.GetStart()), int(b.GetEnd()))
		fmt.Fprintf(w, "  batch %d/%d: %s\n", b.GetIndex()+1, len(st.GetBatches()), c)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATE\tBATCH\tATTEMPTS\tDURATION\tROLLBACK\tMESSAGE")
	for _, t := range d.GetTargets() {
		dur := ""
		if t.GetStartedAt() != nil {
			end := time.Now()
			if t.GetEndedAt() != nil {
				end = t.GetEndedAt().AsTime()
			}
			dur = end.Sub(t.GetStartedAt().AsTime()).Round(time.Millisecond).String()
		}
		batch := ""
		if t.GetState() != "pending" {
			batch = fmt.Sprint(t.GetBatch() + 1)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", targetName(t), t.GetState(), batch, t.GetAttempts(), dur, t.GetRollback(), oneLine(t.GetMessage(), 100))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, t := range d.GetTargets() {
		if len(t.GetOutput()) == 0 || t.GetState() == "succeeded" {
			continue
		}
		fmt.Fprintf(w, "  last output of %s:\n", targetName(t))
		for _, l := range lastLines(t.GetOutput(), 5) {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
	return nil
}

// countRange summarises targets[from:to] in words.
func countRange(ts []*controllerv1.Target, from, to int) string {
	n := map[string]int{}
	for _, t := range ts[max(0, min(from, len(ts))):max(0, min(to, len(ts)))] {
		n[t.GetState()]++
	}
	var parts []string
	for _, s := range []string{"succeeded", "running", "dispatched", "pending", "failed", "timed_out", "unreachable", "skipped"} {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	return fmt.Sprintf("%d targets: %s", to-from, strings.Join(parts, ", "))
}

func oneLine(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

func lastLines(ls []string, n int) []string {
	if len(ls) > n {
		return ls[len(ls)-n:]
	}
	return ls
}

func fmtTime(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") }

func newDeploymentsActionCmd(ctrl *string, action, short string) *cobra.Command {
	return &cobra.Command{
		Use:   action + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			id, err := pathArg("id", args[0])
			if err != nil {
				return err
			}
			d := &controllerv1.Deployment{}
			if err := newAPIClient(base).get(cmd.Context(), "POST", "/v1/deployments/"+id+"/"+action, nil, d); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s of %s requested (state %s)\n", action, d.GetId(), d.GetStatus().GetState())
			return nil
		},
	}
}

// errStoppedWaiting is returned when Ctrl-C ends a wait; the run goes on.
var errStoppedWaiting = errors.New("stopped waiting")
