package netctl

// Per-peer shaping. Download (node -> client) is shaped by an HTB tree on
// the WireGuard interface, keyed by destination address; upload (client ->
// node) by the same tree on an IFB device that the interface's ingress is
// redirected to (mirred), keyed by source address. Only limited peers get
// a class; everything else is unclassified and leaves through the root
// HTB's direct queue unshaped.
//
// The tree is sharded: adding a class to an HTB qdisc walks every class
// and filter of that qdisc, so one qdisc holding every peer makes a cold
// apply quadratic. Peers' classes live in up to 256 (512 for a /8) small
// HTB qdiscs, one per shard, each hanging from a never-limiting class of
// the root HTB 2:. Classification is u32 hash tables on both levels, so a
// packet costs a fixed number of lookups at 10 or 10,000 peers:
//
//	root 2:   800: "address in pool" -> top table 1:, hashed on the third
//	          octet -> leaf table 100+third, hashed on the last octet ->
//	          "address == peer" -> the peer's shard class 2:<shard>
//	shard S:  800: -> table 1:, hashed on the third octet ->
//	          "address == peer" -> the peer's class S:<minor>
//
// A peer's limit in one direction is its class and its two filters, added
// class first and root filter last (its packets enter the shard only once
// their class is there), removed in the reverse order. Leaves are HTB's
// default pfifo (exists on every kernel; fq_codel does not here); its limit
// is the device's txqueuelen. tclayout.go derives every handle from the
// address.

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	ingressPrio  = 1
	maxQuantum   = 60000
	minQuantum   = 1600
	burstDivisor = 100 // burst = 10 ms of rate
	// shardKbps is the rate of a shard's class in the root: 1 Tbit/s, so
	// a shard never limits its peers, their own classes do.
	shardKbps = 1_000_000_000
)

// limits are a peer's installed or wanted rates in kbit/s (0 = none) and
// per direction the IPv6 address its class shapes too (zero = none).
type limits struct {
	down, up   int64
	down6, up6 netip.Addr
}

// wantLimits are the limits of a peer with rates down and up, whose IPv6
// address (if valid) goes into the classes it has.
func wantLimits(down, up int64, a6 netip.Addr) limits {
	l := limits{down: down, up: up}
	if down != 0 {
		l.down6 = a6
	}
	if up != 0 {
		l.up6 = a6
	}
	return l
}

// direction is one shaped device: the WireGuard interface for download,
// the IFB for upload, matching the destination or source address.
type direction struct {
	name   string
	link   int
	field  int32 // offset of the address in the IPv4 header
	field6 int32 // and in the IPv6 header
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
	// stale holds addresses with some but not all of a direction's class
	// and filters installed (a crash between two of them): an apply
	// replaces them, or removes them when they are not wanted.
	stale  map[netip.Addr][2]bool
	shards [2]map[uint16]bool // shard qdiscs in place, per direction
	v6root [2]bool            // the root's IPv6 tables are in place
	shard6 [2]map[uint16]bool // and a shard's
	// v6node is the node of each shaped IPv6 address's filters (the same
	// in the root and its shard, both directions), unique among the
	// addresses sharing its last byte (v6used, by byte<<12 | node). Nodes
	// are not freed until the mirror is read again (load): a moved
	// address cannot have its node taken in between.
	v6node map[netip.Addr]uint32
	v6used map[uint32]bool
	loaded time.Time // when classes was last read from the kernel
	ops    int       // kernel modifications, counted for tests
}

func newShaper(h *netlink.Handle, cfg Config, log *slog.Logger) *shaper {
	s := &shaper{
		nl: h, log: log, pool: cfg.Pool(), iface: cfg.Interface, ifb: ifbName(cfg.Interface),
		layout: newLayout(cfg.Pool()),
	}
	s.reset()
	return s
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

func htbClass(d direction, parent uint16, handle uint32, kbps int64) *netlink.HtbClass {
	bps := uint64(kbps) * 1000
	bytesPerSec := bps / 8
	quantum := min(max(bytesPerSec/10, minQuantum), maxQuantum)
	burst := uint32(min(bytesPerSec/burstDivisor+minQuantum, 1<<31))
	return netlink.NewHtbClass(netlink.ClassAttrs{
		LinkIndex: d.link,
		Parent:    netlink.MakeHandle(parent, 0),
		Handle:    handle,
	}, netlink.HtbClassAttrs{Rate: bps, Ceil: bps, Buffer: burst, Cbuffer: burst, Quantum: uint32(quantum)})
}

// setup creates what is missing of the root qdiscs, the IFB with its
// redirect, and the root hash tables on both devices, then reads the
// installed classes back. Running it again changes nothing.
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
		{name: "download", link: wgIndex, field: 16, field6: 24},
		{name: "upload", link: ifb, field: 12, field6: 8},
	}
}

