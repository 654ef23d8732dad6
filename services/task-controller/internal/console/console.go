// Package console is Berth's web console: plain HTML, CSS and JavaScript embedded in the
// controller binary and served at /ui/. It has no build step, no framework and loads
// nothing from outside its own origin: every page talks only to the controller's /v1/ API
// (deployments and their event streams, the service tree, instances, hosts, and the name
// service through the controller's /v1/names/ proxy).
package console

import (
	"embed"
	"io/fs"
	"net/http"
)

// Prefix is where the console is served.
const Prefix = "/ui/"

// static holds the console's files; index.html is the single page.
//
//go:embed static
var static embed.FS

// contentSecurityPolicy lets the console load and connect to its own origin only, so
// that a mistake can never pull an asset from elsewhere.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Files returns the console's embedded files, rooted at the console (index.html,
// console.css, console.js).
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the directory is embedded above
	}
	return sub
}

// Handler serves the console's files under Prefix with a restrictive content security
// policy; the files are revalidated on every load, so an upgraded controller serves its
// own console at once.
func Handler() http.Handler {
	files := http.StripPrefix(Prefix, http.FileServerFS(Files()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// Register mounts the console on mux: GET /ui/ and its files, and redirects from /ui and
// from / to it.
func Register(mux interface {
	Handle(pattern string, h http.Handler)
}) {
	mux.Handle("GET "+Prefix, Handler())
	redirect := http.RedirectHandler(Prefix, http.StatusFound)
	mux.Handle("GET /ui", redirect)
	mux.Handle("GET /{$}", redirect)
}
