package netctl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/waylume/waylume-node/internal/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// iperfWithin runs iperf3 through the tunnel and checks the received rate
// is within 10% of wantKbps; under CPU contention from other tests a low
// figure is measured once more before failing.
func iperfWithin(t *testing.T, c *netns.WGClient, server string, reverse bool, wantKbps int64) {
	t.Helper()
	dir := map[bool]string{true: "download", false: "upload"}[reverse]
	var got float64
	for attempt := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		res, err := netns.Iperf(ctx, c.NS, server, 5201, 4*time.Second, reverse)
		cancel()
		if err != nil {
			t.Fatalf("iperf3 %s: %v", dir, err)
		}
		got = res.ReceivedBitsPerSecond / 1000
		ratio := got / float64(wantKbps)
		t.Logf("%s limit %d kbit/s: measured %.0f kbit/s (%.1f%%), attempt %d", dir, wantKbps, got, ratio*100, attempt+1)
		if ratio >= 0.9 && ratio <= 1.1 {
			return
		}
		if ratio > 1.1 {
			break // too fast is never contention
		}
	}
	t.Errorf("%s limit %d kbit/s: measured %.0f kbit/s, want within 10%%", dir, wantKbps, got)
}

func TestShapingAccuracy(t *testing.T) {
	netns.Require(t, "iperf3", "ss")
	b := newBed(t, nil)
	c, peer := b.client("10.8.3.7")
	b.sync(peer)
	ping(t, c.NS, "10.8.0.1")
	netns.StartIperfServer(t, b.node, "10.8.0.1", 5201)

	for _, kbps := range []int64{10_000, 50_000} {
		peer.DownloadKbps, peer.UploadKbps = kbps, kbps
		b.sync(peer)
		if s := statsOf(t, b.link, peer.PublicKey); s.DownloadKbps != kbps || s.UploadKbps != kbps {
			t.Fatalf("Stats limits = %d/%d, want %d", s.DownloadKbps, s.UploadKbps, kbps)
		}
		iperfWithin(t, c, "10.8.0.1", true, kbps)
		iperfWithin(t, c, "10.8.0.1", false, kbps)
	}

	// The traffic went through this peer's classes, not around them.
	for _, d := range b.link.tc.dirs {
		cls := classOf(t, b.link, d, netip.MustParseAddr("10.8.3.7"))
		if cls == nil || cls.Statistics == nil || cls.Statistics.Basic.Packets < 1000 {
			t.Errorf("%s class of the peer saw too few packets: %+v", d.name, cls)
		}
	}
}

func classOf(t *testing.T, l *Link, d direction, a netip.Addr) *netlink.HtbClass {
	t.Helper()
	cs, err := l.nl.ClassList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if h, ok := c.(*netlink.HtbClass); ok && h.Handle == l.tc.layout.classID(a) {
			return h
		}
	}
	return nil
}

// filterOf is a's filter in its shard's qdisc.
func filterOf(t *testing.T, l *Link, d direction, a netip.Addr) *netlink.U32 {
	t.Helper()
	fs, err := l.nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, netlink.MakeHandle(l.tc.layout.shard(a), 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok && u.ClassId == l.tc.layout.classID(a) {
			return u
		}
	}
	return nil
}

