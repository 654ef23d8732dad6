package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/proto/subjects"
)

// Exit codes of `berth agent step`, after the plugin contract.
const (
	exitStepFailed    = 1
	exitStepRetryable = 75
)

// maxStepID is the longest task or step id an agent takes.
const maxStepID = 100

// agentStepOptions are the flags of `berth agent step`.
type agentStepOptions struct {
	host    string
	plugin  string
	action  string
	args    []string
	payload string
	service string
	timeout time.Duration
	token   uint64
	task    string
	step    string
	attempt uint32
	nats    string
}

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Talk to one host's agent directly (low level)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newAgentStepCmd())
	return cmd
}

func newAgentStepCmd() *cobra.Command {
	var o agentStepOptions
	cmd := &cobra.Command{
		Use:   "step",
		Short: "Send one step to a host's agent and print its progress and result",
		Long: `berth agent step sends one StepRequest to the agent of --host (on
berth.v1.agent.<host>.step), bypassing the controller, prints the step's output as it
streams (the plugin's stdout on stdout, its stderr on stderr) and then its result.

The task and step ids are generated unless given; the fencing token is 1 unless --token
says otherwise (a token lower than one the agent has seen for the task is rejected). Sending
the same --task, --step and --attempt again is answered from the agent's journal: the step
does not run twice.

--arg NAME=VALUE is repeatable. --payload is a JSON document, or @FILE to read one.

Exit status: 0 when the step succeeded, 75 when it failed but may pass when retried, 1
otherwise (failed, rejected, interrupted, or no answer).

The NATS URL is --nats, else $BERTH_NATS_URL, else nats://127.0.0.1:4222 (berth dev's).`,
		Example: `  berth agent step --plugin package-deploy --action deploy \
      --arg url=file:///tmp/hotel-search-1.0.tar.gz --arg sha256=9f86d0... --timeout 5m
  berth agent step --host h-017 --plugin package-deploy --action status --arg service=hotel/search`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := resolveSetting(cmd, settingNATS, "nats", o.nats)
			if err != nil {
				return err
			}
			o.nats = r.Value
			return runAgentStep(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.host, "host", host, "host id of the agent")
	f.StringVar(&o.plugin, "plugin", "", "plugin name (required)")
	f.StringVar(&o.action, "action", "", "plugin action (required)")
	f.StringArrayVar(&o.args, "arg", nil, "argument NAME=VALUE (repeatable)")
	f.StringVar(&o.payload, "payload", "", "JSON payload, or @FILE")
	f.StringVar(&o.service, "service", "", "service path the step is about")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "step timeout")
	f.Uint64Var(&o.token, "token", 1, "fencing token")
	f.StringVar(&o.task, "task", "", "task id (default a new one)")
	f.StringVar(&o.step, "step", "", "step id (default a new one)")
	f.Uint32Var(&o.attempt, "attempt", 1, "attempt number")
	f.StringVar(&o.nats, "nats", natsbus.DefaultURL, "NATS server URL (also $"+envNATSURL+")")
	return cmd
}

// buildStepRequest checks the options and builds the request.
func buildStepRequest(o agentStepOptions) (*agentv1.StepRequest, error) {
	if o.plugin == "" {
		return nil, errors.New("--plugin is required")
	}
	if o.action == "" {
		return nil, errors.New("--action is required")
	}
	if err := subjects.Host(o.host); err != nil {
		return nil, fmt.Errorf("--host %q: %w", o.host, err)
	}
	if o.timeout <= 0 {
		return nil, fmt.Errorf("--timeout %s: want a positive duration", o.timeout)
	}
	if o.attempt == 0 {
		return nil, errors.New("--attempt 0: want 1 or more")
	}
	if o.task == "" {
		o.task = "cli-" + randomHex(6)
	}
	if o.step == "" {
		o.step = "step-" + randomHex(4)
	}
	if o.service != "" {
		if err := dnsview.CheckServicePath(strings.Trim(o.service, "/")); err != nil {
			return nil, fmt.Errorf("--service %q: %w", o.service, err)
		}
	}
	for _, id := range []struct{ flag, v string }{{"--task", o.task}, {"--step", o.step}} {
		if err := subjects.Token(id.v); err != nil {
			return nil, fmt.Errorf("%s %q: %w", id.flag, id.v, err)
		}
		if len(id.v) > maxStepID {
			return nil, fmt.Errorf("%s %.20q...: longer than %d bytes", id.flag, id.v, maxStepID)
		}
	}
	args := map[string]string{}
	for _, a := range o.args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--arg %q: want NAME=VALUE", a)
		}
		if _, dup := args[k]; dup {
			return nil, fmt.Errorf("--arg %s given twice", k)
		}
		args[k] = v
	}
	var payload []byte
	if o.payload != "" {
		payload = []byte(o.payload)
		if name, ok := strings.CutPrefix(o.payload, "@"); ok {
			b, err := readFileLimit(name, maxInputFile)
			if err != nil {
				return nil, fmt.Errorf("--payload: %w", err)
			}
			payload = b
		}
		if !json.Valid(payload) {
			return nil, errors.New("--payload: not a JSON document")
		}
	}
	return &agentv1.StepRequest{
		TaskId: o.task, StepId: o.step, Attempt: o.attempt, FencingToken: o.token, Host: o.host,
		Plugin: o.plugin, Action: o.action, Arguments: args, Payload: payload,
		Timeout: durationpb.New(o.timeout), Service: o.service,
	}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// runAgentStep does `berth agent step`.
