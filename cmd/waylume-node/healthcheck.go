package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/waylume/waylume-node/internal/health"
)

var flagErrHelp = flag.ErrHelp

// healthcheckCmd GETs /healthz of the node on WAYLUME_METRICS_ADDR: the
// container HEALTHCHECK.
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
	if err := health.Probe(ctx, cfg.MetricsAddr, path); err != nil {
		fmt.Fprintf(c.stderr, "waylume-node healthcheck: %v\n", err)
		return exitFail
	}
	fmt.Fprintln(c.stdout, "ok")
	return exitOK
}
