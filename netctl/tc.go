package netctl

// Per-peer shaping. Download (node -> client) is shaped by an HTB qdisc on
// the WireGuard interface, keyed by destination address; upload (client ->
// node) by an HTB qdisc on an IFB device that the interface's ingress is
// redirected to (mirred), keyed by source address. Only limited peers get a
// class; everything else is unclassified and leaves through HTB's direct
// queue unshaped.
//
// Classification is u32 hash tables, so a packet costs a fixed number of
// lookups at 10 or 10,000 peers:
//
//	800:  one filter: "address in pool" -> link top table, hash on octet N
//	001:  top table, 256 buckets; for pools up to /16 keyed by the third
//	      octet and linking to a leaf table per /24; for /13../15 keyed by
//	      the second octet and linking to a middle table (002+) per /16
//	100+: leaf tables, one per /24 of the pool, hashed on the last octet;
//	      each bucket holds the one filter "address == peer -> class"
//
// All handles derive from the address: leaf filter htid = 0x100 + index of
// the /24 in the pool, bucket = last octet, node = 1; class minor = the
// address's low 16 bits. So one peer's change touches exactly its own
// class and filter, and the installed state can be read back and diffed
// after a restart. Leaves are HTB's default pfifo (exists on every kernel;
// fq_codel does not here); its limit is the device's txqueuelen.

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	htbMajor     = 1
	filterPrio   = 10
	ingressPrio  = 1
	rootHT       = 0x800
	topHT        = 0x001
	midHTBase    = 0x002
	leafHTBase   = 0x100
	divisor      = 256
	maxQuantum   = 60000
	minQuantum   = 1600
	burstDivisor = 100 // burst = 10 ms of rate
)

// limits are a peer's installed or wanted rates in kbit/s; 0 = none.
type limits struct{ down, up int64 }

// direction is one shaped device: the WireGuard interface for download,
// the IFB for upload, matching the destination or source address.
type direction struct {
	name  string
	link  int
	field int32 // offset of the address in the IPv4 header
}

type shaper struct {
	nl      *netlink.Handle
	log     *slog.Logger
	pool    netip.Prefix
	iface   string
	ifb     string
	layout  layout
	dirs    [2]direction // 0 download, 1 upload
	classes map[netip.Addr]limits
	// owners maps a class minor to the address holding (or about to
	// hold) it. Pools wider than /16 have addresses sharing their low 16
	// bits; the second one asking for limits gets an error instead of
	// silently sharing the first one's class.
	owners map[uint16]netip.Addr
	loaded time.Time // when classes was last read from the kernel
	ops    int       // kernel modifications, counted for tests
}

func newShaper(h *netlink.Handle, cfg Config, log *slog.Logger) *shaper {
	return &shaper{
		nl: h, log: log, pool: cfg.Pool(), iface: cfg.Interface, ifb: ifbName(cfg.Interface),
		layout: newLayout(cfg.Pool()), classes: map[netip.Addr]limits{}, owners: map[uint16]netip.Addr{},
	}
}