func runAgentStep(ctx context.Context, stdout, stderr io.Writer, o agentStepOptions) error {
	req, err := buildStepRequest(o)
	if err != nil {
		return err
	}
	var urls []string
	for u := range strings.SplitSeq(o.nats, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	ncfg := natsbus.Config{URLs: urls, Name: "berth-cli/agent-step"}
	if err := natsSecurity(ctx, &ncfg); err != nil {
		return err
	}
	bus, err := natsbus.Connect(ctx, ncfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = bus.Close(cctx)
	}()

	// One subscription for both the progress and the result of the task, so that they are
	// handled in the order the agent published them: berth.v1.agent.<progress|result>.<task>.
	progressSubject, _ := subjects.AgentProgressFor(req.GetTaskId())
	resultSubject, _ := subjects.AgentResultFor(req.GetTaskId())
	msgs := make(chan *nats.Msg, 256)
	sub, err := bus.Conn().ChanSubscribe("berth.v1.agent.*."+req.GetTaskId(), msgs)
	if err != nil {
		return fmt.Errorf("subscribe to the step's progress: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := bus.Conn().FlushTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("subscribe to the step's progress: %w", err)
	}

	stepSubject, err := subjects.AgentStep(req.GetHost())
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	var reply agentv1.StepReply
	err = bus.Request(rctx, stepSubject, req, &reply, natsbus.WithServicePath(req.GetService()))
	cancel()
	switch {
	case errors.Is(err, natsbus.ErrNoResponders):
		return &ExitError{Code: exitStepFailed, Err: fmt.Errorf("no agent answers for host %q on %s: is an agent with that host id running and connected to this NATS?", req.GetHost(), bus.URL())}
	case err != nil:
		return &ExitError{Code: exitStepFailed, Err: err}
	}
	fmt.Fprintf(stderr, "task %s step %s attempt %d on %s: %s\n", req.GetTaskId(), req.GetStepId(), req.GetAttempt(), reply.GetHost(),
		strings.ToLower(strings.TrimPrefix(reply.GetDisposition().String(), "STEP_DISPOSITION_")))
	switch reply.GetDisposition() {
	case agentv1.StepDisposition_STEP_DISPOSITION_REJECTED:
		return &ExitError{Code: exitStepFailed, Err: fmt.Errorf("rejected (%s): %s",
			strings.ToLower(strings.TrimPrefix(reply.GetRejectReason().String(), "REJECT_REASON_")), reply.GetReason())}
	case agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE:
		return printStepResult(stdout, reply.GetResult())
	}

	wait := time.NewTimer(req.GetTimeout().AsDuration() + 30*time.Second)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return &ExitError{Code: exitStepFailed, Err: fmt.Errorf("stopped waiting for the step: %w", ctx.Err())}
		case <-wait.C:
			return &ExitError{Code: exitStepFailed, Err: fmt.Errorf("no result within the step's timeout %s", req.GetTimeout().AsDuration())}
		case m := <-msgs:
			switch m.Subject {
			case progressSubject:
				var p agentv1.StepProgress
				if proto.Unmarshal(m.Data, &p) != nil || p.GetStepId() != req.GetStepId() {
					continue
				}
				w := stdout
				if p.GetStream() == agentv1.Stream_STREAM_STDERR {
					w = stderr
				}
				for _, l := range p.GetLines() {
					fmt.Fprintln(w, l)
				}
			case resultSubject:
				var r agentv1.StepResult
				if proto.Unmarshal(m.Data, &r) != nil || r.GetStepId() != req.GetStepId() || r.GetAttempt() != req.GetAttempt() {
					continue
				}
				return printStepResult(stdout, &r)
			}
		}
	}
}

// printStepResult prints the result's line and returns the command's exit error.
func printStepResult(w io.Writer, r *agentv1.StepResult) error {
	state := strings.ToLower(strings.TrimPrefix(r.GetState().String(), "STEP_STATE_"))
	took := ""
	if r.GetStartedAt() != nil && r.GetEndedAt() != nil {
		took = " in " + r.GetEndedAt().AsTime().Sub(r.GetStartedAt().AsTime()).Round(time.Millisecond).String()
	}
	class := ""
	if c := r.GetFailureClass(); c != agentv1.FailureClass_FAILURE_CLASS_UNSPECIFIED {
		class = ", " + strings.ToLower(strings.TrimPrefix(c.String(), "FAILURE_CLASS_")) + " failure"
	}
	fmt.Fprintf(w, "result: %s (exit %d%s)%s: %s\n", state, r.GetExitCode(), class, took, r.GetMessage())
	switch r.GetState() {
	case agentv1.StepState_STEP_STATE_OK:
		return nil
	case agentv1.StepState_STEP_STATE_RETRYABLE:
		return &ExitError{Code: exitStepRetryable}
	}
	return &ExitError{Code: exitStepFailed}
}
