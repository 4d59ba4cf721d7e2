package main

// check: a preflight (package preflight) that prints one line per
// requirement, ok or FAIL with the fix, and exits 1 when anything failed.

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/waylume/waylume-node/internal/preflight"
)

func (c *cli) checkCmd(args []string) int {
	fs := c.flagSet("check", "", "Preflight: one line per requirement (ok or FAIL with the fix). Exit code 1 when any failed.", forCheck)
	cf := bindConfig(fs, forCheck)
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "interface") {
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 60*time.Second)
	defer cancel()
	failed := 0
	for _, r := range preflight.Run(ctx, cfg.preflight()) {
		printCheck(c.stdout, r)
		if !r.OK {
			failed++
		}
	}
	if failed > 0 {
		fmt.Fprintf(c.stdout, "%d check(s) failed\n", failed)
		return exitFail
	}
	fmt.Fprintln(c.stdout, "all checks passed")
	return exitOK
}

// preflight is the check command's share of the settings.
func (c Config) preflight() preflight.Config {
	return preflight.Config{
		Interface: c.Interface, WGMode: c.WGMode, EgressInterface: c.EgressInterface,
		DatabaseURL: c.DatabaseURL, NodeID: c.NodeID, SupabaseURL: c.SupabaseURL, SupabaseKey: c.SupabaseKey,
		RealtimeURL: c.RealtimeURL, RealtimeMode: c.RealtimeMode, AccessToken: c.AccessToken,
		AuthEmail: c.AuthEmail, AuthPassword: c.AuthPassword,
	}
}

func printCheck(w io.Writer, r preflight.Result) {
	if r.OK && r.Warn {
		fmt.Fprintf(w, "warn  %-12s %s; fix: %s\n", r.Name, r.Detail, r.Fix)
		return
	}
	if r.OK {
		fmt.Fprintf(w, "ok    %-12s %s\n", r.Name, r.Detail)
		return
	}
	fmt.Fprintf(w, "FAIL  %-12s %s; fix: %s\n", r.Name, r.Detail, r.Fix)
}
