package artifactserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxFTPLine bounds one FTP command line.
const maxFTPLine = 4096

// dataAcceptTimeout bounds the wait for the client's passive data connection.
const dataAcceptTimeout = 30 * time.Second

// ftpFeatures is the answer to FEAT (RFC 2389).
const ftpFeatures = "211-Features:\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n UTF8\r\n211 End\r\n"

// serveFTP accepts control connections until ctx ends, then closes them all and waits for
// their sessions.
func (s *Server) serveFTP(ctx context.Context, lis net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { lis.Close() })
	defer stop()
	slots := make(chan struct{}, s.cfg.MaxSessions)
	for {
		c, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("artifact server: accept ftp: %w", err)
		}
		select {
		case slots <- struct{}{}:
		default:
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(c, "421 Too many connections, try again later.\r\n")
			c.Close()
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			s.m.sessions.Inc()
			defer s.m.sessions.Dec()
			sess := &ftpSession{s: s, conn: c, r: bufio.NewReaderSize(c, maxFTPLine), cwd: "/"}
			sess.run(ctx)
		})
	}
}

// ftpSession is one control connection. Commands are handled one at a time; the mutex
// guards what the shutdown callback closes from another goroutine.
type ftpSession struct {
	s    *Server
	conn net.Conn
	r    *bufio.Reader

	user     string
	loggedIn bool
	cwd      string // absolute virtual path, "/" is the served directory
	rest     int64

	mu     sync.Mutex
	pasv   net.Listener // pending passive listener, nil when none
	data   net.Conn     // data connection of the transfer in progress
	closed bool
}

func (c *ftpSession) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, c.close)
	defer stop()
	defer c.close()
	c.reply(220, "berth dev artifact server (anonymous, read-only)")
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
		line, err := c.readLine()
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				c.reply(500, "Command line too long.")
			}
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		if !c.handle(verb, arg) {
			return
		}
	}
}

var errLineTooLong = errors.New("ftp command line too long")

// readLine reads one CRLF (or LF) terminated line of at most maxFTPLine bytes.
func (c *ftpSession) readLine() (string, error) {
	b, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func (c *ftpSession) reply(code int, msg string) {
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
	_, _ = fmt.Fprintf(c.conn, "%d %s\r\n", code, msg)
}

// close closes the control connection and any data connection or listener; safe to call
// more than once and from another goroutine.
func (c *ftpSession) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	c.conn.Close()
	if c.pasv != nil {
		c.pasv.Close()
		c.pasv = nil
	}
	if c.data != nil {
		c.data.Close()
	}
}

