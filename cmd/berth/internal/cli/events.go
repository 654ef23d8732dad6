package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthdev/berth/pkg/dnsview"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/proto/subjects"
)

// envNATSURL names the environment variable that replaces the default of --nats.
const envNATSURL = "BERTH_NATS_URL"

// eventsOptions are the flags of `berth events`.
type eventsOptions struct {
	follow  bool
	service string
	typ     string
	since   string
	json    bool
	nats    string
}

func newEventsCmd() *cobra.Command {
	var o eventsOptions
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Print Berth's events (deploys, tasks, hosts, instances, images)",
		Long: `berth events reads the events stream (BERTH_EVENTS) and prints one line per event: its
time, type, the service (or host or task) it is about, and a summary. Without --follow it
prints the events stored now and exits; with --follow it then waits for new ones until
Ctrl-C.

--service PATH keeps the events of that service and of the services under it
(--service hotel matches hotel, hotel/search and hotel/search/api, not hotels). For host and
task events the path is matched against the host or task id.

--type TYPE keeps one kind of event. It may be:
  deploy.completed or dev.berth.deploy.completed   one type of one domain
  deploy                                           every type of a domain (deploy, task, host,
                                                   instance, image, template, audit)
  completed                                        that type in every domain

--since takes a duration (1h, 30m) or a time (2026-01-02T15:04:05Z); without it every
stored event is printed.

--json prints each event as one CloudEvents JSON object per line ({"specversion":"1.0",
"id", "source", "type", "subject", "time", "datacontenttype", "data"}).

The NATS URL is --nats, else $BERTH_NATS_URL, else nats://127.0.0.1:4222 (berth dev's).`,
		Example: `  berth events --service hotel/search --type deploy
  berth events --follow --since 10m --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := resolveSetting(cmd, settingNATS, "nats", o.nats)
			if err != nil {
				return err
			}
			o.nats = r.Value
			return runEvents(cmd.Context(), cmd.OutOrStdout(), o, time.Now())
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.follow, "follow", "f", false, "keep printing new events until interrupted")
	f.StringVar(&o.service, "service", "", "only events of this service path and the services under it")
	f.StringVar(&o.typ, "type", "", "only events of this type (deploy.completed, deploy or completed)")
	f.StringVar(&o.since, "since", "", "only events stored since this long ago (1h) or this time (RFC 3339)")
	f.BoolVar(&o.json, "json", false, "print each event as one CloudEvents JSON object per line")
	f.StringVar(&o.nats, "nats", natsbus.DefaultURL, "NATS server URL (also $"+envNATSURL+")")
	return cmd
}

// runEvents does `berth events`; now is the time --since counts back from.
func runEvents(ctx context.Context, out io.Writer, o eventsOptions, now time.Time) error {
	filters, err := eventFilters(o.service, o.typ)
	if err != nil {
		return err
	}
	start, err := parseSince(o.since, now)
	if err != nil {
		return err
	}
	var urls []string
	for u := range strings.SplitSeq(o.nats, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return errors.New("--nats: empty URL")
	}
	cfg := natsbus.Config{URLs: urls, Name: "berth-cli/events"}
	if err := natsSecurity(ctx, &cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("--nats %q: %w", o.nats, err)
	}
	bus, err := natsbus.Connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = bus.Close(cctx)
	}()

	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	err = bus.ConsumeEvents(ctx, natsbus.EventConsumerConfig{
		FilterSubjects:   filters,
		StartTime:        start,
		StopWhenCaughtUp: !o.follow,
	}, func(_ context.Context, d natsbus.EventDelivery) error {
		if o.json {
			return enc.Encode(d.Event)
		}
		_, err := fmt.Fprintln(out, eventLine(d))
		return err
	})
	switch {
	case errors.Is(err, natsbus.ErrStreamNotFound):
		return fmt.Errorf("stream %s is missing on %s: it is created by `berth dev` (or any Berth service) when it starts", subjects.StreamEvents, bus.URL())
	case errors.Is(err, natsbus.ErrJetStreamNotEnabled):
		return fmt.Errorf("JetStream is not enabled on %s: Berth's events need a NATS server with JetStream (berth dev runs one)", bus.URL())
	case err != nil:
		return fmt.Errorf("read events from %s: %w", bus.URL(), err)
	}
	return nil
}

// domains are the first token after berth.v1.events.
var domains = []string{
	subjects.DomainDeploy, subjects.DomainTask, subjects.DomainHost, subjects.DomainInstance,
	subjects.DomainImage, subjects.DomainTemplate, subjects.DomainAudit,
}

// eventFilters builds the consumer's filter subjects from --service and --type. Event
// subjects are berth.v1.events.<domain>.<type>.<ids>, the service tokens last, so a service
// path needs two filters: the service itself and everything under it.
func eventFilters(service, typ string) ([]string, error) {
	domain, kind := "*", "*"
	if typ != "" {
		t := strings.TrimPrefix(typ, "dev.berth.")
		parts := strings.Split(t, ".")
		switch {
		case len(parts) == 1 && slices.Contains(domains, parts[0]):
			domain = parts[0]
		case len(parts) == 1:
			kind = parts[0]
		case len(parts) == 2:
			domain, kind = parts[0], parts[1]
		default:
			return nil, fmt.Errorf("--type %q: want <domain>.<type> (deploy.completed), a domain (deploy) or a type (completed)", typ)
		}
		for _, p := range []string{domain, kind} {
			if p == "*" {
				continue
			}
			if err := subjects.Token(p); err != nil {
				return nil, fmt.Errorf("--type %q: %w", typ, err)
			}
		}
		if len(parts) == 2 && domain != "*" && !slices.Contains(domains, domain) {
			return nil, fmt.Errorf("--type %q: unknown domain %q, want one of %s", typ, domain, strings.Join(domains, ", "))
		}
	}
	base := "berth.v1.events." + domain + "." + kind
	if service == "" {
		if domain == "*" && kind == "*" {
			return []string{subjects.AllEvents}, nil
		}
		return []string{base + ".>"}, nil
	}
	if err := dnsview.CheckServicePath(strings.Trim(service, "/")); err != nil {
		return nil, fmt.Errorf("--service %q: %w", service, err)
	}
	tokens, err := subjects.ServiceTokens(service)
	if err != nil {
		return nil, fmt.Errorf("--service %q: %w", service, err)
	}
	return []string{base + "." + tokens, base + "." + tokens + ".>"}, nil
}

// parseSince reads --since: a positive duration back from now, or an RFC 3339 time. Empty
// means from the first stored event (the zero time).
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--since %q: want a positive duration", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration (1h, 30m) or a time (2026-01-02T15:04:05Z)", s)
}

// eventLine is the readable form of one event: time, type, what it is about, summary.
func eventLine(d natsbus.EventDelivery) string {
	ev := d.Event
	when := ev.Time
	if when.IsZero() {
		when = d.Stored
	}
	typ := strings.TrimPrefix(ev.Type, "dev.berth.")
	about := ev.Subject
	if about == "" {
		// berth.v1.events.<domain>.<type>.<ids>: the ids, for host and task events.
		if parts := strings.SplitN(d.Subject, ".", 6); len(parts) == 6 {
			about = subjects.ServicePath(parts[5])
		}
	}
	line := fmt.Sprintf("%s  %-26s %-24s", when.UTC().Format("2006-01-02T15:04:05.000Z"), typ, about)
	if s := summary(ev.Data); s != "" {
		line += " " + s
	}
	return strings.TrimRight(line, " ")
}

// summary picks the fields that say what happened out of an event's JSON data (protojson
// field names of proto/events/v1): ids, version, state transition, target, message.
func summary(data json.RawMessage) string {
	var m map[string]any
	if len(data) == 0 || json.Unmarshal(data, &m) != nil {
		return ""
	}
	str := func(v any) string {
		switch v := v.(type) {
		case string:
			return v
		case float64, bool:
			return fmt.Sprint(v)
		}
		return ""
	}
	var parts []string
	add := func(label, key string) {
		if v := str(m[key]); v != "" {
			parts = append(parts, label+"="+v)
		}
	}
	add("deployment", "deploymentId")
	add("task", "taskId")
	add("instance", "instanceId")
	add("host", "host")
	add("version", "version")
	add("digest", "digest")
	if st := str(m["state"]); st != "" {
		if prev := str(m["previousState"]); prev != "" {
			st = prev + "→" + st
		}
		parts = append(parts, "state="+st)
	}
	for _, key := range []string{"target", "step"} {
		if sub, ok := m[key].(map[string]any); ok {
			if h, st := str(sub["host"]), str(sub["state"]); h != "" || st != "" {
				if prev := str(sub["previousState"]); prev != "" && st != "" {
					st = prev + "→" + st
				}
				parts = append(parts, key+"="+h+":"+st)
			}
		}
	}
	for _, key := range []string{"message", "reason"} {
		if v := str(m[key]); v != "" {
			parts = append(parts, fmt.Sprintf("%q", v))
			break
		}
	}
	return strings.Join(parts, " ")
}
