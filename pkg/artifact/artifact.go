// Package artifact fetches package artifacts from file://, http://, https:// and ftp://
// URLs into a local cache keyed by their sha256, and classifies what went wrong so that a
// caller can tell infrastructure it may retry from input that will never work.
//
// A cached artifact is the file <CacheDir>/<sha256 hex>. It appears there only after its
// content was verified: a download goes to a temporary file in the cache directory (named
// ".fetch-*"), is hashed while it is written, synced, and renamed into place. A cache file is
// therefore always complete and correct, and nothing else ever sees a partial or unverified
// download. Concurrent fetches of the same artifact download it twice; the last rename
// wins, with identical content.
//
// Errors wrap one of the sentinels below, for errors.Is. ErrUnavailable (an unreachable
// server, a timeout, an HTTP 5xx or 429, an FTP 4xx reply, a transfer cut short) is retried
// inside Fetch with exponential backoff and returned once the retries are spent; the caller
// may retry later. The other classes are returned at once.
package artifact

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jlaffaye/ftp"
	"github.com/prometheus/client_golang/prometheus"
)

// Error classes.
var (
	// ErrBadURL is a URL that cannot be fetched: unparseable, an unsupported scheme, a
	// missing host or path.
	ErrBadURL = errors.New("artifact: bad url")
	// ErrBadDigest is a sha256 that is not 64 hex digits.
	ErrBadDigest = errors.New("artifact: bad sha256")
	// ErrNotFound is a missing artifact: HTTP 404 or 410, FTP 550, a missing file.
	ErrNotFound = errors.New("artifact: not found")
	// ErrDenied is a refused login or access: HTTP 401 or 403, FTP 530, a file that cannot
	// be read.
	ErrDenied = errors.New("artifact: access denied")
	// ErrTooLarge is an artifact over Config.MaxBytes, declared or counted.
	ErrTooLarge = errors.New("artifact: too large")
	// ErrChecksum is downloaded content whose sha256 is not the one asked for.
	ErrChecksum = errors.New("artifact: checksum mismatch")
	// ErrUnavailable is a failure of the infrastructure that may go away: the server is
	// unreachable, slow, overloaded or cut the transfer short. Retryable.
	ErrUnavailable = errors.New("artifact: source unavailable")
	// ErrProtocol is any other answer that retrying will not change: an unexpected HTTP
	// status or FTP reply, a redirect loop, an untrusted certificate.
	ErrProtocol = errors.New("artifact: unexpected response")
)

// Defaults for the zero values of Config.
const (
	DefaultMaxBytes   int64 = 2 << 30 // 2 GiB
	DefaultRetries          = 3
	DefaultBackoff          = time.Second
	DefaultTimeout          = 10 * time.Minute
	maxBackoff              = 30 * time.Second
	tempPrefix              = ".fetch-"
	defaultFTPPort          = "21"
	anonymousUser           = "anonymous"
	anonymousPassword       = "anonymous"
)

// Config configures a Fetcher. Only CacheDir is required.
type Config struct {
	// CacheDir holds the cached artifacts; it is created if missing.
	CacheDir string
	// MaxBytes bounds the size of one artifact (DefaultMaxBytes).
	MaxBytes int64
	// Retries is how many times a fetch is retried after an ErrUnavailable failure: 0 means
	// DefaultRetries, a negative value disables retries.
	Retries int
	// Backoff is the wait before the first retry; it doubles for each further retry, up to
	// 30 s, with ±20% jitter (DefaultBackoff).
	Backoff time.Duration
	// HTTPClient makes the http and https requests; nil means a client of the Fetcher's own,
	// whose idle connections Close releases.
	HTTPClient *http.Client
	// Timeout bounds one attempt, connecting and transferring (DefaultTimeout). An attempt
	// that runs out of time is ErrUnavailable and retried.
	Timeout time.Duration
	// Registerer, when set, receives the Fetcher's metrics (namespace berth, subsystem
	// artifact).
	Registerer prometheus.Registerer
}