// ifbName is the upload device's name: device names are per namespace, so
// it only has to differ from the interface's.
func ifbName(iface string) string {
	n := "ifb-" + iface
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// layout places addresses of a pool in the hash tables.
type layout struct {
	pool   netip.Prefix
	base   uint32
	levels int // 2 up to /16, 3 for /13../15, 0 = pool too large to shape
}

func newLayout(pool netip.Prefix) layout {
	l := layout{pool: pool, base: addrU32(pool.Masked().Addr())}
	switch {
	case pool.Bits() >= 16:
		l.levels = 2
	case pool.Bits() >= 13:
		l.levels = 3
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

func (l layout) leafHT(a uint32) uint32 {
	ht := leafHTBase + (a-l.base)>>8
	if ht >= rootHT { // 800: is the root table
		ht++
	}
	return ht
}

func (l layout) midHT(a uint32) uint32 { return midHTBase + (a>>16 - l.base>>16) }

func (l layout) check(a netip.Addr) error {
	switch {
	case l.levels == 0:
		return fmt.Errorf("pool %v is larger than /13: too large for hashed shaping", l.pool)
	case !a.Is4() || !l.pool.Contains(a):
		return fmt.Errorf("shaping address %v is outside the pool %v", a, l.pool)
	case uint16(addrU32(a)) == 0:
		return fmt.Errorf("shaping address %v has no class handle (low 16 bits are zero)", a)
	}
	return nil
}

func classMinor(a netip.Addr) uint16 { return uint16(addrU32(a)) }

func htHandle(ht uint32) uint32                 { return ht << 20 }
func nodeHandle(ht, bucket, node uint32) uint32 { return ht<<20 | bucket<<12 | node }

func (s *shaper) filterAttrs(d direction, handle uint32) netlink.FilterAttrs {
	return netlink.FilterAttrs{
		LinkIndex: d.link, Parent: netlink.MakeHandle(htbMajor, 0),
		Priority: filterPrio, Protocol: unix.ETH_P_IP, Handle: handle,
	}
}

// skeleton lists the hash tables and link filters the pool needs, in the
// order they must be created.
func (s *shaper) skeleton(d direction) []*netlink.U32 {
	l := s.layout
	if l.levels == 0 {
		return nil
	}
	var out []*netlink.U32
	table := func(ht uint32) {
		out = append(out, &netlink.U32{FilterAttrs: s.filterAttrs(d, htHandle(ht)), Divisor: divisor})
	}
	link := func(inHT, bucket uint32, match netip.Prefix, hmask uint32, to uint32) {
		out = append(out, &netlink.U32{
			FilterAttrs: s.filterAttrs(d, nodeHandle(inHT, bucket, 1)),
			Hash:        nodeHandle(inHT, bucket, 0),
			Link:        htHandle(to),
			Sel: &nl.TcU32Sel{
				Hmask: hmask, Hoff: int16(d.field),
				Keys: []nl.TcU32Key{prefixKey(match, d.field)},
			},
		})
	}
	first, last := l.base, l.base|^uint32(0)>>l.pool.Bits()
	if l.pool.Bits() == 0 {
		last = ^uint32(0)
	}
	table(topHT)
	if l.levels == 3 {
		for a := first; ; a += 1 << 16 {
			table(l.midHT(a))
			if a>>16 == last>>16 {
				break
			}
		}
	}
	for a := first &^ 0xff; ; a += 1 << 8 {
		table(l.leafHT(a))
		if a>>8 == last>>8 {
			break
		}
	}
	if l.levels == 3 {
		link(rootHT, 0, l.pool, 0x00ff0000, topHT)
		for a := first; ; a += 1 << 16 {
			link(topHT, a>>16&0xff, netip.PrefixFrom(u32Addr(a&^0xffff), 16), 0x0000ff00, l.midHT(a))
			if a>>16 == last>>16 {
				break
			}
		}
		for a := first &^ 0xff; ; a += 1 << 8 {
			link(l.midHT(a), a>>8&0xff, netip.PrefixFrom(u32Addr(a), 24), 0x000000ff, l.leafHT(a))
			if a>>8 == last>>8 {
				break
			}
		}
	} else {
		link(rootHT, 0, l.pool, 0x0000ff00, topHT)
		for a := first &^ 0xff; ; a += 1 << 8 {
			link(topHT, a>>8&0xff, netip.PrefixFrom(u32Addr(a), 24), 0x000000ff, l.leafHT(a))
			if a>>8 == last>>8 {
				break
			}
		}
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

func (s *shaper) leafFilter(d direction, a netip.Addr) *netlink.U32 {
	v := addrU32(a)
	ht := s.layout.leafHT(v)
	return &netlink.U32{
		FilterAttrs: s.filterAttrs(d, nodeHandle(ht, v&0xff, 1)),
		Hash:        nodeHandle(ht, v&0xff, 0),
		ClassId:     netlink.MakeHandle(htbMajor, classMinor(a)),
		Sel: &nl.TcU32Sel{
			Flags: nl.TC_U32_TERMINAL,
			Keys:  []nl.TcU32Key{prefixKey(netip.PrefixFrom(a, 32), d.field)},
		},
	}
}

func htbClass(d direction, a netip.Addr, kbps int64) *netlink.HtbClass {
	bps := uint64(kbps) * 1000
	bytesPerSec := bps / 8
	quantum := min(max(bytesPerSec/10, minQuantum), maxQuantum)
	burst := uint32(bytesPerSec/burstDivisor + minQuantum)
	return netlink.NewHtbClass(netlink.ClassAttrs{
		LinkIndex: d.link,
		Parent:    netlink.MakeHandle(htbMajor, 0),
		Handle:    netlink.MakeHandle(htbMajor, classMinor(a)),
	}, netlink.HtbClassAttrs{Rate: bps, Ceil: bps, Buffer: burst, Cbuffer: burst, Quantum: uint32(quantum)})
}

// setup creates what is missing of the qdiscs, the IFB with its redirect,
// and the hash table skeleton on both devices, then reads the installed
// classes back. Running it again changes nothing.
func (s *shaper) setup(wgIndex int) error {
	ifb, err := s.ensureIFB()
	if err != nil {
		return err
	}
	return s.build(wgIndex, ifb)
}

// attach points the shaper at its two devices without changing them.
func (s *shaper) attach(wgIndex, ifb int) {
	s.dirs = [2]direction{
		{name: "download", link: wgIndex, field: 16},
		{name: "upload", link: ifb, field: 12},
	}
}

// build is setup once the IFB exists.
func (s *shaper) build(wgIndex, ifb int) error {
	s.attach(wgIndex, ifb)
	for _, d := range s.dirs {
		if err := s.ensureHTB(d); err != nil {
			return err
		}
	}
	if err := s.ensureRedirect(wgIndex, ifb); err != nil {
		return err
	}
	for _, d := range s.dirs {
		if err := s.ensureSkeleton(d); err != nil {
			return err
		}
	}
	return s.load()
}

func (s *shaper) ensureIFB() (int, error) {
	link, err := s.nl.LinkByName(s.ifb)
	if err != nil {
		// txqueuelen is the limit of HTB's default pfifo leaves.
		if err := s.nl.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: s.ifb, TxQLen: 1000}}); err != nil {
			return 0, fmt.Errorf("create IFB %s: %w", s.ifb, err)
		}
		s.ops++
		if link, err = s.nl.LinkByName(s.ifb); err != nil {
			return 0, fmt.Errorf("IFB %s: %w", s.ifb, err)
		}
	}
	if link.Attrs().OperState != netlink.OperUp && link.Attrs().RawFlags&unix.IFF_UP == 0 {
		if err := s.nl.LinkSetUp(link); err != nil {
			return 0, fmt.Errorf("set IFB %s up: %w", s.ifb, err)
		}
		s.ops++
	}
	return link.Attrs().Index, nil
}

func (s *shaper) ensureHTB(d direction) error {
	ours, foreign, err := s.rootHTB(d.link)
	if err != nil {
		return fmt.Errorf("list qdiscs (%s): %w", d.name, err)
	}
	if ours {
		return nil
	}
	if foreign != "" {
		s.log.Warn("replacing foreign root qdisc", "direction", d.name, "qdisc", foreign)
	}
	htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: d.link, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(htbMajor, 0)})
	if err := s.nl.QdiscReplace(htb); err != nil {
		return fmt.Errorf("add HTB root (%s): %w", d.name, err)
	}
	s.ops++
	return nil
}

