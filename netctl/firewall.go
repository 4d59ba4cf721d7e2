package netctl

// Firewall and NAT: chains of our own, each hooked in once, holding a
// handful of rules that do not grow with the number of peers (the policy
// is firewall_rules.go). Blocking a peer (quota, expiry) is removing it
// from WireGuard: without a peer entry its packets are dropped by the
// device before they reach netfilter.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
)

const (
	chainForward = "WAYLUME-FORWARD"
	chainInput   = "WAYLUME-INPUT"
	chainSource  = "WAYLUME-SOURCE"
	chainPost    = "WAYLUME-POSTROUTING"
)

// fwChain is one of our chains; hook is the built-in chain that jumps to
// it, "" for a chain only our chains jump to.
type fwChain struct {
	table, hook, chain string
}

// fwChains in dependency order: a chain comes before the chains it jumps
// to, so deleting in this order never meets a chain still referenced.
var fwChains = []fwChain{
	{"filter", "FORWARD", chainForward},
	{"filter", "INPUT", chainInput},
	{"filter", "", chainSource},
	{"nat", "POSTROUTING", chainPost},
}

type firewall struct {
	ns  *namespace
	log *slog.Logger
}

func newFirewall(ns *namespace, log *slog.Logger) *firewall {
	return &firewall{ns: ns, log: log}
}

// family is iptables or ip6tables.
type family struct {
	proto   iptables.Protocol
	restore string
	name    string // as FirewallChange.Family says it
	forward string // the forwarding sysctl
}

var (
	ipv4 = family{iptables.ProtocolIPv4, "iptables-restore", "ipv4", "/proc/sys/net/ipv4/ip_forward"}
	ipv6 = family{iptables.ProtocolIPv6, "ip6tables-restore", "ipv6", "/proc/sys/net/ipv6/conf/all/forwarding"}
)

// forwarded are the families Open turns forwarding on for: IPv4, and IPv6
// with an IPv6 pool.
func forwarded(v6 bool) []family {
	if v6 {
		return []family{ipv4, ipv6}
	}
	return []family{ipv4}
}

// egressInterface is cfg.EgressInterface or the IPv4 default route's.
func egressInterface(cfg Config, h *netlink.Handle) string {
	if cfg.EgressInterface != "" {
		return cfg.EgressInterface
	}
	return defaultRouteLink(h)
}

// defaultRouteLink names the interface of the IPv4 default route, or "".
func defaultRouteLink(h *netlink.Handle) string {
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return ""
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.LinkIndex != 0 {
			if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
				return l.Attrs().Name
			}
		}
	}
	return ""
}

// setup makes our chains hold exactly the rules for cfg, hooks each in
// once and enables forwarding. When everything is already in place it
// only reads.
func (f *firewall) setup(ctx context.Context, cfg Config, h *netlink.Handle) error {
	egress := egressInterface(cfg, h)
	if egress == "" {
		f.log.Warn("no egress interface and no default route: masquerading everything leaving the pool except to the tunnel")
	}
	return f.ns.do(func() error {
		if err := enableForwarding(cfg.Address6.IsValid()); err != nil {
			return err
		}
		return setupChains(ctx, cfg, egress, f.log)
	})
}

// setupChains is setup without forwarding, run inside the namespace.
// Without an IPv6 pool the IPv6 chains are kept too, dropping what clients
// send over IPv6 (a peer's allowed IPs may still hold IPv6 prefixes); a
// host whose ip6tables cannot take them (IPv6 disabled) has no IPv6 to
// guard, so that failure is only logged.
func setupChains(ctx context.Context, cfg Config, egress string, log *slog.Logger) error {
	if err := setupFamily(ctx, ipv4, fwRules(cfg, ipv4, egress)); err != nil {
		return err
	}
	err := setupFamily(ctx, ipv6, fwRules(cfg, ipv6, egress))
	if err != nil && !cfg.Address6.IsValid() {
		log.Warn("no IPv6 firewall chains: IPv6 from the tunnel is not filtered", "err", err)
		return nil
	}
	return err
}

func setupFamily(ctx context.Context, fam family, want map[string][][]string) error {
	ipt, err := iptables.New(iptables.IPFamily(fam.proto), iptables.Timeout(5))
	if err != nil {
		return fmt.Errorf("%s: %w", fam.restore, err)
	}
	same, err := chainsMatch(ipt, want)
	if err != nil {
		return err
	}
	if !same {
		if err := restore(ctx, fam.restore, want); err != nil {
			return err
		}
	}
	for _, c := range fwChains {
		if c.hook == "" {
			continue
		}
		if err := hookOnce(ipt, c); err != nil {
			return err
		}
	}
	return nil
}

