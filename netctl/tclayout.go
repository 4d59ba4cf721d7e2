package netctl

// Where an address of the pool lives in the shaping tree. Every handle
// derives from the address, so the tree can be read back and diffed after
// a restart, and two peers of any pool /8../30 never share one:
//
//	shard  the low 8 bits of the address (9 for a /8); its classes sit
//	       in their own HTB qdisc, major 0x100 + shard
//	minor  the address's offset in the pool shifted past the shard
//	       bits, plus one: unique within the shard (at most 0x8000)
//	node   the offset's bits above 16, plus one: unique among the
//	       addresses sharing a hash bucket (third and last octet)

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	rootMajor      = 2 // the layout's version: 1: was the flat tree of one HTB
	shardMajorBase = 0x100
	filterPrio     = 10
	rootHT         = 0x800 // the u32 root table the kernel creates per filter
	topHT          = 0x001
	leafHTBase     = 0x100 // + the third octet
	divisor        = 256
	// IPv6 has filters of its own (protocol ipv6, prio 11) pointing at the
	// same classes: hashed on the address's last two bytes in the root
	// (top table 2:, leaf tables 200+byte 14), on the last byte in a shard
	// (table 2:). Their nodes are allocated (shaper.v6node): IPv6
	// addresses of a pool share their low bytes freely.
	filterPrio6 = 11
	top6HT      = 0x002
	leaf6HTBase = 0x200
	maxNode     = 0xfff
	// u32Root as a filter's hash table means its own root table: the
	// IPv6 filters' root is the second u32 root of a qdisc, whose handle
	// the kernel picks.
	u32Root = 0xfff00000
)

// layout places addresses of one IPv4 pool in the tree.
type layout struct {
	pool      netip.Prefix
	base      uint32
	shardBits uint
}

func newLayout(pool netip.Prefix) layout {
	l := layout{pool: pool, base: addrU32(pool.Masked().Addr()), shardBits: 8}
	if pool.Bits() < 9 {
		l.shardBits = 9 // keeps minors within 16 bits
	}
	return l
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// contains reports whether a can be shaped: an IPv4 address of the pool.
func (l layout) contains(a netip.Addr) bool { return a.Is4() && l.pool.Contains(a) }

func (l layout) offset(a netip.Addr) uint32 { return addrU32(a) - l.base }

// shard is the major of the HTB qdisc holding a's classes, and the minor
// of the root class that qdisc hangs from.
func (l layout) shard(a netip.Addr) uint16 {
	return uint16(shardMajorBase + addrU32(a)&(1<<l.shardBits-1))
}

func (l layout) minor(a netip.Addr) uint16 { return uint16(l.offset(a)>>l.shardBits + 1) }

// classID is a's leaf class.
func (l layout) classID(a netip.Addr) uint32 { return netlink.MakeHandle(l.shard(a), l.minor(a)) }

// classAddr is the address whose class is h, if h is one of the layout's.
func (l layout) classAddr(h uint32) (netip.Addr, bool) {
	major, minor := netlink.MajorMinor(h)
	shard := uint32(major) - shardMajorBase
	if major < shardMajorBase || shard >= 1<<l.shardBits || minor == 0 {
		return netip.Addr{}, false
	}
	off := uint32(minor-1)<<l.shardBits | (shard-l.base)&(1<<l.shardBits-1)
	a := u32Addr(l.base + off)
	if !l.contains(a) || l.classID(a) != h {
		return netip.Addr{}, false
	}
	return a, true
}

func (l layout) node(a netip.Addr) uint32 { return l.offset(a)>>16 + 1 }

func leafHT(a netip.Addr) uint32 { return leafHTBase + addrU32(a)>>8&0xff }

func htHandle(ht uint32) uint32                 { return ht << 20 }
func nodeHandle(ht, bucket, node uint32) uint32 { return ht<<20 | bucket<<12 | node }

// rootFilter is a's filter in the root qdisc: it sends a's packets to its
// shard.
func (l layout) rootFilter(d direction, a netip.Addr) *netlink.U32 {
	v := addrU32(a)
	ht := leafHT(a)
	return hostFilter(d, rootMajor, nodeHandle(ht, v&0xff, l.node(a)), netlink.MakeHandle(rootMajor, l.shard(a)), prefixKey(netip.PrefixFrom(a, 32), d.field))
}

// shardFilter is a's filter in its shard's qdisc: it picks a's class.
func (l layout) shardFilter(d direction, a netip.Addr) *netlink.U32 {
	v := addrU32(a)
	return hostFilter(d, l.shard(a), nodeHandle(topHT, v>>8&0xff, l.node(a)), l.classID(a), prefixKey(netip.PrefixFrom(a, 32), d.field))
}

func hostFilter(d direction, major uint16, handle, class uint32, key nl.TcU32Key) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: filterAttrs(d, major, handle),
		Hash:        handle &^ 0xfff,
		ClassId:     class,
		Sel:         &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: []nl.TcU32Key{key}},
	}
}

