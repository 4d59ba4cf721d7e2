package reconcile

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

// quadraticRoutes is the pairwise check the index replaces: every new
// prefix against every accepted one. The reference for equivalence.
type quadraticRoutes struct{ extras []claim }

func (q *quadraticRoutes) check(p *events.Peer) error {
	for _, a := range p.AllowedIPs {
		for _, c := range q.extras {
			if c.p.Overlaps(a) {
				return fmt.Errorf("allowed_ips %s overlap %s of peer %s", a, c.p, c.owner)
			}
		}
	}
	return nil
}

func (q *quadraticRoutes) accept(p *events.Peer) {
	for _, e := range p.AllowedIPs {
		q.extras = append(q.extras, claim{e.Masked(), p.ID})
	}
}

// randomRoutes gives rows up to 8 prefixes each, in small address spaces
// so that nesting, duplicates and overlaps are common; IPv4 and IPv6 mixed,
// host bits sometimes set (rows may hold unmasked prefixes).
func randomRoutes(rng *rand.Rand, rows int) []events.Peer {
	out := make([]events.Peer, rows)
	for i := range out {
		out[i].ID = fmt.Sprintf("row-%d", i)
		for range rng.IntN(9) {
			var p netip.Prefix
			if rng.IntN(3) == 0 {
				var b [16]byte
				b[0], b[1], b[14], b[15] = 0xfd, 0x77, byte(rng.IntN(4)), byte(rng.IntN(256))
				p = netip.PrefixFrom(netip.AddrFrom16(b), 112+rng.IntN(17))
			} else {
				p = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(rng.IntN(4)), byte(rng.IntN(256))}), 14+rng.IntN(19))
			}
			if rng.IntN(2) == 0 {
				p = p.Masked()
			}
			out[i].AllowedIPs = append(out[i].AllowedIPs, p)
		}
	}
	return out
}

// The index decides exactly what the quadratic check did, error for
// error, over random rows, some of which are rejected for other reasons
// (they claim nothing).
func TestRouteIndexMatchesQuadratic(t *testing.T) {
	totalAccepted, totalOverlapped := 0, 0
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		rows := randomRoutes(rng, 1+rng.IntN(60))
		byID := make(map[string]events.Peer, len(rows))
		for _, p := range rows {
			byID[p.ID] = p
		}
		idx, ref := newRouteIndex(byID), &quadraticRoutes{}
		accepted, overlapped := 0, 0
		for i := range rows {
			p := &rows[i]
			got, want := idx.overlap(p), ref.check(p)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("seed %d row %d %v: index says %v, quadratic %v", seed, i, p.AllowedIPs, got, want)
			}
			if want != nil {
				overlapped++
			}
			if want == nil && rng.IntN(5) > 0 {
				idx.accept(p)
				ref.accept(p)
				accepted++
			}
		}
		totalAccepted += accepted
		totalOverlapped += overlapped
	}
	if totalAccepted < 1000 || totalOverlapped < 1000 {
		t.Fatalf("%d rows accepted, %d overlapping: the rows do not exercise the check", totalAccepted, totalOverlapped)
	}
}

// disjointRoutes gives rows x perRow disjoint /28s of 172.16.0.0/12, the
// worst case for the check: nothing overlaps, every pair is looked at.
func disjointRoutes(rows, perRow int) map[string]events.Peer {
	out := make(map[string]events.Peer, rows)
	k := 0
	for i := range rows {
		p := peerRow(i + 1)
		for range perRow {
			v := 0xac100000 + uint32(k)*16
			p.AllowedIPs = append(p.AllowedIPs, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 28))
			k++
		}
		out[p.ID] = p
	}
	return out
}

// A node routes at most maxRoutedPrefixes prefixes: the oldest rows keep
// theirs, the row that would pass the bound is rejected, and rows without
// routes are still served.
func TestRoutedPrefixesPerNodeBounded(t *testing.T) {
	rows := disjointRoutes(maxRoutedPrefixes/128+1, 128)
	plain := peerRow(200)
	rows[plain.ID] = plain
	dec := decide(testNodeRow(), Key{}, rows, time.Now(), func(string) int64 { return 0 })
	last := peerRow(maxRoutedPrefixes/128 + 1).ID
	for id, d := range dec {
		switch {
		case id == last && d.state != events.StateRejected:
			t.Errorf("row %s past the bound: %s %q, want rejected", id, d.state, d.reason)
		case id != last && d.state != events.StateActive:
			t.Errorf("row %s: %s %q, want active", id, d.state, d.reason)
		}
	}
}

// BenchmarkRouteOverlap: one decide pass's overlap checks, the index
// against the quadratic check it replaced, at 100 rows of 128 routes each,
// and the index alone at 500 x 128 (the quadratic check takes tens of
// seconds there).
func BenchmarkRouteOverlap(b *testing.B) {
	run := func(b *testing.B, rows map[string]events.Peer, quadratic bool) {
		order := make([]events.Peer, 0, len(rows))
		for _, p := range rows {
			order = append(order, p)
		}
		for b.Loop() {
			check, accept := func(*events.Peer) error { return nil }, func(*events.Peer) {}
			if quadratic {
				q := &quadraticRoutes{}
				check, accept = q.check, q.accept
			} else {
				x := newRouteIndex(rows)
				check, accept = x.overlap, x.accept // the bound is not what is measured
			}
			for i := range order {
				if err := check(&order[i]); err != nil {
					b.Fatal(err)
				}
				accept(&order[i])
			}
		}
	}
	rows100, rows500 := disjointRoutes(100, 128), disjointRoutes(500, 128)
	b.Run("index/100x128", func(b *testing.B) { run(b, rows100, false) })
	b.Run("quadratic/100x128", func(b *testing.B) { run(b, rows100, true) })
	b.Run("index/500x128", func(b *testing.B) { run(b, rows500, false) })
}
