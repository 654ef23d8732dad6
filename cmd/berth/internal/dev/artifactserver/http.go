package artifactserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
	"time"
)

// Uploaded is the answer to an upload: what was stored and how to refer to it in a
// deployment (berth deploy --package URL --sha256 SHA256).
type Uploaded struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	URL    string `json:"url"`
	FTPURL string `json:"ftp_url,omitempty"`
	// Existed is true when the same bytes were already stored under the name.
	Existed bool `json:"existed,omitempty"`
}

// httpError is the body of every error answer.
type httpError struct {
	Error string `json:"error"`
}

// errUpload is an upload refusal with its status.
type errUpload struct {
	status int
	result string
	msg    string
}

func (e *errUpload) Error() string { return e.msg }

func (s *Server) serveHTTP(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("artifact server: serve http: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("artifact server: serve http: %w", err)
	}
	return nil
}

// Handler is the HTTP interface: GET and HEAD /<name> download (with ranges), GET / lists
// the files (one "name<TAB>size<TAB>modified" line each), PUT /<name> and POST /<name>
// store the body, POST / stores the files of a multipart form (field names do not matter;
// each part's file name is its name, without directories). A form is stored whole or not
// at all.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/")
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			if strings.Trim(name, "/") == "" {
				s.httpList(w, r)
				return
			}
			s.httpGet(w, r, name)
		case http.MethodPut:
			s.httpPut(w, r, name)
		case http.MethodPost:
			if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "multipart/form-data" {
				s.httpMultipart(w, r, name)
				return
			}
			s.httpPut(w, r, name)
		default:
			w.Header().Set("Allow", "GET, HEAD, PUT, POST")
			writeHTTPError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s: want GET, HEAD, PUT or POST", r.Method))
		}
	})
}

func writeHTTPError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(httpError{Error: msg})
}

func (s *Server) httpGet(w http.ResponseWriter, r *http.Request, raw string) {
	name, err := CheckName(raw, false)
	if err != nil {
		s.m.requests.WithLabelValues("http", "get", "bad_request").Inc()
		writeHTTPError(w, http.StatusBadRequest, err.Error())
		return
	}
	f, err := s.root.Open(name)
	if err != nil {
		s.m.requests.WithLabelValues("http", "get", "not_found").Inc()
		writeHTTPError(w, http.StatusNotFound, fmt.Sprintf("%s: no such file", name))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		s.m.requests.WithLabelValues("http", "get", "not_found").Inc()
		writeHTTPError(w, http.StatusNotFound, fmt.Sprintf("%s: not a file", name))
		return
	}
	if strings.HasSuffix(name, ".tar.gz") || strings.HasSuffix(name, ".tgz") {
		w.Header().Set("Content-Type", "application/gzip")
	}
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, path.Base(name), fi.ModTime(), f)
	s.m.sent.WithLabelValues("http").Add(float64(cw.n))
	s.m.requests.WithLabelValues("http", "get", "ok").Inc()
}

// countingWriter counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// fileInfo is one listed file.
type fileInfo struct {
	name    string
	size    int64
	modTime time.Time
	dir     bool
}

// walk lists the served files (not directories) below dir, in name order, at most
// maxListedEntries.
func (s *Server) walk(dir string) ([]fileInfo, error) {
	var out []fileInfo
	err := fs.WalkDir(s.root.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir && hidden(d.Name()) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		out = append(out, fileInfo{name: p, size: fi.Size(), modTime: fi.ModTime()})
		if len(out) >= maxListedEntries {
			return fs.SkipAll
		}
		return nil
	})
	return out, err
}

func (s *Server) httpList(w http.ResponseWriter, _ *http.Request) {
	files, err := s.walk(".")
	if err != nil {
		s.m.requests.WithLabelValues("http", "list", "error").Inc()
		writeHTTPError(w, http.StatusInternalServerError, fmt.Sprintf("list: %v", err))
		return
	}
	var b bytes.Buffer
	for _, f := range files {
		fmt.Fprintf(&b, "%s\t%d\t%s\n", f.name, f.size, f.modTime.UTC().Format(time.RFC3339))
	}
	s.m.requests.WithLabelValues("http", "list", "ok").Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

func (s *Server) httpPut(w http.ResponseWriter, r *http.Request, raw string) {
	name, err := CheckName(raw, false)
	if err != nil {
		s.m.requests.WithLabelValues("http", "put", "bad_request").Inc()
		writeHTTPError(w, http.StatusBadRequest, err.Error()+" (upload to /<name>, e.g. curl -T app-1.0.tar.gz http://host:port/)")
		return
	}
	if r.ContentLength > s.cfg.MaxUpload {
		s.m.requests.WithLabelValues("http", "put", "too_large").Inc()
		writeHTTPError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("%s: %d bytes, at most %d", name, r.ContentLength, s.cfg.MaxUpload))
		return
	}
	up, err := s.store(name, r.Body)
	s.answerUpload(w, r, up, err)
}