func filterAttrs(d direction, major uint16, handle uint32) netlink.FilterAttrs {
	return netlink.FilterAttrs{
		LinkIndex: d.link, Parent: netlink.MakeHandle(major, 0),
		Priority: filterPrio, Protocol: unix.ETH_P_IP, Handle: handle,
	}
}

func filterAttrs6(d direction, major uint16, handle uint32) netlink.FilterAttrs {
	a := filterAttrs(d, major, handle)
	a.Priority, a.Protocol = filterPrio6, unix.ETH_P_IPV6
	return a
}

// v6Keys match the IPv6 address a exactly at the direction's offset.
func v6Keys(d direction, a netip.Addr) []nl.TcU32Key {
	b := a.As16()
	keys := make([]nl.TcU32Key, 4)
	for i := range keys {
		keys[i] = nl.TcU32Key{Mask: ^uint32(0), Off: d.field6 + int32(4*i),
			Val: uint32(b[4*i])<<24 | uint32(b[4*i+1])<<16 | uint32(b[4*i+2])<<8 | uint32(b[4*i+3])}
	}
	return keys
}

// v6Addr is the address v6Keys matched, if keys are such.
func v6Addr(d direction, keys []nl.TcU32Key) (netip.Addr, bool) {
	if len(keys) != 4 {
		return netip.Addr{}, false
	}
	var b [16]byte
	for i, k := range keys {
		if k.Mask != ^uint32(0) || k.Off != d.field6+int32(4*i) {
			return netip.Addr{}, false
		}
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(k.Val>>24), byte(k.Val>>16), byte(k.Val>>8), byte(k.Val)
	}
	return netip.AddrFrom16(b), true
}

// rootFilter6 sends the packets of a's IPv6 address a6 to a's shard; node
// is a6's (shaper.v6node).
func (l layout) rootFilter6(d direction, a, a6 netip.Addr, node uint32) *netlink.U32 {
	b := a6.As16()
	h := nodeHandle(leaf6HTBase+uint32(b[14]), uint32(b[15]), node)
	return host6Filter(d, rootMajor, h, netlink.MakeHandle(rootMajor, l.shard(a)), a6)
}

// shardFilter6 picks a's class for its IPv6 address a6.
func (l layout) shardFilter6(d direction, a, a6 netip.Addr, node uint32) *netlink.U32 {
	b := a6.As16()
	return host6Filter(d, l.shard(a), nodeHandle(top6HT, uint32(b[15]), node), l.classID(a), a6)
}

func host6Filter(d direction, major uint16, handle, class uint32, a6 netip.Addr) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: filterAttrs6(d, major, handle),
		Hash:        handle &^ 0xfff,
		ClassId:     class,
		Sel:         &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: v6Keys(d, a6)},
	}
}

// link6 is a link in the IPv6 tree, hashing on the address's last word.
func link6(d direction, major uint16, in, bucket, hmask, to uint32) *netlink.U32 {
	handle, hash := nodeHandle(in, bucket, 1), nodeHandle(in, bucket, 0)
	if in == u32Root>>20 {
		handle, hash = 1, u32Root
	}
	return &netlink.U32{
		FilterAttrs: filterAttrs6(d, major, handle),
		Hash:        hash,
		Link:        htHandle(to),
		Sel: &nl.TcU32Sel{Hmask: hmask, Hoff: int16(d.field6 + 12),
			Keys: []nl.TcU32Key{{Off: d.field6}}}, // every IPv6 packet
	}
}

