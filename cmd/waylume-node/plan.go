package main

// plan: flags and output around node.Plan; the report is package status's.

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/waylume/waylume-node/internal/node"
	"github.com/waylume/waylume-node/internal/status"
)

func (c *cli) planCmd(args []string) int {
	fs := c.flagSet("plan", "", "Show what `run` would change in the kernel now (peers added, removed, updated, limits,\n"+
		"firewall), changing nothing. Reads the node's rows (WAYLUME_DATABASE_URL, WAYLUME_NODE_ID), the\n"+
		"local interface and chains, and the firewall settings `run` has.", forPlan)
	cf := bindConfig(fs, forPlan)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "database-url", "node-id", "interface") {
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	plan, err := node.Plan(ctx, cfg.node())
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node plan: %v\n", err)
		return exitFail
	}
	rep := status.NewPlan(cfg.Interface, plan.Peers, plan.Firewall)
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(c.stderr, "waylume-node plan: %v\n", err)
			return exitFail
		}
		return exitOK
	}
	rep.WriteTable(c.stdout)
	return exitOK
}
