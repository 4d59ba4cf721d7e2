package netctl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
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
	cs, err := l.nl.ClassList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, netlink.MakeHandle(htbMajor, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if h, ok := c.(*netlink.HtbClass); ok && h.Handle == netlink.MakeHandle(htbMajor, classMinor(a)) {
			return h
		}
	}
	return nil
}

func filterOf(t *testing.T, l *Link, d direction, a netip.Addr) *netlink.U32 {
	t.Helper()
	fs, err := l.nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, netlink.MakeHandle(htbMajor, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok && u.ClassId == netlink.MakeHandle(htbMajor, classMinor(a)) {
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

// TestFilterLayout reads the installed u32 tree back with tc and checks
// selectors, hash masks and bucket placement for a /16 (two levels) and a
// /14 (three levels) pool. A wrong offset, mask, table or bucket fails it.
func TestFilterLayout(t *testing.T) {
	for _, tc := range []struct {
		pool, peer string
		want       map[string][]string // device -> lines that must appear (substrings)
	}{{
		pool: "10.8.0.1/16", peer: "10.8.3.7",
		want: map[string][]string{
			"download": {
				"fh 800::1 order 1 key ht 800 bkt 0 link 1: not_in_hw \n  match 0a080000/ffff0000 at 16\n    hash mask 0000ff00 at 16 ",
				"fh 1:3:1 order 1 key ht 1 bkt 3 link 103: not_in_hw \n  match 0a080300/ffffff00 at 16\n    hash mask 000000ff at 16 ",
				"fh 103:7:1 order 1 key ht 103 bkt 7 *flowid 1:307 not_in_hw \n  match 0a080307/ffffffff at 16",
			},
			"upload": {
				"fh 800::1 order 1 key ht 800 bkt 0 link 1: not_in_hw \n  match 0a080000/ffff0000 at 12\n    hash mask 0000ff00 at 12 ",
				"fh 103:7:1 order 1 key ht 103 bkt 7 *flowid 1:307 not_in_hw \n  match 0a080307/ffffffff at 12",
			},
		},
	}, {
		pool: "10.12.0.1/14", peer: "10.13.5.9",
		want: map[string][]string{
			"download": {
				"fh 800::1 order 1 key ht 800 bkt 0 link 1: not_in_hw \n  match 0a0c0000/fffc0000 at 16\n    hash mask 00ff0000 at 16 ",
				"fh 1:d:1 order 1 key ht 1 bkt d link 3: not_in_hw \n  match 0a0d0000/ffff0000 at 16\n    hash mask 0000ff00 at 16 ",
				"fh 3:5:1 order 1 key ht 3 bkt 5 link 205: not_in_hw \n  match 0a0d0500/ffffff00 at 16\n    hash mask 000000ff at 16 ",
				"fh 205:9:1 order 1 key ht 205 bkt 9 *flowid 1:509 not_in_hw \n  match 0a0d0509/ffffffff at 16",
			},
		},
	}} {
		t.Run(tc.pool, func(t *testing.T) {
			b := newBed(t, func(c *Config) { c.Address = netip.MustParsePrefix(tc.pool) })
			p := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes(tc.peer + "/32"), DownloadKbps: 1000, UploadKbps: 1000}
			b.sync(p)
			devs := map[string]string{"download": b.cfg.Interface, "upload": ifbName(b.cfg.Interface)}
			for dir, lines := range tc.want {
				out := b.node.MustRun(t, "tc", "filter", "show", "dev", devs[dir], "parent", "1:")
				out = strings.ReplaceAll(out, "filter protocol ip pref 10 u32 chain 0 ", "")
				for _, l := range lines {
					if !strings.Contains(out, l) {
						t.Errorf("%s filters lack\n%s\n--- got:\n%s", dir, l, firstLines(out, 40))
					}
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

// In pools wider than /16 two addresses can share a class id; the second
// one's limits fail loudly instead of sharing the first one's class.
func TestClassCollisionInWidePool(t *testing.T) {
	b := newBed(t, func(c *Config) { c.Address = netip.MustParsePrefix("10.8.0.1/15") })
	first := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.0.5/32"), DownloadKbps: 1000}
	second := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.9.0.5/32"), DownloadKbps: 2000}
	failed, err := b.link.SyncPeers(context.Background(), []Peer{first, second})
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 1 || failed[second.PublicKey] == nil {
		t.Fatalf("failed = %v, want only the second peer", failed)
	}
	if got := classOf(t, b.link, b.link.tc.dirs[0], netip.MustParseAddr("10.8.0.5")); got == nil || got.Rate*8/1000 != 1000 {
		t.Errorf("first peer's class = %+v, want 1000 kbit/s", got)
	}
	if f := filterOf(t, b.link, b.link.tc.dirs[0], netip.MustParseAddr("10.9.0.5")); f != nil && f.Sel.Keys[0].Val == addrU32(netip.MustParseAddr("10.9.0.5")) {
		t.Error("second peer got a filter into the first peer's class")
	}
	// Once the first has let go of its limit, the second gets the class
	// (on the apply after the one that removed the first one's class).
	first.DownloadKbps = 0
	if _, err := b.link.SyncPeers(context.Background(), []Peer{first, second}); err != nil {
		t.Fatal(err)
	}
	b.sync(first, second)
	if got := classOf(t, b.link, b.link.tc.dirs[0], netip.MustParseAddr("10.9.0.5")); got == nil || got.Rate*8/1000 != 2000 {
		t.Errorf("second peer's class = %+v, want 2000 kbit/s", got)
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
