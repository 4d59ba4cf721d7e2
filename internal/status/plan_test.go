package status

import (
	"strings"
	"testing"

	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/reconcile"
)

// The plan's table names each change, the rows not served, the firewall
// and the counts.
func TestPlanTable(t *testing.T) {
	peers := reconcile.Plan{
		Changes:   []reconcile.Change{{Op: reconcile.OpUpdate, PeerID: "p1", Fields: []string{"download_kbps 20000 -> 10000"}}, {Op: reconcile.OpRemove}},
		Unchanged: 3,
		NotServed: []reconcile.Change{{PeerID: "p2", State: "blocked", Reason: "disabled"}},
	}
	fw := []netctl.FirewallChange{{Family: "ipv4", Chain: "net.ipv4.ip_forward", What: "forwarding"},
		{Family: "ipv4", Table: "filter", Chain: "WAYLUME-FORWARD", What: "rewrite", Missing: []string{"-j DROP"}, Have: 1, Want: 2}}
	rep := NewPlan("wg0", peers, fw)
	if len(rep.Changes) != 2 || rep.Changes[0].Op != "update" || len(rep.NotServed) != 1 || len(rep.Firewall) != 2 {
		t.Fatalf("report %+v", rep)
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"update p1 ", "download_kbps 20000 -> 10000", "remove - ", "skip   p2 ", "blocked: disabled",
		"sysctl net.ipv4.ip_forward 0 -> 1", "rewrite ipv4 filter WAYLUME-FORWARD: 1 rule(s) -> 2", "+ -j DROP",
		"2 change(s), 3 peer(s) unchanged, 1 row(s) not served, 2 firewall change(s) on wg0"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
}