// handle runs one command; false ends the session.
func (c *ftpSession) handle(verb, arg string) bool {
	switch verb {
	case "USER":
		c.loggedIn, c.user = false, ""
		switch strings.ToLower(arg) {
		case "anonymous", "ftp":
			c.user = arg
			c.reply(331, "Anonymous login ok, send any password.")
		default:
			c.reply(530, "This FTP server is anonymous only.")
		}
		return true
	case "PASS":
		if c.user == "" {
			c.reply(503, "Login with USER first.")
			return true
		}
		c.loggedIn = true
		c.reply(230, "Login successful.")
		return true
	case "QUIT":
		c.reply(221, "Goodbye.")
		return false
	case "SYST":
		c.reply(215, "UNIX Type: L8")
		return true
	case "FEAT":
		_ = c.conn.SetWriteDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
		_, _ = io.WriteString(c.conn, ftpFeatures)
		return true
	case "NOOP":
		c.reply(200, "NOOP ok.")
		return true
	case "OPTS":
		if strings.EqualFold(strings.TrimSpace(arg), "UTF8 ON") {
			c.reply(200, "Always in UTF8 mode.")
		} else {
			c.reply(501, "Option not understood.")
		}
		return true
	case "AUTH", "PBSZ", "PROT", "CCC":
		c.reply(502, "TLS is not supported.")
		return true
	}
	if !c.loggedIn {
		c.reply(530, "Please login with USER and PASS.")
		return true
	}
	switch verb {
	case "TYPE":
		switch strings.ToUpper(strings.TrimSpace(arg)) {
		case "I", "L 8", "A", "A N":
			c.reply(200, "Type set to "+strings.ToUpper(strings.TrimSpace(arg))+".")
		default:
			c.reply(504, "Type not supported.")
		}
	case "MODE":
		if strings.EqualFold(arg, "S") {
			c.reply(200, "Mode set to S.")
		} else {
			c.reply(504, "Only stream mode is supported.")
		}
	case "STRU":
		if strings.EqualFold(arg, "F") {
			c.reply(200, "Structure set to F.")
		} else {
			c.reply(504, "Only file structure is supported.")
		}
	case "PWD", "XPWD":
		c.reply(257, strconv.Quote(c.cwd)+" is the current directory.")
	case "CWD", "XCWD":
		c.cwdTo(arg)
	case "CDUP", "XCUP":
		c.cwdTo("..")
	case "PASV":
		c.passive(false, arg)
	case "EPSV":
		c.passive(true, arg)
	case "PORT", "EPRT":
		c.reply(502, "Active mode is not supported; use PASV or EPSV.")
	case "REST":
		n, err := strconv.ParseInt(strings.TrimSpace(arg), 10, 64)
		if err != nil || n < 0 {
			c.reply(501, "REST wants a byte offset.")
			return true
		}
		c.rest = n
		c.reply(350, "Restarting at "+strconv.FormatInt(n, 10)+".")
	case "SIZE":
		if fi, name, ok := c.statFile(arg); ok {
			c.reply(213, strconv.FormatInt(fi.Size(), 10))
		} else {
			c.reply(550, name+": no such file.")
		}
	case "MDTM":
		if fi, name, ok := c.statFile(arg); ok {
			c.reply(213, fi.ModTime().UTC().Format("20060102150405"))
		} else {
			c.reply(550, name+": no such file.")
		}
	case "RETR":
		c.retr(arg)
	case "LIST", "NLST":
		c.list(verb == "NLST", arg)
	case "ABOR":
		c.reply(225, "No transfer to abort.")
	case "ALLO":
		c.reply(202, "No storage allocation necessary.")
	case "STOR", "STOU", "APPE", "DELE", "MKD", "XMKD", "RMD", "XRMD", "RNFR", "RNTO", "SITE", "MFMT":
		c.s.m.requests.WithLabelValues("ftp", "put", "denied").Inc()
		c.reply(550, "Permission denied: this server is read-only (upload over HTTP with PUT).")
	default:
		c.reply(502, "Command not implemented.")
	}
	return true
}

// resolve turns a command's path argument into a name below the served directory ("." for
// the directory itself) and the virtual absolute path, refusing what CheckName refuses.
func (c *ftpSession) resolve(arg string) (name, abs string, err error) {
	p := arg
	if !strings.HasPrefix(p, "/") {
		p = c.cwd + "/" + p
	}
	abs = path.Clean("/" + p)
	name, err = CheckName(abs, true)
	return name, abs, err
}

func (c *ftpSession) cwdTo(arg string) {
	name, abs, err := c.resolve(arg)
	if err != nil {
		c.reply(550, err.Error())
		return
	}
	fi, err := c.s.root.Stat(name)
	if err != nil || !fi.IsDir() {
		c.reply(550, abs+": no such directory.")
		return
	}
	c.cwd = abs
	c.reply(250, "Directory changed to "+abs+".")
}

func (c *ftpSession) statFile(arg string) (os.FileInfo, string, bool) {
	name, abs, err := c.resolve(arg)
	if err != nil || name == "." {
		return nil, abs, false
	}
	fi, err := c.s.root.Stat(name)
	if err != nil || !fi.Mode().IsRegular() {
		return nil, abs, false
	}
	return fi, abs, true
}

