package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/waylume/waylume-node/internal/node"
	"github.com/waylume/waylume-node/reconcile"
)

// planChange is one line of `plan --json`.
type planChange struct {
	Op     string   `json:"op"`
	PeerID string   `json:"peer_id,omitempty"`
	Key    string   `json:"public_key"`
	Fields []string `json:"fields,omitempty"`
	State  string   `json:"state,omitempty"`
	Reason string   `json:"reason,omitempty"`
}

type planReport struct {
	Interface string       `json:"interface"`
	Changes   []planChange `json:"changes"`
	Unchanged int          `json:"unchanged"`
	NotServed []planChange `json:"not_served"`
}

func (c *cli) planCmd(args []string) int {
	fs := c.flagSet("plan", "", "Show what `run` would change in the kernel now (peers added, removed, updated, limits),\n"+
		"changing nothing. Reads the node's rows (WAYLUME_DATABASE_URL, WAYLUME_NODE_ID) and the local interface.", forStatus)
	cf := bindConfig(fs, forStatus)
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
	rep := planReport{Interface: cfg.Interface, Changes: planChanges(plan.Changes), Unchanged: plan.Unchanged, NotServed: planChanges(plan.NotServed)}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(c.stderr, "waylume-node plan: %v\n", err)
			return exitFail
		}
		return exitOK
	}
	printPlan(c.stdout, rep)
	return exitOK
}

func planChanges(cs []reconcile.Change) []planChange {
	out := make([]planChange, 0, len(cs))
	for _, ch := range cs {
		out = append(out, planChange{Op: string(ch.Op), PeerID: ch.PeerID, Key: ch.Key.String(),
			Fields: ch.Fields, State: ch.State, Reason: ch.Reason})
	}
	return out
}

func printPlan(w io.Writer, rep planReport) {
	for _, ch := range rep.Changes {
		fmt.Fprintf(w, "%-6s %s %s", ch.Op, orDash(ch.PeerID), shortKey(ch.Key))
		for _, f := range ch.Fields {
			fmt.Fprintf(w, "  %s", f)
		}
		if ch.Reason != "" {
			fmt.Fprintf(w, "  (%s)", ch.Reason)
		}
		fmt.Fprintln(w)
	}
	for _, ch := range rep.NotServed {
		fmt.Fprintf(w, "skip   %s %s  %s: %s\n", ch.PeerID, shortKey(ch.Key), ch.State, ch.Reason)
	}
	fmt.Fprintf(w, "%d change(s), %d peer(s) unchanged, %d row(s) not served on %s\n", len(rep.Changes), rep.Unchanged, len(rep.NotServed), rep.Interface)
}