func TestLimitChangeTouchesOnlyThatPeer(t *testing.T) {
	b := newBed(t, nil)
	a := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.1.10/32"), DownloadKbps: 1000, UploadKbps: 2000}
	o := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.1.11/32"), DownloadKbps: 3000, UploadKbps: 4000}
	b.sync(a, o)
	type snap struct {
		Class  *netlink.HtbClass
		Filter *netlink.U32
	}
	take := func(p Peer) []snap {
		var out []snap
		for _, d := range b.link.tc.dirs {
			addr, _ := p.ShapingAddr()
			out = append(out, snap{classOf(t, b.link, d, addr), filterOf(t, b.link, d, addr)})
		}
		return out
	}
	otherBefore, aBefore := take(o), take(a)
	for _, s := range append(otherBefore, aBefore...) {
		if s.Class == nil || s.Filter == nil {
			t.Fatalf("missing class or filter: %+v", s)
		}
	}

	a.DownloadKbps = 5000
	ops := b.link.tc.ops
	calls := b.wg.configures.Load()
	b.sync(a, o)
	if got := b.link.tc.ops - ops; got != 1 {
		t.Errorf("changing one download limit made %d tc changes, want 1", got)
	}
	if got := b.wg.configures.Load() - calls; got != 0 {
		t.Errorf("a limit change sent %d ConfigureDevice calls, want 0", got)
	}
	if diff := cmp.Diff(otherBefore, take(o)); diff != "" {
		t.Errorf("the other peer's class/filter changed (-before +after):\n%s", diff)
	}
	aAfter := take(a)
	if got := aAfter[0].Class.Rate * 8 / 1000; got != 5000 {
		t.Errorf("changed peer's download class rate = %d kbit/s, want 5000", got)
	}
	if diff := cmp.Diff(aBefore[0].Filter, aAfter[0].Filter); diff != "" {
		t.Errorf("changed peer's filter was rewritten:\n%s", diff)
	}
	if diff := cmp.Diff(aBefore[1], aAfter[1]); diff != "" {
		t.Errorf("changed peer's upload side changed:\n%s", diff)
	}

	// Dropping the limit removes exactly that peer's class and filter.
	a.DownloadKbps, a.UploadKbps = 0, 0
	b.sync(a, o)
	for _, d := range b.link.tc.dirs {
		if classOf(t, b.link, d, netip.MustParseAddr("10.8.1.10")) != nil || filterOf(t, b.link, d, netip.MustParseAddr("10.8.1.10")) != nil {
			t.Errorf("%s: unlimited peer still has a class or filter", d.name)
		}
	}
	if diff := cmp.Diff(otherBefore, take(o)); diff != "" {
		t.Errorf("the other peer's class/filter changed (-before +after):\n%s", diff)
	}
}