// build is setup once the IFB exists.
func (s *shaper) build(wgIndex, ifb int) error {
	s.attach(wgIndex, ifb)
	for _, d := range s.dirs {
		if err := s.ensureRoot(d); err != nil {
			return err
		}
	}
	if err := s.ensureRedirect(wgIndex, ifb); err != nil {
		return err
	}
	for _, d := range s.dirs {
		if err := s.ensureSkeleton(d, rootMajor, s.layout.rootSkeleton(d)); err != nil {
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

// ensureRoot puts the root HTB in place, replacing whatever root the
// device has: the kernel's default quietly, the flat tree of the previous
// layout once (with everything in it), anything else with a warning.
func (s *shaper) ensureRoot(d direction) error {
	ours, root, err := s.rootHTB(d.link)
	if err != nil {
		return fmt.Errorf("list qdiscs (%s): %w", d.name, err)
	}
	if ours {
		return nil
	}
	switch {
	case root == nil:
	case root.Attrs().Handle == 0:
		// The kernel's own (pfifo_fast, noqueue, mq, or the
		// net.core.default_qdisc): it holds nothing of anyone's.
		s.log.Debug("replacing the default root qdisc", "direction", d.name, "qdisc", root.Type())
	case previousLayout(root):
		s.log.Info("replacing the previous layout's shaping tree; limits are re-added by the next sync", "direction", d.name)
	default:
		s.log.Warn("replacing foreign root qdisc", "direction", d.name, "qdisc", root.Type(),
			"handle", netlink.HandleStr(root.Attrs().Handle))
	}
	htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: d.link, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(rootMajor, 0)})
	if err := s.nl.QdiscReplace(htb); err != nil {
		return fmt.Errorf("add HTB root (%s): %w", d.name, err)
	}
	s.ops++
	return nil
}

// previousLayout reports whether a root qdisc is the flat tree the node
// built before its tree was sharded: one HTB 1: holding every class.
func previousLayout(q netlink.Qdisc) bool {
	h, ok := q.(*netlink.Htb)
	return ok && h.Handle == netlink.MakeHandle(1, 0)
}

// rootHTB reports whether the device's root qdisc is our HTB, else the
// root qdisc someone else put there (nil for none).
func (s *shaper) rootHTB(link int) (ours bool, root netlink.Qdisc, err error) {
	qs, err := s.nl.QdiscList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: link}})
	if err != nil {
		return false, nil, err
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			if h, ok := q.(*netlink.Htb); ok && h.Handle == netlink.MakeHandle(rootMajor, 0) {
				return true, q, nil
			}
			root = q
		}
	}
	return false, root, nil
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

// ensureShard gives a direction the shard qdisc: its class in the root,
// the HTB qdisc in that class, and its hash table.
func (s *shaper) ensureShard(dir int, shard uint16) error {
	d := s.dirs[dir]
	if err := s.nl.ClassReplace(htbClass(d, rootMajor, netlink.MakeHandle(rootMajor, shard), shardKbps)); err != nil {
		return fmt.Errorf("add shard class %x: %w", shard, err)
	}
	s.ops++
	q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: d.link, Parent: netlink.MakeHandle(rootMajor, shard), Handle: netlink.MakeHandle(shard, 0)})
	if err := s.nl.QdiscReplace(q); err != nil {
		return fmt.Errorf("add shard qdisc %x: %w", shard, err)
	}
	s.ops++
	if err := s.addSkeleton(d, shard, s.layout.shardSkeleton(d, shard)); err != nil {
		return err
	}
	s.shards[dir][shard] = true
	return nil
}

