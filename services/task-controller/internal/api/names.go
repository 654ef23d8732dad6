package api

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/berthdev/berth/services/task-controller/internal/model"
)

const (
	// namesTimeout bounds one proxied request to the name service.
	namesTimeout = 10 * time.Second
	// maxNamesAnswer bounds the answer read from the name service.
	maxNamesAnswer = 8 << 20
)

// proxyResolve answers GET /v1/names/resolve/{service}?dc=&explain=&family= from the name
// service's GET /v1/resolve/{service}: the DNS answer a client in dc would get, with the
// policy's explanation. Only those three parameters are passed on, after checking them.
func (s *Server) proxyResolve(w http.ResponseWriter, r *http.Request) error {
	svc := strings.Trim(r.PathValue("service"), "/")
	if err := model.CheckService(svc); err != nil {
		return apiErr(http.StatusBadRequest, "invalid_argument", "service", "%v", err)
	}
	in := r.URL.Query()
	out := url.Values{}
	if dc := in.Get("dc"); dc != "" {
		if len(dc) > 128 || strings.ContainsAny(dc, "\x00\r\n\t /") {
			return apiErr(http.StatusBadRequest, "invalid_argument", "dc", "dc %.40q: want a datacenter name", dc)
		}
		out.Set("dc", dc)
	}
	if e := in.Get("explain"); e != "" {
		b, err := strconv.ParseBool(e)
		if err != nil {
			return apiErr(http.StatusBadRequest, "invalid_argument", "explain", "explain %q: want true or false", e)
		}
		out.Set("explain", strconv.FormatBool(b))
	}
	switch f := in.Get("family"); f {
	case "", "any":
	case "ipv4", "ipv6":
		out.Set("family", f)
	default:
		return apiErr(http.StatusBadRequest, "invalid_argument", "family", "family %q: want ipv4, ipv6 or any", f)
	}
	return s.proxyNames(w, r, "/v1/resolve/"+svc, out)
}

// proxyDCs answers GET /v1/names/dcs from the name service's GET /v1/dcs: the datacenters
// it knows.
func (s *Server) proxyDCs(w http.ResponseWriter, r *http.Request) error {
	return s.proxyNames(w, r, "/v1/dcs", nil)
}

// proxyNames sends GET path?query to the name service and copies its status, content
// type and body (the name service's errors are {"error", "field"}). An unreachable name
// service is a 502 in the API's own error shape.
func (s *Server) proxyNames(w http.ResponseWriter, r *http.Request, path string, query url.Values) error {
	base := s.opts.NamesURL
	if base == nil {
		return apiErr(http.StatusServiceUnavailable, "unavailable", "", "no name service is configured (names_url)")
	}
	u := *base
	u.Path = base.Path + path
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("name service request %s: %w", u.String(), err)
	}
	req.Header.Set("Accept", "application/json")
	// The caller's token goes along: when the name service requires tokens, the read is
	// the caller's, with the caller's rights (the controller has no token of its own).
	if auth := r.Header.Get("Authorization"); auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := s.opts.NamesClient.Do(req)
	if err != nil {
		return apiErr(http.StatusBadGateway, "unavailable", "", "name service at %s: %v", base.String(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxNamesAnswer+1))
	if err != nil {
		return apiErr(http.StatusBadGateway, "unavailable", "", "name service at %s: read answer: %v", base.String(), err)
	}
	if len(body) > maxNamesAnswer {
		return apiErr(http.StatusBadGateway, "unavailable", "", "name service at %s: answer over %d bytes", base.String(), maxNamesAnswer)
	}
	ct := resp.Header.Get("Content-Type")
	if !strings.HasPrefix(ct, "application/json") {
		return apiErr(http.StatusBadGateway, "unavailable", "", "name service at %s answered %d with %q, not JSON", base.String(), resp.StatusCode, ct)
	}
	if idx := resp.Header.Get("X-Berth-Index"); idx != "" {
		w.Header().Set("X-Berth-Index", idx)
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(resp.StatusCode)
	_, err = w.Write(body)
	return err
}
