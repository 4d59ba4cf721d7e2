package netctl

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
)

// Addresses of the world beside the node: one uplink namespace holds the
// "internet" host, the cloud metadata service and hosts in every private
// range; the node's default routes point at it.
const (
	uplinkNode   = "172.31.0.1"
	uplinkFar    = "172.31.0.2"
	uplinkNode6  = "fd77::1"
	uplinkFar6   = "fd77::2"
	internet     = "203.0.113.10"
	internet6    = "2001:db8::10"
	metadata     = "169.254.169.254"
	neighbour10  = "10.20.0.10"
	neighbour172 = "172.20.0.10"
	neighbour192 = "192.168.50.10"
	neighbourULA = "fd20::10"
	spoofed      = "150.0.0.5" // inside a peer's routed 128.0.0.0/1
)

var worldHosts = []string{internet, internet6, metadata, neighbour10, neighbour172, neighbour192, neighbourULA}

// world is a node namespace with an uplink namespace beside it, servers
// on both, and a Link opened with edit applied.
type world struct {
	*bed
	uplink *netns.NS
	far    map[string]*netns.Echo // by network: "tcp" :80 and "udp" :9 on every far address
}

func newWorld(t *testing.T, edit func(*Config)) *world {
	t.Helper()
	node := newNodeNS(t)
	up := netns.New(t, "wlu")
	nodeEnd, farEnd := netns.Name("vu"), netns.Name("vf")
	netns.Veth(t, node, nodeEnd, uplinkNode+"/24", up, farEnd, uplinkFar+"/24")
	node.MustRun(t, "ip", "-6", "addr", "add", uplinkNode6+"/64", "dev", nodeEnd, "nodad")
	up.MustRun(t, "ip", "-6", "addr", "add", uplinkFar6+"/64", "dev", farEnd, "nodad")
	node.MustRun(t, "ip", "route", "add", "default", "via", uplinkFar)
	node.MustRun(t, "ip", "-6", "route", "add", "default", "via", uplinkFar6)
	for _, h := range worldHosts {
		up.MustRun(t, "ip", "addr", "add", hostPrefix(h), "dev", "lo")
	}
	var udpAddrs []string
	for _, h := range worldHosts {
		udpAddrs = append(udpAddrs, net.JoinHostPort(h, "9"))
	}
	w := &world{uplink: up, far: map[string]*netns.Echo{
		"tcp": up.Serve(t, "tcp", ":80"),
		"udp": up.Serve(t, "udp", udpAddrs...),
	}}
	w.bed = newBedIn(t, node, func(c *Config) {
		c.Address6 = netip.MustParsePrefix("fd00:8::1/64")
		c.AllowLocal = []Service{{Proto: "udp", From: 53, To: 53}, {Proto: "tcp", From: 53, To: 53}}
		if edit != nil {
			edit(c)
		}
	})
	// Services on the node, on every address of both families: 53
	// allowed, 8080 and 54 not.
	for _, hp := range []string{"tcp/:8080", "tcp/:53", "tcp/:54"} {
		network, addr, _ := strings.Cut(hp, "/")
		node.Serve(t, network, addr)
	}
	node.Serve(t, "udp", "10.8.0.1:53", "[fd00:8::1]:53", "10.8.0.1:54", "[fd00:8::1]:54")
	return w
}

func hostPrefix(h string) string {
	if strings.Contains(h, ":") {
		return h + "/128"
	}
	return h + "/32"
}

// tunnelClient is a client at addr (and addr6) whose tunnel carries every
// test destination; extra are more allowed IPs of its peer on the node.
func (w *world) tunnelClient(addr, addr6 string, extra ...string) (*netns.WGClient, Peer) {
	w.t.Helper()
	c, p := w.client(addr)
	p.AllowedIPs = append(p.AllowedIPs, netip.MustParsePrefix(addr6+"/128"))
	for _, e := range extra {
		p.AllowedIPs = append(p.AllowedIPs, netip.MustParsePrefix(e))
	}
	c.NS.MustRun(w.t, "wg", "set", c.Iface, "peer", w.cfg.PrivateKey.PublicKey().String(), "allowed-ips", "0.0.0.0/0,::/0")
	c.NS.MustRun(w.t, "ip", "-6", "addr", "add", addr6+"/128", "dev", c.Iface, "nodad")
	c.NS.MustRun(w.t, "ip", "-6", "route", "add", "fd00:8::/64", "dev", c.Iface)
	for _, h := range append(slices.Clone(worldHosts), uplinkNode, uplinkNode6, uplinkFar) {
		c.NS.MustRun(w.t, "ip", "route", "add", hostPrefix(h), "dev", c.Iface)
	}
	return c, p
}

// mustReach waits (the tunnel may still be handshaking) until ns reaches
// addr.
func mustReach(t testing.TB, ns *netns.NS, network, addr string) {
	t.Helper()
	testkit.Eventually(t, 20*time.Second, func() error { return ns.Reach(network, "", addr) })
}

