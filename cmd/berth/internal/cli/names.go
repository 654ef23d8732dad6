package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/dnsview"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// Name service endpoint: --names, else $BERTH_NAMES_URL, else berth dev's.
const (
	envNamesURL     = "BERTH_NAMES_URL"
	defaultNamesURL = "http://127.0.0.1:7071"
)

// namesClient talks to berth-name-service's HTTP API.
type namesClient struct {
	base string
	http *http.Client
}

// addNamesFlag adds --names to cmd and returns a function giving the client.
func addNamesFlag(cmd *cobra.Command) func() (*namesClient, error) {
	var base string
	cmd.Flags().StringVar(&base, "names", defaultNamesURL, "name service URL (also $"+envNamesURL+")")
	return func() (*namesClient, error) {
		r, err := resolveSetting(cmd, settingNames, "names", base)
		if err != nil {
			return nil, err
		}
		base = r.Value
		u, err := url.Parse(base)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--names %q: want http(s)://host:port", base)
		}
		return &namesClient{base: strings.TrimRight(base, "/"), http: &http.Client{}}, nil
	}
}

// namesAPIError is the name service's error body.
type namesAPIError struct {
	Error string `json:"error"`
	Field string `json:"field"`
}

// do sends a request and decodes a JSON answer into out (when not nil). A non-2xx answer
// becomes an error carrying the service's message.
func (c *namesClient) do(ctx context.Context, method, path string, body []byte, out any) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if u := os.Getenv("USER"); u != "" {
		req.Header.Set("X-Berth-User", u)
	}
	if tok := bearerToken(ctx); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if err := tlsClient(ctx, c.http); err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, unreachable("name service", c.base, "--names", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("name service %s: read answer: %w", c.base, err)
	}
	if resp.StatusCode/100 != 2 {
		var e namesAPIError
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return resp.Header, &ExitError{Code: 1, Err: errors.New(accessHint(ctx, resp.StatusCode, "name service", c.base, e.Error))}
		}
		return resp.Header, &ExitError{Code: 1, Err: fmt.Errorf("name service: %s: %s", resp.Status, bytes.TrimSpace(data))}
	}
	if out != nil {
		if m, ok := out.(*namesv1.ServiceView); ok {
			return resp.Header, protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, m)
		}
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = data
			return resp.Header, nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return resp.Header, fmt.Errorf("name service: decode answer: %w", err)
		}
	}
	return resp.Header, nil
}

// servicePathArg checks a SERVICE argument.
func namesServiceArg(s string) (string, error) {
	s = strings.Trim(s, "/")
	if err := dnsview.CheckServicePath(s); err != nil {
		return "", &ExitError{Code: 2, Err: err}
	}
	return s, nil
}

func namesEnum(s, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(s, prefix))
}

func newInstancesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "instances SERVICE",
		Short: "List a service's registered instances, healthy or not",
		Long: `berth instances lists every instance registered for SERVICE (a service path such as
hotel/search) as the name service sees it: address, datacenter, version, weight, health and
state. berth resolve shows which of them a client is answered.`,
		Args: cobra.ExactArgs(1),
	}
	client := addNamesFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the service view as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		svc, err := namesServiceArg(args[0])
		if err != nil {
			return err
		}
		c, err := client()
		if err != nil {
			return err
		}
		if asJSON {
			var raw json.RawMessage
			if _, err := c.do(cmd.Context(), http.MethodGet, "/v1/view/"+svc, nil, &raw); err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(raw)
			return err
		}
		var v namesv1.ServiceView
		if _, err := c.do(cmd.Context(), http.MethodGet, "/v1/view/"+svc, nil, &v); err != nil {
			return err
		}
		printInstances(cmd.OutOrStdout(), &v)
		return nil
	}
	return cmd
}

func printInstances(w io.Writer, v *namesv1.ServiceView) {
	fmt.Fprintf(w, "%s: %d instances, revision %d, ttl %ds", v.GetService(), len(v.GetInstances()), v.GetRevision(), v.GetTtlSeconds())
	if v.GetPanic() {
		fmt.Fprint(w, ", IN PANIC (answering the last known good set)")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDR\tDC\tVERSION\tWEIGHT\tHEALTH\tSTATE\tHOST")
	for _, in := range v.GetInstances() {
		weight := in.GetWeight()
		if weight == 0 {
			weight = dnsview.DefaultWeight
		}
		health, state := namesEnum(in.GetHealth().String(), "HEALTH_"), namesEnum(in.GetState().String(), "INSTANCE_STATE_")
		if in.GetHealth() == namesv1.Health_HEALTH_UNSPECIFIED {
			health = "healthy" // registered after passing its checks; no later report
		}
		if in.GetState() == namesv1.InstanceState_INSTANCE_STATE_UNSPECIFIED {
			state = "active"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", in.GetId(), instanceAddr(in.GetIp(), in.GetPort()), orDash(in.GetDc()), orDash(in.GetVersion()),
			weight, health, state, orDash(in.GetHost()))
	}
	tw.Flush()
}

func instanceAddr(ip string, port uint32) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]:" + strconv.Itoa(int(port))
	}
	return ip + ":" + strconv.Itoa(int(port))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// namesResolution is the name service's resolve answer.
