package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	imagebuilder "github.com/berthdev/berth/services/image-builder"
)

// Exit codes of `berth images build`: an application failure will fail again; an
// infrastructure failure may succeed when retried (EX_TEMPFAIL, as plugins use it).
const (
	imagesExitFailed    = 1
	imagesExitRetryable = 75
)

func newImagesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List, build and make base images (berth-image-builder)",
		Long: `berth images works with the container images berth-image-builder makes: one image per
version of a service, <registry>/<service path>:<version>, the service's base image plus the
unpacked package, recorded in coord (/berth/images/<service path>/<version>) once pushed.

  ls     lists the image records in coord
  build  asks the builder (NATS request/reply on berth.v1.rpc.build) for the image of a
         version: the existing one, or a new build
  base   makes a base image with no registry to pull from: scratch plus a static busybox
         (with sh, ls, cat, ... links), built with the Docker engine API and pushed`,
		Example: `  berth images base --registry 127.0.0.1:5000
  berth images build hotel/search --version 1.4.2 --package file:///srv/pkgs/search-1.4.2.tar.gz --sha256 9f86...
  berth images ls hotel`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newImagesLsCmd(), newImagesBuildCmd(), newImagesBaseCmd())
	return cmd
}

func newImagesLsCmd() *cobra.Command {
	var (
		coord   string
		timeout time.Duration
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "ls [SERVICE]",
		Short: "List the image records in coord, of every service or of the subtree at SERVICE",
		Long: `berth images ls reads the image records berth-image-builder keeps in coord
(/berth/images/<service path>/<version>): a record exists only for an image that was pushed.

coord is --coord (host:port, comma separated), else $` + hostsEnvCoord + `, else ` + hostsDefaultCoord + `.`,
		Args: cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			prefix := imagebuilder.ImagesPrefix
			if len(args) == 1 {
				svc := strings.Trim(args[0], "/")
				if err := imagebuilder.CheckServicePath(svc); err != nil {
					return err
				}
				prefix += "/" + svc
			}
			o := &hostsOptions{coord: coord, timeout: timeout}
			return o.run(cmd, func(ctx context.Context, cl *coordclient.Client) error {
				recs, err := imagesList(ctx, cl, prefix)
				if err != nil {
					return err
				}
				if asJSON {
					return imagesPrintJSON(cmd.OutOrStdout(), recs)
				}
				return imagesPrintTable(cmd.OutOrStdout(), recs)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&coord, "coord", hostsDefaultCoord, "coord members, host:port comma separated (also $"+hostsEnvCoord+")")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "bound of the whole command")
	f.BoolVar(&asJSON, "json", false, "print the records as JSON")
	return cmd
}

// imagesList reads the image records under prefix, by service then build time.
func imagesList(ctx context.Context, cl *coordclient.Client, prefix string) ([]*imagev1.ImageRecord, error) {
	res, err := cl.List(ctx, prefix, coordclient.Recursive())
	if errors.Is(err, coordclient.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	var recs []*imagev1.ImageRecord
	for _, n := range res.Nodes {
		if n.Version == 0 || len(n.Value) == 0 {
			continue
		}
		rec := &imagev1.ImageRecord{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(n.Value, rec); err != nil || rec.GetDigest() == "" {
			continue
		}
		if rec.GetService() == "" || rec.GetVersion() == "" {
			// Records carry both; fall back on the path for older ones.
			rel := strings.TrimPrefix(n.Path, imagebuilder.ImagesPrefix+"/")
			if i := strings.LastIndexByte(rel, '/'); i > 0 {
				rec.Service, rec.Version = rel[:i], rel[i+1:]
			}
		}
		recs = append(recs, rec)
	}
	sort.SliceStable(recs, func(i, j int) bool {
		if recs[i].GetService() != recs[j].GetService() {
			return recs[i].GetService() < recs[j].GetService()
		}
		return recs[i].GetBuiltAt().AsTime().Before(recs[j].GetBuiltAt().AsTime())
	})
	return recs, nil
}

func imagesPrintTable(w io.Writer, recs []*imagev1.ImageRecord) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVERSION\tDIGEST\tBUILT\tBASE")
	for _, r := range recs {
		built := "-"
		if r.GetBuiltAt() != nil {
			built = r.GetBuiltAt().AsTime().UTC().Format(time.RFC3339)
		}
		digest := r.GetDigest()
		if len(digest) > 19 {
			digest = digest[:19]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.GetService(), r.GetVersion(), digest, built, r.GetBaseImage())
	}
	return tw.Flush()
}

func imagesPrintJSON(w io.Writer, recs []*imagev1.ImageRecord) error {
	out := make([]any, 0, len(recs))
	for _, r := range recs {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(r)
		if err != nil {
			return err
		}
		out = append(out, jsonRaw(b))
	}
	return printJSON(w, out)
}

// jsonRaw is protojson output embedded as is in a JSON document.
type jsonRaw []byte

func (j jsonRaw) MarshalJSON() ([]byte, error) { return j, nil }

func newImagesBuildCmd() *cobra.Command {
	var (
		nats, version, pkg, sha, base, id string
		timeout                           time.Duration
		asJSON                            bool
	)
	cmd := &cobra.Command{
		Use:   "build SERVICE --version V --package URL --sha256 H",
		Short: "Ask berth-image-builder for the image of a version: the existing one, or a new build",
		Long: `berth images build sends a BuildRequest to berth-image-builder over NATS (request/reply on
berth.v1.rpc.build) and prints the answer: the image's reference and digest, whether it was
cached, and the tail of the build's output.

The exit code is 0 on success, 1 when the build can never succeed as asked (a package without
a valid berth.yaml, a checksum mismatch, a base image that does not exist) and 75 when it
failed on infrastructure (registry, artifact server or Docker engine unreachable) and may be
retried.

The NATS URL is --nats, else $` + envNATSURL + `, else ` + natsbus.DefaultURL + ` (berth dev's).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("nats") {
				if env := os.Getenv(envNATSURL); env != "" {
					nats = env
				}
			}
			req := &imagev1.BuildRequest{Service: strings.Trim(args[0], "/"), Version: version, PackageUrl: pkg,
				PackageSha256: sha, BaseImage: base, RequestId: id}
			return runImagesBuild(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), nats, timeout, req, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&nats, "nats", natsbus.DefaultURL, "NATS server URL (also $"+envNATSURL+")")
	f.StringVar(&version, "version", "", "version to build (the image tag; required)")
	f.StringVar(&pkg, "package", "", "package URL: file://, http(s):// or ftp:// (required)")
	f.StringVar(&sha, "sha256", "", "the package's sha256, 64 hex digits (required)")
	f.StringVar(&base, "base", "", "base image instead of the service's (its base_image label in the tree, else the builder's default)")
	f.StringVar(&id, "request-id", "", "request id for events and retries (default: a new one)")
	f.DurationVar(&timeout, "timeout", 15*time.Minute, "how long to wait for the answer")
	f.BoolVar(&asJSON, "json", false, "print the reply as JSON")
	for _, name := range []string{"version", "package", "sha256"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// runImagesBuild sends req and prints the reply to out, or the failure to errOut.
func runImagesBuild(ctx context.Context, out, errOut io.Writer, natsURL string, timeout time.Duration, req *imagev1.BuildRequest, asJSON bool) error {
	if timeout <= 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", timeout)
	}
	if err := imagebuilder.CheckServicePath(req.GetService()); err != nil {
		return err
	}
	var urls []string
	for u := range strings.SplitSeq(natsURL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	cfg := natsbus.Config{URLs: urls, Name: "berth-cli/images"}
	if err := natsSecurity(ctx, &cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("--nats %q: %w", natsURL, err)
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
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply := &imagev1.BuildReply{}
	err = bus.Request(rctx, imagebuilder.SubjectRPC, req, reply, natsbus.WithServicePath(req.GetService()))
	var se *natsbus.StatusError
	switch {
	case err == nil:
	case errors.Is(err, natsbus.ErrNoResponders):
		return &ExitError{Code: imagesExitRetryable, Err: fmt.Errorf("no berth-image-builder answers on %s at %s (is berth dev or berth-image-builder running?)", imagebuilder.SubjectRPC, bus.URL())}
	case errors.As(err, &se):
		if log := se.Details["build_log"]; log != "" {
			fmt.Fprintln(errOut, "--- build log (last lines)")
			fmt.Fprintln(errOut, log)
		}
		code := imagesExitFailed
		class := se.Details["failure_class"]
		if class == imagebuilder.ClassInfrastructure || se.Code == commonv1.Code_CODE_UNAVAILABLE || se.Code == commonv1.Code_CODE_DEADLINE_EXCEEDED {
			code = imagesExitRetryable
		}
		if class != "" {
			return &ExitError{Code: code, Err: fmt.Errorf("%s failure: %w", class, err)}
		}
		return &ExitError{Code: code, Err: err}
	default:
		return &ExitError{Code: imagesExitRetryable, Err: err}
	}
	if asJSON {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(reply)
		if err != nil {
			return err
		}
		return printJSON(out, jsonRaw(b))
	}
	fmt.Fprintf(out, "reference  %s\ndigest     %s\ncached     %v\nbase       %s\n", reply.GetReference(), reply.GetDigest(), reply.GetCached(), reply.GetBaseImage())
	if !reply.GetCached() {
		fmt.Fprintf(out, "duration   %s\n", time.Duration(reply.GetDurationSeconds()*float64(time.Second)).Round(time.Millisecond))
	}
	if len(reply.GetBuildLog()) > 0 {
		fmt.Fprintln(out, "--- build log (last lines)")
		for _, l := range reply.GetBuildLog() {
			fmt.Fprintln(out, l)
		}
	}
	return nil
}

func newImagesBaseCmd() *cobra.Command {
	var (
		o       imagebuilder.BaseOptions
		quiet   bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "base",
		Short: "Make a base image from scratch and a static busybox, and push it",
		Long: `berth images base makes a base image on a Docker engine that has no registry to pull one
from: FROM scratch, a statically linked busybox at /bin/busybox with a link for each of its
applets (sh, ls, cat, ...), /tmp, /root, /etc/passwd and /etc/group. The build context is made
here and sent to the engine API; nothing is pulled. The image is tagged <registry>/<name> and
pushed, or only tagged <name> locally when --registry is empty.

berth-image-builder's default base is <registry>/` + imagebuilder.DefaultBaseName + `; a service picks
another with the base_image label of its service-tree node.

The busybox must be static (Debian: apt-get install busybox-static). The engine is
$DOCKER_HOST, else the default socket.`,
		Example: `  berth images base
  berth images base --name berth/base:busybox --registry 127.0.0.1:5000 --busybox /bin/busybox
  berth images base --registry "" --name berth/base:local`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return fmt.Errorf("--timeout %s: want a positive duration", timeout)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if !quiet {
				o.Log = func(line string) { fmt.Fprintln(cmd.ErrOrStderr(), line) }
			}
			res, err := imagebuilder.MakeBaseImage(ctx, o)
			if err != nil {
				if errors.Is(err, imagebuilder.ErrEngineUnavailable) {
					return fmt.Errorf("%w (is Docker running? set $DOCKER_HOST)", err)
				}
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "image      %s\nid         %s\napplets    %d\n", res.Reference, res.ImageID, res.Applets)
			if res.Digest != "" {
				fmt.Fprintf(w, "pushed     %s@%s\n", res.Reference, res.Digest)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Name, "name", imagebuilder.DefaultBaseName, "repository:tag of the image, without a registry")
	f.StringVar(&o.Registry, "registry", "127.0.0.1:5000", `registry to tag and push to, host[:port]; "" for a local image only`)
	f.StringVar(&o.Busybox, "busybox", imagebuilder.DefaultBusybox, "path of a statically linked busybox")
	f.StringVar(&o.RegistryUsername, "registry-username", "", "registry user, if the registry wants one")
	f.StringVar(&o.RegistryPassword, "registry-password", "", "registry password")
	f.BoolVarP(&quiet, "quiet", "q", false, "do not print the build's output")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "bound of the whole command")
	return cmd
}
