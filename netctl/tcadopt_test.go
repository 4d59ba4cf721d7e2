package netctl

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
)

// externalDevice starts a wireguard-go the node does not own in the node
// namespace: the stand-in for a kernel device that outlives the node.
func externalDevice(t *testing.T, node *netns.NS) string {
	t.Helper()
	name := netns.Name("wlx")
	wgproc := node.Start(t, "wireguard-go", "-f", name)
	testkit.Eventually(t, 10*time.Second, func() error {
		_, err := node.Run(context.Background(), "wg", "show", name)
		if exited, perr := wgproc.Exited(); exited {
			t.Fatalf("wireguard-go exited: %v: %s", perr, wgproc.Output())
		}
		return err
	})
	return name
}

// openLogged opens a Link whose log lines (debug and up) go to logs.
func openLogged(t *testing.T, cfg Config, logs *testkit.Buffer) *Link {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Open(ctx, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func kernelConfig(t *testing.T, node *netns.NS, name string) Config {
	return Config{Interface: name, Mode: ModeKernel, PrivateKey: mustKey(t), ListenPort: 51900,
		Address: netip.MustParsePrefix("10.9.0.1/16"), Isolation: true, Netns: node.Path()}
}

// installedClasses is every HTB class of both devices with its rate.
func installedClasses(t *testing.T, l *Link) map[[2]uint32]uint64 {
	t.Helper()
	out := map[[2]uint32]uint64{}
	for _, d := range l.tc.dirs {
		cs, err := l.nl.ClassList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if h, ok := c.(*netlink.HtbClass); ok {
				out[[2]uint32{uint32(d.link), h.Handle}] = h.Rate
			}
		}
	}
	return out
}

// A fresh interface's root qdisc is the kernel's default: replacing it is
// no news (no warning). A root qdisc someone installed is, and warns.
func TestDefaultRootQdiscReplacedQuietly(t *testing.T) {
	node := newNodeNS(t)
	cfg := kernelConfig(t, node, externalDevice(t, node))
	before := node.MustRun(t, "tc", "qdisc", "show", "dev", cfg.Interface)
	var logs testkit.Buffer
	l := openLogged(t, cfg, &logs)
	if strings.Contains(logs.String(), `level=WARN msg="replacing`) {
		t.Errorf("opening a fresh interface (qdiscs %q) warned:\n%s", before, logs.String())
	}
	if !strings.Contains(logs.String(), "replacing the default root qdisc") {
		t.Errorf("no debug line for replacing the default qdisc:\n%s", logs.String())
	}

	node.MustRun(t, "tc", "qdisc", "replace", "dev", ifbName(cfg.Interface), "root", "handle", "5:", "pfifo")
	var again testkit.Buffer
	l.tc.log = slog.New(slog.NewTextHandler(&again, nil))
	if err := l.tc.setup(l.ifindex); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(again.String(), `level=WARN msg="replacing`) || !strings.Contains(again.String(), "qdisc=pfifo") {
		t.Errorf("replacing a foreign pfifo root did not warn:\n%s", again.String())
	}
}

// A node restarted over its sharded tree (kernel mode: the device and the
// tree outlive it) adopts it: opening changes nothing in tc, the limits
// and IPv6 addresses read back, and re-applying the same peers changes
// nothing either.
func TestRestartAdoptsShardedTree(t *testing.T) {
	node := newNodeNS(t)
	cfg := kernelConfig(t, node, externalDevice(t, node))
	b := &bed{t: t, node: node, cfg: cfg}
	b.link = b.open(cfg)
	var peers []Peer
	a := netip.MustParseAddr("10.9.1.0")
	a6 := netip.MustParseAddr("fd00:9::100")
	for i := range 600 {
		ips := []netip.Prefix{netip.PrefixFrom(a, 32)}
		if i%2 == 0 { // half of them shaped over IPv6 too
			ips = append(ips, netip.PrefixFrom(a6, 128))
		}
		peers = append(peers, Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: ips,
			DownloadKbps: int64(1000 + i), UploadKbps: int64(500 + i)})
		a, a6 = a.Next(), a6.Next()
	}
	b.sync(peers...)
	classes := installedClasses(t, b.link)
	if err := b.link.Close(); err != nil {
		t.Fatal(err)
	}

	l2 := b.open(cfg)
	if l2.tc.ops != 0 {
		t.Errorf("adopting the sharded tree made %d tc changes, want 0", l2.tc.ops)
	}
	for _, p := range peers {
		if s := statsOf(t, l2, p.PublicKey); s.DownloadKbps != p.DownloadKbps || s.UploadKbps != p.UploadKbps {
			t.Fatalf("adopted limits %d/%d, want %d/%d", s.DownloadKbps, s.UploadKbps, p.DownloadKbps, p.UploadKbps)
		}
	}
	for _, p := range peers {
		v4, _ := p.ShapingAddr()
		v6, _ := p.ShapingAddr6()
		if got := l2.tc.classes[v4]; got.down6 != v6 || got.up6 != v6 {
			t.Fatalf("%v: adopted IPv6 address %v/%v, want %v", v4, got.down6, got.up6, v6)
		}
	}
	if _, err := l2.SyncPeers(context.Background(), peers); err != nil {
		t.Fatal(err)
	}
	if l2.tc.ops != 0 {
		t.Errorf("re-applying the adopted peers made %d tc changes, want 0", l2.tc.ops)
	}
	after := installedClasses(t, l2)
	if len(after) != len(classes) {
		t.Errorf("%d classes after adoption, %d before", len(after), len(classes))
	}
	for k, rate := range classes {
		if after[k] != rate {
			t.Errorf("class %x: rate %d after adoption, %d before", k[1], after[k], rate)
		}
	}
}

