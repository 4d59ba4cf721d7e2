package e2e

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
)

// The world beside the node: an uplink namespace holding the "internet"
// host, the cloud metadata address and hosts in the private ranges; the
// node's default routes and NAT go through it.
const (
	upNode    = "172.31.0.1"
	upFar     = "172.31.0.2"
	upNode6   = "fd77::1"
	upFar6    = "fd77::2"
	internet  = "203.0.113.10"
	internet6 = "2001:db8::10"
	metadata  = "169.254.169.254"
	spoofSrc  = "150.0.0.5" // inside the spoofer's routed 128.0.0.0/1
)

var neighbours = []string{metadata, "10.20.0.10", "172.20.0.10", "192.168.50.10", "fd20::10"}

// TestClientReachesOnlyTheInternet runs the binary with an IPv6 pool and
// DNS allowed on the node: a client reaches the internet host (NATed) and
// the node's DNS ports; not the metadata address, the private and ULA
// hosts beside the node, nor a service on all of the node's addresses. A
// peer routing 128.0.0.0/1 cannot send from an address in it. Restarted
// with an allowed private network and the routed subnet, the node lets
// both through.
func TestClientReachesOnlyTheInternet(t *testing.T) {
	e := newEnv(t)
	e.exec(`UPDATE waylume.nodes SET address6 = 'fd00:8::1/64' WHERE id = $1`, e.nodeID)
	egress, far := e.uplinkWorld(t)
	e.extraEnv = []string{"WAYLUME_EGRESS_INTERFACE=" + egress, "WAYLUME_ALLOW_LOCAL=udp/53,tcp/53"}
	n := e.startNode("userspace", time.Minute, time.Minute)
	e.nodeNS.Serve(t, "tcp", ":8080", ":53")

	ck := newKey(t)
	id, addr := e.addPeer(ck.PublicKey(), "")
	cli := e.client(ck, addr)
	routeAll(t, cli, e.nodePub, addr6Of(t, e, id), append(slices.Clone(neighbours), internet, internet6, upNode, upFar, upNode6)...)
	sk := newKey(t)
	sid, saddr := e.addPeer(sk.PublicKey(), `allowed_ips='{128.0.0.0/1}'`)
	spoofer := e.spoofer(t, sk, saddr)
	waitStatus(t, e, id, "active", "")
	waitStatus(t, e, sid, "active", "")
	e.nodeNS.Serve(t, "udp", net.JoinHostPort(nodeTunnel, "53"))

	answers(t, cli.NS, "tcp", "", net.JoinHostPort(internet, "80"))
	answers(t, cli.NS, "tcp", "", net.JoinHostPort(internet6, "80"))
	answers(t, cli.NS, "tcp", "", net.JoinHostPort(nodeTunnel, "53"))
	answers(t, cli.NS, "udp", "", net.JoinHostPort(nodeTunnel, "53"))
	if got := far.tcp.Sources(); !slices.Contains(got, netip.MustParseAddr(upNode)) || !slices.Contains(got, netip.MustParseAddr(upNode6)) {
		t.Errorf("the internet host heard %v, want the node's uplink addresses", got)
	}
	for _, a := range append(slices.Clone(neighbours), upFar) {
		silent(t, cli.NS, "tcp", net.JoinHostPort(a, "80"))
	}
	for _, a := range []string{nodeTunnel, upNode, "fd00:8::1", upNode6} {
		silent(t, cli.NS, "tcp", net.JoinHostPort(a, "8080"))
	}
	spoofOnce(t, spoofer.NS, saddr)
	if got := far.udp.Sources(); slices.Contains(got, netip.MustParseAddr(spoofSrc)) {
		t.Errorf("a spoofed source left the node un-NATed: the internet host heard %v", got)
	}

	if err := n.stop(t); err != nil {
		t.Fatalf("node exit: %v", err)
	}
	e.extraEnv = append(e.extraEnv, "WAYLUME_ALLOW_PRIVATE=10.20.0.0/16", "WAYLUME_ROUTED_SUBNETS=128.0.0.0/1")
	e.startNode("userspace", time.Minute, time.Minute)
	answers(t, cli.NS, "tcp", "", net.JoinHostPort("10.20.0.10", "80"))
	silent(t, cli.NS, "tcp", net.JoinHostPort("192.168.50.10", "80"))
	silent(t, cli.NS, "tcp", net.JoinHostPort(metadata, "80"))
	spoofOnce(t, spoofer.NS, saddr)
	if got := far.udp.Sources(); !slices.Contains(got, netip.MustParseAddr(spoofSrc)) {
		t.Errorf("a routed subnet's source was not forwarded: the internet host heard %v", got)
	}
}

// addr6Of is the peer's allocated IPv6 address.
func addr6Of(t *testing.T, e *env, id string) string {
	t.Helper()
	var a string
	if err := e.queryRow(`SELECT host(address6) FROM waylume.peers WHERE id = $1`, []any{id}, &a); err != nil {
		t.Fatal(err)
	}
	return a
}