// TestFilterLayout reads the installed tree back with tc and checks
// selectors, hash masks, bucket placement and classes in the root and in
// the peer's shard, for a /16, a /14 and a /8 pool. A wrong offset, mask,
// table, bucket, node or class fails it.
func TestFilterLayout(t *testing.T) {
	for _, tc := range []struct {
		pool, peer string
		shard      string
		want       map[string][]string // "device parent" -> lines that must appear (substrings)
	}{{
		pool: "10.8.0.1/16", peer: "10.8.3.7", shard: "107:",
		want: map[string][]string{
			"download 2:": {
				"fh 800::1 order 1 key ht 800 bkt 0 link 1: not_in_hw \n  match 0a080000/ffff0000 at 16\n    hash mask 0000ff00 at 16 ",
				"fh 1:3:1 order 1 key ht 1 bkt 3 link 103: not_in_hw \n  match 0a080300/ffffff00 at 16\n    hash mask 000000ff at 16 ",
				"fh 103:7:1 order 1 key ht 103 bkt 7 *flowid 2:107 not_in_hw \n  match 0a080307/ffffffff at 16",
			},
			"download 107:": {
				"fh 800::1 order 1 key ht 800 bkt 0 link 1: not_in_hw \n  match 0a080000/ffff0000 at 16\n    hash mask 0000ff00 at 16 ",
				"fh 1:3:1 order 1 key ht 1 bkt 3 *flowid 107:4 not_in_hw \n  match 0a080307/ffffffff at 16",
			},
			"upload 2:": {
				"fh 800::1 order 1 key ht 800 bkt 0 link 1: not_in_hw \n  match 0a080000/ffff0000 at 12\n    hash mask 0000ff00 at 12 ",
				"fh 103:7:1 order 1 key ht 103 bkt 7 *flowid 2:107 not_in_hw \n  match 0a080307/ffffffff at 12",
			},
			"upload 107:": {
				"fh 1:3:1 order 1 key ht 1 bkt 3 *flowid 107:4 not_in_hw \n  match 0a080307/ffffffff at 12",
			},
		},
	}, {
		pool: "10.12.0.1/14", peer: "10.13.5.9", shard: "109:",
		want: map[string][]string{
			"download 2:": {
				"fh 800::1 order 1 key ht 800 bkt 0 link 1: not_in_hw \n  match 0a0c0000/fffc0000 at 16\n    hash mask 0000ff00 at 16 ",
				"fh 1:5:1 order 1 key ht 1 bkt 5 link 105: not_in_hw \n  match 0a0c0500/fffcff00 at 16\n    hash mask 000000ff at 16 ",
				"fh 105:9:2 order 2 key ht 105 bkt 9 *flowid 2:109 not_in_hw \n  match 0a0d0509/ffffffff at 16",
			},
			"download 109:": {
				"fh 1:5:2 order 2 key ht 1 bkt 5 *flowid 109:106 not_in_hw \n  match 0a0d0509/ffffffff at 16",
			},
		},
	}, {
		pool: "10.0.0.1/8", peer: "10.255.254.9", shard: "109:",
		want: map[string][]string{
			"download 2:": {
				"fh 800::1 order 1 key ht 800 bkt 0 link 1: not_in_hw \n  match 0a000000/ff000000 at 16\n    hash mask 0000ff00 at 16 ",
				"fh 1:fe:1 order 1 key ht 1 bkt fe link 1fe: not_in_hw \n  match 0a00fe00/ff00ff00 at 16\n    hash mask 000000ff at 16 ",
				"fh 1fe:9:100 order 256 key ht 1fe bkt 9 *flowid 2:109 not_in_hw \n  match 0afffe09/ffffffff at 16",
			},
			"download 109:": {
				"fh 1:fe:100 order 256 key ht 1 bkt fe *flowid 109:8000 not_in_hw \n  match 0afffe09/ffffffff at 16",
			},
		},
	}} {
		t.Run(tc.pool, func(t *testing.T) {
			b := newBed(t, func(c *Config) { c.Address = netip.MustParsePrefix(tc.pool) })
			p := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes(tc.peer + "/32"), DownloadKbps: 1000, UploadKbps: 1000}
			b.sync(p)
			devs := map[string]string{"download": b.cfg.Interface, "upload": ifbName(b.cfg.Interface)}
			for where, lines := range tc.want {
				dir, parent, _ := strings.Cut(where, " ")
				out := b.node.MustRun(t, "tc", "filter", "show", "dev", devs[dir], "parent", parent)
				out = strings.ReplaceAll(out, "filter protocol ip pref 10 u32 chain 0 ", "")
				for _, l := range lines {
					if !strings.Contains(out, l) {
						t.Errorf("%s filters lack\n%s\n--- got:\n%s", where, l, firstLines(out, 40))
					}
				}
			}
			for _, dev := range devs {
				out := b.node.MustRun(t, "tc", "qdisc", "show", "dev", dev)
				if !strings.Contains(out, "qdisc htb 2: root") || !strings.Contains(out, "qdisc htb "+tc.shard+" parent 2:"+strings.TrimSuffix(tc.shard, ":")) {
					t.Errorf("%s qdiscs lack the root 2: or the shard %s:\n%s", dev, tc.shard, out)
				}
			}
		})
	}
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	if len(l) > n {
		l = append(l[:n], fmt.Sprintf("... (%d more lines)", strings.Count(s, "\n")-n))
	}
	return strings.Join(l, "\n")
}