func mustNotReach(t testing.TB, ns *netns.NS, network, addr, what string) {
	t.Helper()
	if err := ns.Reach(network, "", addr); err == nil {
		t.Errorf("a client reached %s (%s %s) through the tunnel", what, network, addr)
	} else if !errors.Is(err, netns.ErrSilent) {
		t.Errorf("%s: %v", what, err)
	}
}

// TestClientReachesOnlyTheInternet: by default a client reaches the
// internet and the node's allowed services, and nothing else beside or on
// the node, over IPv4 and IPv6; an operator's allow list opens exactly
// the networks it names.
func TestClientReachesOnlyTheInternet(t *testing.T) {
	w := newWorld(t, nil)
	c, p := w.tunnelClient("10.8.0.2", "fd00:8::2")
	w.sync(p)

	mustReach(t, c.NS, "tcp", internet+":80")
	mustReach(t, c.NS, "udp", internet+":9")
	mustReach(t, c.NS, "tcp", "["+internet6+"]:80")
	if got := w.far["tcp"].Sources(); !slices.Contains(got, netip.MustParseAddr(uplinkNode)) || !slices.Contains(got, netip.MustParseAddr(uplinkNode6)) {
		t.Errorf("the internet host heard %v, want the node's uplink addresses (NAT)", got)
	}
	ping(t, c.NS, "10.8.0.1")
	ping(t, c.NS, "fd00:8::1")
	// The allowed DNS ports on the node, on either family.
	for _, a := range []string{"10.8.0.1:53", "[fd00:8::1]:53"} {
		mustReach(t, c.NS, "tcp", a)
		mustReach(t, c.NS, "udp", a)
	}

	for _, d := range []struct{ network, addr, what string }{
		{"tcp", metadata + ":80", "the cloud metadata service"},
		{"udp", metadata + ":9", "the cloud metadata service"},
		{"tcp", neighbour10 + ":80", "a host in 10/8 beside the node"},
		{"tcp", neighbour172 + ":80", "a host in 172.16/12 beside the node"},
		{"tcp", neighbour192 + ":80", "a host in 192.168/16 beside the node"},
		{"tcp", "[" + neighbourULA + "]:80", "an IPv6 ULA host beside the node"},
		{"tcp", uplinkFar + ":80", "the node's gateway"},
		{"tcp", "10.8.0.1:8080", "a service on all addresses of the node, by its tunnel address"},
		{"tcp", uplinkNode + ":8080", "a service on all addresses of the node, by its uplink address"},
		{"tcp", "[fd00:8::1]:8080", "a service on all addresses of the node, by its IPv6 tunnel address"},
		{"tcp", "[" + uplinkNode6 + "]:8080", "a service on all addresses of the node, by its IPv6 uplink address"},
		{"tcp", "10.8.0.1:54", "a port the node has open but does not allow"},
		{"udp", "10.8.0.1:54", "a port the node has open but does not allow"},
		{"udp", "[fd00:8::1]:54", "a port the node has open but does not allow"},
	} {
		mustNotReach(t, c.NS, d.network, d.addr, d.what)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.NS.Ping(ctx, metadata, 2); err == nil {
		t.Errorf("a client pinged %s through the tunnel", metadata)
	}

	// The operator routes 10.20/16 and fd20::/64 on purpose.
	cfg := w.cfg
	cfg.AllowPrivate = []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("fd20::/64")}
	if err := w.link.Reconfigure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	mustReach(t, c.NS, "tcp", neighbour10+":80")
	mustReach(t, c.NS, "tcp", "["+neighbourULA+"]:80")
	mustNotReach(t, c.NS, "tcp", neighbour192+":80", "a private host outside the allow list")
	mustNotReach(t, c.NS, "tcp", metadata+":80", "the cloud metadata service, with an allow list")
}

// TestSpoofedSourcesDoNotLeave: a peer whose allowed IPs route
// 128.0.0.0/1 can send from any address in it; those packets are dropped
// at the node, while its pool address still leaves NATed. Marked as a
// routed subnet, the same source is forwarded, un-NATed.
func TestSpoofedSourcesDoNotLeave(t *testing.T) {
	w := newWorld(t, nil)
	c, p := w.tunnelClient("10.8.0.3", "fd00:8::3", "128.0.0.0/1", "2001:db8:99::/48")
	w.sync(p)
	c.NS.MustRun(t, "ip", "addr", "add", spoofed+"/32", "dev", c.Iface)
	c.NS.MustRun(t, "ip", "-6", "addr", "add", "2001:db8:99::5/128", "dev", c.Iface, "nodad")
	udp := w.far["udp"]
	mustReach(t, c.NS, "udp", internet+":9")

	// sendSpoofed sends from the spoofed sources, then from the pool:
	// once the pool's datagrams are heard, the spoofed ones, sent first on
	// the same path, would have been too.
	sendSpoofed := func() {
		t.Helper()
		for range 3 {
			c.NS.Reach("udp", spoofed, internet+":9")
			c.NS.Reach("udp", "2001:db8:99::5", "["+internet6+"]:9")
		}
		testkit.Eventually(t, 20*time.Second, func() error { return c.NS.Reach("udp", "10.8.0.3", internet+":9") })
		testkit.Eventually(t, 20*time.Second, func() error { return c.NS.Reach("udp", "fd00:8::3", "["+internet6+"]:9") })
	}
	sendSpoofed()
	for _, a := range udp.Sources() {
		if a == netip.MustParseAddr(spoofed) || a == netip.MustParseAddr("2001:db8:99::5") {
			t.Fatalf("a spoofed source left the node un-NATed: the internet host heard %v", a)
		}
		if a != netip.MustParseAddr(uplinkNode) && a != netip.MustParseAddr(uplinkNode6) {
			t.Errorf("the internet host heard %v, want only the node's NAT addresses", a)
		}
	}

	cfg := w.cfg
	cfg.RoutedSubnets = []netip.Prefix{netip.MustParsePrefix("128.0.0.0/1"), netip.MustParsePrefix("2001:db8:99::/48")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.link.Reconfigure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	sendSpoofed()
	got := udp.Sources()
	if !slices.Contains(got, netip.MustParseAddr(spoofed)) || !slices.Contains(got, netip.MustParseAddr("2001:db8:99::5")) {
		t.Errorf("routed subnets were not forwarded as they are: the internet host heard %v", got)
	}
}

// chainRules are the rules of one chain in iptables-save output.
func chainRules(save, chain string) []string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, strings.TrimPrefix(l, "-A "+chain+" "))
		}
	}
	return out
}

