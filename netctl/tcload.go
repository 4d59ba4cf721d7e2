package netctl

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// pieces are what one direction of one address has installed.
type pieces struct {
	rate               int64 // of its class, kbit/s; 0 = no class
	shardFilter, rootF bool
}

func (p pieces) complete() bool { return p.rate != 0 && p.shardFilter && p.rootF }

// load reads the installed per-peer state back: a peer has a limit in a
// direction when its class and both its filters exist; an address with
// only some of them is stale (an apply replaces or removes them).
func (s *shaper) load() error {
	s.classes, s.stale = map[netip.Addr]limits{}, map[netip.Addr][2]bool{}
	s.shards = [2]map[uint16]bool{{}, {}}
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
			l := s.classes[a]
			if dir == 0 {
				l.down = p.rate
			} else {
				l.up = p.rate
			}
			s.classes[a] = l
		}
	}
	s.loaded = time.Now()
	return nil
}

// read dumps one direction: every class (one dump), the shard qdiscs,
// the root's filters and each shard's.
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
	if err := s.readFilters(d, rootMajor, got, s.layout.rootFilter, func(p *pieces) { p.rootF = true }); err != nil {
		return nil, err
	}
	for shard := range s.shards[dir] {
		if err := s.readFilters(d, shard, got, s.layout.shardFilter, func(p *pieces) { p.shardFilter = true }); err != nil {
			return nil, err
		}
	}
	return got, nil
}

// readFilters marks the addresses whose filter in a qdisc is the one the
// layout puts there.
func (s *shaper) readFilters(d direction, major uint16, got map[netip.Addr]pieces, want func(direction, netip.Addr) *netlink.U32, mark func(*pieces)) error {
	fs, err := s.nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, netlink.MakeHandle(major, 0))
	if err != nil {
		return fmt.Errorf("list filters of qdisc %x (%s): %w", major, d.name, err)
	}
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok || u.ClassId == 0 || u.Sel == nil || len(u.Sel.Keys) != 1 || u.Sel.Keys[0].Mask != ^uint32(0) {
			continue
		}
		a := u32Addr(u.Sel.Keys[0].Val)
		if !s.layout.contains(a) {
			continue
		}
		if w := want(d, a); w.Handle != u.Handle || w.ClassId != u.ClassId {
			continue
		}
		p := got[a]
		mark(&p)
		got[a] = p
	}
	return nil
}
