package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// runOptions are the flags of berth run.
type runOptions struct {
	hosts, plugin, action, service string
	args                           []string
	detach, json                   bool
	strategy                       strategyFlags
}

func newRunCmd() *cobra.Command {
	var o runOptions
	var ctrl *string
	cmd := &cobra.Command{
		Use:   "run --hosts H1,H2 --plugin NAME [flags] [-- ARGS...]",
		Short: "Run a plugin on hosts, in batches, and print each host's outcome",
		Long: `berth run asks the controller to run a task plugin (an executable in the agents' plugin
directories, or a built-in one) on every host of --hosts, with the same batching as a
deployment (--batches, --max-parallel, --max-failures). The plugin runs as
"<plugin> <action>" with the step as JSON on its standard input: --arg KEY=VALUE pairs are
its "arguments", and ARGS after -- are its "payload": {"args": [...]}.

It waits for the task and prints each host's outcome and last output lines, unless
--detach. The exit code tells how it ended: 0 succeeded, 3 failed, 4 aborted, 1 the request
failed.`,
		Example: `  berth run --hosts h1,h2 --plugin uptime
  berth run --hosts h1,h2,h3 --plugin logrotate --action rotate --batches 1,100% -- /var/log/app`,
		RunE: func(cmd *cobra.Command, args []string) error {
			base, err := controllerURL(cmd, *ctrl)
			if err != nil {
				return err
			}
			body, err := runBody(cmd, o, args)
			if err != nil {
				return err
			}
			c := newAPIClient(base)
			t := &controllerv1.Task{}
			if err := c.get(cmd.Context(), "POST", "/v1/tasks", body, t); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.detach {
				if o.json {
					return printProto(out, t)
				}
				fmt.Fprintf(out, "task %s: %s on %d hosts\n", t.GetId(), t.GetPlugin(), len(t.GetHosts()))
				return nil
			}
			v, err := waitRun(cmd.Context(), c, "/v1/tasks/"+t.GetId(), newProgress(cmd.ErrOrStderr(), isTTY(cmd.ErrOrStderr())), taskView)
			if err != nil {
				return err
			}
			if o.json {
				if err := printProto(out, v.raw); err != nil {
					return err
				}
			} else {
				printTaskOutput(cmd, v)
			}
			if code := exitCodeOf(v.state); code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	ctrl = controllerFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&o.hosts, "hosts", "", "hosts to run on, comma separated (required)")
	f.StringVar(&o.plugin, "plugin", "", "plugin name (required)")
	f.StringVar(&o.action, "action", "run", "plugin action")
	f.StringArrayVar(&o.args, "arg", nil, "named argument KEY=VALUE (repeatable)")
	f.StringVar(&o.service, "service", "", "service path the task is about (its strategy defaults apply)")
	f.BoolVar(&o.detach, "detach", false, "print the task id and return without waiting")
	f.BoolVar(&o.json, "json", false, "print the task as JSON")
	o.strategy.add(f, false)
	return cmd
}

// runBody builds the POST /v1/tasks body.
func runBody(cmd *cobra.Command, o runOptions, args []string) (map[string]any, error) {
	hosts := splitHosts(o.hosts)
	if len(hosts) == 0 {
		return nil, errors.New("--hosts is required")
	}
	if o.plugin == "" {
		return nil, errors.New("--plugin is required")
	}
	body := map[string]any{"hosts": hosts, "plugin": o.plugin, "action": o.action}
	if len(o.args) > 0 {
		named := map[string]string{}
		for _, a := range o.args {
			k, v, ok := strings.Cut(a, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("--arg %q: want KEY=VALUE", a)
			}
			named[k] = v
		}
		body["arguments"] = named
	}
	if len(args) > 0 {
		body["args"] = args
	}
	if o.service != "" {
		body["service"] = o.service
	}
	st := map[string]any{}
	if err := o.strategy.apply(cmd.Flags(), st); err != nil {
		return nil, err
	}
	if len(st) > 0 {
		body["strategy"] = st
	}
	return body, nil
}

// taskView reads a task answer.
func taskView(b []byte) (runView, error) {
	t := &controllerv1.Task{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, t); err != nil {
		return runView{}, fmt.Errorf("decode task: %w", err)
	}
	st := t.GetStatus()
	v := runView{id: t.GetId(), what: t.GetPlugin() + " " + t.GetAction(), state: st.GetState(), message: st.GetMessage(),
		draining: st.GetDraining(), batches: st.GetBatches(), revision: t.GetRevision(), raw: t}
	for _, s := range t.GetSteps() {
		v.targets = append(v.targets, &controllerv1.Target{Host: s.GetHost(), State: s.GetState(), Batch: s.GetBatch(),
			Attempts: s.GetAttempts(), Step: s.GetStep(), FailureClass: s.GetFailureClass(), Message: s.GetMessage(),
			Output: s.GetOutput(), StartedAt: s.GetStartedAt(), EndedAt: s.GetEndedAt()})
	}
	if st.GetStartedAt() != nil {
		v.started = st.GetStartedAt().AsTime()
	}
	if st.GetEndedAt() != nil {
		v.ended = st.GetEndedAt().AsTime()
	}
	return v, nil
}

// printTaskOutput writes each host's outcome and output, then the summary.
func printTaskOutput(cmd *cobra.Command, v runView) {
	out := cmd.OutOrStdout()
	for _, t := range v.targets {
		fmt.Fprintf(out, "== %s: %s", t.GetHost(), t.GetState())
		if t.GetStep() != nil && t.GetState() != "pending" && t.GetState() != "skipped" {
			fmt.Fprintf(out, " (exit %d)", t.GetStep().GetExitCode())
		}
		if t.GetState() != "succeeded" && t.GetMessage() != "" {
			fmt.Fprintf(out, ": %s", oneLine(t.GetMessage(), 200))
		}
		fmt.Fprintln(out)
		for _, l := range t.GetOutput() {
			fmt.Fprintf(out, "%s\n", l)
		}
	}
	printSummary(cmd.ErrOrStderr(), v)
}
