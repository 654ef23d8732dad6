package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

// streamHeartbeat is how often an idle event stream sends a comment, so that proxies and
// browsers keep the connection open and a dead client is noticed.
const streamHeartbeat = 15 * time.Second

// streamRun answers GET /v1/{deployments,tasks}/{id}/events with Server-Sent Events fed by
// a coord watch on the run's records, which are the truth:
//
//   - "snapshot": the whole run with every target (as GET /v1/deployments/{id}), first on
//     every connection and again after the watch had to re-list (compaction);
//   - "deployment" (or "task"): the run's header without targets, when it changes;
//   - "target" (or "step"): one target's record, when it changes;
//   - "removed": the run's records were deleted;
//   - "error": the watch failed; the stream ends and the client reconnects.
//
// Every event's id is the coord revision it reflects. The stream goes on after the run
// has ended (steps still out at agents are recorded later) until the client leaves or the
// controller stops.
func (s *Server) streamRun(kind string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		id := r.PathValue("id")
		if err := model.CheckID(id); err != nil || model.KindOf(id) != kind {
			return apiErr(http.StatusNotFound, "not_found", "id", "%s %s not found", kind, id)
		}
		head := model.DeploymentPath(id)
		if kind == model.KindTask {
			head = model.TaskPath(id)
		}
		ctx := r.Context()
		res, err := s.coord.List(ctx, head, coordclient.Recursive())
		if err != nil {
			return fmt.Errorf("read %s: %w", id, err)
		}
		snap, _, err := buildRun(kind, head, id, res.Nodes, true)
		if err != nil {
			return err
		}
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		sse := &sseWriter{w: w, flush: rc.Flush}
		if err := sse.retry(2 * time.Second); err != nil {
			return nil
		}
		if err := sse.proto("snapshot", res.Revision, snap); err != nil {
			return nil
		}
		wctx, cancel := withDone(ctx, s.opts.Done)
		defer cancel()
		events := s.coord.Watch(wctx, head, res.Revision+1, coordclient.Recursive(), coordclient.RelistOnCompaction())
		defer func() {
			cancel()
			for range events {
			}
		}()
		heartbeat := time.NewTicker(streamHeartbeat)
		defer heartbeat.Stop()
		headName, itemName := "deployment", "target"
		if kind == model.KindTask {
			headName, itemName = "task", "step"
		}
		for {
			select {
			case <-wctx.Done():
				return nil
			case <-heartbeat.C:
				if sse.comment("keep-alive") != nil {
					return nil
				}
			case wr, ok := <-events:
				if !ok {
					return nil
				}
				if err := s.sendWatch(sse, kind, head, id, headName, itemName, wr); err != nil {
					return nil
				}
				if wr.Err != nil {
					return nil
				}
			}
		}
	}
}

// sendWatch writes the events of one watch response.
func (s *Server) sendWatch(sse *sseWriter, kind, head, id, headName, itemName string, wr coordclient.WatchResponse) error {
	if wr.Err != nil {
		return sse.json("error", wr.Revision, map[string]string{"code": "unavailable", "message": wr.Err.Error()})
	}
	if wr.Reset {
		snap, _, err := buildRun(kind, head, id, wr.Nodes, true)
		if err != nil {
			return sse.json("removed", wr.Revision, map[string]string{"id": id})
		}
		return sse.proto("snapshot", wr.Revision, snap)
	}
	for _, ev := range wr.Events {
		p := ev.Node.Path
		switch {
		case p == head && ev.Type == coordclient.EventDelete:
			if err := sse.json("removed", ev.Revision, map[string]string{"id": id}); err != nil {
				return err
			}
		case p == head:
			m, _, err := buildRun(kind, head, id, []coordclient.Node{ev.Node}, false)
			if err != nil {
				continue
			}
			if err := sse.proto(headName, ev.Revision, m); err != nil {
				return err
			}
		case ev.Type == coordclient.EventPut && strings.HasPrefix(p, head+"/"):
			var m proto.Message = &controllerv1.Target{}
			if kind == model.KindTask {
				m = &controllerv1.Step{}
			}
			if model.Unmarshal(ev.Node.Value, m) != nil {
				continue
			}
			if err := sse.proto(itemName, ev.Revision, m); err != nil {
				return err
			}
		}
	}
	return nil
}

// sseWriter writes Server-Sent Events and flushes each one.
type sseWriter struct {
	w     io.Writer
	flush func() error
}

// retry sets the client's reconnection delay.
func (s *sseWriter) retry(d time.Duration) error {
	_, err := fmt.Fprintf(s.w, "retry: %d\n\n", d.Milliseconds())
	return s.done(err)
}

// comment writes a comment line, which clients ignore.
func (s *sseWriter) comment(text string) error {
	_, err := io.WriteString(s.w, ": "+text+"\n\n")
	return s.done(err)
}

// proto writes an event whose data is the protojson of m on one line.
func (s *sseWriter) proto(event string, rev int64, m proto.Message) error {
	b, err := model.Marshal(m)
	if err != nil {
		return err
	}
	return s.event(event, rev, b)
}

// json writes an event whose data is the JSON of v.
func (s *sseWriter) json(event string, rev int64, v map[string]string) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.event(event, rev, b)
}

// event writes one event. data must hold no newline (protojson and the encodings above
// escape them), so it is one data line.
func (s *sseWriter) event(event string, rev int64, data []byte) error {
	if bytes.ContainsAny(data, "\r\n") {
		return errors.New("event data holds a newline")
	}
	var b bytes.Buffer
	if rev > 0 {
		fmt.Fprintf(&b, "id: %d\n", rev)
	}
	fmt.Fprintf(&b, "event: %s\ndata: %s\n\n", event, data)
	_, err := s.w.Write(b.Bytes())
	return s.done(err)
}

func (s *sseWriter) done(err error) error {
	if err != nil {
		return err
	}
	if s.flush != nil {
		if err := s.flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
	}
	return nil
}

// withDone returns a context that ends with ctx or when done is closed (nil: never). The
// caller must call cancel; the goroutine that watches done exits then at the latest.
func withDone(ctx context.Context, done <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	if done != nil {
		go func() {
			select {
			case <-done:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	return ctx, cancel
}
