package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"
)

var flagErrHelp = flag.ErrHelp

// healthcheckCmd GETs /healthz of the node on WAYLUME_METRICS_ADDR: the
// container HEALTHCHECK, since the runtime image has no curl.
func (c *cli) healthcheckCmd(args []string) int {
	fs := c.flagSet("healthcheck", "", "Exit 0 when the running node answers /healthz (or /readyz with --ready).", forHealth)
	cf := bindConfig(fs, forHealth)
	ready := fs.Bool("ready", false, "check /readyz instead of /healthz")
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg) {
		return exitConfig
	}
	if cfg.MetricsAddr == "" {
		fmt.Fprintln(c.stderr, "waylume-node healthcheck: WAYLUME_METRICS_ADDR is empty: the node serves no /healthz")
		return exitFail
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	ctx, cancel := context.WithTimeout(c.ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+dialAddr(cfg.MetricsAddr)+path, nil)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node healthcheck: %v\n", err)
		return exitFail
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node healthcheck: %v\n", err)
		return exitFail
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(c.stderr, "waylume-node healthcheck: %s answered %s\n", path, resp.Status)
		return exitFail
	}
	fmt.Fprintln(c.stdout, "ok")
	return exitOK
}

// dialAddr turns a listen address into one to dial: a wildcard host means
// this machine.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}