// Fetcher downloads artifacts into its cache. It is safe for concurrent use and starts no
// goroutines of its own.
type Fetcher struct {
	dir      string
	maxBytes int64
	retries  int
	backoff  time.Duration
	timeout  time.Duration
	client   *http.Client
	ownHTTP  bool
	m        metrics
}

type metrics struct {
	fetches  *prometheus.CounterVec
	retries  *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New checks cfg, creates the cache directory and returns a Fetcher.
func New(cfg Config) (*Fetcher, error) {
	if cfg.CacheDir == "" {
		return nil, errors.New("artifact: config: CacheDir is required")
	}
	if cfg.MaxBytes < 0 || cfg.Backoff < 0 || cfg.Timeout < 0 {
		return nil, fmt.Errorf("artifact: config: negative MaxBytes %d, Backoff %v or Timeout %v", cfg.MaxBytes, cfg.Backoff, cfg.Timeout)
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("artifact: create cache dir: %w", err)
	}
	f := &Fetcher{
		dir:      cfg.CacheDir,
		maxBytes: cfg.MaxBytes,
		retries:  cfg.Retries,
		backoff:  cfg.Backoff,
		timeout:  cfg.Timeout,
		client:   cfg.HTTPClient,
	}
	if f.maxBytes == 0 {
		f.maxBytes = DefaultMaxBytes
	}
	switch {
	case f.retries == 0:
		f.retries = DefaultRetries
	case f.retries < 0:
		f.retries = 0
	}
	if f.backoff == 0 {
		f.backoff = DefaultBackoff
	}
	if f.timeout == 0 {
		f.timeout = DefaultTimeout
	}
	if f.client == nil {
		f.client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
		f.ownHTTP = true
	}
	f.m = metrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "artifact", Name: "fetches_total",
			Help: "Artifact fetches by URL scheme and result (hit, ok, or the error class).",
		}, []string{"scheme", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "artifact", Name: "fetch_retries_total",
			Help: "Attempts retried after an unavailable source, by URL scheme.",
		}, []string{"scheme"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "berth", Subsystem: "artifact", Name: "fetched_bytes_total",
			Help: "Bytes downloaded, including attempts that failed, by URL scheme.",
		}, []string{"scheme"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: "artifact", Name: "fetch_duration_seconds",
			Help:    "Time to fetch an artifact that was not cached, retries included, by URL scheme.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}, []string{"scheme"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{f.m.fetches, f.m.retries, f.m.bytes, f.m.duration} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("artifact: register metrics: %w", err)
			}
		}
	}
	return f, nil
}

// Close releases the idle connections of the Fetcher's own HTTP client. It does not
// interrupt fetches in progress, and leaves a client given in Config alone.
func (f *Fetcher) Close() error {
	if f.ownHTTP {
		f.client.CloseIdleConnections()
	}
	return nil
}

// Path returns where the artifact with this sha256 is cached, whether or not it is there.
func (f *Fetcher) Path(sha256hex string) string {
	return filepath.Join(f.dir, strings.ToLower(sha256hex))
}

// Fetch returns the path of the cached artifact with the sha256 sha256hex, downloading it
// from rawURL first when it is not cached. The URL and the digest are checked before
// anything else (ErrBadURL, ErrBadDigest). ErrUnavailable failures are retried up to
// Config.Retries times with backoff; the other errors, and the end of ctx, return at once.
// The returned file must not be modified; it stays until the caller removes it.
func (f *Fetcher) Fetch(ctx context.Context, rawURL, sha256hex string) (path string, err error) {
	u, err := parseURL(rawURL)
	if err != nil {
		f.m.fetches.WithLabelValues("invalid", "bad_url").Inc()
		return "", err
	}
	target := u.Redacted()
	sum, err := parseDigest(sha256hex)
	if err != nil {
		f.m.fetches.WithLabelValues(u.Scheme, "bad_digest").Inc()
		return "", fmt.Errorf("fetch %s: %w", target, err)
	}
	dest := filepath.Join(f.dir, sum)
	if fi, err := os.Stat(dest); err == nil && fi.Mode().IsRegular() {
		f.m.fetches.WithLabelValues(u.Scheme, "hit").Inc()
		return dest, nil
	}

	start := time.Now()
	attempts := 0
	for {
		attempts++
		err = f.attempt(ctx, u, sum, dest)
		if err == nil || ctx.Err() != nil || !errors.Is(err, ErrUnavailable) || attempts > f.retries {
			break
		}
		f.m.retries.WithLabelValues(u.Scheme).Inc()
		t := time.NewTimer(f.delay(attempts))
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		if ctx.Err() != nil {
			break
		}
	}
	f.m.duration.WithLabelValues(u.Scheme).Observe(time.Since(start).Seconds())
	if err == nil {
		f.m.fetches.WithLabelValues(u.Scheme, "ok").Inc()
		return dest, nil
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w (last attempt: %w)", cerr, err)
	}
	res := result(err)
	if ctx.Err() != nil {
		res = "canceled"
	}
	f.m.fetches.WithLabelValues(u.Scheme, res).Inc()
	if attempts > 1 {
		return "", fmt.Errorf("fetch %s (%d attempts): %w", target, attempts, err)
	}
	return "", fmt.Errorf("fetch %s: %w", target, err)
}

