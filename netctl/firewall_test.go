package netctl

import (
	"context"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/netns"
)

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// rules is iptables-save in ns without comments and counters.
func rules(t *testing.T, ns *netns.NS) string {
	t.Helper()
	out := ns.MustRun(t, "iptables-save")
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, counters.ReplaceAllString(l, ""))
	}
	return strings.Join(lines, "\n")
}

func TestFirewallSetupIsIdempotentAndTeardownLeavesOthers(t *testing.T) {
	hostForward, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	node := newNodeNS(t)
	// Someone else's rules, which must survive everything.
	node.MustRun(t, "iptables", "-A", "FORWARD", "-s", "192.0.2.1", "-j", "DROP")
	node.MustRun(t, "iptables", "-N", "FOREIGN")
	node.MustRun(t, "iptables", "-A", "FOREIGN", "-j", "RETURN")
	node.MustRun(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN")
	before := rules(t, node)

	b := newBedIn(t, node, nil)
	first := rules(t, node)
	for _, want := range []string{
		"-A FORWARD -j WAYLUME-FORWARD\n",
		"-A POSTROUTING -j WAYLUME-POSTROUTING\n",
		"-A WAYLUME-FORWARD -i " + b.cfg.Interface + " -o " + b.cfg.Interface + " -j DROP",
		"-A WAYLUME-FORWARD -i " + b.cfg.Interface + " -j ACCEPT",
		"-A WAYLUME-POSTROUTING -s 10.8.0.0/16 ! -o " + b.cfg.Interface + " -j MASQUERADE",
		"-A FORWARD -s 192.0.2.1/32 -j DROP",
	} {
		if strings.Count(first, want) != 1 {
			t.Errorf("after setup, want exactly one %q in:\n%s", want, first)
		}
	}
	if fwd := strings.TrimSpace(node.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward")); fwd != "1" {
		t.Errorf("ip_forward in the node namespace = %s, want 1", fwd)
	}

	// Setup again, twice: through Reconfigure and through a second Open
	// adopting the interface.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b.link.checked = time.Time{} // an unchanged config is rechecked only when stale
	if err := b.link.Reconfigure(ctx, b.cfg); err != nil {
		t.Fatal(err)
	}
	b.open(b.cfg)
	if again := rules(t, node); again != first {
		t.Errorf("second setup changed the rules:\n--- first\n%s\n--- again\n%s", first, again)
	}

	if err := b.link.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if after := rules(t, node); after != before {
		t.Errorf("teardown did not restore the foreign rules exactly:\n--- before\n%s\n--- after\n%s", before, after)
	}
	if out := node.MustRun(t, "ip", "-o", "link"); strings.Contains(out, b.cfg.Interface) || strings.Contains(out, ifbName(b.cfg.Interface)) {
		t.Errorf("teardown left interfaces:\n%s", out)
	}
	if now, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(now) != string(hostForward) {
		t.Errorf("host ip_forward changed from %q to %q", hostForward, now)
	}
}

func TestIsolationBlocksClientToClient(t *testing.T) {
	b := newBed(t, nil)
	a, pa := b.client("10.8.0.2")
	c, pc := b.client("10.8.0.3")
	b.sync(pa, pc)
	ping(t, a.NS, "10.8.0.1")
	ping(t, c.NS, "10.8.0.1")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.NS.Ping(ctx, "10.8.0.3", 3); err == nil {
		t.Fatal("with isolation on, client A reached client B")
	}

	cfg := b.cfg
	cfg.Isolation = false
	if err := b.link.Reconfigure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// The same path works once isolation is off: the drop was the rule.
	ping(t, a.NS, "10.8.0.3")

	cfg.Isolation = true
	if err := b.link.Reconfigure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := a.NS.Ping(ctx, "10.8.0.3", 3); err == nil {
		t.Fatal("isolation switched back on, client A still reaches client B")
	}
	ping(t, a.NS, "10.8.0.1")
}

func TestFirewallIPv6Pool(t *testing.T) {
	b := newBed(t, func(c *Config) { c.Address6 = netip.MustParsePrefix("fd00:8::1/64") })
	save6 := func() string { return b.node.MustRun(t, "ip6tables-save") }
	got := save6()
	for _, want := range []string{
		"-A FORWARD -j WAYLUME-FORWARD\n",
		"-A POSTROUTING -j WAYLUME-POSTROUTING\n",
		"-A WAYLUME-POSTROUTING -s fd00:8::/64 ! -o " + b.cfg.Interface + " -j MASQUERADE",
		"-A WAYLUME-FORWARD -i " + b.cfg.Interface + " -o " + b.cfg.Interface + " -j DROP",
	} {
		if strings.Count(got, want) != 1 {
			t.Errorf("ip6tables: want exactly one %q in:\n%s", want, got)
		}
	}
	if out := b.node.MustRun(t, "ip", "-6", "addr", "show", "dev", b.cfg.Interface); !strings.Contains(out, "fd00:8::1/64") {
		t.Errorf("interface lacks its IPv6 address:\n%s", out)
	}
	if fwd := strings.TrimSpace(b.node.MustRun(t, "cat", "/proc/sys/net/ipv6/conf/all/forwarding")); fwd != "1" {
		t.Errorf("IPv6 forwarding = %s, want 1", fwd)
	}
	// Dropping the IPv6 pool removes the pool's rules; the chains stay,
	// dropping whatever clients send over IPv6.
	cfg := b.cfg
	cfg.Address6 = netip.Prefix{}
	if err := b.link.Reconfigure(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	got = save6()
	if strings.Contains(got, "fd00:8::") || strings.Contains(got, "MASQUERADE") {
		t.Errorf("IPv6 pool rules left after the pool was removed:\n%s", got)
	}
	if src := chainRules(got, chainSource); len(src) != 1 || src[0] != "-j DROP" {
		t.Errorf("without an IPv6 pool, IPv6 sources from the tunnel are not all dropped: %q", src)
	}
	if out := b.node.MustRun(t, "ip", "-6", "addr", "show", "dev", b.cfg.Interface); strings.Contains(out, "fd00:8::1") {
		t.Errorf("old IPv6 address left:\n%s", out)
	}
}