// chainsMatch reports whether each of our chains exists and holds exactly
// the wanted rules (checked with iptables -C, which compares semantically,
// plus a rule count).
func chainsMatch(ipt *iptables.IPTables, want map[string][][]string) (bool, error) {
	for _, c := range fwChains {
		ok, err := ipt.ChainExists(c.table, c.chain)
		if err != nil {
			return false, fmt.Errorf("check chain %s: %w", c.chain, err)
		}
		if !ok {
			return false, nil
		}
		rules, err := ipt.List(c.table, c.chain)
		if err != nil {
			return false, fmt.Errorf("list chain %s: %w", c.chain, err)
		}
		if len(rules)-1 != len(want[c.chain]) { // the first line is -N
			return false, nil
		}
		for _, r := range want[c.chain] {
			ok, err := ipt.Exists(c.table, c.chain, r...)
			if err != nil {
				return false, fmt.Errorf("check rule in %s: %w", c.chain, err)
			}
			if !ok {
				return false, nil
			}
		}
	}
	return true, nil
}

// restore rewrites our chains in one iptables-restore --noflush: a chain
// declared in the input is flushed and refilled atomically, and nothing
// else is touched. A table's chains are declared together, before any
// rule, so a jump may name a chain that does not exist yet.
func restore(ctx context.Context, tool string, want map[string][][]string) error {
	var b bytes.Buffer
	for _, table := range []string{"filter", "nat"} {
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range fwChains {
			if c.table == table {
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.chain)
			}
		}
		for _, c := range fwChains {
			if c.table != table {
				continue
			}
			for _, r := range want[c.chain] {
				fmt.Fprintf(&b, "-A %s %s\n", c.chain, strings.Join(r, " "))
			}
		}
		b.WriteString("COMMIT\n")
	}
	cmd := exec.CommandContext(ctx, tool, "-w", "5", "--noflush")
	cmd.Stdin = &b
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", tool, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hookOnce makes the built-in chain jump to ours exactly once, first.
func hookOnce(ipt *iptables.IPTables, c fwChain) error {
	jump := []string{"-j", c.chain}
	n, err := hooks(ipt, c)
	if err != nil {
		return err
	}
	for ; n > 1; n-- {
		if err := ipt.Delete(c.table, c.hook, jump...); err != nil {
			return fmt.Errorf("remove duplicate jump to %s: %w", c.chain, err)
		}
	}
	if n == 0 {
		if err := ipt.Insert(c.table, c.hook, 1, jump...); err != nil {
			return fmt.Errorf("hook %s into %s: %w", c.chain, c.hook, err)
		}
	}
	return nil
}

func enableForwarding(v6 bool) error {
	for _, fam := range forwarded(v6) {
		if forwarding(fam) {
			continue
		}
		if err := os.WriteFile(fam.forward, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
	}
	return nil
}

// forwarding reports whether fam's forwarding sysctl is on.
func forwarding(fam family) bool {
	b, err := os.ReadFile(fam.forward)
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// teardown unhooks and deletes our chains of both families; other rules
// stay.
func (f *firewall) teardown(ctx context.Context) error {
	return f.ns.do(func() error {
		ipt, err := iptables.New(iptables.Timeout(5))
		if err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		errs := []error{teardownFamily(ipt)}
		if ipt6, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv6), iptables.Timeout(5)); err == nil {
			errs = append(errs, teardownFamily(ipt6))
		}
		return errors.Join(errs...)
	})
}

func teardownFamily(ipt *iptables.IPTables) error {
	var errs []error
	for _, c := range fwChains {
		if ok, _ := ipt.ChainExists(c.table, c.chain); !ok {
			continue
		}
		for c.hook != "" {
			ok, err := ipt.Exists(c.table, c.hook, "-j", c.chain)
			if err != nil || !ok {
				break
			}
			if err := ipt.Delete(c.table, c.hook, "-j", c.chain); err != nil {
				errs = append(errs, fmt.Errorf("unhook %s: %w", c.chain, err))
				break
			}
		}
		if err := ipt.ClearAndDeleteChain(c.table, c.chain); err != nil {
			errs = append(errs, fmt.Errorf("delete chain %s: %w", c.chain, err))
		}
	}
	return errors.Join(errs...)
}
