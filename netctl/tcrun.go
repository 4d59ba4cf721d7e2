package netctl

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
)

// tcOp is one direction of one address moving from had to kbps (0 = no
// class; had < 0: some of its pieces are installed, see shaper.stale).
type tcOp struct {
	addr        netip.Addr
	dir         int
	had, kbps   int64
	had6, want6 netip.Addr // the IPv6 address in the class before and after
}

func (op tcOp) adds() bool    { return op.kbps != 0 && op.had <= 0 }
func (op tcOp) changes() bool { return op.kbps != 0 && op.had > 0 && op.kbps != op.had }
func (op tcOp) removes() bool { return op.kbps == 0 }

// adds6 and removes6: the op puts want6's filters in, takes had6's out.
func (op tcOp) adds6() bool    { return op.want6.IsValid() && (op.adds() || op.want6 != op.had6) }
func (op tcOp) removes6() bool { return op.had6.IsValid() && (op.removes() || op.want6 != op.had6) }

func (l limits) get(dir int) (int64, netip.Addr) {
	if dir == 0 {
		return l.down, l.down6
	}
	return l.up, l.up6
}

func (s *shaper) set(a netip.Addr, dir int, kbps int64, a6 netip.Addr) {
	if st, ok := s.stale[a]; ok {
		st[dir] = false
		if st == [2]bool{} {
			delete(s.stale, a)
		} else {
			s.stale[a] = st
		}
	}
	l := s.classes[a]
	if dir == 0 {
		l.down, l.down6 = kbps, a6
	} else {
		l.up, l.up6 = kbps, a6
	}
	if l == (limits{}) {
		delete(s.classes, a)
	} else {
		s.classes[a] = l
	}
}

// diff lists what turns a's installed classes into want.
func (s *shaper) diff(a netip.Addr, want limits) ([]tcOp, error) {
	have, stale := s.classes[a], s.stale[a]
	if have == want && stale == [2]bool{} {
		return nil, nil
	}
	if want != (limits{}) && !s.layout.contains(a) {
		return nil, fmt.Errorf("shaping address %v is outside the pool %v", a, s.pool)
	}
	var ops []tcOp
	for dir := range s.dirs {
		h, h6 := have.get(dir)
		w, w6 := want.get(dir)
		if w6.IsValid() {
			if _, err := s.nodeFor(w6); err != nil {
				return nil, err
			}
		}
		switch {
		case stale[dir] && w == 0:
			ops = append(ops, tcOp{addr: a, dir: dir, had: -1, had6: h6})
		case stale[dir]:
			ops = append(ops, tcOp{addr: a, dir: dir, kbps: w, want6: w6})
		case h != w || h6 != w6:
			ops = append(ops, tcOp{addr: a, dir: dir, had: h, kbps: w, had6: h6, want6: w6})
		}
	}
	return ops, nil
}

// runner executes one batch of ops; errors are per address.
type runner struct {
	s      *shaper
	ops    []tcOp
	failed []bool
	errs   map[netip.Addr]error
	// written are the IPv6 filters this run put in: an IPv6 address
	// moving between two peers keeps the filter its new owner wrote,
	// however its old owner's removal names it.
	written map[[3]uint32]bool
}

func filterKey(f *netlink.U32) [3]uint32 { return [3]uint32{uint32(f.LinkIndex), f.Parent, f.Handle} }

// put6 writes an IPv6 filter and remembers it.
func (r *runner) put6(f *netlink.U32) error {
	r.written[filterKey(f)] = true
	return r.s.nl.FilterReplace(f)
}

// del6 deletes an IPv6 filter unless this run wrote it for another peer.
func (r *runner) del6(f *netlink.U32) error {
	if r.written[filterKey(f)] {
		return nil
	}
	return absent(r.s.nl.FilterDel(f))
}

func (r *runner) fail(i int, what string, err error) {
	op := r.ops[i]
	r.failed[i] = true
	r.errs[op.addr] = errors.Join(r.errs[op.addr], fmt.Errorf("%s %s: %w", r.s.dirs[op.dir].name, what, err))
}

// each runs do for the ops that phase selects and no earlier step failed.
func (r *runner) each(phase func(tcOp) bool, what string, do func(direction, tcOp) error) {
	for i, op := range r.ops {
		if r.failed[i] || !phase(op) {
			continue
		}
		r.s.ops++
		if err := do(r.s.dirs[op.dir], op); err != nil {
			r.fail(i, what, err)
		}
	}
}