func TestFirewallRulesLayout(t *testing.T) {
	cfg := Config{
		Interface: "wg0", Address: netip.MustParsePrefix("10.8.0.1/16"), Isolation: true,
		AllowPrivate:  []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("fd00:1::/48")},
		AllowLocal:    []Service{{Proto: "udp", From: 53, To: 53}, {Proto: "tcp", From: 8000, To: 8100}},
		RoutedSubnets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
	}
	r := fwRules(cfg, ipv4, "eth0")
	join := func(rs [][]string) []string {
		out := make([]string, len(rs))
		for i, x := range rs {
			out[i] = strings.Join(x, " ")
		}
		return out
	}
	fwd := join(r[chainForward])
	if fwd[0] != "-i wg0 -j WAYLUME-SOURCE" || fwd[1] != "-i wg0 -o wg0 -j DROP" || fwd[2] != "-i wg0 -d 10.20.0.0/16 -j ACCEPT" {
		t.Errorf("forward starts %q", fwd[:3])
	}
	for _, want := range []string{"-i wg0 -d 169.254.0.0/16 -j DROP", "-i wg0 -d 100.64.0.0/10 -j DROP", "-i wg0 -d 172.16.0.0/12 -j DROP"} {
		if !slices.Contains(fwd, want) {
			t.Errorf("forward lacks %q", want)
		}
	}
	if slices.Contains(fwd, "-i wg0 -d fd00:1::/48 -j ACCEPT") {
		t.Error("an IPv6 allowance in the IPv4 chain")
	}
	if got := join(r[chainSource]); !slices.Equal(got, []string{"-s 10.8.0.0/16 -j RETURN", "-s 192.0.2.0/24 -j RETURN", "-j DROP"}) {
		t.Errorf("source chain %q", got)
	}
	in := join(r[chainInput])
	for _, want := range []string{"-i wg0 -p udp -m udp --dport 53 -j ACCEPT", "-i wg0 -p tcp -m tcp --dport 8000:8100 -j ACCEPT"} {
		if !slices.Contains(in, want) {
			t.Errorf("input lacks %q: %q", want, in)
		}
	}
	if in[len(in)-1] != "-i wg0 -j DROP" {
		t.Errorf("input does not end in a drop: %q", in)
	}
	// IPv6 without a pool: only drops, nothing to NAT.
	r6 := fwRules(cfg, ipv6, "eth0")
	if got := join(r6[chainSource]); !slices.Equal(got, []string{"-j DROP"}) || len(r6[chainPost]) != 0 {
		t.Errorf("IPv6 without a pool: source %q, postrouting %q", got, r6[chainPost])
	}
	fwd6 := join(r6[chainForward])
	for _, want := range []string{"-i wg0 -d fd00:1::/48 -j ACCEPT", "-i wg0 -d fc00::/7 -j DROP", "-i wg0 -d 64:ff9b::a9fe:0/112 -j DROP"} {
		if !slices.Contains(fwd6, want) {
			t.Errorf("IPv6 forward lacks %q", want)
		}
	}
}

func TestParseServices(t *testing.T) {
	got, err := ParseServices(" udp/53, TCP/53,,tcp/8000-8100 ")
	want := []Service{{"udp", 53, 53}, {"tcp", 53, 53}, {"tcp", 8000, 8100}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseServices = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"53", "udp/", "udp/0", "udp/70000", "icmp/1", "tcp/9-8", "tcp/a-b"} {
		if _, err := ParseServices(bad); !errors.Is(err, ErrBadService) {
			t.Errorf("ParseServices(%q) = %v, want ErrBadService", bad, err)
		}
	}
	if got, err := ParseServices(""); err != nil || got != nil {
		t.Errorf(`ParseServices("") = %v, %v`, got, err)
	}
}