// A device still carrying the flat tree of the previous layout (HTB 1:
// with every class in it) gets the sharded tree once, without a warning:
// the old root goes with its classes and filters, the next sync installs
// the limits, and a later restart adopts the new tree.
func TestPreviousFlatTreeReplacedOnce(t *testing.T) {
	node := newNodeNS(t)
	cfg := kernelConfig(t, node, externalDevice(t, node))
	ifb := ifbName(cfg.Interface)
	node.MustRun(t, "ip", "link", "add", ifb, "txqueuelen", "1000", "type", "ifb")
	node.MustRun(t, "ip", "link", "set", ifb, "up")
	node.MustRun(t, "tc", "qdisc", "add", "dev", cfg.Interface, "handle", "ffff:", "ingress")
	node.MustRun(t, "tc", "filter", "add", "dev", cfg.Interface, "parent", "ffff:", "prio", "1", "protocol", "all",
		"u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb)
	for dev, field := range map[string]string{cfg.Interface: "dst", ifb: "src"} {
		node.MustRun(t, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb")
		node.MustRun(t, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10a", "htb", "rate", "1mbit")
		node.MustRun(t, "tc", "filter", "add", "dev", dev, "parent", "1:", "prio", "10", "protocol", "ip",
			"u32", "match", "ip", field, "10.9.1.10/32", "flowid", "1:10a")
	}

	var logs testkit.Buffer
	l := openLogged(t, cfg, &logs)
	if strings.Contains(logs.String(), `level=WARN msg="replacing`) || !strings.Contains(logs.String(), "replacing the previous layout") {
		t.Errorf("replacing the previous layout logged:\n%s", logs.String())
	}
	for _, dev := range []string{cfg.Interface, ifb} {
		out := node.MustRun(t, "tc", "qdisc", "show", "dev", dev)
		if strings.Contains(out, "htb 1:") || !strings.Contains(out, "htb 2: root") {
			t.Errorf("%s still has the flat tree or lacks the new root:\n%s", dev, out)
		}
		if out := node.MustRun(t, "tc", "class", "show", "dev", dev); strings.Contains(out, "1:10a") {
			t.Errorf("%s keeps a class of the flat tree:\n%s", dev, out)
		}
	}
	p := Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.9.1.10/32"), DownloadKbps: 1000, UploadKbps: 1000}
	if failed, err := l.SyncPeers(context.Background(), []Peer{p}); err != nil || len(failed) > 0 {
		t.Fatalf("sync: %v %v", failed, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var again testkit.Buffer
	l2 := openLogged(t, cfg, &again)
	if l2.tc.ops != 0 || strings.Contains(again.String(), "replacing") {
		t.Errorf("the second start changed %d tc pieces and logged:\n%s", l2.tc.ops, again.String())
	}
	if s := statsOf(t, l2, p.PublicKey); s.DownloadKbps != 1000 || s.UploadKbps != 1000 {
		t.Errorf("limits after the second start: %d/%d", s.DownloadKbps, s.UploadKbps)
	}
}
