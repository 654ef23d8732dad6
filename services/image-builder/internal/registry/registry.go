// Package registry is a small client of the registry HTTP API v2 (the OCI distribution
// API): whether a tag exists and with which manifest digest, and the labels of the image
// behind it. It is what makes a cache hit cheap: one HEAD request, no engine involved.
//
// Authentication is HTTP basic (a registry behind htpasswd); registries that hand out
// bearer tokens are not supported yet.
package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Error classes.
var (
	// ErrUnavailable is a registry that cannot be reached or answers with a 5xx or 429.
	ErrUnavailable = errors.New("registry: unavailable")
	// ErrDenied is a registry that refused the credentials (401, 403).
	ErrDenied = errors.New("registry: access denied")
	// ErrProtocol is any other unexpected answer.
	ErrProtocol = errors.New("registry: unexpected response")
)

// ManifestTypes are the manifest media types the client accepts, most specific last.
var ManifestTypes = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// DefaultTimeout bounds one request when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Config says how to reach a registry.
type Config struct {
	// Host is the registry's host[:port].
	Host string
	// Endpoint, when set, is the host[:port] requests go to instead of Host (Host stays
	// the registry's name in image references).
	Endpoint string
	// Insecure talks plain HTTP instead of HTTPS.
	Insecure bool
	// Username and Password are sent with HTTP basic authentication when Username is set.
	Username, Password string
	// Timeout bounds one request (DefaultTimeout).
	Timeout time.Duration
}

// Client talks to one registry. It is safe for concurrent use and starts no goroutines of
// its own.
type Client struct {
	cfg  Config
	base string
	http *http.Client
}

// New returns a client of the registry cfg names; it contacts nothing.
func New(cfg Config) (*Client, error) {
	if cfg.Host == "" || strings.ContainsAny(cfg.Host, "/ ") {
		return nil, fmt.Errorf("registry: host %q: want host[:port]", cfg.Host)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	scheme := "https"
	if cfg.Insecure {
		scheme = "http"
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 32
	return &Client{cfg: cfg, base: scheme + "://" + cmp.Or(cfg.Endpoint, cfg.Host), http: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

// Host is the registry's host[:port].
func (c *Client) Host() string { return c.cfg.Host }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, accept []string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s%s: %w: %w", method, c.cfg.Host, path, ErrProtocol, err)
	}
	for _, a := range accept {
		req.Header.Add("Accept", a)
	}
	if c.cfg.Username != "" {
		req.SetBasicAuth(c.cfg.Username, c.cfg.Password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s%s: %w", method, c.cfg.Host, path, ctx.Err())
		}
		// Every transport failure — refused, reset, timed out, a TLS handshake that failed —
		// is the registry being unreachable from here.
		return nil, fmt.Errorf("%s %s%s: %w: %w", method, c.cfg.Host, path, ErrUnavailable, err)
	}
	return resp, nil
}

// statusError classifies a status other than 2xx and 404.
func (c *Client) statusError(method, path string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	msg := fmt.Sprintf("%s %s%s: %s %s", method, c.cfg.Host, path, resp.Status, strings.TrimSpace(string(body)))
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: %s", ErrDenied, msg)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("%w: %s", ErrUnavailable, msg)
	}
	return fmt.Errorf("%w: %s", ErrProtocol, msg)
}

// Ping checks that the registry answers the v2 API.
func (c *Client) Ping(ctx context.Context) error {
	resp, err := c.do(ctx, http.MethodGet, "/v2/", nil)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return c.statusError(http.MethodGet, "/v2/", resp)
	}
	return nil
}

// Digest returns the manifest digest of name:tag (from Docker-Content-Digest), and false
// when the registry does not have it.
func (c *Client) Digest(ctx context.Context, name, tag string) (string, bool, error) {
	path := "/v2/" + name + "/manifests/" + tag
	resp, err := c.do(ctx, http.MethodHead, path, ManifestTypes)
	if err != nil {
		return "", false, err
	}
	defer drain(resp)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return "", false, nil
	case resp.StatusCode != http.StatusOK:
		return "", false, c.statusError(http.MethodHead, path, resp)
	}
	d := resp.Header.Get("Docker-Content-Digest")
	if !strings.HasPrefix(d, "sha256:") {
		return "", false, fmt.Errorf("%w: HEAD %s%s: Docker-Content-Digest %q", ErrProtocol, c.cfg.Host, path, d)
	}
	return d, true, nil
}

// manifest is the part of an image manifest or index the client reads.
type manifest struct {
	MediaType string `json:"mediaType"`
	Config    struct {
		Digest string `json:"digest"`
	} `json:"config"`
	Manifests []struct {
		Digest   string `json:"digest"`
		Platform struct {
			OS           string `json:"os"`
			Architecture string `json:"architecture"`
		} `json:"platform"`
	} `json:"manifests"`
}

// maxDocument bounds a manifest or image configuration read.
const maxDocument = 4 << 20

func (c *Client) getJSON(ctx context.Context, path string, accept []string, v any) (bool, error) {
	resp, err := c.do(ctx, http.MethodGet, path, accept)
	if err != nil {
		return false, err
	}
	defer drain(resp)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return false, nil
	case resp.StatusCode != http.StatusOK:
		return false, c.statusError(http.MethodGet, path, resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument))
	if err != nil {
		return false, fmt.Errorf("%w: GET %s%s: %w", ErrUnavailable, c.cfg.Host, path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("%w: GET %s%s: %w", ErrProtocol, c.cfg.Host, path, err)
	}
	return true, nil
}

// Labels returns the labels of the image name:ref (ref a tag or a digest), and false when
// the registry does not have it. For an index, the linux/amd64 image (else the first) is
// read.
func (c *Client) Labels(ctx context.Context, name, ref string) (map[string]string, bool, error) {
	var m manifest
	ok, err := c.getJSON(ctx, "/v2/"+name+"/manifests/"+ref, ManifestTypes, &m)
	if err != nil || !ok {
		return nil, ok, err
	}
	if len(m.Manifests) > 0 {
		pick := m.Manifests[0].Digest
		for _, d := range m.Manifests {
			if d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" {
				pick = d.Digest
				break
			}
		}
		m = manifest{}
		if ok, err = c.getJSON(ctx, "/v2/"+name+"/manifests/"+pick, ManifestTypes, &m); err != nil || !ok {
			return nil, ok, err
		}
	}
	if m.Config.Digest == "" {
		return nil, false, fmt.Errorf("%w: manifest of %s:%s has no config", ErrProtocol, name, ref)
	}
	var cfg struct {
		Config struct {
			Labels map[string]string `json:"Labels"`
		} `json:"config"`
	}
	if ok, err = c.getJSON(ctx, "/v2/"+name+"/blobs/"+m.Config.Digest, nil, &cfg); err != nil || !ok {
		return nil, ok, err
	}
	return cfg.Config.Labels, true, nil
}

// drain reads what is left of a small body so the connection can be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}
