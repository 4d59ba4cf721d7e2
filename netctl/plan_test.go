package netctl

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Pure-logic tests of the diff and chunking; the kernel tests beside them
// prove the same on a real device.

func TestDiffPeer(t *testing.T) {
	k := wgtypes.Key{1}
	psk := wgtypes.Key{2}
	base := Peer{PublicKey: k, AllowedIPs: mustPrefixes("10.8.0.2/32", "fd00::2/128"), Keepalive: 25 * time.Second}
	for _, tc := range []struct {
		name    string
		have    *Peer
		want    Peer
		changed bool
		check   func(t *testing.T, pc wgtypes.PeerConfig)
	}{
		{name: "new", want: base, changed: true, check: func(t *testing.T, pc wgtypes.PeerConfig) {
			if pc.UpdateOnly || !pc.ReplaceAllowedIPs || len(pc.AllowedIPs) != 2 || *pc.PersistentKeepaliveInterval != 25*time.Second {
				t.Errorf("add = %+v", pc)
			}
		}},
		{name: "same, other order and unmasked", have: &base, want: Peer{PublicKey: k, AllowedIPs: mustPrefixes("fd00::2/128", "10.8.0.2/32", "10.8.0.2/32"), Keepalive: 25 * time.Second}},
		{name: "limits only", have: &base, want: func() Peer { p := base; p.DownloadKbps = 5; return p }()},
		{name: "psk added", have: &base, want: func() Peer { p := base; p.PresharedKey = psk; return p }(), changed: true,
			check: func(t *testing.T, pc wgtypes.PeerConfig) {
				if !pc.UpdateOnly || pc.ReplaceAllowedIPs || pc.AllowedIPs != nil || *pc.PresharedKey != psk || pc.PersistentKeepaliveInterval != nil {
					t.Errorf("patch = %+v", pc)
				}
			}},
		{name: "allowed ips", have: &base, want: func() Peer { p := base; p.AllowedIPs = mustPrefixes("10.8.0.3/32"); return p }(), changed: true,
			check: func(t *testing.T, pc wgtypes.PeerConfig) {
				if !pc.UpdateOnly || !pc.ReplaceAllowedIPs || len(pc.AllowedIPs) != 1 || pc.PresharedKey != nil {
					t.Errorf("patch = %+v", pc)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var have Peer
			if tc.have != nil {
				have = *tc.have
			}
			pc, changed := diffPeer(have, tc.have != nil, tc.want)
			if changed != tc.changed {
				t.Fatalf("changed = %v, want %v", changed, tc.changed)
			}
			if tc.check != nil {
				tc.check(t, pc)
			}
		})
	}
}

func TestChunking(t *testing.T) {
	var changes []peerChange
	for i := range 70 {
		changes = append(changes, peerChange{key: wgtypes.Key{byte(i)}, cfgs: []wgtypes.PeerConfig{{AllowedIPs: ipNets(mustPrefixes("10.8.0.2/32"))}}})
	}
	// One peer with 600 allowed IPs: three parts, the first replacing.
	var many []netip.Prefix
	for i := range 600 {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 32))
	}
	big := splitIPs(wgtypes.PeerConfig{PublicKey: wgtypes.Key{99}, ReplaceAllowedIPs: true, AllowedIPs: ipNets(many)})
	if len(big) != 3 || !big[0].ReplaceAllowedIPs || big[1].ReplaceAllowedIPs || !big[1].UpdateOnly || len(big[2].AllowedIPs) != 88 {
		t.Fatalf("split = %d parts", len(big))
	}
	changes = append(changes[:40], append([]peerChange{{key: wgtypes.Key{99}, cfgs: big}}, changes[40:]...)...)
	var sizes [][2]int
	for _, c := range chunkChanges(changes) {
		peers, ips := 0, 0
		for _, ch := range c {
			peers += len(ch.cfgs)
			for _, pc := range ch.cfgs {
				ips += len(pc.AllowedIPs)
			}
		}
		sizes = append(sizes, [2]int{peers, ips})
	}
	want := [][2]int{{32, 32}, {8, 8}, {3, 600}, {30, 30}}
	if diff := cmp.Diff(want, sizes); diff != "" {
		t.Errorf("chunks (peers, ips) (-want +got):\n%s", diff)
	}
}

func TestLayoutHandles(t *testing.T) {
	for _, tc := range []struct {
		pool, addr string
		leaf       uint32
		minor      uint16
		err        bool
	}{
		{"10.8.0.1/16", "10.8.3.7", 0x103, 0x0307, false},
		{"10.8.0.1/16", "10.8.255.254", 0x1ff, 0xfffe, false},
		{"10.8.0.1/24", "10.8.0.9", 0x100, 0x0009, false},
		{"10.12.0.1/14", "10.13.5.9", 0x205, 0x0509, false},
		{"10.8.0.1/13", "10.15.255.1", 0x900, 0xff01, false}, // skips 800:
		{"10.8.0.1/16", "10.9.0.1", 0, 0, true},
		{"10.0.0.1/8", "10.0.1.1", 0, 0, true},
	} {
		l := newLayout(netip.MustParsePrefix(tc.pool).Masked())
		a := netip.MustParseAddr(tc.addr)
		if err := l.check(a); (err != nil) != tc.err {
			t.Errorf("%s in %s: check error %v, want error %v", tc.addr, tc.pool, err, tc.err)
			continue
		}
		if tc.err {
			continue
		}
		if got := l.leafHT(addrU32(a)); got != tc.leaf {
			t.Errorf("%s in %s: leaf table %x, want %x", tc.addr, tc.pool, got, tc.leaf)
		}
		if got := classMinor(a); got != tc.minor {
			t.Errorf("%s: class minor %x, want %x", tc.addr, got, tc.minor)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := t.TempDir() + "/sub/private.key"
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || k1 != k2 {
		t.Fatalf("second load: %v, same key %v", err, k1 == k2)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", st.Mode().Perm(), err)
	}
}