// rootHTB reports whether the device's root qdisc is our HTB, else the
// type of the root qdisc someone else put there ("" for none).
func (s *shaper) rootHTB(link int) (ours bool, foreign string, err error) {
	qs, err := s.nl.QdiscList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: link}})
	if err != nil {
		return false, "", err
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			if h, ok := q.(*netlink.Htb); ok && h.Handle == netlink.MakeHandle(htbMajor, 0) {
				return true, "", nil
			}
			foreign = q.Type()
		}
	}
	return false, foreign, nil
}

// hasIngress reports whether the device has an ingress qdisc.
func (s *shaper) hasIngress(link int) (bool, error) {
	qs, err := s.nl.QdiscList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: link}})
	if err != nil {
		return false, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if _, ok := q.(*netlink.Ingress); ok {
			return true, nil
		}
	}
	return false, nil
}

func (s *shaper) ensureRedirect(wgIndex, ifb int) error {
	ingress, err := s.hasIngress(wgIndex)
	if err != nil {
		return err
	}
	if !ingress {
		if err := s.nl.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: wgIndex, Parent: netlink.HANDLE_INGRESS, Handle: netlink.MakeHandle(0xffff, 0),
		}}); err != nil {
			return fmt.Errorf("add ingress qdisc: %w", err)
		}
		s.ops++
	}
	targets, err := s.redirects(wgIndex)
	if err != nil {
		return err
	}
	if slices.Contains(targets, ifb) {
		return nil
	}
	redirect := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: wgIndex, Parent: netlink.MakeHandle(0xffff, 0),
			Priority: ingressPrio, Protocol: unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      ifb,
		}},
	}
	if err := s.nl.FilterAdd(redirect); err != nil {
		return fmt.Errorf("add ingress redirect to %s: %w", s.ifb, err)
	}
	s.ops++
	return nil
}

