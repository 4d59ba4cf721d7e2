package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/waylume/waylume-node/internal/node"
	"github.com/waylume/waylume-node/internal/status"
	"github.com/waylume/waylume-node/netctl"
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

// planFirewall is one firewall line of `plan --json`.
type planFirewall struct {
	Family  string   `json:"family"`
	Table   string   `json:"table,omitempty"`
	Chain   string   `json:"chain"`
	What    string   `json:"what"`
	Missing []string `json:"missing_rules,omitempty"`
	Have    int      `json:"have_rules"`
	Want    int      `json:"want_rules"`
}

type planReport struct {
	Interface string         `json:"interface"`
	Changes   []planChange   `json:"changes"`
	Unchanged int            `json:"unchanged"`
	NotServed []planChange   `json:"not_served"`
	Firewall  []planFirewall `json:"firewall"`
}

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
	peers := plan.Peers
	rep := planReport{Interface: cfg.Interface, Changes: planChanges(peers.Changes), Unchanged: peers.Unchanged,
		NotServed: planChanges(peers.NotServed), Firewall: planFirewalls(plan.Firewall)}
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

func planFirewalls(cs []netctl.FirewallChange) []planFirewall {
	out := make([]planFirewall, 0, len(cs))
	for _, c := range cs {
		out = append(out, planFirewall{Family: c.Family, Table: c.Table, Chain: c.Chain, What: c.What,
			Missing: c.Missing, Have: c.Have, Want: c.Want})
	}
	return out
}

func printPlan(w io.Writer, rep planReport) {
	for _, ch := range rep.Changes {
		fmt.Fprintf(w, "%-6s %s %s", ch.Op, orDash(ch.PeerID), status.ShortKey(ch.Key))
		for _, f := range ch.Fields {
			fmt.Fprintf(w, "  %s", f)
		}
		if ch.Reason != "" {
			fmt.Fprintf(w, "  (%s)", ch.Reason)
		}
		fmt.Fprintln(w)
	}
	for _, ch := range rep.NotServed {
		fmt.Fprintf(w, "skip   %s %s  %s: %s\n", ch.PeerID, status.ShortKey(ch.Key), ch.State, ch.Reason)
	}
	for _, f := range rep.Firewall {
		printFirewall(w, f)
	}
	fmt.Fprintf(w, "%d change(s), %d peer(s) unchanged, %d row(s) not served, %d firewall change(s) on %s\n",
		len(rep.Changes), rep.Unchanged, len(rep.NotServed), len(rep.Firewall), rep.Interface)
}

func printFirewall(w io.Writer, f planFirewall) {
	switch f.What {
	case "forwarding":
		fmt.Fprintf(w, "sysctl %s 0 -> 1\n", f.Chain)
	case "hook":
		fmt.Fprintf(w, "hook   %s %s %s: %d jump(s) -> 1\n", f.Family, f.Table, f.Chain, f.Have)
	default:
		fmt.Fprintf(w, "%-6s %s %s %s: %d rule(s) -> %d\n", f.What, f.Family, f.Table, f.Chain, f.Have, f.Want)
		for _, r := range f.Missing {
			fmt.Fprintf(w, "         + %s\n", r)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
