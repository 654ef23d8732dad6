package source

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// maxHTTPBody bounds the inventory document an HTTP source reads.
const maxHTTPBody = 256 << 20

// HTTP reads a JSON document from a URL with conditional requests: the ETag of the last
// good answer is sent as If-None-Match, and 304 Not Modified means nothing changed.
type HTTP struct {
	url, itemsPath string
	header         http.Header
	client         *http.Client

	// Only Fetch uses etag; Fetch is not called concurrently.
	etag string
}

// NewHTTP returns an HTTP source for rawURL (http or https). itemsPath is where the list
// of hosts is in a document that is not itself a list (default "hosts"). header is sent
// with every request (Authorization, say). A nil client means one with timeout.
func NewHTTP(rawURL, itemsPath string, header http.Header, client *http.Client, timeout time.Duration) (*HTTP, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("http source: url %q: want http(s)://host/path", rawURL)
	}
	if client == nil {
		client = &http.Client{Timeout: timeout}
	}
	return &HTTP{url: rawURL, itemsPath: itemsPath, header: header.Clone(), client: client}, nil
}

// Name implements Source; the URL's credentials and query are left out.
func (h *HTTP) Name() string {
	u, _ := url.Parse(h.url)
	u.User, u.RawQuery = nil, ""
	return "http " + u.String()
}

// Kind implements Source.
func (h *HTTP) Kind() string { return "http" }

// Fetch implements Source.
func (h *HTTP) Fetch(ctx context.Context) ([]Record, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", h.Name(), err)
	}
	for k, vs := range h.header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Accept", "application/json")
	if h.etag != "" {
		req.Header.Set("If-None-Match", h.etag)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", h.Name(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified && h.etag != "" {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, false, nil
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, false, fmt.Errorf("%s: status %s: %q", h.Name(), resp.Status, b)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPBody+1))
	if err != nil {
		return nil, false, fmt.Errorf("%s: read body: %w", h.Name(), err)
	}
	if len(b) > maxHTTPBody {
		return nil, false, fmt.Errorf("%s: body over %d bytes", h.Name(), maxHTTPBody)
	}
	recs, err := parseDocument(b, "json", h.itemsPath)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", h.Name(), err)
	}
	h.etag = resp.Header.Get("ETag")
	return recs, true, nil
}
