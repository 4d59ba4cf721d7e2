package reconcile

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

func TestPlanPeers(t *testing.T) {
	node := testNodeRow()
	now := time.Now()
	keep, limit, add, expired := peerRow(1), peerRow(2), peerRow(3), peerRow(4)
	limit.DownloadKbps = 10_000
	expired.ExpiresAt = now.Add(-time.Minute)
	rows := []events.Peer{keep, limit, add, expired}
	cfgOf := func(p events.Peer) PeerConfig {
		t.Helper()
		c, err := validRow(node, Key{}, &p)
		if err != nil {
			t.Fatalf("row %s: %v", p.ID, err)
		}
		return c
	}
	held := []PeerConfig{cfgOf(keep), cfgOf(limit), cfgOf(expired)}
	held[1].DownloadKbps = 20_000
	stray := PeerConfig{PublicKey: Key{9}, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.8.0.99/32")}}
	held = append(held, stray)

	plan := PlanPeers(node, Key{}, rows, nil, now, held)
	got := map[Op][]string{}
	for _, c := range plan.Changes {
		got[c.Op] = append(got[c.Op], c.PeerID)
	}
	if !slices.Equal(got[OpAdd], []string{add.ID}) {
		t.Errorf("adds %v, want [%s]", got[OpAdd], add.ID)
	}
	if !slices.Equal(got[OpUpdate], []string{limit.ID}) {
		t.Errorf("updates %v, want [%s]", got[OpUpdate], limit.ID)
	}
	if !slices.Equal(got[OpRemove], []string{expired.ID, ""}) {
		t.Errorf("removes %v, want the expired row and the unclaimed key", got[OpRemove])
	}
	if plan.Unchanged != 1 {
		t.Errorf("unchanged %d, want 1", plan.Unchanged)
	}
	for _, c := range plan.Changes {
		if c.Op == OpUpdate && !slices.Equal(c.Fields, []string{"download_kbps 20000 -> 10000"}) {
			t.Errorf("update fields %q", c.Fields)
		}
		if c.Op == OpRemove && c.PeerID == expired.ID && c.Reason != reasonExpired {
			t.Errorf("expired row removed with reason %q", c.Reason)
		}
	}

	// Applying the plan's wants leaves nothing to do.
	again := PlanPeers(node, Key{}, rows, nil, now, []PeerConfig{cfgOf(keep), cfgOf(limit), cfgOf(add)})
	if len(again.Changes) != 0 || again.Unchanged != 3 {
		t.Errorf("plan after applying: %+v", again)
	}
}