type namesResolution struct {
	Service    string   `json:"service"`
	Revision   int64    `json:"revision"`
	TTLSeconds uint32   `json:"ttl_seconds"`
	ClientDC   string   `json:"client_dc"`
	DCSource   string   `json:"dc_source"`
	TargetDC   string   `json:"target_dc"`
	Rules      []string `json:"rules"`
	Panic      bool     `json:"panic"`
	Explain    []string `json:"explain"`
	Instances  []struct {
		ID      string `json:"id"`
		Addr    string `json:"addr"`
		DC      string `json:"dc"`
		Version string `json:"version"`
		Weight  uint32 `json:"weight"`
	} `json:"instances"`
}

func newResolveCmd() *cobra.Command {
	var explain, asJSON bool
	var dc, family string
	cmd := &cobra.Command{
		Use:   "resolve SERVICE",
		Short: "Show the instances a client of SERVICE is answered, with the traffic policy applied",
		Long: `berth resolve asks the name service what it answers for SERVICE, with the service's
traffic policy applied exactly as DNS applies it: one line per instance, ip:port first.

The client's datacenter is the one of the machine running berth (from the inventory or the
name service's subnet map), or --dc. --explain prints which rules chose the answer (panic,
exclude, pin, dc-override, same-dc or failover, weights, the answer mode) and why.`,
		Example: `  berth resolve hotel/search
  berth resolve hotel/search --dc dc2 --explain`,
		Args: cobra.ExactArgs(1),
	}
	client := addNamesFlag(cmd)
	f := cmd.Flags()
	f.BoolVar(&explain, "explain", false, "print the rules that chose the answer")
	f.StringVar(&dc, "dc", "", "resolve as a client in this datacenter")
	f.StringVar(&family, "family", "", "only ipv4 or ipv6 instances (as A or AAAA queries)")
	f.BoolVar(&asJSON, "json", false, "print the answer as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		svc, err := namesServiceArg(args[0])
		if err != nil {
			return err
		}
		c, err := client()
		if err != nil {
			return err
		}
		q := url.Values{}
		if explain {
			q.Set("explain", "true")
		}
		if dc != "" {
			q.Set("dc", dc)
		}
		if family != "" {
			q.Set("family", family)
		}
		path := "/v1/resolve/" + svc
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		if asJSON {
			var raw json.RawMessage
			if _, err := c.do(cmd.Context(), http.MethodGet, path, nil, &raw); err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(raw)
			return err
		}
		var r namesResolution
		if _, err := c.do(cmd.Context(), http.MethodGet, path, nil, &r); err != nil {
			return err
		}
		printResolution(cmd.OutOrStdout(), &r, explain)
		return nil
	}
	return cmd
}

func printResolution(w io.Writer, r *namesResolution, explain bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, in := range r.Instances {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", in.Addr, in.ID, orDash(in.DC), orDash(in.Version))
	}
	tw.Flush()
	if len(r.Instances) == 0 {
		fmt.Fprintf(w, "no instance of %s is answered\n", r.Service)
	}
	if !explain {
		return
	}
	fmt.Fprintf(w, "\nservice %s, revision %d, ttl %ds\n", r.Service, r.Revision, r.TTLSeconds)
	switch {
	case r.ClientDC != "" && r.DCSource != "":
		fmt.Fprintf(w, "client datacenter %s (from %s)\n", r.ClientDC, r.DCSource)
	case r.ClientDC != "":
		fmt.Fprintf(w, "client datacenter %s\n", r.ClientDC)
	default:
		fmt.Fprintln(w, "client datacenter unknown")
	}
	fmt.Fprintf(w, "rules: %s\n", strings.Join(r.Rules, ", "))
	for _, e := range r.Explain {
		fmt.Fprintf(w, "  - %s\n", e)
	}
}

func newWatchCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "watch SERVICE",
		Short: "Print SERVICE's view every time it changes, until interrupted",
		Long: `berth watch follows SERVICE's view on the name service (Server-Sent Events): it prints the
current instances, then the view again at every change, with its coord revision.`,
		Args: cobra.ExactArgs(1),
	}
	client := addNamesFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each view as one JSON object per line")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		svc, err := namesServiceArg(args[0])
		if err != nil {
			return err
		}
		c, err := client()
		if err != nil {
			return err
		}
		return watchViews(cmd.Context(), c, svc, asJSON, cmd.OutOrStdout())
	}
	return cmd
}

// watchViews reads the SSE stream, reconnecting with Last-Event-ID after a lost connection,
// until ctx ends.
func watchViews(ctx context.Context, c *namesClient, svc string, asJSON bool, w io.Writer) error {
	lastID := ""
	for {
		err := watchViewsOnce(ctx, c, svc, asJSON, w, &lastID)
		if ctx.Err() != nil {
			return nil
		}
		var ee *ExitError
		if errors.As(err, &ee) {
			return err
		}
		fmt.Fprintf(os.Stderr, "berth watch: %v; reconnecting\n", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}

func watchViewsOnce(ctx context.Context, c *namesClient, svc string, asJSON bool, w io.Writer, lastID *string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/events/"+svc, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if *lastID != "" {
		req.Header.Set("Last-Event-ID", *lastID)
	}
	if tok := bearerToken(ctx); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if err := tlsClient(ctx, c.http); err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		var e namesAPIError
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return &ExitError{Code: 1, Err: errors.New(accessHint(ctx, resp.StatusCode, "name service", c.base, e.Error))}
		}
		return &ExitError{Code: 1, Err: fmt.Errorf("name service: %s", resp.Status)}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var event, id string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data := strings.TrimPrefix(line, "data: ")
			if asJSON {
				fmt.Fprintln(w, data)
			} else if event == "removed" {
				fmt.Fprintf(w, "%s %s: removed (no instance, policy or tree node left)\n", time.Now().Format(time.TimeOnly), svc)
			} else {
				var v namesv1.ServiceView
				if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(data), &v); err != nil {
					return fmt.Errorf("decode view: %w", err)
				}
				fmt.Fprintf(w, "%s ", time.Now().Format(time.TimeOnly))
				printInstances(w, &v)
				fmt.Fprintln(w)
			}
			if id != "" {
				*lastID = id
			}
			event, id = "", ""
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("stream ended")
}

func newTrafficCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "traffic",
		Short: "Set, show or clear a service's traffic policy",
		Long: `A service's traffic policy steers what the name service (DNS and resolve) answers:
same-datacenter priority with failover below --min-healthy, weights per version (gray
release) and per instance, datacenter overrides, pinned and excluded instances, a panic
threshold, and the answer mode (all, limit N, single). See berth traffic set --help.`,
	}
	cmd.AddCommand(newTrafficSetCmd(), newTrafficGetCmd(), newTrafficClearCmd())
	return cmd
}

// trafficAnswer is the name service's traffic answer.
type trafficAnswer struct {
	Service  string          `json:"service"`
	Revision int64           `json:"revision"`
	Policy   json.RawMessage `json:"policy"`
}