func (s *Server) httpMultipart(w http.ResponseWriter, r *http.Request, raw string) {
	prefix, err := CheckName(raw, true)
	if err != nil {
		s.m.requests.WithLabelValues("http", "put", "bad_request").Inc()
		writeHTTPError(w, http.StatusBadRequest, err.Error())
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		s.m.requests.WithLabelValues("http", "put", "bad_request").Inc()
		writeHTTPError(w, http.StatusBadRequest, fmt.Sprintf("multipart form: %v", err))
		return
	}
	// Every file is staged first and stored only once the whole form was read and
	// checked, so that a refused form (a bad name, a conflict, a broken body) stores none of
	// its files.
	var staged []*stagedUpload
	defer func() {
		for _, st := range staged {
			s.discard(st)
		}
	}()
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.m.requests.WithLabelValues("http", "put", "bad_request").Inc()
			writeHTTPError(w, http.StatusBadRequest, fmt.Sprintf("multipart form: %v", err))
			return
		}
		if p.FileName() == "" {
			p.Close()
			continue
		}
		// FileName keeps only the base of the name the client sent; a name with
		// directories in it ("../../x") is refused rather than stored as "x".
		name := p.FileName()
		if sent := partFileName(p); sent != name {
			p.Close()
			s.m.requests.WithLabelValues("http", "put", "bad_request").Inc()
			writeHTTPError(w, http.StatusBadRequest, fmt.Sprintf("%v: file name %q has directories in it: "+
				"send the base name, and POST to /<dir>/ to store below a directory", ErrBadName, sent))
			return
		}
		if prefix != "." {
			name = prefix + "/" + name
		}
		if name, err = CheckName(name, false); err != nil {
			p.Close()
			s.m.requests.WithLabelValues("http", "put", "bad_request").Inc()
			writeHTTPError(w, http.StatusBadRequest, err.Error())
			return
		}
		st, err := s.stage(name, p)
		p.Close()
		if err != nil {
			s.answerUpload(w, r, st.up, err)
			return
		}
		staged = append(staged, st)
	}
	if len(staged) == 0 {
		s.m.requests.WithLabelValues("http", "put", "bad_request").Inc()
		writeHTTPError(w, http.StatusBadRequest, "multipart form has no file (curl -F file=@app-1.0.tar.gz http://host:port/)")
		return
	}
	if err := s.commit(staged...); err != nil {
		s.answerUpload(w, r, Uploaded{}, err)
		return
	}
	stored := make([]Uploaded, 0, len(staged))
	for _, st := range staged {
		s.m.requests.WithLabelValues("http", "put", "ok").Inc()
		stored = append(stored, s.withURLs(r, st.up))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string][]Uploaded{"files": stored})
}

func (s *Server) answerUpload(w http.ResponseWriter, r *http.Request, up Uploaded, err error) {
	var ue *errUpload
	switch {
	case errors.As(err, &ue):
		s.m.requests.WithLabelValues("http", "put", ue.result).Inc()
		writeHTTPError(w, ue.status, ue.msg)
		return
	case err != nil:
		s.m.requests.WithLabelValues("http", "put", "error").Inc()
		s.log.Warn("upload failed", "name", up.Name, "err", err)
		writeHTTPError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.m.requests.WithLabelValues("http", "put", "ok").Inc()
	status := http.StatusCreated
	if up.Existed {
		status = http.StatusOK
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(s.withURLs(r, up))
}

// withURLs fills the URLs of an upload from the address the request came in on.
func (s *Server) withURLs(r *http.Request, up Uploaded) Uploaded {
	host := r.Host
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && host == "" {
		host = la.String()
	}
	up.URL = "http://" + host + "/" + up.Name
	s.mu.Lock()
	ftp := s.ftpLis
	s.mu.Unlock()
	if ftp != nil {
		up.FTPURL = "ftp://" + ftp.Addr().String() + "/" + up.Name
	}
	return up
}

// partFileName is the file name a multipart part was sent with, as sent.
func partFileName(p *multipart.Part) string {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}

// bodyReader remembers the error of reading an upload's body, so that a broken or
// truncated request (the client's fault) is told from a failing disk.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.err = err
	}
	return n, err
}

