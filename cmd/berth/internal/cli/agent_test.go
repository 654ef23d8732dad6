package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/proto/subjects"
)

// fakeAgent answers step requests for host h1 on the wire as an agent does: it replies
// with the disposition the test chose, then publishes two progress messages and the result.
// It stands in for services/agent, which the CLI module does not import.
func fakeAgent(t *testing.T, url string, disposition agentv1.StepDisposition, state agentv1.StepState) <-chan *agentv1.StepRequest {
	t.Helper()
	bus, err := natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{url}, Name: "fake-agent"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	})
	got := make(chan *agentv1.StepRequest, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	_, err = natsbus.HandleTyped(ctx, bus, "berth.v1.agent.h1.step", "", func(ctx context.Context, req *agentv1.StepRequest) (*agentv1.StepReply, error) {
		got <- req
		now := timestamppb.Now()
		res := &agentv1.StepResult{TaskId: req.GetTaskId(), StepId: req.GetStepId(), Attempt: req.GetAttempt(), State: state,
			ExitCode: 0, Message: "the message", StartedAt: now, EndedAt: now}
		if state != agentv1.StepState_STEP_STATE_OK {
			res.ExitCode, res.FailureClass = 3, agentv1.FailureClass_FAILURE_CLASS_APPLICATION
		}
		reply := &agentv1.StepReply{Disposition: disposition, Host: "h1"}
		switch disposition {
		case agentv1.StepDisposition_STEP_DISPOSITION_REJECTED:
			reply.RejectReason, reply.Reason = agentv1.RejectReason_REJECT_REASON_STALE_TOKEN, "token 1 is lower than 4"
			return reply, nil
		case agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE:
			reply.Result = res
			return reply, nil
		}
		ps, _ := subjects.AgentProgressFor(req.GetTaskId())
		rs, _ := subjects.AgentResultFor(req.GetTaskId())
		pctx := context.WithoutCancel(ctx)
		_ = bus.Publish(pctx, ps, &agentv1.StepProgress{TaskId: req.GetTaskId(), StepId: req.GetStepId(), Sequence: 1,
			Stream: agentv1.Stream_STREAM_STDOUT, Lines: []string{"fetching", "unpacking"}})
		_ = bus.Publish(pctx, ps, &agentv1.StepProgress{TaskId: req.GetTaskId(), StepId: req.GetStepId(), Sequence: 2,
			Stream: agentv1.Stream_STREAM_STDERR, Lines: []string{"a warning"}})
		_ = bus.Publish(pctx, rs, res)
		return reply, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestAgentStep(t *testing.T) {
	tests := []struct {
		name        string
		disposition agentv1.StepDisposition
		state       agentv1.StepState
		wantCode    int
		wantOut     string
		wantErr     string
	}{
		{"ok", agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED, agentv1.StepState_STEP_STATE_OK, 0,
			"fetching\nunpacking\nresult: ok (exit 0) in 0s: the message\n", "a warning\n"},
		{"failed", agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED, agentv1.StepState_STEP_STATE_FAILED, exitStepFailed,
			"result: failed (exit 3, application failure)", ""},
		{"retryable", agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED, agentv1.StepState_STEP_STATE_RETRYABLE, exitStepRetryable,
			"result: retryable", ""},
		{"already done", agentv1.StepDisposition_STEP_DISPOSITION_ALREADY_DONE, agentv1.StepState_STEP_STATE_OK, 0,
			"result: ok", "already_done"},
		{"rejected", agentv1.StepDisposition_STEP_DISPOSITION_REJECTED, agentv1.StepState_STEP_STATE_OK, exitStepFailed,
			"", "rejected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := natstest.RunServer(t)
			got := fakeAgent(t, ns.URL(), tc.disposition, tc.state)
			var out, errb bytes.Buffer
			o := agentStepOptions{host: "h1", plugin: "package-deploy", action: "deploy", args: []string{"url=file:///x.tgz", "sha256=ab"},
				timeout: 5 * time.Second, token: 3, attempt: 1, nats: ns.URL()}
			err := runAgentStep(t.Context(), &out, &errb, o)
			code := 0
			var ex *ExitError
			if errors.As(err, &ex) {
				code = ex.Code
				if ex.Err != nil {
					errb.WriteString(ex.Err.Error())
				}
			} else if err != nil {
				t.Fatalf("runAgentStep: %v", err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code: got %d (%v), want %d", code, err, tc.wantCode)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("stdout: got %q, want it to contain %q", out.String(), tc.wantOut)
			}
			if !strings.Contains(errb.String(), tc.wantErr) {
				t.Errorf("stderr: got %q, want it to contain %q", errb.String(), tc.wantErr)
			}
			req := <-got
			if req.GetPlugin() != "package-deploy" || req.GetArguments()["url"] != "file:///x.tgz" || req.GetFencingToken() != 3 ||
				req.GetTimeout().AsDuration() != 5*time.Second || !strings.HasPrefix(req.GetTaskId(), "cli-") || req.GetHost() != "h1" {
				t.Errorf("request: got %v", req)
			}
		})
	}
}

func TestAgentStepNoAgent(t *testing.T) {
	ns := natstest.RunServer(t)
	o := agentStepOptions{host: "nobody", plugin: "p", action: "a", timeout: time.Second, token: 1, attempt: 1, nats: ns.URL()}
	err := runAgentStep(t.Context(), &bytes.Buffer{}, &bytes.Buffer{}, o)
	if err == nil || !strings.Contains(err.Error(), `no agent answers for host "nobody"`) {
		t.Fatalf("got %v, want no agent answers", err)
	}
}

func TestBuildStepRequest(t *testing.T) {
	base := agentStepOptions{host: "h1", plugin: "p", action: "a", timeout: time.Minute, token: 1, attempt: 1}
	tests := []struct {
		name    string
		mod     func(o *agentStepOptions)
		wantErr string
	}{
		{"ok", func(o *agentStepOptions) { o.args = []string{"a=1", "b=x=y"}; o.payload = `{"k":1}` }, ""},
		{"no plugin", func(o *agentStepOptions) { o.plugin = "" }, "--plugin is required"},
		{"no action", func(o *agentStepOptions) { o.action = "" }, "--action is required"},
		{"bad arg", func(o *agentStepOptions) { o.args = []string{"novalue"} }, "want NAME=VALUE"},
		{"dup arg", func(o *agentStepOptions) { o.args = []string{"a=1", "a=2"} }, "given twice"},
		{"bad payload", func(o *agentStepOptions) { o.payload = "{" }, "not a JSON document"},
		{"bad host", func(o *agentStepOptions) { o.host = "a.b" }, "--host"},
		{"bad task", func(o *agentStepOptions) { o.task = "x y" }, "--task"},
		{"zero timeout", func(o *agentStepOptions) { o.timeout = 0 }, "--timeout"},
	}
	for _, tc := range tests {
		o := base
		tc.mod(&o)
		req, err := buildStepRequest(o)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			if req.GetArguments()["b"] != "x=y" || string(req.GetPayload()) != `{"k":1}` {
				t.Errorf("%s: got %v", tc.name, req)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: got %v, want an error with %q", tc.name, err, tc.wantErr)
		}
	}
}