// farSide are the uplink namespace's servers: TCP :80 and UDP :9 on every
// address.
type farSide struct{ tcp, udp *netns.Echo }

// uplinkWorld joins the node's namespace to a new uplink namespace, points
// the node's default routes at it and returns the node's end (the egress
// interface) and the servers there.
func (e *env) uplinkWorld(t *testing.T) (string, farSide) {
	t.Helper()
	up := netns.New(t, "wu")
	nodeEnd, farEnd := netns.Name("vu"), netns.Name("vf")
	netns.Veth(t, e.nodeNS, nodeEnd, upNode+"/24", up, farEnd, upFar+"/24")
	e.nodeNS.MustRun(t, "ip", "-6", "addr", "add", upNode6+"/64", "dev", nodeEnd, "nodad")
	up.MustRun(t, "ip", "-6", "addr", "add", upFar6+"/64", "dev", farEnd, "nodad")
	e.nodeNS.MustRun(t, "ip", "route", "add", "default", "via", upFar)
	e.nodeNS.MustRun(t, "ip", "-6", "route", "add", "default", "via", upFar6)
	var udp []string
	for _, h := range append(slices.Clone(neighbours), internet, internet6) {
		up.MustRun(t, "ip", "addr", "add", hostCIDR(h), "dev", "lo")
		udp = append(udp, net.JoinHostPort(h, "9"))
	}
	return nodeEnd, farSide{tcp: up.Serve(t, "tcp", ":80"), udp: up.Serve(t, "udp", udp...)}
}

func hostCIDR(h string) string {
	if netip.MustParseAddr(h).Is6() {
		return h + "/128"
	}
	return h + "/32"
}

// routeAll gives the client its IPv6 address and routes hosts through its
// tunnel (the harness's client routes only the pool).
func routeAll(t *testing.T, c *netns.WGClient, server wgtypes.Key, addr6 string, hosts ...string) {
	t.Helper()
	c.NS.MustRun(t, "wg", "set", c.Iface, "peer", server.String(), "allowed-ips", "0.0.0.0/0,::/0")
	c.NS.MustRun(t, "ip", "-6", "addr", "add", addr6+"/128", "dev", c.Iface, "nodad")
	c.NS.MustRun(t, "ip", "-6", "route", "add", "fd00:8::/64", "dev", c.Iface)
	for _, h := range hosts {
		c.NS.MustRun(t, "ip", "route", "add", hostCIDR(h), "dev", c.Iface)
	}
}

// spoofer is a client in its own namespace (its routes must not mix with
// the other client's) that also holds spoofSrc.
func (e *env) spoofer(t *testing.T, key wgtypes.Key, addr string) *netns.WGClient {
	t.Helper()
	ns := netns.New(t, "ws")
	netns.Veth(t, e.nodeNS, netns.Name("vs"), "10.98.0.1/24", ns, netns.Name("vt"), "10.98.0.2/24")
	c := netns.StartWGClient(t, ns, netns.WGClientConfig{
		Address: addr + "/32", Route: pool, ServerKey: e.nodePub, PrivateKey: &key,
		Endpoint: "10.98.0.1:" + strconv.Itoa(listenPort),
	})
	ns.MustRun(t, "wg", "set", c.Iface, "peer", e.nodePub.String(), "allowed-ips", "0.0.0.0/0")
	ns.MustRun(t, "ip", "addr", "add", spoofSrc+"/32", "dev", c.Iface)
	ns.MustRun(t, "ip", "route", "add", internet+"/32", "dev", c.Iface)
	return c
}

// spoofOnce sends from spoofSrc over a tunnel known to be up, then from
// the pool address: once the pool's datagram is answered, the spoofed
// ones, sent first on the same path, have arrived if they ever will.
func spoofOnce(t *testing.T, ns *netns.NS, pool string) {
	t.Helper()
	answers(t, ns, "udp", pool, net.JoinHostPort(internet, "9"))
	for range 3 {
		ns.Reach("udp", spoofSrc, net.JoinHostPort(internet, "9"))
	}
	answers(t, ns, "udp", pool, net.JoinHostPort(internet, "9"))
}

// answers waits until the server at addr answers ns (the tunnel may still
// be handshaking).
func answers(t *testing.T, ns *netns.NS, network, laddr, addr string) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() error { return ns.Reach(network, laddr, addr) })
}

// silent checks that addr does not answer ns through the tunnel.
func silent(t *testing.T, ns *netns.NS, network, addr string) {
	t.Helper()
	if err := ns.Reach(network, "", addr); err == nil {
		t.Errorf("a client reached %s %s through the tunnel", network, addr)
	} else if !errors.Is(err, netns.ErrSilent) {
		t.Errorf("%s %s: %v", network, addr, err)
	}
}