// stagedUpload is an upload written to its hidden temporary file and not yet stored.
type stagedUpload struct {
	up  Uploaded
	tmp string // "" once renamed into place or removed
}

// store writes body under name: to a hidden temporary file in the same directory, checked
// against MaxUpload, synced, then renamed into place. A name that exists keeps its bytes:
// the same bytes again is success (Existed), other bytes are a conflict.
func (s *Server) store(name string, body io.Reader) (Uploaded, error) {
	st, err := s.stage(name, body)
	if err != nil {
		return st.up, err
	}
	defer s.discard(st)
	err = s.commit(st)
	return st.up, err
}

// stage writes body to a hidden temporary file next to name and returns it with its size
// and digest; on error nothing is left but the directories of name. The caller commits or
// discards it.
func (s *Server) stage(name string, body io.Reader) (*stagedUpload, error) {
	st := &stagedUpload{up: Uploaded{Name: name}}
	dir := path.Dir(name)
	if dir != "." {
		if err := s.root.MkdirAll(dir, 0o755); err != nil {
			return st, &errUpload{http.StatusConflict, "conflict", fmt.Sprintf("%s: cannot create directory %s: %v", name, dir, err)}
		}
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := path.Join(dir, ".upload-"+hex.EncodeToString(rnd[:]))
	f, err := s.root.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return st, fmt.Errorf("store %s: %w", name, err)
	}
	h := sha256.New()
	br := &bodyReader{r: body}
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(br, s.cfg.MaxUpload+1))
	s.m.received.Add(float64(n))
	if err != nil && br.err != nil {
		err = &errUpload{http.StatusBadRequest, "bad_request", fmt.Sprintf("%s: reading the upload: %v", name, br.err)}
	}
	if err == nil && n > s.cfg.MaxUpload {
		err = &errUpload{http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("%s: more than %d bytes", name, s.cfg.MaxUpload)}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = s.root.Remove(tmp)
		var ue *errUpload
		if errors.As(err, &ue) {
			return st, err
		}
		return st, fmt.Errorf("store %s: %w", name, err)
	}
	st.tmp = tmp
	st.up.Size, st.up.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	return st, nil
}

// discard removes a staged upload's temporary file if it is still there.
func (s *Server) discard(st *stagedUpload) {
	if st.tmp != "" {
		_ = s.root.Remove(st.tmp)
		st.tmp = ""
	}
}

// commit stores staged uploads under their names, all or none: every name is checked
// first (an existing name must hold the same bytes, and one request may not give one name
// two contents), then the new ones are renamed into place (only an I/O error while
// renaming can leave the ones renamed before it).
func (s *Server) commit(staged ...*stagedUpload) error {
	s.uploadMu.Lock()
	defer s.uploadMu.Unlock()
	seen := map[string]string{}
	for _, st := range staged {
		name := st.up.Name
		if sum, ok := seen[name]; ok {
			if sum != st.up.SHA256 {
				return &errUpload{http.StatusConflict, "conflict", fmt.Sprintf("%s is in the form twice with different content", name)}
			}
			st.up.Existed = true
			continue
		}
		seen[name] = st.up.SHA256
		fi, err := s.root.Lstat(name)
		if err != nil {
			continue
		}
		if !fi.Mode().IsRegular() {
			return &errUpload{http.StatusConflict, "conflict", fmt.Sprintf("%s exists and is not a file", name)}
		}
		sum, err := s.digest(name)
		if err != nil {
			return fmt.Errorf("store %s: %w", name, err)
		}
		if sum != st.up.SHA256 {
			return &errUpload{http.StatusConflict, "conflict", fmt.Sprintf("%s exists with other content (sha256 %s): artifacts are immutable, upload under another name", name, sum)}
		}
		st.up.Existed = true
	}
	for _, st := range staged {
		if st.up.Existed {
			continue
		}
		if err := s.root.Rename(st.tmp, st.up.Name); err != nil {
			return fmt.Errorf("store %s: %w", st.up.Name, err)
		}
		st.tmp = ""
	}
	return nil
}

// digest is the sha256 of a stored file.
func (s *Server) digest(name string) (string, error) {
	f, err := s.root.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
