package reconcile

// Routed prefixes (allowed_ips beyond the peer's own addresses) must not
// overlap between peers: the kernel would route the common part to one of
// them. Rows are decided oldest first and a row is checked against the
// rows accepted before it, so the check is incremental. Comparing each new
// prefix with every accepted one was O(n²) under the reconciler's lock
// (500 rows x 128 routes: about 2x10^9 comparisons per full pass).
//
// Two prefixes overlap exactly when one contains the other, so the
// prefixes of all rows form a forest under containment. Sorted by family,
// address, then length, every prefix comes right after its ancestors and
// before its descendants (one stack sweep finds each one's parent), and a
// subtree is a contiguous run of that order. A new prefix overlaps an
// accepted one if an accepted prefix is an ancestor (at most 128 steps up)
// or lies in its subtree (a range minimum over the run, O(log n)). Build
// O(n log n), each check O(bits + log n).

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/waylume/waylume-node/events"
)

// maxRoutedPrefixes bounds the routed prefixes of all peers of a node,
// as the schema's peers_allowed_ips_per_node check does.
const maxRoutedPrefixes = 4096

type claim struct {
	p     netip.Prefix
	owner string
}

// routeIndex holds the accepted routed prefixes of one decide pass.
type routeIndex struct {
	at     map[netip.Prefix]int // masked prefix -> its node
	nodes  []routeNode          // in sorted (pre-)order
	minSeq minTree              // per node: seq of its first accepted claim
	claims []claim              // accepted, in order; the index is the seq
}

type routeNode struct {
	parent int // -1: a root
	end    int // last node of its subtree
	first  int // seq of the first accepted claim of exactly this prefix; noClaim: none
}

const noClaim = math.MaxInt

// newRouteIndex indexes every valid routed prefix of rows; only these can
// be checked or accepted afterwards.
func newRouteIndex(rows map[string]events.Peer) *routeIndex {
	var all []netip.Prefix
	for _, p := range rows {
		for _, a := range p.AllowedIPs {
			if a.IsValid() {
				all = append(all, a.Masked())
			}
		}
	}
	slices.SortFunc(all, comparePrefix)
	all = slices.Compact(all)
	x := &routeIndex{at: make(map[netip.Prefix]int, len(all)), nodes: make([]routeNode, len(all)), minSeq: newMinTree(len(all))}
	var stack []int
	for i, p := range all {
		x.at[p] = i
		for len(stack) > 0 && !contains(all[stack[len(stack)-1]], p) {
			x.nodes[stack[len(stack)-1]].end = i - 1
			stack = stack[:len(stack)-1]
		}
		parent := -1
		if len(stack) > 0 {
			parent = stack[len(stack)-1]
		}
		x.nodes[i] = routeNode{parent: parent, first: noClaim}
		stack = append(stack, i)
	}
	for _, i := range stack {
		x.nodes[i].end = len(all) - 1
	}
	return x
}

// comparePrefix orders IPv4 before IPv6, then by address, then shorter
// first: a prefix sorts before every prefix it contains.
func comparePrefix(a, b netip.Prefix) int {
	if a.Addr().Is4() != b.Addr().Is4() {
		if a.Addr().Is4() {
			return -1
		}
		return 1
	}
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// contains reports whether masked prefix outer contains masked prefix in.
func contains(outer, in netip.Prefix) bool {
	return outer.Bits() <= in.Bits() && outer.Contains(in.Addr())
}

// check returns why p's routed prefixes cannot be accepted after the
// claims so far, or nil.
func (x *routeIndex) check(p *events.Peer) error {
	if len(p.AllowedIPs) > 0 && len(x.claims)+len(p.AllowedIPs) > maxRoutedPrefixes {
		return fmt.Errorf("allowed_ips would take the node's routed prefixes to %d, at most %d",
			len(x.claims)+len(p.AllowedIPs), maxRoutedPrefixes)
	}
	return x.overlap(p)
}

// overlap names the first of p's prefixes that overlaps an accepted
// claim, with the earliest such claim.
func (x *routeIndex) overlap(p *events.Peer) error {
	for _, a := range p.AllowedIPs {
		if seq := x.firstOverlap(a.Masked()); seq != noClaim {
			c := x.claims[seq]
			return fmt.Errorf("allowed_ips %s overlap %s of peer %s", a, c.p, c.owner)
		}
	}
	return nil
}

// firstOverlap is the seq of the earliest accepted claim overlapping a.
func (x *routeIndex) firstOverlap(a netip.Prefix) int {
	i, ok := x.at[a]
	if !ok {
		return noClaim
	}
	seq := x.minSeq.min(i, x.nodes[i].end) // a itself and what it contains
	for j := x.nodes[i].parent; j >= 0; j = x.nodes[j].parent {
		seq = min(seq, x.nodes[j].first) // what contains a
	}
	return seq
}

// accept records p's routed prefixes as claimed by p.
func (x *routeIndex) accept(p *events.Peer) {
	for _, a := range p.AllowedIPs {
		m := a.Masked()
		seq := len(x.claims)
		x.claims = append(x.claims, claim{m, p.ID})
		if i, ok := x.at[m]; ok && x.nodes[i].first == noClaim {
			x.nodes[i].first = seq
			x.minSeq.set(i, seq)
		}
	}
}

// minTree is a segment tree of ints answering range minimums.
type minTree struct {
	size int
	v    []int
}

func newMinTree(n int) minTree {
	size := 1
	for size < n {
		size *= 2
	}
	v := make([]int, 2*size)
	for i := range v {
		v[i] = noClaim
	}
	return minTree{size: size, v: v}
}

func (t minTree) set(i, val int) {
	i += t.size
	t.v[i] = val
	for i /= 2; i >= 1; i /= 2 {
		t.v[i] = min(t.v[2*i], t.v[2*i+1])
	}
}

// min is the minimum over positions lo..hi inclusive.
func (t minTree) min(lo, hi int) int {
	m := noClaim
	for lo, hi = lo+t.size, hi+t.size+1; lo < hi; lo, hi = lo/2, hi/2 {
		if lo&1 == 1 {
			m = min(m, t.v[lo])
			lo++
		}
		if hi&1 == 1 {
			hi--
			m = min(m, t.v[hi])
		}
	}
	return m
}
