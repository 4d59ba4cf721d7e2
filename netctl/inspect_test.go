package netctl

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Inspect, from outside the Link, reads back the limits the Link set and
// the same peers the Link's own Stats reports.
func TestInspectReadsBackLimits(t *testing.T) {
	b := newBed(t, nil)
	peers := []Peer{
		{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.1.10/32"), DownloadKbps: 3000, UploadKbps: 7000},
		{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.1.11/32"), DownloadKbps: 5000},
		{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.2.12/32", "192.168.5.0/24"), UploadKbps: 2000},
		{PublicKey: mustKey(t).PublicKey(), AllowedIPs: mustPrefixes("10.8.1.13/32"), Keepalive: 25 * time.Second, PresharedKey: mustKey(t)},
	}
	b.sync(peers...)
	ctx := context.Background()
	ins, err := Inspect(ctx, b.cfg.Interface, b.node.Path())
	if err != nil {
		t.Fatal(err)
	}
	if ins.PublicKey != b.cfg.PrivateKey.PublicKey() || ins.ListenPort != b.cfg.ListenPort || ins.ShapingErr != nil {
		t.Fatalf("inspection: %+v", ins)
	}
	got := map[wgtypes.Key]limits{}
	for _, p := range ins.Peers {
		got[p.PublicKey] = limits{down: p.DownloadKbps, up: p.UploadKbps}
	}
	for _, p := range peers {
		if want := (limits{down: p.DownloadKbps, up: p.UploadKbps}); got[p.PublicKey] != want {
			t.Errorf("peer %v: limits %+v, want %+v", p.AllowedIPs, got[p.PublicKey], want)
		}
	}
	stats, err := b.link.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byKey := func(a, b PeerStats) int { return slices.Compare(a.PublicKey[:], b.PublicKey[:]) }
	slices.SortFunc(stats, byKey)
	slices.SortFunc(ins.Peers, byKey)
	opt := cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}, netip.AddrPort{})
	if diff := cmp.Diff(stats, ins.Peers, opt); diff != "" {
		t.Errorf("Inspect and Stats disagree (-stats +inspect):\n%s", diff)
	}

	// Configs are the peers as they were programmed, to the last field.
	byPeer := func(a, b Peer) int { return slices.Compare(a.PublicKey[:], b.PublicKey[:]) }
	want := slices.Clone(peers)
	slices.SortFunc(want, byPeer)
	slices.SortFunc(ins.Configs, byPeer)
	if diff := cmp.Diff(want, ins.Configs, opt); diff != "" {
		t.Errorf("Inspect's configs differ from what was applied (-applied +inspect):\n%s", diff)
	}

	if _, err := Inspect(ctx, "wlnone0", b.node.Path()); !errors.Is(err, ErrNoDevice) {
		t.Errorf("missing interface: %v, want ErrNoDevice", err)
	}
}