// addSkeleton adds the tables and links of a qdisc the mirror says is new
// without reading it first; if some are there after all (a crash while the
// shard was made), it reads and adds what is missing.
func (s *shaper) addSkeleton(d direction, major uint16, skel []*netlink.U32) error {
	for _, f := range skel {
		err := s.nl.FilterAdd(f)
		if errors.Is(err, syscall.EEXIST) {
			return s.ensureSkeleton(d, major, skel)
		}
		if err != nil {
			return fmt.Errorf("add u32 %x in qdisc %x (%s): %w", f.Handle, major, d.name, err)
		}
		s.ops++
	}
	return nil
}

// ensureSkeleton adds what is missing of a qdisc's tables and links.
func (s *shaper) ensureSkeleton(d direction, major uint16, skel []*netlink.U32) error {
	have, linked, err := s.filterHandles(d, major)
	if err != nil {
		return err
	}
	for _, f := range skel {
		if have[f.Handle] && f.Hash != u32Root || f.Hash == u32Root && linked[f.Link] {
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
			return fmt.Errorf("add u32 %s %x in qdisc %x (%s): %w", kind, f.Handle, major, d.name, err)
		}
		s.ops++
	}
	return nil
}

// filterHandles lists the handles of a qdisc's u32 filters and tables,
// and the tables something links to. The dump does not return hash tables
// themselves (netlink skips entries without a selector), so a table counts
// as present when a filter lives in it or links to it: the kernel refuses
// links to missing tables.
func (s *shaper) filterHandles(d direction, major uint16) (have, linked map[uint32]bool, err error) {
	fs, err := s.nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: d.link}}, netlink.MakeHandle(major, 0))
	if err != nil {
		return nil, nil, fmt.Errorf("list filters of qdisc %x (%s): %w", major, d.name, err)
	}
	have, linked = make(map[uint32]bool, len(fs)), map[uint32]bool{}
	for _, f := range fs {
		h := f.Attrs().Handle
		have[h] = true
		have[h&0xfff00000] = true
		if u, ok := f.(*netlink.U32); ok && u.Link != 0 {
			have[u.Link&0xfff00000] = true
			linked[u.Link&0xfff00000] = true
		}
	}
	return have, linked, nil
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
		htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: d.link, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(rootMajor, 0)})
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
	s.reset()
	return errors.Join(errs...)
}

// reset empties the mirror.
func (s *shaper) reset() {
	s.classes, s.stale = map[netip.Addr]limits{}, map[netip.Addr][2]bool{}
	s.shards, s.v6root, s.shard6 = [2]map[uint16]bool{{}, {}}, [2]bool{}, [2]map[uint16]bool{{}, {}}
	s.v6node, s.v6used = map[netip.Addr]uint32{}, map[uint32]bool{}
}

// nodeFor is a6's filter node, allocated on first use.
func (s *shaper) nodeFor(a6 netip.Addr) (uint32, error) {
	if n, ok := s.v6node[a6]; ok {
		return n, nil
	}
	last := uint32(a6.As16()[15]) << 12
	for n := uint32(1); n <= maxNode; n++ {
		if !s.v6used[last|n] {
			s.v6used[last|n] = true
			s.v6node[a6] = n
			return n, nil
		}
	}
	return 0, fmt.Errorf("no u32 node left for %v: %d shaped IPv6 addresses share its last byte", a6, maxNode)
}

// ensureV6Root adds the root's IPv6 tables and links in one direction.
func (s *shaper) ensureV6Root(dir int) error {
	if err := s.ensureSkeleton(s.dirs[dir], rootMajor, root6Skeleton(s.dirs[dir])); err != nil {
		return err
	}
	s.v6root[dir] = true
	return nil
}

// ensureV6Shard adds a shard's IPv6 table and link in one direction.
func (s *shaper) ensureV6Shard(dir int, shard uint16) error {
	if err := s.addSkeleton(s.dirs[dir], shard, shard6Skeleton(s.dirs[dir], shard)); err != nil {
		return err
	}
	s.shard6[dir][shard] = true
	return nil
}