// passive opens a data listener on the control connection's local IP and tells the
// client its port: EPSV (RFC 2428) or PASV (IPv4 only).
func (c *ftpSession) passive(extended bool, arg string) {
	if extended {
		switch strings.ToUpper(strings.TrimSpace(arg)) {
		case "ALL":
			c.reply(200, "EPSV ALL ok.")
			return
		case "", "1", "2":
		default:
			c.reply(522, "Network protocol not supported, use (1,2)")
			return
		}
	}
	la, ok := c.conn.LocalAddr().(*net.TCPAddr)
	if !ok {
		c.reply(425, "Cannot open a data connection.")
		return
	}
	ip4 := la.IP.To4()
	if !extended && ip4 == nil {
		c.reply(425, "PASV needs IPv4; use EPSV.")
		return
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(la.IP.String(), "0"))
	if err != nil {
		c.reply(425, "Cannot open a data connection.")
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		lis.Close()
		return
	}
	if c.pasv != nil {
		c.pasv.Close()
	}
	c.pasv = lis
	c.mu.Unlock()
	port := lis.Addr().(*net.TCPAddr).Port
	if extended {
		c.reply(229, fmt.Sprintf("Entering Extended Passive Mode (|||%d|)", port))
		return
	}
	c.reply(227, fmt.Sprintf("Entering Passive Mode (%d,%d,%d,%d,%d,%d).", ip4[0], ip4[1], ip4[2], ip4[3], port>>8, port&0xff))
}

// openData accepts the client's connection on the pending passive listener, from the
// control connection's peer only.
func (c *ftpSession) openData() (net.Conn, error) {
	c.mu.Lock()
	lis := c.pasv
	c.pasv = nil
	c.mu.Unlock()
	if lis == nil {
		return nil, errors.New("no passive listener")
	}
	defer lis.Close()
	if tl, ok := lis.(*net.TCPListener); ok {
		_ = tl.SetDeadline(time.Now().Add(dataAcceptTimeout))
	}
	peer, _ := c.conn.RemoteAddr().(*net.TCPAddr)
	for {
		d, err := lis.Accept()
		if err != nil {
			return nil, err
		}
		if ra, ok := d.RemoteAddr().(*net.TCPAddr); ok && peer != nil && !ra.IP.Equal(peer.IP) {
			d.Close() // another host trying to steal the transfer
			continue
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			d.Close()
			return nil, net.ErrClosed
		}
		c.data = d
		c.mu.Unlock()
		return d, nil
	}
}

func (c *ftpSession) closeData(d net.Conn) {
	c.mu.Lock()
	c.data = nil
	c.mu.Unlock()
	d.Close()
}

// hasPassive reports whether PASV or EPSV came before the transfer command.
func (c *ftpSession) hasPassive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pasv != nil
}

// deadlineWriter pushes the write deadline forward before each write, so that a stalled
// client times out but a slow one does not.
type deadlineWriter struct {
	conn    net.Conn
	timeout time.Duration
}

func (w deadlineWriter) Write(p []byte) (int, error) {
	_ = w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.conn.Write(p)
}