// Every peer of any pool the schema allows has its own class: addresses
// that share their low 16 bits (which once shared a class id) and the
// extremes of a /8 each get their class with their own rate, whatever
// order they are applied in.
func TestWidePoolClassesAreUnique(t *testing.T) {
	b := newBed(t, func(c *Config) { c.Address = netip.MustParsePrefix("10.0.0.1/8") })
	addrs := []string{"10.8.0.5", "10.9.0.5", "10.0.0.2", "10.255.255.254", "10.255.254.5", "10.127.255.5"}
	var peers []Peer
	for i, a := range addrs {
		peers = append(peers, Peer{
			PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes(a + "/32"),
			DownloadKbps: int64(1000 * (i + 1)), UploadKbps: int64(500 * (i + 1)),
		})
	}
	backward := slices.Clone(peers)
	slices.Reverse(backward)
	for _, order := range [][]Peer{peers, backward} {
		b.sync(order...)
		seen := map[uint32]string{}
		for i, p := range peers {
			a, _ := p.ShapingAddr()
			for dir, d := range b.link.tc.dirs {
				cls := classOf(t, b.link, d, a)
				want := []int64{p.DownloadKbps, p.UploadKbps}[dir]
				if cls == nil || int64(cls.Rate*8/1000) != want {
					t.Fatalf("%s %s class = %+v, want %d kbit/s", addrs[i], d.name, cls, want)
				}
				if f := filterOf(t, b.link, d, a); f == nil || f.Sel.Keys[0].Val != addrU32(a) {
					t.Errorf("%s %s: no shard filter of its own: %+v", addrs[i], d.name, f)
				}
				if o, dup := seen[cls.Handle]; dup && dir == 0 {
					t.Errorf("%s and %s share class %x", o, addrs[i], cls.Handle)
				}
				seen[cls.Handle] = addrs[i]
			}
		}
		b.sync() // remove all, then apply in the other order
	}
}

