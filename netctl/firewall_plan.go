package netctl

import (
	"context"
	"fmt"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// FirewallChange is one thing Open would change in the firewall now; its
// JSON is a line of `plan --json`.
type FirewallChange struct {
	Family string `json:"family"` // "ipv4" or "ipv6"
	Table  string `json:"table,omitempty"`
	Chain  string `json:"chain"` // ours, or the sysctl for What "forwarding"
	// What is "create" (the chain is missing), "rewrite" (it holds other
	// rules than wanted), "hook" (the built-in chain does not jump to it
	// exactly once) or "forwarding" (the sysctl is off).
	What string `json:"what"`
	// Missing are the wanted rules the chain lacks, in iptables-save's
	// argument form; Have and Want count the chain's rules.
	Missing []string `json:"missing_rules,omitempty"`
	Have    int      `json:"have_rules"`
	Want    int      `json:"want_rules"`
}

// PlanFirewall compares our chains in cfg's namespace with what Open
// would make of them for cfg, and changes nothing. An IPv6 family the
// host cannot filter is left out when cfg has no IPv6 pool, as Open
// leaves it.
func PlanFirewall(ctx context.Context, cfg Config) ([]FirewallChange, error) {
	ns, err := openNamespace(cfg.Netns)
	if err != nil {
		return nil, err
	}
	defer ns.close()
	h, err := ns.openNetlink()
	if err != nil {
		return nil, err
	}
	egress := egressInterface(cfg, h)
	h.Close()
	var out []FirewallChange
	err = ns.do(func() error {
		out = planForwarding(cfg.Address6.IsValid())
		for _, fam := range []family{ipv4, ipv6} {
			cs, err := planFamily(fam, fwRules(cfg, fam, egress))
			if err != nil && fam == ipv6 && !cfg.Address6.IsValid() {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, cs...)
		}
		return nil
	})
	return out, err
}

func planForwarding(v6 bool) []FirewallChange {
	var out []FirewallChange
	for _, fam := range forwarded(v6) {
		if !forwarding(fam) {
			out = append(out, FirewallChange{Family: fam.name, Chain: strings.TrimPrefix(fam.forward, "/proc/sys/"), What: "forwarding"})
		}
	}
	return out
}

func planFamily(fam family, want map[string][][]string) ([]FirewallChange, error) {
	ipt, err := iptables.New(iptables.IPFamily(fam.proto), iptables.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fam.restore, err)
	}
	var out []FirewallChange
	for _, c := range fwChains {
		ch, err := planChain(ipt, c, want[c.chain])
		if err != nil {
			return nil, err
		}
		if ch.What != "" {
			ch.Family = fam.name
			out = append(out, ch)
		}
		if c.hook == "" {
			continue
		}
		n, err := hooks(ipt, c)
		if err != nil {
			return nil, err
		}
		if n != 1 {
			out = append(out, FirewallChange{Family: fam.name, Table: c.table, Chain: c.chain, What: "hook", Have: n, Want: 1})
		}
	}
	return out, nil
}

// planChain checks one chain as chainsMatch does (iptables -C compares
// rules semantically, so printed forms need not agree) and says how it
// differs.
func planChain(ipt *iptables.IPTables, c fwChain, want [][]string) (FirewallChange, error) {
	ch := FirewallChange{Table: c.table, Chain: c.chain, Want: len(want)}
	ok, err := ipt.ChainExists(c.table, c.chain)
	if err != nil {
		return ch, fmt.Errorf("check chain %s: %w", c.chain, err)
	}
	if !ok {
		ch.What = "create"
		for _, r := range want {
			ch.Missing = append(ch.Missing, strings.Join(r, " "))
		}
		return ch, nil
	}
	rules, err := ipt.List(c.table, c.chain)
	if err != nil {
		return ch, fmt.Errorf("list chain %s: %w", c.chain, err)
	}
	ch.Have = len(rules) - 1 // the first line is -N
	for _, r := range want {
		ok, err := ipt.Exists(c.table, c.chain, r...)
		if err != nil {
			return ch, fmt.Errorf("check rule in %s: %w", c.chain, err)
		}
		if !ok {
			ch.Missing = append(ch.Missing, strings.Join(r, " "))
		}
	}
	if ch.Have != ch.Want || len(ch.Missing) > 0 {
		ch.What = "rewrite"
	}
	return ch, nil
}

// hooks counts the built-in chain's jumps to ours.
func hooks(ipt *iptables.IPTables, c fwChain) (int, error) {
	rules, err := ipt.List(c.table, c.hook)
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", c.hook, err)
	}
	n := 0
	for _, r := range rules {
		if r == "-A "+c.hook+" -j "+c.chain {
			n++
		}
	}
	return n, nil
}
