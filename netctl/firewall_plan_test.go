package netctl

import (
	"context"
	"slices"
	"testing"
	"time"
)

// PlanFirewall finds nothing on a node Open just set up, names each kind
// of drift, and changes nothing while it looks.
func TestPlanFirewall(t *testing.T) {
	node := newNodeNS(t)
	b := newBedIn(t, node, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	plan := func(cfg Config) []FirewallChange {
		t.Helper()
		before := rules(t, node)
		cs, err := PlanFirewall(ctx, cfg)
		if err != nil {
			t.Fatalf("PlanFirewall: %v", err)
		}
		if after := rules(t, node); after != before {
			t.Fatalf("PlanFirewall changed the rules:\n--- before\n%s\n--- after\n%s", before, after)
		}
		return cs
	}
	if cs := plan(b.cfg); len(cs) != 0 {
		t.Fatalf("after Open, plan = %+v, want nothing", cs)
	}

	open := b.cfg
	open.Isolation = false
	cs := plan(open)
	wantRule := "-i " + b.cfg.Interface + " -o " + b.cfg.Interface + " -j ACCEPT"
	if !slices.ContainsFunc(cs, func(c FirewallChange) bool {
		return c.Family == "ipv4" && c.Chain == chainForward && c.What == "rewrite" && slices.Contains(c.Missing, wantRule)
	}) {
		t.Errorf("isolation turned off: plan = %+v, want ipv4 %s rewritten with %q", cs, chainForward, wantRule)
	}

	node.MustRun(t, "iptables", "-D", "FORWARD", "-j", chainForward)
	node.MustRun(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-j", chainPost)
	cs = plan(b.cfg)
	for _, want := range []FirewallChange{
		{Family: "ipv4", Table: "filter", Chain: chainForward, What: "hook", Have: 0, Want: 1},
		{Family: "ipv4", Table: "nat", Chain: chainPost, What: "hook", Have: 2, Want: 1},
	} {
		if !slices.ContainsFunc(cs, func(c FirewallChange) bool {
			return c.Family == want.Family && c.Chain == want.Chain && c.What == want.What && c.Have == want.Have
		}) {
			t.Errorf("plan = %+v, want %+v", cs, want)
		}
	}

	node.MustRun(t, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward") // the node namespace's own
	if cs = plan(b.cfg); !slices.ContainsFunc(cs, func(c FirewallChange) bool {
		return c.Family == "ipv4" && c.What == "forwarding" && c.Chain == "net/ipv4/ip_forward"
	}) {
		t.Errorf("forwarding off: plan = %+v, want net/ipv4/ip_forward turned on", cs)
	}

	if err := b.link.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	cs = plan(b.cfg)
	for _, c := range fwChains {
		if !slices.ContainsFunc(cs, func(ch FirewallChange) bool { return ch.Family == "ipv4" && ch.Chain == c.chain && ch.What == "create" }) {
			t.Errorf("after teardown plan = %+v, want ipv4 %s created", cs, c.chain)
		}
	}
}
