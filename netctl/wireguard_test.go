package netctl

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestHandshakeAndNoChangeReapply(t *testing.T) {
	b := newBed(t, nil)
	c, peer := b.client("10.8.0.2")
	b.sync(peer)
	ping(t, c.NS, "10.8.0.1")

	before := statsOf(t, b.link, peer.PublicKey)
	if before.LastHandshake.IsZero() || before.RxBytes == 0 || !before.Endpoint.IsValid() {
		t.Fatalf("after ping the node sees no session: %+v", before)
	}
	cpeers, err := c.Peers(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	calls, ops := b.wg.configures.Load(), b.link.tc.ops
	b.sync(peer)
	if _, err := b.link.UpdatePeers(context.Background(), []Peer{peer}, nil); err != nil {
		t.Fatal(err)
	}
	if got := b.wg.configures.Load() - calls; got != 0 {
		t.Errorf("re-apply of the same state sent %d ConfigureDevice calls, want 0", got)
	}
	if got := b.link.tc.ops - ops; got != 0 {
		t.Errorf("re-apply of the same state made %d tc changes, want 0", got)
	}

	ping(t, c.NS, "10.8.0.1")
	after := statsOf(t, b.link, peer.PublicKey)
	// A removed and re-added peer starts from zero counters and a new
	// handshake; the same session keeps both.
	if after.RxBytes <= before.RxBytes || !after.LastHandshake.Equal(before.LastHandshake) {
		t.Errorf("session was reset: before %+v after %+v", before, after)
	}
	cafter, err := c.Peers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !cafter[0].LatestHandshake.Equal(cpeers[0].LatestHandshake) {
		t.Errorf("client handshake changed: %v -> %v", cpeers[0].LatestHandshake, cafter[0].LatestHandshake)
	}
	if b.link.Epoch() == "" || !strings.Contains(b.link.Epoch(), ":") {
		t.Errorf("Epoch() = %q", b.link.Epoch())
	}

	// Blocking a peer (quota, expiry) is removing it: its traffic stops.
	if failed, err := b.link.UpdatePeers(context.Background(), nil, []wgtypes.Key{peer.PublicKey}); err != nil || len(failed) > 0 {
		t.Fatalf("remove: %v %v", failed, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.NS.Ping(ctx, "10.8.0.1", 2); err == nil {
		t.Error("a removed peer still reaches the node")
	}
	if st, _ := b.link.Stats(ctx); len(st) != 0 {
		t.Errorf("Stats after removal: %d peers", len(st))
	}
}

func TestPeerChangesAreDiffs(t *testing.T) {
	b := newBed(t, nil)
	var peers []Peer
	for i := range 70 {
		k := mustKey(t)
		peers = append(peers, Peer{PublicKey: k.PublicKey(), AllowedIPs: mustPrefixes("10.8.1." + itoa(i+2) + "/32")})
	}
	calls := b.wg.configures.Load()
	b.sync(peers...)
	// 70 new peers: three calls of at most 32.
	if got := b.wg.configures.Load() - calls; got != 3 {
		t.Errorf("cold apply of 70 peers took %d ConfigureDevice calls, want 3", got)
	}
	// Change one, remove one: one call carrying both.
	peers[5].Keepalive = 25 * time.Second
	removed := peers[69]
	calls = b.wg.configures.Load()
	b.sync(peers[:69]...)
	if got := b.wg.configures.Load() - calls; got != 1 {
		t.Errorf("one change + one removal took %d calls, want 1", got)
	}
	st, err := b.link.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 69 {
		t.Errorf("device has %d peers, want 69", len(st))
	}
	for _, s := range st {
		if s.PublicKey == removed.PublicKey {
			t.Error("removed peer still on the device")
		}
	}
	dev, err := b.link.wg.Device(b.cfg.Interface)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dev.Peers {
		if p.PublicKey == peers[5].PublicKey && p.PersistentKeepaliveInterval != 25*time.Second {
			t.Errorf("keepalive = %v, want 25s", p.PersistentKeepaliveInterval)
		}
	}
}

func TestAdoptExternalDevice(t *testing.T) {
	node := newNodeNS(t)
	name := netns.Name("wlx")
	wgproc := node.Start(t, "wireguard-go", "-f", name)
	testkit.Eventually(t, 10*time.Second, func() error {
		_, err := node.Run(context.Background(), "wg", "show", name)
		if exited, perr := wgproc.Exited(); exited {
			t.Fatalf("wireguard-go exited: %v: %s", perr, wgproc.Output())
		}
		return err
	})
	b := &bed{t: t, node: node}
	b.cfg = Config{Interface: name, Mode: ModeKernel, PrivateKey: mustKey(t), ListenPort: 51900,
		Address: mustPrefixes("10.9.0.1/24")[0], Isolation: true, Netns: node.Path()}
	b.link = b.open(b.cfg)
	if b.link.Userspace() {
		t.Fatal("kernel mode started an embedded device instead of adopting")
	}
	var peers []Peer
	for i := range 3 {
		peers = append(peers, Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.9.0." + itoa(10+i) + "/32"), DownloadKbps: int64(1000 * (i + 1))})
	}
	b.sync(peers...)
	epoch := b.link.Epoch()
	if err := b.link.Close(); err != nil {
		t.Fatal(err)
	}
	if exited, _ := wgproc.Exited(); exited {
		t.Fatal("Close stopped the external device")
	}

	cfg := b.cfg
	cfg.Mode = ModeAuto
	l2 := b.open(cfg)
	cw := l2.wg.(*countingWG)
	st, err := l2.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != len(peers) {
		t.Fatalf("adopted link reports %d peers, want %d", len(st), len(peers))
	}
	for i, p := range peers {
		s := statsOf(t, l2, p.PublicKey)
		if s.DownloadKbps != int64(1000*(i+1)) {
			t.Errorf("peer %d: adopted download limit %d, want %d", i, s.DownloadKbps, 1000*(i+1))
		}
	}
	ops := l2.tc.ops
	if _, err := l2.SyncPeers(context.Background(), peers); err != nil {
		t.Fatal(err)
	}
	if n := cw.configures.Load(); n != 0 {
		t.Errorf("adopting and re-applying the same peers sent %d ConfigureDevice calls", n)
	}
	if l2.tc.ops != ops {
		t.Errorf("adopting and re-applying made %d tc changes", l2.tc.ops-ops)
	}
	if l2.Epoch() != epoch {
		t.Errorf("epoch changed across adoption: %q -> %q", epoch, l2.Epoch())
	}
}

func TestKernelModeCreatesOnlyThroughKernel(t *testing.T) {
	node := newNodeNS(t)
	_, err := Open(context.Background(), Config{Interface: netns.Name("wlk"), Mode: ModeKernel, PrivateKey: mustKey(t),
		Address: mustPrefixes("10.9.0.1/24")[0], Netns: node.Path()}, testLogger(t))
	if err == nil {
		// A kernel with the module: then creation is legitimate.
		t.Skip("this kernel has WireGuard; the failure path cannot be shown")
	}
	if !strings.Contains(err.Error(), "mode kernel") {
		t.Errorf("error does not say why: %v", err)
	}
}

// The mirror is updated in place by every Stats read: a peer removed and
// one changed behind the Link's back must both be noticed there, so the
// next SyncPeers of the same set repairs them (and sends nothing more).
func TestStatsMirrorFollowsDevice(t *testing.T) {
	b := newBed(t, nil)
	var peers []Peer
	for i := range 3 {
		k := mustKey(t)
		peers = append(peers, Peer{PublicKey: k.PublicKey(), AllowedIPs: mustPrefixes("10.8.2." + itoa(i+2) + "/32")})
	}
	b.sync(peers...)
	ctx := context.Background()
	// Behind the Link's back: the inner client, not the Link.
	other := netip.MustParsePrefix("10.8.3.9/32")
	if err := b.wg.wgClient.ConfigureDevice(b.cfg.Interface, wgtypes.Config{Peers: []wgtypes.PeerConfig{
		{PublicKey: peers[0].PublicKey, Remove: true},
		{PublicKey: peers[1].PublicKey, UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{*prefixIPNet(other)}},
	}}); err != nil {
		t.Fatal(err)
	}
	st, err := b.link.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 {
		t.Fatalf("Stats after a removal behind our back: %d peers, want 2", len(st))
	}
	calls := b.wg.configures.Load()
	b.sync(peers...)
	if got := b.wg.configures.Load() - calls; got != 1 {
		t.Errorf("repair sent %d ConfigureDevice calls, want 1 (both peers in one)", got)
	}
	st, err = b.link.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[wgtypes.Key][]netip.Prefix{}
	for _, s := range st {
		got[s.PublicKey] = s.AllowedIPs
	}
	for _, p := range peers {
		if ips, ok := got[p.PublicKey]; !ok || len(ips) != 1 || ips[0] != p.AllowedIPs[0] {
			t.Errorf("peer %s after repair: %v (present %v), want %v", p.PublicKey, ips, ok, p.AllowedIPs)
		}
	}
	calls = b.wg.configures.Load()
	b.sync(peers...)
	if got := b.wg.configures.Load() - calls; got != 0 {
		t.Errorf("no-change sync after repair sent %d ConfigureDevice calls, want 0", got)
	}
}
