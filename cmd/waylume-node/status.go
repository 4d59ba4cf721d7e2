package main

// status: flags and output around package status.

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/waylume/waylume-node/internal/status"
)

func (c *cli) statusCmd(args []string) int {
	fs := c.flagSet("status", "", "Show the local WireGuard interface, its peers, limits, handshakes and counters.\n"+
		"Joined with the node's rows when the database is reachable (WAYLUME_DATABASE_URL, WAYLUME_NODE_ID).", forStatus)
	cf := bindConfig(fs, forStatus)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "interface") {
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 15*time.Second)
	defer cancel()
	rep := status.Collect(ctx, status.Config{Interface: cfg.Interface, DatabaseURL: cfg.DatabaseURL, NodeID: cfg.NodeID}, time.Now())
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(c.stderr, "waylume-node status: %v\n", err)
			return exitFail
		}
	} else {
		rep.WriteTable(c.stdout)
	}
	if rep.KernelErr != "" {
		return exitFail
	}
	return exitOK
}
