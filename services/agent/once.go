package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/agent/internal/configkeys"
	"github.com/berthdev/berth/services/agent/internal/tmpl"
	"github.com/berthdev/berth/services/agent/internal/views"
)

// onceTimeout bounds the reads of RenderOnce.
const onceTimeout = 10 * time.Second

// RenderOnce renders the template file cfg.Template once and writes the result to w
// (`berth-agent --once --dry-run --template F`, confd's -onetime -noop). Its inputs are read
// the way the running agent reads them: each service's view from the berth-names bucket on
// NATS (the name service must have published it), config keys from coord (cfg.Coord must be
// set when the template reads keys). A service with no healthy instance is reported on log
// as the running agent would refuse the render, but the output is still printed.
func RenderOnce(ctx context.Context, cfg Config, w io.Writer, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	src, err := os.ReadFile(cfg.Template)
	if err != nil {
		return fmt.Errorf("read template: %w", err)
	}
	tp, err := tmpl.Parse(cfg.Template, src)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, onceTimeout)
	defer cancel()
	in := tmpl.Inputs{Views: map[string]*namesv1.ServiceView{}, Keys: map[string][]byte{}}
	if len(tp.Services()) > 0 {
		ncfg := natsbus.Config{URLs: cfg.NATSURLs(), Name: "berth-agent-once/" + cfg.HostID, Logger: log}
		if err := cfg.NATSAuth.Apply(&ncfg); err != nil {
			return err
		}
		bus, err := natsbus.Connect(ctx, ncfg)
		if err != nil {
			return err
		}
		defer func() {
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer ccancel()
			_ = bus.Close(cctx)
		}()
		src := views.FromBus(bus)
		for _, s := range tp.Services() {
			key, err := subjects.ServiceTokens(s)
			if err != nil {
				return fmt.Errorf("service %s: %w", s, err)
			}
			data, found, err := src.Load(ctx, key)
			if err != nil {
				return fmt.Errorf("view of %s: %w", s, err)
			}
			if !found {
				log.Warn("no view of the service in the bucket: it renders with no instance", "service", s, "bucket", subjects.NamesBucket)
				continue
			}
			v := &namesv1.ServiceView{}
			if err := proto.Unmarshal(data, v); err != nil {
				return fmt.Errorf("view of %s in %s: %w", s, subjects.NamesBucket, err)
			}
			in.Views[s] = v
		}
	}
	if len(tp.Keys()) > 0 {
		if len(cfg.CoordEndpoints()) == 0 {
			return fmt.Errorf("template %s reads config keys: %w", cfg.Template, configkeys.ErrNoCoord)
		}
		coordTLS, err := cfg.CoordTLS.ClientTLS("")
		if err != nil {
			return fmt.Errorf("coord_tls: %w", err)
		}
		cc, err := coordclient.New(ctx, coordclient.Config{Endpoints: cfg.CoordEndpoints(), Logger: log, TLS: coordTLS})
		if err != nil {
			return fmt.Errorf("connect to coord %v: %w", cfg.CoordEndpoints(), err)
		}
		defer cc.Close()
		for _, k := range tp.Keys() {
			n, err := cc.Get(ctx, configkeys.Prefix+k)
			switch {
			case errors.Is(err, coordclient.ErrNotFound):
			case err != nil:
				return fmt.Errorf("read config key %s: %w", k, err)
			default:
				in.Keys[k] = n.Value
			}
		}
	}
	out, res, err := tp.Render(in, tmpl.Data{Host: cfg.HostID, DC: cfg.DC})
	if err != nil {
		return err
	}
	for _, s := range res.Empty {
		log.Warn("no healthy instance: the running agent would refuse this render and keep the last good file", "service", s)
	}
	_, err = w.Write(out)
	return err
}