// delay is the backoff before retry number n (1-based), with ±20% jitter.
func (f *Fetcher) delay(n int) time.Duration {
	d := f.backoff
	for i := 1; i < n && d < maxBackoff; i++ {
		d *= 2
	}
	d = min(d, maxBackoff)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func result(err error) string {
	for _, c := range []struct {
		err  error
		name string
	}{
		{ErrNotFound, "not_found"},
		{ErrDenied, "denied"},
		{ErrTooLarge, "too_large"},
		{ErrChecksum, "checksum"},
		{ErrUnavailable, "unavailable"},
		{ErrProtocol, "protocol"},
	} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return "error"
}

// parseURL checks that rawURL is a URL Fetch can download.
func parseURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error quotes the URL, password included; say only what was wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	target := u.Redacted()
	switch u.Scheme {
	case "file":
		if u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("%w: %s: file URL needs an absolute path (file:///path)", ErrBadURL, target)
		}
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("%w: %s: file URL host %q is not local", ErrBadURL, target, u.Host)
		}
		if u.User != nil {
			return nil, fmt.Errorf("%w: %s: file URL with user info", ErrBadURL, target)
		}
	case "http", "https", "ftp":
		if u.Opaque != "" || u.Hostname() == "" {
			return nil, fmt.Errorf("%w: %s: missing host", ErrBadURL, target)
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("%w: %s: port %q out of range 1..65535", ErrBadURL, target, p)
			}
		}
		if u.Scheme == "ftp" {
			if strings.Trim(u.Path, "/") == "" || strings.HasSuffix(u.Path, "/") {
				return nil, fmt.Errorf("%w: %s: ftp URL needs a file path", ErrBadURL, target)
			}
			if strings.ContainsAny(u.Path, "\r\n") {
				return nil, fmt.Errorf("%w: %s: line break in path", ErrBadURL, target)
			}
			if u.RawQuery != "" {
				return nil, fmt.Errorf("%w: %s: ftp URL with a query", ErrBadURL, target)
			}
		}
	case "":
		return nil, fmt.Errorf("%w: %q: missing scheme (want file, http, https or ftp)", ErrBadURL, target)
	default:
		return nil, fmt.Errorf("%w: %s: unsupported scheme %q (want file, http, https or ftp)", ErrBadURL, target, u.Scheme)
	}
	return u, nil
}

// parseDigest returns s as 64 lowercase hex digits.
func parseDigest(s string) (string, error) {
	if len(s) != sha256.Size*2 {
		return "", fmt.Errorf("%w: %q is %d characters, want 64 hex digits", ErrBadDigest, s, len(s))
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("%w: %q is not hex", ErrBadDigest, s)
	}
	return strings.ToLower(s), nil
}

