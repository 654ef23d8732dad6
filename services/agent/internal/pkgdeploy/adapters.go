package pkgdeploy

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berthdev/berth/pkg/artifact"
	"github.com/berthdev/berth/pkg/safeextract"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent/internal/plugin"
)

// This file adapts the shared packages (pkg/artifact, pkg/safeextract) to the plugin and
// turns their errors into step outcomes: what may pass on a new attempt is retryable
// (infrastructure), a bad package or argument fails the step (application).

// artifactFetcher is pkg/artifact behind Fetcher.
type artifactFetcher struct {
	f *artifact.Fetcher
}

func newArtifactFetcher(cfg Config) (Fetcher, error) {
	if cfg.CacheDir == "" {
		return nil, errors.New("package-deploy: cache directory: empty")
	}
	retries := cfg.FetchRetries
	if retries == 0 {
		retries = DefaultFetchRetries
	}
	f, err := artifact.New(artifact.Config{
		CacheDir:   cfg.CacheDir,
		MaxBytes:   cfg.MaxPackageBytes,
		Timeout:    cfg.FetchTimeout,
		Retries:    retries,
		Registerer: cfg.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("package-deploy: %w", err)
	}
	return artifactFetcher{f}, nil
}

// DefaultFetchRetries is how many times an unavailable artifact source is retried within
// one step when Config.FetchRetries is 0; the controller retries the step after that.
const DefaultFetchRetries = 2

func (a artifactFetcher) Fetch(ctx context.Context, url, sum string) (string, error) {
	p, err := a.f.Fetch(ctx, url, sum)
	switch {
	case err == nil:
		return p, nil
	case errors.Is(err, artifact.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return "", plugin.Retryable(fmt.Errorf("artifact server unreachable or failing, try again later: %w", err))
	case errors.Is(err, artifact.ErrChecksum):
		return "", bad("the artifact is not the one asked for (its sha256 differs; check the URL and the sha256): %w", err)
	case errors.Is(err, artifact.ErrNotFound):
		return "", bad("the artifact does not exist at that URL: %w", err)
	case errors.Is(err, artifact.ErrDenied):
		return "", bad("the artifact server refused access (check the URL's credentials or permissions): %w", err)
	case errors.Is(err, artifact.ErrBadURL), errors.Is(err, artifact.ErrBadDigest), errors.Is(err, artifact.ErrTooLarge), errors.Is(err, artifact.ErrProtocol):
		return "", bad("%w", err)
	}
	return "", plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, err)
}

// extract unpacks archive into dir (which must not exist) through pkg/safeextract.
func extract(ctx context.Context, archive, dir string, maxBytes int64) error {
	_, err := safeextract.Extract(ctx, archive, dir, safeextract.Options{MaxBytes: maxBytes})
	if err == nil {
		return nil
	}
	var ee *safeextract.EntryError
	switch {
	case errors.As(err, &ee), errors.Is(err, safeextract.ErrFormat), errors.Is(err, safeextract.ErrLimit),
		errors.Is(err, safeextract.ErrUnsafePath), errors.Is(err, safeextract.ErrUnsafeLink),
		errors.Is(err, safeextract.ErrUnsupportedType), errors.Is(err, safeextract.ErrDuplicate):
		return bad("package refused, nothing was installed: %w", err)
	case ctx.Err() != nil:
		return plugin.Retryable(fmt.Errorf("unpack package: %w", err))
	}
	if errors.Is(err, os.ErrPermission) {
		return hostFailure("unpack package: %v", err)
	}
	return plugin.Failed(agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, fmt.Errorf("unpack package: %w", err))
}