// A limited peer is never on WireGuard without its classes and filters:
// when they cannot be installed (the download HTB root is gone here), a
// new limited peer is not added and a served one given limits is cut, each
// failing with ErrShaping and a reason for its status; once shaping works
// again the next apply serves both, limited.
func TestLimitsFailClosed(t *testing.T) {
	b := newBed(t, nil)
	c, served := b.client("10.8.3.7")
	b.sync(served)
	ping(t, c.NS, "10.8.0.1")
	fresh := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.3.8/32"), DownloadKbps: 1000, UploadKbps: 1000}

	b.node.MustRun(t, "tc", "qdisc", "del", "dev", b.cfg.Interface, "root")
	served.DownloadKbps, served.UploadKbps = 2000, 2000
	failed, err := b.link.SyncPeers(context.Background(), []Peer{served, fresh})
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]Peer{"served": served, "fresh": fresh} {
		var r interface{ PeerReason() string }
		if !errors.Is(failed[p.PublicKey], ErrShaping) || !errors.As(failed[p.PublicKey], &r) || !strings.HasPrefix(r.PeerReason(), "shaping: download") {
			t.Errorf("%s peer: failed with %v, want ErrShaping with a download reason", name, failed[p.PublicKey])
		}
	}
	devPeers := map[wgtypes.Key]PeerStats{}
	st, err := b.link.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		devPeers[s.PublicKey] = s
	}
	if _, ok := devPeers[fresh.PublicKey]; ok {
		t.Error("a peer whose limits failed was added to WireGuard")
	}
	if s, ok := devPeers[served.PublicKey]; !ok || len(s.AllowedIPs) != 0 {
		t.Errorf("the served peer whose limits failed holds %v, want it cut", s.AllowedIPs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.NS.Ping(ctx, "10.8.0.1", 2); err == nil {
		t.Error("a cut peer still reaches the node")
	}

	if err := b.link.tc.setup(b.link.ifindex); err != nil {
		t.Fatal(err)
	}
	b.sync(served, fresh)
	ping(t, c.NS, "10.8.0.1")
	for _, p := range []Peer{served, fresh} {
		if s := statsOf(t, b.link, p.PublicKey); s.DownloadKbps != p.DownloadKbps || s.UploadKbps != p.UploadKbps || len(s.AllowedIPs) != 1 {
			t.Errorf("after repair: %+v, want served with %d/%d kbit/s", s, p.DownloadKbps, p.UploadKbps)
		}
	}
}

// Adding one limited peer, changing its limit and removing it cost the
// same kernel operations with 100 and with 3,000 peers installed: a class
// and two filters per direction, one class change, and the same back.
func TestIncrementalShapingIsConstant(t *testing.T) {
	b := newBed(t, nil)
	peers := manyPeers(t, 3000)
	for _, n := range []int{100, 3000} {
		b.sync(peers[:n]...)
		extra := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.200.7/32"), DownloadKbps: 1000, UploadKbps: 1000}
		for _, step := range []struct {
			name  string
			peers []Peer
			want  int
			edit  func()
		}{
			{"add", append(peers[:n:n], extra), 6, nil},
			{"change", nil, 1, func() { extra.DownloadKbps = 2000 }},
			{"remove", peers[:n], 6, nil},
		} {
			if step.edit != nil {
				step.edit()
				step.peers = append(peers[:n:n], extra)
			}
			ops := b.link.tc.ops
			b.sync(step.peers...)
			if got := b.link.tc.ops - ops; got != step.want {
				t.Errorf("%d peers installed: %s made %d tc changes, want %d", n, step.name, got, step.want)
			}
		}
	}
}

// IPv6 traffic of a limited peer goes through the class its IPv4 address
// keys, both ways: a 10/5 Mbit/s peer moves 10/5 Mbit/s over IPv6 too.
func TestIPv6ShapedBySameClasses(t *testing.T) {
	netns.Require(t, "iperf3", "ss")
	b := newBed(t, func(c *Config) { c.Address6 = netip.MustParsePrefix("fd00:8::1/64") })
	c, peer := b.client("10.8.3.7")
	c.NS.MustRun(t, "wg", "set", c.Iface, "peer", b.cfg.PrivateKey.PublicKey().String(), "allowed-ips", "10.8.0.0/16,fd00:8::/64")
	c.NS.MustRun(t, "ip", "-6", "addr", "add", "fd00:8::307/128", "dev", c.Iface, "nodad")
	c.NS.MustRun(t, "ip", "-6", "route", "replace", "fd00:8::/64", "dev", c.Iface)
	peer.AllowedIPs = append(peer.AllowedIPs, netip.MustParsePrefix("fd00:8::307/128"))
	peer.DownloadKbps, peer.UploadKbps = 10_000, 5_000
	b.sync(peer)
	ping(t, c.NS, "fd00:8::1")
	netns.StartIperfServer(t, b.node, "fd00:8::1", 5201)
	iperfWithin(t, c, "fd00:8::1", true, 10_000)
	iperfWithin(t, c, "fd00:8::1", false, 5_000)

	a := netip.MustParseAddr("10.8.3.7")
	for _, d := range b.link.tc.dirs {
		cls := classOf(t, b.link, d, a)
		if cls == nil || cls.Statistics == nil || cls.Statistics.Basic.Packets < 1000 {
			t.Errorf("%s class of the peer saw too few packets from IPv6 traffic: %+v", d.name, cls)
		}
	}
	// The same classes read back after a restart of the mirror, with the
	// IPv6 address in them: re-applying changes nothing.
	if err := b.link.tc.load(); err != nil {
		t.Fatal(err)
	}
	ops := b.link.tc.ops
	b.sync(peer)
	if got := b.link.tc.ops - ops; got != 0 {
		t.Errorf("re-applying after a reread made %d tc changes, want 0", got)
	}
	// Dropping the IPv6 address takes its filters out, and only them.
	peer.AllowedIPs = peer.AllowedIPs[:1]
	b.sync(peer)
	if got := b.link.tc.ops - ops; got != 4 {
		t.Errorf("dropping the IPv6 address made %d tc changes, want 4 (two filters each way)", got)
	}
	for _, d := range b.link.tc.dirs {
		for _, parent := range []string{"2:", "107:"} {
			out := b.node.MustRun(t, "tc", "filter", "show", "dev", devName(b, d), "parent", parent)
			if strings.Contains(out, "match 00000307/ffffffff") || !strings.Contains(out, "match 0a080307/ffffffff") {
				t.Errorf("%s %s: want the IPv4 filter alone:\n%s", d.name, parent, firstLines(out, 40))
			}
		}
	}
}

func devName(b *bed, d direction) string {
	if d.name == "download" {
		return b.cfg.Interface
	}
	return ifbName(b.cfg.Interface)
}