// root6Skeleton is the root qdisc's IPv6 tables and links: every IPv6
// packet hashed on byte 14 into the top table, each bucket linking to a
// leaf table hashed on byte 15.
func root6Skeleton(d direction) []*netlink.U32 {
	t := func(ht uint32) *netlink.U32 {
		return &netlink.U32{FilterAttrs: filterAttrs6(d, rootMajor, htHandle(ht)), Divisor: divisor}
	}
	out := []*netlink.U32{t(top6HT)}
	for b := range uint32(256) {
		out = append(out, t(leaf6HTBase+b))
	}
	out = append(out, link6(d, rootMajor, u32Root>>20, 0, 0x0000ff00, top6HT))
	for b := range uint32(256) {
		out = append(out, link6(d, rootMajor, top6HT, b, 0x000000ff, leaf6HTBase+b))
	}
	return out
}

func prefixKey(p netip.Prefix, off int32) nl.TcU32Key {
	mask := ^uint32(0) << (32 - p.Bits())
	if p.Bits() == 0 {
		mask = 0
	}
	return nl.TcU32Key{Mask: mask, Val: addrU32(p.Addr()) & mask, Off: off}
}

// table and link build the hash tables and the filters leading into them.
func table(d direction, major uint16, ht uint32) *netlink.U32 {
	return &netlink.U32{FilterAttrs: filterAttrs(d, major, htHandle(ht)), Divisor: divisor}
}

func link(d direction, major uint16, in, bucket uint32, key nl.TcU32Key, hmask, to uint32) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: filterAttrs(d, major, nodeHandle(in, bucket, 1)),
		Hash:        nodeHandle(in, bucket, 0),
		Link:        htHandle(to),
		Sel:         &nl.TcU32Sel{Hmask: hmask, Hoff: int16(d.field), Keys: []nl.TcU32Key{key}},
	}
}

// thirdOctets lists the values the third octet takes in the pool.
func (l layout) thirdOctets() (first, last uint32) {
	if l.pool.Bits() <= 16 {
		return 0, 0xff
	}
	end := l.base | ^uint32(0)>>l.pool.Bits()
	return l.base >> 8 & 0xff, end >> 8 & 0xff
}

// rootSkeleton is the root qdisc's tables and links, in the order they
// must be created: the pool hashed on the third octet into the top table,
// each of its buckets linking to a leaf table hashed on the last octet.
func (l layout) rootSkeleton(d direction) []*netlink.U32 {
	first, last := l.thirdOctets()
	out := []*netlink.U32{table(d, rootMajor, topHT)}
	for c := first; c <= last; c++ {
		out = append(out, table(d, rootMajor, leafHTBase+c))
	}
	out = append(out, link(d, rootMajor, rootHT, 0, prefixKey(l.pool, d.field), 0x0000ff00, topHT))
	for c := first; c <= last; c++ {
		key := prefixKey(l.pool, d.field)
		key.Mask |= 0x0000ff00
		key.Val = (l.base | c<<8) & key.Mask
		out = append(out, link(d, rootMajor, topHT, c, key, 0x000000ff, leafHTBase+c))
	}
	return out
}

// shardSkeleton is one shard qdisc's table and link: its addresses all
// share the last octet, so they are hashed on the third.
func (l layout) shardSkeleton(d direction, shard uint16) []*netlink.U32 {
	return []*netlink.U32{
		table(d, shard, topHT),
		link(d, shard, rootHT, 0, prefixKey(l.pool, d.field), 0x0000ff00, topHT),
	}
}

// shard6Skeleton is a shard's IPv6 table and link, hashed on the last
// byte; made with the shard's first IPv6 filter.
func shard6Skeleton(d direction, shard uint16) []*netlink.U32 {
	return []*netlink.U32{
		{FilterAttrs: filterAttrs6(d, shard, htHandle(top6HT)), Divisor: divisor},
		link6(d, shard, u32Root>>20, 0, 0x000000ff, top6HT),
	}
}
