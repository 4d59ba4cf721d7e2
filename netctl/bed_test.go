package netctl

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// countingWG counts what is sent to the device: the proof that an apply
// with nothing to change sends nothing.
type countingWG struct {
	wgClient
	configures atomic.Int64
}

func (c *countingWG) ConfigureDevice(name string, cfg wgtypes.Config) error {
	c.configures.Add(1)
	return c.wgClient.ConfigureDevice(name, cfg)
}

// bed is a node namespace with a Link on the embedded device, and client
// namespaces each joined to it by a veth pair.
type bed struct {
	t       testing.TB
	node    *netns.NS
	cfg     Config
	link    *Link
	wg      *countingWG
	clients int
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("NETCTL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func mustKey(t testing.TB) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newNodeNS(t testing.TB) *netns.NS {
	netns.Require(t, "wg", "wireguard-go", "iptables", "iptables-restore")
	return netns.New(t, "wln")
}

// newBed opens a Link in a fresh node namespace; edit adjusts the config.
func newBed(t testing.TB, edit func(*Config)) *bed {
	t.Helper()
	return newBedIn(t, newNodeNS(t), edit)
}

// newBedIn is newBed in a namespace the test prepared.
func newBedIn(t testing.TB, node *netns.NS, edit func(*Config)) *bed {
	t.Helper()
	cfg := Config{
		Interface:  netns.Name("wls"),
		Mode:       ModeUserspace,
		PrivateKey: mustKey(t),
		ListenPort: 51820,
		Address:    netip.MustParsePrefix("10.8.0.1/16"),
		Isolation:  true,
		// The throughput tests run iperf3 on the node's tunnel address.
		AllowLocal: []Service{{Proto: "tcp", From: 5201, To: 5201}},
		Netns:      node.Path(),
	}
	if edit != nil {
		edit(&cfg)
	}
	b := &bed{t: t, node: node, cfg: cfg}
	b.link = b.open(cfg)
	return b
}

func (b *bed) open(cfg Config) *Link {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Open(ctx, cfg, testLogger(b.t))
	if err != nil {
		b.t.Fatalf("Open: %v", err)
	}
	b.t.Cleanup(func() { l.Close() })
	cw := &countingWG{wgClient: l.wg}
	l.wg = cw
	if b.link == nil {
		b.wg = cw
	}
	return l
}

// client starts a wireguard-go client in its own namespace, joined to the
// node by a veth pair, with tunnel address addr (e.g. "10.8.0.2").
func (b *bed) client(addr string) (*netns.WGClient, Peer) {
	b.t.Helper()
	b.clients++
	n := b.clients
	cns := netns.New(b.t, "wlc")
	netns.Veth(b.t, b.node, netns.Name("vn"), fmt.Sprintf("10.99.%d.1/24", n), cns, netns.Name("vc"), fmt.Sprintf("10.99.%d.2/24", n))
	c := netns.StartWGClient(b.t, cns, netns.WGClientConfig{
		Address:   addr + "/32",
		Route:     b.cfg.Pool().String(),
		ServerKey: b.cfg.PrivateKey.PublicKey(),
		Endpoint:  fmt.Sprintf("10.99.%d.1:%d", n, b.cfg.ListenPort),
		Keepalive: 1,
	})
	p := Peer{PublicKey: c.Key.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix(addr + "/32")}}
	return c, p
}

func (b *bed) sync(peers ...Peer) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	failed, err := b.link.SyncPeers(ctx, peers)
	if err != nil {
		b.t.Fatalf("SyncPeers: %v", err)
	}
	if len(failed) > 0 {
		b.t.Fatalf("SyncPeers failed peers: %v", failed)
	}
}

func ping(t testing.TB, ns *netns.NS, addr string) {
	t.Helper()
	testkit.Eventually(t, 15*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return ns.Ping(ctx, addr, 1)
	})
}

func statsOf(t testing.TB, l *Link, k wgtypes.Key) PeerStats {
	t.Helper()
	st, err := l.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.PublicKey == k {
			return s
		}
	}
	t.Fatalf("peer %s not in Stats", k)
	return PeerStats{}
}
