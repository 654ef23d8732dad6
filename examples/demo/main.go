// Command hello is the demo service that `berth dev --demo` builds, packs and deploys as
// demo/hello: an HTTP server that answers its version on / and "ok" on /healthz. With
// -check URL it is its own health probe instead: it exits 0 when URL answers 200.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// version is set when berth dev builds the app (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	addr := flag.String("addr", ":8088", "address to listen on")
	check := flag.String("check", "", "probe this URL and exit 0 when it answers 200 (the health script)")
	flag.Parse()
	if *check != "" {
		os.Exit(probe(*check))
	}
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from demo/hello %s on %s\n", version, host)
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, version)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	// The stop script sends SIGTERM; finish the requests in flight, then exit.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Printf("demo/hello %s listening on %s", version, *addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	<-done
}

// probe is the health check: 0 when url answers 200 within two seconds, else 1.
func probe(url string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, url+": "+resp.Status)
		return 1
	}
	return 0
}