// attempt downloads u once into a temporary file and, if its sha256 is sum, renames it to
// dest.
func (f *Fetcher) attempt(ctx context.Context, u *url.URL, sum, dest string) (err error) {
	actx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	defer func() {
		// An attempt that ran out of its own time is a slow source: retryable.
		if err != nil && ctx.Err() == nil && actx.Err() != nil && !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%w: attempt timed out after %v: %w", ErrUnavailable, f.timeout, err)
		}
	}()

	src, size, err := f.open(actx, u)
	if err != nil {
		return err
	}
	defer src.Close()
	if size > f.maxBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, size, f.maxBytes)
	}

	tmp, err := os.CreateTemp(f.dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	defer func() {
		if tmp != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	h := sha256.New()
	rr := &readErr{r: io.LimitReader(src, f.maxBytes+1)}
	n, err := io.Copy(io.MultiWriter(tmp, h), rr)
	f.m.bytes.WithLabelValues(u.Scheme).Add(float64(n))
	if rr.err != nil {
		return classify(u.Scheme, rr.err)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if n > f.maxBytes {
		return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, f.maxBytes)
	}
	// For FTP, closing reads the server's verdict on the transfer.
	if err := src.Close(); err != nil {
		return classify(u.Scheme, err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%w: transfer cut short: %d of %d bytes", ErrUnavailable, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("%w: got sha256 %s, want %s (%d bytes)", ErrChecksum, got, sum, n)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return fmt.Errorf("rename into cache: %w", err)
	}
	tmp = nil
	return syncDir(f.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// readErr remembers the error of the source, apart from errors writing the copy.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// open starts the download of u, returning its content and its size, or -1 when unknown.
func (f *Fetcher) open(ctx context.Context, u *url.URL) (io.ReadCloser, int64, error) {
	switch u.Scheme {
	case "file":
		return openFile(u.Path)
	case "http", "https":
		return f.openHTTP(ctx, u)
	case "ftp":
		return openFTP(ctx, u)
	}
	return nil, 0, fmt.Errorf("%w: unsupported scheme %q", ErrBadURL, u.Scheme)
}

func openFile(path string) (io.ReadCloser, int64, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, 0, classify("file", err)
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, 0, classify("file", err)
	}
	if !fi.Mode().IsRegular() {
		fh.Close()
		return nil, 0, fmt.Errorf("%w: %s is not a regular file (%v)", ErrNotFound, path, fi.Mode().Type())
	}
	return fh, fi.Size(), nil
}

func (f *Fetcher) openHTTP(ctx context.Context, u *url.URL) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, 0, classify(u.Scheme, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp.Body, resp.ContentLength, nil
	}
	// Read a little of the body for the error message, and let the connection be reused.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	resp.Body.Close()
	msg := strings.TrimSpace(string(snippet))
	if len(msg) > 120 || strings.ContainsFunc(msg, func(r rune) bool { return r < ' ' }) {
		msg = ""
	}
	status := resp.Status
	if msg != "" {
		status += ": " + msg
	}
	switch c := resp.StatusCode; {
	case c == http.StatusNotFound || c == http.StatusGone:
		return nil, 0, fmt.Errorf("%w: http %s", ErrNotFound, status)
	case c == http.StatusUnauthorized || c == http.StatusForbidden:
		return nil, 0, fmt.Errorf("%w: http %s", ErrDenied, status)
	case c == http.StatusRequestTimeout || c == http.StatusTooEarly || c == http.StatusTooManyRequests || c >= 500:
		return nil, 0, fmt.Errorf("%w: http %s", ErrUnavailable, status)
	}
	return nil, 0, fmt.Errorf("%w: http %s", ErrProtocol, status)
}

// ftpSource is an FTP download in progress; closing it ends the transfer and the session.
type ftpSource struct {
	conn   *ftp.ServerConn
	resp   *ftp.Response
	stop   func() bool
	closed bool
	err    error
}

func (s *ftpSource) Read(p []byte) (int, error) { return s.resp.Read(p) }

// Close closes the data connection, reads the server's transfer status (its error is
// returned) and logs out.
func (s *ftpSource) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	s.err = s.resp.Close()
	_ = s.conn.Quit()
	s.stop()
	return s.err
}

// openFTP logs in (anonymously unless the URL has a user) and starts retrieving the file.
// Paths are relative to the login directory, as in RFC 1738: ftp://host/pub/a.tgz
// retrieves pub/a.tgz; ftp://host/%2Fpub/a.tgz retrieves /pub/a.tgz.
func openFTP(ctx context.Context, u *url.URL) (io.ReadCloser, int64, error) {
	port := u.Port()
	if port == "" {
		port = defaultFTPPort
	}
	addr := net.JoinHostPort(u.Hostname(), port)
	user, pass := anonymousUser, anonymousPassword
	if u.User != nil {
		user = u.User.Username()
		if p, ok := u.User.Password(); ok {
			pass = p
		}
	}
	if strings.ContainsAny(user+pass, "\r\n") {
		return nil, 0, fmt.Errorf("%w: line break in user or password", ErrBadURL)
	}
	path := strings.TrimPrefix(u.Path, "/")

	// The ftp package takes no context after dialing: track every connection it opens
	// (control and data) and close them all when ctx ends, which unblocks any read.
	var (
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
	)
	dial := func(network, address string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		if closed {
			c.Close()
			return nil, net.ErrClosed
		}
		conns = append(conns, c)
		return c, nil
	}
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
	})

	c, err := ftp.Dial(addr, ftp.DialWithDialFunc(dial))
	if err != nil {
		stop()
		return nil, 0, classify("ftp", err)
	}
	fail := func(err error) (io.ReadCloser, int64, error) {
		_ = c.Quit()
		stop()
		return nil, 0, classify("ftp", err)
	}
	if err := c.Login(user, pass); err != nil {
		if bareFTPError(err) {
			// The ftp package reports a refusal of USER (vsftpd: "530 This FTP server is
			// anonymous only.") as a bare message without its code.
			_ = c.Quit()
			stop()
			return nil, 0, fmt.Errorf("%w: login as %s: %w", ErrDenied, user, err)
		}
		return fail(fmt.Errorf("login as %s: %w", user, err))
	}
	size := int64(-1)
	if n, err := c.FileSize(path); err == nil {
		size = n
	} else if isFTPCode(err, ftp.StatusFileUnavailable) {
		return fail(fmt.Errorf("size %s: %w", path, err))
	}
	resp, err := c.Retr(path)
	if err != nil {
		return fail(fmt.Errorf("retr %s: %w", path, err))
	}
	return &ftpSource{conn: c, resp: resp, stop: stop}, size, nil
}

