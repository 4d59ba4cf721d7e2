package netctl

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// tcOp is one direction of one address moving from had to kbps (0 = no
// class; had < 0: some of its pieces are installed, see shaper.stale).
type tcOp struct {
	addr      netip.Addr
	dir       int
	had, kbps int64
}

func (op tcOp) adds() bool    { return op.kbps != 0 && op.had <= 0 }
func (op tcOp) changes() bool { return op.kbps != 0 && op.had > 0 }
func (op tcOp) removes() bool { return op.kbps == 0 }

func (l limits) get(dir int) int64 {
	if dir == 0 {
		return l.down
	}
	return l.up
}

func (s *shaper) set(a netip.Addr, dir int, kbps int64) {
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
		l.down = kbps
	} else {
		l.up = kbps
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
		h, w := have.get(dir), want.get(dir)
		switch {
		case stale[dir] && w == 0:
			ops = append(ops, tcOp{addr: a, dir: dir, had: -1})
		case stale[dir]:
			ops = append(ops, tcOp{addr: a, dir: dir, kbps: w})
		case h != w:
			ops = append(ops, tcOp{addr: a, dir: dir, had: h, kbps: w})
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
	r := &runner{s: s, ops: ops, failed: make([]bool, len(ops)), errs: map[netip.Addr]error{}}
	l := s.layout
	r.addShards()
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
	r.each(tcOp.adds, "add root filter", func(d direction, op tcOp) error {
		return s.nl.FilterReplace(l.rootFilter(d, op.addr))
	})
	r.each(tcOp.removes, "delete root filter", func(d direction, op tcOp) error {
		return absent(s.nl.FilterDel(l.rootFilter(d, op.addr)))
	})
	r.each(tcOp.removes, "delete shard filter", func(d direction, op tcOp) error {
		return absent(s.nl.FilterDel(l.shardFilter(d, op.addr)))
	})
	r.each(tcOp.removes, "delete class", func(d direction, op tcOp) error {
		return absent(s.nl.ClassDel(htbClass(d, l.shard(op.addr), l.classID(op.addr), 1)))
	})
	for i, op := range ops {
		if !r.failed[i] {
			s.set(op.addr, op.dir, op.kbps)
		}
	}
	return r.errs
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