// redirects lists the devices the interface's ingress redirects to.
func (s *shaper) redirects(wgIndex int) ([]int, error) {
	fs, err := s.nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: wgIndex}}, netlink.MakeHandle(0xffff, 0))
	if err != nil {
		return nil, fmt.Errorf("list ingress filters: %w", err)
	}
	var out []int
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok {
			for _, a := range u.Actions {
				if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR {
					out = append(out, m.Ifindex)
				}
			}
		}
	}
	return out, nil
}

func (s *shaper) ensureSkeleton(d direction) error {
	have, err := s.filterHandles(d)
	if err != nil {
		return err
	}
	for _, f := range s.skeleton(d) {
		if have[f.Handle] {
			continue
		}
		err := s.nl.FilterAdd(f)
		if f.Divisor != 0 && errors.Is(err, syscall.EEXIST) {
			continue // a table whose link was never added: the link follows
		}
		if err != nil {
			kind := "link"
			if f.Divisor != 0 {
				kind = "table"
			}
			return fmt.Errorf("add u32 %s %x (%s): %w", kind, f.Handle, d.name, err)
		}
		s.ops++
	}
	return nil
}

// filterHandles lists the handles of installed u32 filters and tables.
// The dump does not return hash tables themselves (netlink skips entries
// without a selector), so a table counts as present when a filter lives in
// it or links to it: the kernel refuses links to missing tables.
func (s *shaper) filterHandles(d direction) (map[uint32]bool, error) {
	fs, err := s.nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, netlink.MakeHandle(htbMajor, 0))
	if err != nil {
		return nil, fmt.Errorf("list filters (%s): %w", d.name, err)
	}
	have := make(map[uint32]bool, len(fs))
	for _, f := range fs {
		h := f.Attrs().Handle
		have[h] = true
		have[h&0xfff00000] = true
		if u, ok := f.(*netlink.U32); ok && u.Link != 0 {
			have[u.Link&0xfff00000] = true
		}
	}
	return have, nil
}

// load reads the installed per-peer state back: a peer has a limit in a
// direction when its leaf filter and the class it points to both exist.
func (s *shaper) load() error {
	s.classes = map[netip.Addr]limits{}
	s.owners = map[uint16]netip.Addr{}
	s.loaded = time.Time{}
	for i, d := range s.dirs {
		if d.link == 0 {
			continue // not shaped (read-only inspection of a device without it)
		}
		link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}
		cs, err := s.nl.ClassList(link, netlink.MakeHandle(htbMajor, 0))
		if err != nil {
			return fmt.Errorf("list classes (%s): %w", d.name, err)
		}
		rates := make(map[uint32]int64, len(cs))
		for _, c := range cs {
			if h, ok := c.(*netlink.HtbClass); ok {
				rates[h.Handle] = int64(h.Rate * 8 / 1000)
			}
		}
		fs, err := s.nl.FilterList(link, netlink.MakeHandle(htbMajor, 0))
		if err != nil {
			return fmt.Errorf("list filters (%s): %w", d.name, err)
		}
		for _, f := range fs {
			u, ok := f.(*netlink.U32)
			if !ok || u.ClassId == 0 || u.Sel == nil || len(u.Sel.Keys) != 1 || u.Sel.Keys[0].Mask != ^uint32(0) {
				continue
			}
			a := u32Addr(u.Sel.Keys[0].Val)
			rate, ok := rates[u.ClassId]
			if !ok || s.layout.check(a) != nil || u.ClassId != netlink.MakeHandle(htbMajor, classMinor(a)) {
				continue
			}
			l := s.classes[a]
			if i == 0 {
				l.down = rate
			} else {
				l.up = rate
			}
			s.classes[a] = l
		}
	}
	for a := range s.classes {
		s.owners[classMinor(a)] = a
	}
	s.loaded = time.Now()
	return nil
}

// tcOp is one direction of one address moving from had to kbps (0 = no
// class).
type tcOp struct {
	addr      netip.Addr
	dir       int
	had, kbps int64
}

func (l limits) get(dir int) int64 {
	if dir == 0 {
		return l.down
	}
	return l.up
}

func (s *shaper) set(a netip.Addr, dir int, kbps int64) {
	l := s.classes[a]
	if dir == 0 {
		l.down = kbps
	} else {
		l.up = kbps
	}
	if l == (limits{}) {
		delete(s.classes, a)
		if s.owners[classMinor(a)] == a {
			delete(s.owners, classMinor(a))
		}
	} else {
		s.owners[classMinor(a)] = a
		s.classes[a] = l
	}
}

