package reconcile

// A plan is converging without acting: the decisions the node would take
// for its rows, compared with what a data plane holds, so an operator can
// see what `run` would change before it does.

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/waylume/waylume-node/events"
)

// Op is what a change does to the data plane.
type Op string

const (
	OpAdd    Op = "add"
	OpUpdate Op = "update"
	OpRemove Op = "remove"
)

// Change is one difference between the rows and the data plane.
type Change struct {
	Op     Op
	PeerID string // "" for a held key that no row claims
	Key    Key
	// Fields names what an update changes, e.g. "download_kbps 20000 -> 10000".
	Fields []string
	// State and Reason say why a held peer goes (blocked, rejected) or
	// why a row is not served.
	State, Reason string
}

// Plan is every change a converge would make now.
type Plan struct {
	Changes   []Change
	Unchanged int // peers held as their rows want them
	// NotServed are rows that are neither held nor added, with why.
	NotServed []Change
}

// PlanPeers compares what rows ask for at now (quota from quotaUsed,
// bytes since each peer's reset) with held, the peers a data plane holds.
// It is the converge path's decision step without its side effects.
func PlanPeers(node events.Node, self Key, rows []events.Peer, quotaUsed map[string]int64, now time.Time, held []PeerConfig) Plan {
	byID := make(map[string]events.Peer, len(rows))
	for _, p := range rows {
		if p.NodeID == node.ID {
			byID[p.ID] = p
		}
	}
	dec := decide(node, self, byID, now, func(id string) int64 { return quotaUsed[id] })
	have := make(map[Key]PeerConfig, len(held))
	for _, c := range held {
		have[c.PublicKey] = c
	}
	var plan Plan
	wanted := map[Key]bool{}
	for _, id := range decisionIDs(dec) {
		d := dec[id]
		if d.state != events.StateActive {
			if _, ok := have[d.key]; ok && d.keyOK {
				plan.Changes = append(plan.Changes, Change{Op: OpRemove, PeerID: id, Key: d.key, State: d.state, Reason: d.reason})
				wanted[d.key] = true // accounted for: not also an unclaimed removal
			} else {
				plan.NotServed = append(plan.NotServed, Change{PeerID: id, Key: d.key, State: d.state, Reason: d.reason})
			}
			continue
		}
		wanted[d.cfg.PublicKey] = true
		h, ok := have[d.cfg.PublicKey]
		switch fields := configDiff(h, d.cfg); {
		case !ok:
			plan.Changes = append(plan.Changes, Change{Op: OpAdd, PeerID: id, Key: d.cfg.PublicKey, Fields: configDiff(PeerConfig{}, d.cfg)})
		case len(fields) > 0:
			plan.Changes = append(plan.Changes, Change{Op: OpUpdate, PeerID: id, Key: d.cfg.PublicKey, Fields: fields})
		default:
			plan.Unchanged++
		}
	}
	for _, c := range held {
		if !wanted[c.PublicKey] {
			plan.Changes = append(plan.Changes, Change{Op: OpRemove, Key: c.PublicKey, Reason: "no row claims this key"})
		}
	}
	return plan
}

func decisionIDs(dec map[string]decision) []string {
	ids := make([]string, 0, len(dec))
	for id := range dec {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, cmp.Compare)
	return ids
}

// configDiff names the fields in which want differs from have; the
// preshared key is named, never shown.
func configDiff(have, want PeerConfig) []string {
	var out []string
	if !slices.Equal(have.AllowedIPs, want.AllowedIPs) {
		out = append(out, fmt.Sprintf("allowed_ips %v -> %v", have.AllowedIPs, want.AllowedIPs))
	}
	if have.DownloadKbps != want.DownloadKbps {
		out = append(out, fmt.Sprintf("download_kbps %d -> %d", have.DownloadKbps, want.DownloadKbps))
	}
	if have.UploadKbps != want.UploadKbps {
		out = append(out, fmt.Sprintf("upload_kbps %d -> %d", have.UploadKbps, want.UploadKbps))
	}
	if have.Keepalive != want.Keepalive {
		out = append(out, fmt.Sprintf("persistent_keepalive %v -> %v", have.Keepalive, want.Keepalive))
	}
	if have.PresharedKey != want.PresharedKey {
		out = append(out, "preshared_key")
	}
	return out
}
