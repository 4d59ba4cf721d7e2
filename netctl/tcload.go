package netctl

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// pieces are what one direction of one address has installed.
type pieces struct {
	rate               int64 // of its class, kbit/s; 0 = no class
	shardFilter, rootF bool
	v6                 netip.Addr // the IPv6 address its shard's IPv6 filter names
	node6              uint32
	root6              bool
}

func (p pieces) complete() bool { return p.rate != 0 && p.shardFilter && p.rootF }

// load reads the installed per-peer state back: a peer has a limit in a
// direction when its class and both its filters exist, and an IPv6
// address in it when both IPv6 filters exist; an address with only some
// of the IPv4 pieces is stale (an apply replaces or removes them).
func (s *shaper) load() error {
	s.reset()
	s.loaded = time.Time{}
	for dir, d := range s.dirs {
		if d.link == 0 {
			continue // not shaped (read-only inspection of a device without it)
		}
		got, err := s.read(dir)
		if err != nil {
			return err
		}
		for a, p := range got {
			if !p.complete() {
				st := s.stale[a]
				st[dir] = true
				s.stale[a] = st
				continue
			}
			var a6 netip.Addr
			if p.root6 {
				a6 = p.v6
				s.v6node[a6] = p.node6
				s.v6used[uint32(a6.As16()[15])<<12|p.node6] = true
			}
			l := s.classes[a]
			if dir == 0 {
				l.down, l.down6 = p.rate, a6
			} else {
				l.up, l.up6 = p.rate, a6
			}
			s.classes[a] = l
		}
	}
	s.loaded = time.Now()
	return nil
}

// read dumps one direction: every class (one dump), the shard qdiscs,
// each shard's filters and the root's.
func (s *shaper) read(dir int) (map[netip.Addr]pieces, error) {
	d := s.dirs[dir]
	dev := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}
	got := map[netip.Addr]pieces{}
	cs, err := s.nl.ClassList(dev, 0)
	if err != nil {
		return nil, fmt.Errorf("list classes (%s): %w", d.name, err)
	}
	shardClass := map[uint16]bool{}
	for _, c := range cs {
		h, ok := c.(*netlink.HtbClass)
		if !ok {
			continue
		}
		major, minor := netlink.MajorMinor(h.Handle)
		if major == rootMajor {
			shardClass[minor] = true
		} else if a, ok := s.layout.classAddr(h.Handle); ok {
			p := got[a]
			p.rate = max(int64(h.Rate*8/1000), 1)
			got[a] = p
		}
	}
	qs, err := s.nl.QdiscList(dev)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs (%s): %w", d.name, err)
	}
	for _, q := range qs {
		major, minor := netlink.MajorMinor(q.Attrs().Parent)
		if h, ok := q.(*netlink.Htb); ok && major == rootMajor && shardClass[minor] && h.Handle == netlink.MakeHandle(minor, 0) {
			s.shards[dir][minor] = true
		}
	}
	owner6 := map[netip.Addr]netip.Addr{} // IPv6 address -> the IPv4 one whose class it is in
	for shard := range s.shards[dir] {
		if err := s.readShard(dir, shard, got, owner6); err != nil {
			return nil, err
		}
	}
	return got, s.readRoot(dir, got, owner6)
}

// u32Filters lists a qdisc's u32 filters.
func (s *shaper) u32Filters(d direction, major uint16) ([]*netlink.U32, error) {
	fs, err := s.nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, netlink.MakeHandle(major, 0))
	if err != nil {
		return nil, fmt.Errorf("list filters of qdisc %x (%s): %w", major, d.name, err)
	}
	out := make([]*netlink.U32, 0, len(fs))
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok && u.Sel != nil {
			out = append(out, u)
		}
	}
	return out, nil
}

// hostV4 is the IPv4 address a filter matches exactly, if it does.
func (s *shaper) hostV4(u *netlink.U32) (netip.Addr, bool) {
	if u.Protocol != unix.ETH_P_IP || len(u.Sel.Keys) != 1 || u.Sel.Keys[0].Mask != ^uint32(0) {
		return netip.Addr{}, false
	}
	a := u32Addr(u.Sel.Keys[0].Val)
	return a, s.layout.contains(a)
}

// readShard marks the addresses whose filters in a shard are the ones the
// layout puts there.
func (s *shaper) readShard(dir int, shard uint16, got map[netip.Addr]pieces, owner6 map[netip.Addr]netip.Addr) error {
	d := s.dirs[dir]
	fs, err := s.u32Filters(d, shard)
	if err != nil {
		return err
	}
	l := s.layout
	for _, u := range fs {
		if u.ClassId == 0 {
			s.shard6[dir][shard] = s.shard6[dir][shard] || u.Link == htHandle(top6HT)
			continue
		}
		if a, ok := s.hostV4(u); ok {
			if w := l.shardFilter(d, a); w.Handle == u.Handle && w.ClassId == u.ClassId {
				p := got[a]
				p.shardFilter = true
				got[a] = p
			}
			continue
		}
		a6, ok := v6Addr(d, u.Sel.Keys)
		a, mine := l.classAddr(u.ClassId)
		if !ok || !mine || u.Protocol != unix.ETH_P_IPV6 || l.shard(a) != shard {
			continue
		}
		if w := l.shardFilter6(d, a, a6, u.Handle&0xfff); w.Handle == u.Handle {
			p := got[a]
			p.v6, p.node6 = a6, u.Handle&0xfff
			got[a] = p
			owner6[a6] = a
		}
	}
	return nil
}

// readRoot marks the addresses whose filters in the root are the ones the
// layout puts there, and notes whether the root has its IPv6 tables.
func (s *shaper) readRoot(dir int, got map[netip.Addr]pieces, owner6 map[netip.Addr]netip.Addr) error {
	d := s.dirs[dir]
	fs, err := s.u32Filters(d, rootMajor)
	if err != nil {
		return err
	}
	l := s.layout
	for _, u := range fs {
		if u.ClassId == 0 {
			s.v6root[dir] = s.v6root[dir] || u.Link == htHandle(top6HT)
			continue
		}
		if a, ok := s.hostV4(u); ok {
			if w := l.rootFilter(d, a); w.Handle == u.Handle && w.ClassId == u.ClassId {
				p := got[a]
				p.rootF = true
				got[a] = p
			}
			continue
		}
		a6, ok := v6Addr(d, u.Sel.Keys)
		a, owned := owner6[a6]
		if !ok || !owned || u.Protocol != unix.ETH_P_IPV6 {
			continue
		}
		p := got[a]
		if w := l.rootFilter6(d, a, a6, p.node6); w.Handle == u.Handle && w.ClassId == u.ClassId {
			p.root6 = true
			got[a] = p
		}
	}
	return nil
}