func getTrafficPolicy(ctx context.Context, c *namesClient, svc string) (*namesv1.TrafficPolicy, bool, error) {
	var a trafficAnswer
	_, err := c.do(ctx, http.MethodGet, "/v1/traffic/"+svc, nil, &a)
	var ee *ExitError
	if errors.As(err, &ee) && strings.Contains(ee.Error(), "has no traffic policy") {
		return &namesv1.TrafficPolicy{}, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	p := &namesv1.TrafficPolicy{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(a.Policy, p); err != nil {
		return nil, false, fmt.Errorf("decode policy: %w", err)
	}
	return p, true, nil
}

func newTrafficSetCmd() *cobra.Command {
	var (
		mode, weights, instWeights string
		limit, minHealthy          uint32
		overrides, pin, exclude    []string
		panicThreshold             float64
		sameDC, replace            bool
		fromFile                   string
	)
	cmd := &cobra.Command{
		Use:   "set SERVICE",
		Short: "Change a service's traffic policy",
		Long: `berth traffic set changes the fields given by flags in SERVICE's current traffic policy
(or, with --replace, starts from an empty policy) and stores it. The name service checks the
policy first: weights that do not parse, an unknown datacenter, a panic threshold outside 0
to 100 are refused with the field named, and nothing changes.

  --mode all|limit|single   all: every instance in weighted random order; limit: the first
                            --limit of them; single: one instance picked by weight
  --weights V=W,...         traffic split between versions (gray release), e.g.
                            1.4.1=90,1.4.2=10; unlisted versions get nothing; "" clears
  --instance-weights ID=W   per-instance weights (0 takes an instance out); "" clears
  --override DC=DC          send the clients of a datacenter to another (repeatable);
                            "" clears
  --pin ID, --exclude ID    answer only, or never, these instances (repeatable); "" clears
  --min-healthy N           fail over to every datacenter when the client's has fewer
  --same-dc=false           answer every datacenter to everyone
  --panic-threshold P       below P% healthy, answer the last known good set (0: off)
  --from-file FILE          the whole policy as JSON (protojson of TrafficPolicy)`,
		Example: `  berth traffic set hotel/search --weights 1.4.1=90,1.4.2=10
  berth traffic set hotel/search --override dc1=dc2 --panic-threshold 50
  berth traffic set hotel/search --mode single`,
		Args: cobra.ExactArgs(1),
	}
	client := addNamesFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&mode, "mode", "", "answer mode: all, limit or single")
	f.Uint32Var(&limit, "limit", 0, "instances answered in mode limit")
	f.Uint32Var(&minHealthy, "min-healthy", 0, "instances the client's datacenter needs to be answered alone")
	f.StringVar(&weights, "weights", "", "version weights, VERSION=WEIGHT,...")
	f.StringVar(&instWeights, "instance-weights", "", "instance weights, ID=WEIGHT,...")
	f.StringArrayVar(&overrides, "override", nil, "send a datacenter's clients to another, FROM=TO")
	f.StringArrayVar(&pin, "pin", nil, "answer only this instance")
	f.StringArrayVar(&exclude, "exclude", nil, "never answer this instance")
	f.Float64Var(&panicThreshold, "panic-threshold", 0, "percent of healthy instances below which the last known good set is answered")
	f.BoolVar(&sameDC, "same-dc", true, "prefer instances in the client's datacenter")
	f.BoolVar(&replace, "replace", false, "start from an empty policy instead of the current one")
	f.StringVar(&fromFile, "from-file", "", "read the whole policy from this JSON file")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		svc, err := namesServiceArg(args[0])
		if err != nil {
			return err
		}
		c, err := client()
		if err != nil {
			return err
		}
		var p *namesv1.TrafficPolicy
		switch {
		case fromFile != "":
			data, err := readFileLimit(fromFile, maxInputFile)
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			p = &namesv1.TrafficPolicy{}
			if err := protojson.Unmarshal(data, p); err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("--from-file %s: %w", fromFile, err)}
			}
		case replace:
			p = &namesv1.TrafficPolicy{}
		default:
			if p, _, err = getTrafficPolicy(cmd.Context(), c, svc); err != nil {
				return err
			}
		}
		bad := func(err error) error { return &ExitError{Code: 2, Err: err} }
		if f.Changed("mode") {
			switch mode {
			case "all":
				p.Mode = namesv1.AnswerMode_ANSWER_MODE_ALL
			case "limit":
				p.Mode = namesv1.AnswerMode_ANSWER_MODE_LIMIT
			case "single":
				p.Mode = namesv1.AnswerMode_ANSWER_MODE_SINGLE
			default:
				return bad(fmt.Errorf("--mode %q: want all, limit or single", mode))
			}
			if mode != "limit" {
				p.Limit = 0
			}
		}
		if f.Changed("limit") {
			p.Limit = limit
			if !f.Changed("mode") {
				p.Mode = namesv1.AnswerMode_ANSWER_MODE_LIMIT
			}
		}
		if f.Changed("min-healthy") {
			p.MinHealthy = minHealthy
		}
		if f.Changed("weights") {
			p.VersionWeights = nil
			if weights != "" {
				if p.VersionWeights, err = dnsview.ParseWeights("--weights", weights); err != nil {
					return bad(err)
				}
			}
		}
		if f.Changed("instance-weights") {
			p.InstanceWeights = nil
			if instWeights != "" {
				if p.InstanceWeights, err = dnsview.ParseWeights("--instance-weights", instWeights); err != nil {
					return bad(err)
				}
			}
		}
		if f.Changed("override") {
			p.DcOverrides = nil
			for _, o := range overrides {
				if o == "" {
					continue
				}
				from, to, ok := strings.Cut(o, "=")
				if !ok || from == "" || to == "" {
					return bad(fmt.Errorf("--override %q: want FROM_DC=TO_DC", o))
				}
				if p.DcOverrides == nil {
					p.DcOverrides = map[string]string{}
				}
				p.DcOverrides[from] = to
			}
		}
		if f.Changed("pin") {
			p.Pin = nonEmptyArgs(pin)
		}
		if f.Changed("exclude") {
			p.Exclude = nonEmptyArgs(exclude)
		}
		if f.Changed("panic-threshold") {
			p.PanicThreshold = panicThreshold
		}
		if f.Changed("same-dc") {
			p.DisableSameDc = !sameDC
		}
		p.UpdatedBy, p.UpdatedAt = "", nil
		body, err := protojson.Marshal(p)
		if err != nil {
			return err
		}
		var a trafficAnswer
		if _, err := c.do(cmd.Context(), http.MethodPut, "/v1/traffic/"+svc, body, &a); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "traffic policy of %s set (revision %d)\n", svc, a.Revision)
		printTrafficPolicy(cmd.OutOrStdout(), p)
		return nil
	}
	return cmd
}