func (c *ftpSession) retr(arg string) {
	offset := c.rest
	c.rest = 0
	name, abs, err := c.resolve(arg)
	if err != nil || name == "." {
		c.s.m.requests.WithLabelValues("ftp", "get", "bad_request").Inc()
		c.reply(550, abs+": not a file.")
		return
	}
	f, err := c.s.root.Open(name)
	if err != nil {
		c.s.m.requests.WithLabelValues("ftp", "get", "not_found").Inc()
		c.reply(550, abs+": no such file.")
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		c.s.m.requests.WithLabelValues("ftp", "get", "not_found").Inc()
		c.reply(550, abs+": not a file.")
		return
	}
	if !c.hasPassive() {
		c.reply(425, "Use PASV or EPSV first.")
		return
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			c.reply(554, "Cannot restart at that offset.")
			return
		}
	}
	c.reply(150, fmt.Sprintf("Opening BINARY mode data connection for %s (%d bytes).", abs, fi.Size()))
	d, err := c.openData()
	if err != nil {
		c.reply(425, "Cannot open the data connection.")
		return
	}
	n, err := io.Copy(deadlineWriter{d, c.s.cfg.IdleTimeout}, f)
	c.closeData(d)
	c.s.m.sent.WithLabelValues("ftp").Add(float64(n))
	if err != nil {
		c.s.m.requests.WithLabelValues("ftp", "get", "error").Inc()
		c.reply(426, "Connection closed; transfer aborted.")
		return
	}
	c.s.m.requests.WithLabelValues("ftp", "get", "ok").Inc()
	c.reply(226, "Transfer complete.")
}

// list sends a directory's entries (or one file's) over the data connection: names only
// for NLST, "ls -l" lines for LIST. Options such as -la are ignored.
func (c *ftpSession) list(namesOnly bool, arg string) {
	var target string
	for f := range strings.FieldsSeq(arg) {
		if !strings.HasPrefix(f, "-") {
			target = f
		}
	}
	name, abs, err := c.resolve(target)
	if err != nil {
		c.reply(550, err.Error())
		return
	}
	fi, err := c.s.root.Stat(name)
	if err != nil {
		c.s.m.requests.WithLabelValues("ftp", "list", "not_found").Inc()
		c.reply(550, abs+": no such file or directory.")
		return
	}
	var entries []fileInfo
	if fi.IsDir() {
		f, err := c.s.root.Open(name)
		if err != nil {
			c.reply(550, abs+": cannot open.")
			return
		}
		des, err := f.ReadDir(maxListedEntries)
		f.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			c.reply(550, abs+": cannot read.")
			return
		}
		for _, de := range des {
			if hidden(de.Name()) || !(de.Type().IsRegular() || de.IsDir()) {
				continue
			}
			if info, err := de.Info(); err == nil {
				entries = append(entries, fileInfo{name: de.Name(), size: info.Size(), modTime: info.ModTime(), dir: de.IsDir()})
			}
		}
		slices.SortFunc(entries, func(a, b fileInfo) int { return strings.Compare(a.name, b.name) })
	} else {
		entries = append(entries, fileInfo{name: path.Base(abs), size: fi.Size(), modTime: fi.ModTime()})
	}
	if !c.hasPassive() {
		c.reply(425, "Use PASV or EPSV first.")
		return
	}
	c.reply(150, "Here comes the listing.")
	d, err := c.openData()
	if err != nil {
		c.reply(425, "Cannot open the data connection.")
		return
	}
	w := bufio.NewWriter(deadlineWriter{d, c.s.cfg.IdleTimeout})
	now := time.Now()
	for _, e := range entries {
		if namesOnly {
			fmt.Fprintf(w, "%s\r\n", e.name)
			continue
		}
		mode := "-rw-r--r--"
		if e.dir {
			mode = "drwxr-xr-x"
		}
		when := e.modTime.UTC().Format("Jan _2 15:04")
		if now.Sub(e.modTime) > 180*24*time.Hour || e.modTime.After(now.Add(time.Hour)) {
			when = e.modTime.UTC().Format("Jan _2  2006")
		}
		fmt.Fprintf(w, "%s 1 ftp ftp %12d %s %s\r\n", mode, e.size, when, e.name)
	}
	err = w.Flush()
	c.closeData(d)
	if err != nil {
		c.s.m.requests.WithLabelValues("ftp", "list", "error").Inc()
		c.reply(426, "Connection closed; transfer aborted.")
		return
	}
	c.s.m.requests.WithLabelValues("ftp", "list", "ok").Inc()
	c.reply(226, "Directory send OK.")
}
