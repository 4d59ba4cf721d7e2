package netctl

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
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
		pool, addr  string
		class, leaf uint32 // leaf: the root filter's handle
		ok          bool
	}{
		{"10.8.0.1/16", "10.8.3.7", 0x1070004, nodeHandle(0x103, 7, 1), true},
		{"10.8.0.1/16", "10.8.255.254", 0x1fe0100, nodeHandle(0x1ff, 0xfe, 1), true},
		{"10.8.0.1/24", "10.8.0.9", 0x1090001, nodeHandle(0x100, 9, 1), true},
		{"10.8.0.129/25", "10.8.0.130", 0x1820001, nodeHandle(0x100, 0x82, 1), true},
		{"10.12.0.1/14", "10.13.5.9", 0x1090106, nodeHandle(0x105, 9, 2), true},
		{"10.0.0.1/8", "10.0.1.1", 0x2010001, nodeHandle(0x101, 1, 1), true},
		{"10.0.0.1/8", "10.255.255.254", 0x2fe8000, nodeHandle(0x1ff, 0xfe, 0x100), true},
		{"10.8.0.1/16", "10.9.0.1", 0, 0, false},
		{"10.8.0.1/16", "fd00::1", 0, 0, false},
	} {
		l := newLayout(netip.MustParsePrefix(tc.pool).Masked())
		a := netip.MustParseAddr(tc.addr)
		if l.contains(a) != tc.ok {
			t.Errorf("%s in %s: contains %v, want %v", tc.addr, tc.pool, !tc.ok, tc.ok)
			continue
		}
		if !tc.ok {
			continue
		}
		d := direction{field: 16}
		if got := l.classID(a); got != tc.class {
			t.Errorf("%s in %s: class %x, want %x", tc.addr, tc.pool, got, tc.class)
		}
		if got := l.rootFilter(d, a).Handle; got != tc.leaf {
			t.Errorf("%s in %s: root filter %x, want %x", tc.addr, tc.pool, got, tc.leaf)
		}
		if got, ok := l.classAddr(tc.class); !ok || got != a {
			t.Errorf("%s in %s: class %x reads back as %v %v", tc.addr, tc.pool, tc.class, got, ok)
		}
	}
}

// sampleOffsets is every offset of pools up to 2^19 addresses; in wider
// ones every offset of the first and last 2^18 and, for every value of the
// bits above 16, the low 16 bits that are most likely to collide.
func sampleOffsets(pool netip.Prefix) []uint32 {
	size := uint32(1) << (32 - pool.Bits())
	var out []uint32
	if size <= 1<<19 {
		for off := range size {
			out = append(out, off)
		}
		return out
	}
	for off := range uint32(1 << 18) {
		out = append(out, off, size-1-off)
	}
	for hi := uint32(1 << 2); hi < size>>16-4; hi++ {
		for _, lo := range []uint32{0, 1, 2, 0xff, 0x100, 0x1ff, 0x200, 0x201, 0xfffe, 0xffff} {
			out = append(out, hi<<16|lo)
		}
	}
	return out
}

// Every address of the widest pools has its own class and its own filter
// handles, in the root and in its shard.
func TestLayoutUniqueInWidePools(t *testing.T) {
	for _, pool := range []string{"10.0.0.0/8", "10.0.0.0/9", "10.0.0.0/13"} {
		l := newLayout(netip.MustParsePrefix(pool))
		classes := map[uint32]bool{}
		filters := map[[2]uint32]bool{} // qdisc major, handle
		d := direction{field: 16}
		for _, off := range sampleOffsets(l.pool) {
			a := u32Addr(l.base + off)
			c := l.classID(a)
			major, minor := netlink.MajorMinor(c)
			if classes[c] || minor == 0 || major < shardMajorBase || major >= 0x8000 {
				t.Fatalf("%s: %v has class %x (taken or invalid)", pool, a, c)
			}
			classes[c] = true
			for _, f := range []*netlink.U32{l.rootFilter(d, a), l.shardFilter(d, a)} {
				k := [2]uint32{f.Parent, f.Handle}
				if filters[k] || f.Handle&0xfff == 0 || f.Handle&0xfff > 0xfff {
					t.Fatalf("%s: %v has filter %x in %x (taken or invalid)", pool, a, f.Handle, f.Parent)
				}
				filters[k] = true
			}
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