func nonEmptyArgs(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func printTrafficPolicy(w io.Writer, p *namesv1.TrafficPolicy) {
	mode := namesEnum(p.GetMode().String(), "ANSWER_MODE_")
	if p.GetMode() == namesv1.AnswerMode_ANSWER_MODE_UNSPECIFIED {
		mode = "all"
	}
	if p.GetMode() == namesv1.AnswerMode_ANSWER_MODE_LIMIT {
		mode += " " + strconv.Itoa(int(p.GetLimit()))
	}
	fmt.Fprintf(w, "  mode:             %s\n", mode)
	fmt.Fprintf(w, "  same-dc:          %v (min healthy %d)\n", !p.GetDisableSameDc(), max(p.GetMinHealthy(), 1))
	if len(p.GetVersionWeights()) > 0 {
		fmt.Fprintf(w, "  version weights:  %s\n", dnsview.FormatWeights(p.GetVersionWeights()))
	}
	if len(p.GetInstanceWeights()) > 0 {
		fmt.Fprintf(w, "  instance weights: %s\n", dnsview.FormatWeights(p.GetInstanceWeights()))
	}
	for from, to := range p.GetDcOverrides() {
		fmt.Fprintf(w, "  override:         %s → %s\n", from, to)
	}
	if len(p.GetPin()) > 0 {
		fmt.Fprintf(w, "  pin:              %s\n", strings.Join(p.GetPin(), ", "))
	}
	if len(p.GetExclude()) > 0 {
		fmt.Fprintf(w, "  exclude:          %s\n", strings.Join(p.GetExclude(), ", "))
	}
	if p.GetPanicThreshold() > 0 {
		fmt.Fprintf(w, "  panic threshold:  %g%%\n", p.GetPanicThreshold())
	}
	if p.GetUpdatedBy() != "" || p.GetUpdatedAt() != nil {
		fmt.Fprintf(w, "  updated:          %s by %s\n", p.GetUpdatedAt().AsTime().Format(time.RFC3339), orDash(p.GetUpdatedBy()))
	}
}

func newTrafficGetCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "get SERVICE",
		Short: "Show a service's traffic policy",
		Args:  cobra.ExactArgs(1),
	}
	client := addNamesFlag(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the policy as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		svc, err := namesServiceArg(args[0])
		if err != nil {
			return err
		}
		c, err := client()
		if err != nil {
			return err
		}
		p, found, err := getTrafficPolicy(cmd.Context(), c, svc)
		if err != nil {
			return err
		}
		if asJSON {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(p)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			return nil
		}
		if !found {
			fmt.Fprintf(cmd.OutOrStdout(), "%s has no traffic policy (defaults: every healthy instance, same-dc priority)\n", svc)
			return nil
		}
		fmt.Fprintf(cmd.OutOrStdout(), "traffic policy of %s\n", svc)
		printTrafficPolicy(cmd.OutOrStdout(), p)
		return nil
	}
	return cmd
}

func newTrafficClearCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "clear SERVICE",
		Short: "Remove a service's traffic policy (back to the defaults)",
		Args:  cobra.ExactArgs(1),
	}
	client := addNamesFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		svc, err := namesServiceArg(args[0])
		if err != nil {
			return err
		}
		c, err := client()
		if err != nil {
			return err
		}
		if _, err := c.do(cmd.Context(), http.MethodDelete, "/v1/traffic/"+svc, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "traffic policy of %s cleared\n", svc)
		return nil
	}
	return cmd
}