// run executes ops in phases: shards that are missing, then classes (new
// and changed), then the shard filters and last the root filters of new
// classes; removals go the other way round. The order is the kernel's:
// a packet enters a shard only when its class and shard filter are there,
// and a class goes in while its qdisc's filters are few (adding or
// deleting an HTB class walks the qdisc's classes and filters). Ops run in
// address order: the kernel adds classes with ascending ids faster.
func (s *shaper) run(ops []tcOp) map[netip.Addr]error {
	slices.SortFunc(ops, func(a, b tcOp) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		return a.dir - b.dir
	})
	r := &runner{s: s, ops: ops, failed: make([]bool, len(ops)), errs: map[netip.Addr]error{}, written: map[[3]uint32]bool{}}
	r.addShards()
	r.addV6Tables()
	r.adds()
	r.removes()
	for i, op := range ops {
		if !r.failed[i] {
			s.set(op.addr, op.dir, op.kbps, op.want6)
		}
	}
	return r.errs
}

// adds puts classes in (or changes them), then their shard filters, then
// their root filters.
func (r *runner) adds() {
	s, l := r.s, r.s.layout
	r.each(tcOp.adds, "add class", func(d direction, op tcOp) error {
		// Replace, not add: a class left without its filters by a crash
		// is taken over instead of failing.
		return s.nl.ClassReplace(htbClass(d, l.shard(op.addr), l.classID(op.addr), op.kbps))
	})
	r.each(tcOp.changes, "change class", func(d direction, op tcOp) error {
		return s.nl.ClassChange(htbClass(d, l.shard(op.addr), l.classID(op.addr), op.kbps))
	})
	r.each(tcOp.adds, "add shard filter", func(d direction, op tcOp) error {
		return s.nl.FilterReplace(l.shardFilter(d, op.addr))
	})
	r.each(tcOp.adds6, "add IPv6 shard filter", func(d direction, op tcOp) error {
		return r.put6(l.shardFilter6(d, op.addr, op.want6, s.v6node[op.want6]))
	})
	r.each(tcOp.adds, "add root filter", func(d direction, op tcOp) error {
		return s.nl.FilterReplace(l.rootFilter(d, op.addr))
	})
	r.each(tcOp.adds6, "add IPv6 root filter", func(d direction, op tcOp) error {
		return r.put6(l.rootFilter6(d, op.addr, op.want6, s.v6node[op.want6]))
	})
}

// removes takes root filters out, then shard filters, then classes.
func (r *runner) removes() {
	s, l := r.s, r.s.layout
	r.each(tcOp.removes6, "delete IPv6 root filter", func(d direction, op tcOp) error {
		return r.del6(l.rootFilter6(d, op.addr, op.had6, s.v6node[op.had6]))
	})
	r.each(tcOp.removes, "delete root filter", func(d direction, op tcOp) error {
		return absent(s.nl.FilterDel(l.rootFilter(d, op.addr)))
	})
	r.each(tcOp.removes6, "delete IPv6 shard filter", func(d direction, op tcOp) error {
		return r.del6(l.shardFilter6(d, op.addr, op.had6, s.v6node[op.had6]))
	})
	r.each(tcOp.removes, "delete shard filter", func(d direction, op tcOp) error {
		return absent(s.nl.FilterDel(l.shardFilter(d, op.addr)))
	})
	r.each(tcOp.removes, "delete class", func(d direction, op tcOp) error {
		return absent(s.nl.ClassDel(htbClass(d, l.shard(op.addr), l.classID(op.addr), 1)))
	})
}

// addV6Tables creates the IPv6 tables of the root and of the shards that
// need them first now.
func (r *runner) addV6Tables() {
	type key struct {
		dir   int
		shard uint16 // 0: the root
	}
	tried := map[key]error{}
	ensure := func(k key) error {
		err, done := tried[k]
		if !done {
			if k.shard == 0 {
				err = r.s.ensureV6Root(k.dir)
			} else {
				err = r.s.ensureV6Shard(k.dir, k.shard)
			}
			tried[k] = err
		}
		return err
	}
	for i, op := range r.ops {
		if !op.adds6() || r.failed[i] {
			continue
		}
		shard := r.s.layout.shard(op.addr)
		var err error
		if !r.s.v6root[op.dir] {
			err = ensure(key{op.dir, 0})
		}
		if err == nil && !r.s.shard6[op.dir][shard] {
			err = ensure(key{op.dir, shard})
		}
		if err != nil {
			r.fail(i, "add IPv6 tables", err)
		}
	}
}

// addShards creates the shards the new classes need and are missing; the
// ops of a shard that cannot be made fail.
func (r *runner) addShards() {
	type key struct {
		dir   int
		shard uint16
	}
	bad := map[key]error{}
	for i, op := range r.ops {
		k := key{op.dir, r.s.layout.shard(op.addr)}
		if !op.adds() || r.s.shards[k.dir][k.shard] {
			continue
		}
		err, tried := bad[k]
		if !tried {
			err = r.s.ensureShard(k.dir, k.shard)
			bad[k] = err
		}
		if err != nil {
			r.fail(i, "add shard", err)
		}
	}
}

// absent is err unless it says the thing to delete is not there.
func absent(err error) error {
	if err != nil && isNotExist(err) {
		return nil
	}
	return err
}
