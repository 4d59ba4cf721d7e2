package status

import (
	"fmt"
	"io"

	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/reconcile"
)

// Change is one line of `plan --json`.
type Change struct {
	Op     string   `json:"op"`
	PeerID string   `json:"peer_id,omitempty"`
	Key    string   `json:"public_key"`
	Fields []string `json:"fields,omitempty"`
	State  string   `json:"state,omitempty"`
	Reason string   `json:"reason,omitempty"`
}

// Plan is what run would change on the interface now; its JSON is
// `plan --json`.
type Plan struct {
	Interface string                  `json:"interface"`
	Changes   []Change                `json:"changes"`
	Unchanged int                     `json:"unchanged"`
	NotServed []Change                `json:"not_served"`
	Firewall  []netctl.FirewallChange `json:"firewall"`
}

// NewPlan is the report of node.Plan's answer for interface iface.
func NewPlan(iface string, peers reconcile.Plan, firewall []netctl.FirewallChange) Plan {
	if firewall == nil {
		firewall = []netctl.FirewallChange{} // [] in the JSON, as the other lists
	}
	return Plan{Interface: iface, Changes: changes(peers.Changes), Unchanged: peers.Unchanged,
		NotServed: changes(peers.NotServed), Firewall: firewall}
}

func changes(cs []reconcile.Change) []Change {
	out := make([]Change, 0, len(cs))
	for _, ch := range cs {
		out = append(out, Change{Op: string(ch.Op), PeerID: ch.PeerID, Key: ch.Key.String(),
			Fields: ch.Fields, State: ch.State, Reason: ch.Reason})
	}
	return out
}

// WriteTable writes the plan for people: one line per change, then the
// counts.
func (rep Plan) WriteTable(w io.Writer) error {
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
	for _, f := range rep.Firewall {
		writeFirewall(w, f)
	}
	fmt.Fprintf(w, "%d change(s), %d peer(s) unchanged, %d row(s) not served, %d firewall change(s) on %s\n",
		len(rep.Changes), rep.Unchanged, len(rep.NotServed), len(rep.Firewall), rep.Interface)
	return nil
}

func writeFirewall(w io.Writer, f netctl.FirewallChange) {
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