func isFTPCode(err error, code int) bool {
	var te *textproto.Error
	return errors.As(err, &te) && te.Code == code
}

// bareFTPError reports whether err is neither an FTP reply with a code nor a network or
// I/O error: a message the ftp package made up.
func bareFTPError(err error) bool {
	var (
		te *textproto.Error
		ne net.Error
		oe *net.OpError
	)
	return !errors.As(err, &te) && !errors.As(err, &ne) && !errors.As(err, &oe) &&
		!errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
		!errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// classify wraps err with its class.
func classify(scheme string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		switch {
		case te.Code == ftp.StatusNotLoggedIn || te.Code == ftp.StatusStorNeedAccount || te.Code == ftp.StatusLoginNeedAccount:
			return fmt.Errorf("%w: %w", ErrDenied, err)
		case te.Code == ftp.StatusFileUnavailable || te.Code == ftp.StatusBadFileName || te.Code == ftp.StatusPageTypeUnknown:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case te.Code >= 400 && te.Code < 500:
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w", ErrDenied, err)
	}
	var (
		certErr     *tls.CertificateVerificationError
		unknownAuth x509.UnknownAuthorityError
		hostErr     x509.HostnameError
		invalidCert x509.CertificateInvalidError
	)
	if errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) || errors.As(err, &invalidCert) {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if scheme == "http" || scheme == "https" {
		var ue *url.Error
		if errors.As(err, &ue) && (strings.Contains(ue.Err.Error(), "redirect") || strings.Contains(ue.Err.Error(), "unsupported protocol scheme")) {
			// http.Client reports redirect loops and redirects to other schemes only as text.
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
	}
	if scheme == "ftp" && bareFTPError(err) {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	// Connection refused or reset, timeouts, DNS failures, truncated transfers, I/O errors:
	// all may go away.
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