// diff lists what turns a's installed classes into want.
func (s *shaper) diff(a netip.Addr, want limits) ([]tcOp, error) {
	have := s.classes[a]
	if have == want {
		return nil, nil
	}
	if want != (limits{}) {
		if err := s.layout.check(a); err != nil {
			return nil, err
		}
		if o, taken := s.owners[classMinor(a)]; taken && o != a {
			return nil, fmt.Errorf("class 1:%x is %v's (addresses share their low 16 bits in this pool)", classMinor(a), o)
		}
		s.owners[classMinor(a)] = a
	}
	var ops []tcOp
	for dir := range s.dirs {
		if h, w := have.get(dir), want.get(dir); h != w {
			ops = append(ops, tcOp{addr: a, dir: dir, had: h, kbps: w})
		}
	}
	return ops, nil
}

// run executes ops in phases: classes (new and changed), then filters for
// new classes, then filter deletions, then class deletions. The order is
// for the kernel's sake: adding or deleting an HTB class walks every
// filter of the qdisc to rebind it (tc_bind_tclass), so classes go in
// while the filters are few and leave after theirs are gone. A cold apply
// of n peers is then O(n), not O(n^2). Errors are per address.
//
// Ops run in address order: the kernel adds classes with ascending ids
// about 30% faster than in random order.
func (s *shaper) run(ops []tcOp) map[netip.Addr]error {
	slices.SortFunc(ops, func(a, b tcOp) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		return a.dir - b.dir
	})
	errs := map[netip.Addr]error{}
	failed := make([]bool, len(ops))
	fail := func(i int, what string, err error) {
		failed[i] = true
		errs[ops[i].addr] = errors.Join(errs[ops[i].addr], fmt.Errorf("%s %s: %w", s.dirs[ops[i].dir].name, what, err))
	}
	for i, op := range ops {
		if op.kbps == 0 {
			continue
		}
		cls := htbClass(s.dirs[op.dir], op.addr, op.kbps)
		s.ops++
		if op.had == 0 {
			// Replace, not add: a class left without its filter by a crash
			// is taken over instead of failing.
			if err := s.nl.ClassReplace(cls); err != nil {
				fail(i, "add class", err)
			}
			continue
		}
		if err := s.nl.ClassChange(cls); err != nil {
			fail(i, "change class", err)
			continue
		}
		s.set(op.addr, op.dir, op.kbps)
	}
	for i, op := range ops {
		if op.kbps == 0 || op.had != 0 || failed[i] {
			continue
		}
		s.ops++
		if err := s.nl.FilterReplace(s.leafFilter(s.dirs[op.dir], op.addr)); err != nil {
			fail(i, "add filter", err)
			continue
		}
		s.set(op.addr, op.dir, op.kbps)
	}
	for i, op := range ops {
		if op.kbps != 0 {
			continue
		}
		s.ops++
		if err := s.nl.FilterDel(s.leafFilter(s.dirs[op.dir], op.addr)); err != nil && !isNotExist(err) {
			fail(i, "delete filter", err)
			continue
		}
		s.set(op.addr, op.dir, 0)
	}
	for i, op := range ops {
		if op.kbps != 0 || failed[i] {
			continue
		}
		s.ops++
		if err := s.nl.ClassDel(htbClass(s.dirs[op.dir], op.addr, 1)); err != nil && !isNotExist(err) {
			fail(i, "delete class", err)
		}
	}
	return errs
}

func isNotExist(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.EINVAL)
}

// teardown removes our qdiscs (with their classes and filters) and the IFB.
func (s *shaper) teardown() error {
	var errs []error
	for _, d := range s.dirs {
		if d.link == 0 {
			continue
		}
		htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: d.link, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(htbMajor, 0)})
		if err := s.nl.QdiscDel(htb); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("delete HTB (%s): %w", d.name, err))
		}
	}
	if s.dirs[0].link != 0 {
		ing := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: s.dirs[0].link, Parent: netlink.HANDLE_INGRESS, Handle: netlink.MakeHandle(0xffff, 0)}}
		if err := s.nl.QdiscDel(ing); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("delete ingress qdisc: %w", err))
		}
	}
	if link, err := s.nl.LinkByName(s.ifb); err == nil {
		if err := s.nl.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete IFB %s: %w", s.ifb, err))
		}
	}
	s.classes = map[netip.Addr]limits{}
	s.owners = map[uint16]netip.Addr{}
	return errors.Join(errs...)
}
