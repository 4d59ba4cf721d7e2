package reconcile

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

// The reconciler's own cost at 10,000 peers, on the in-memory data plane
// and store (the e2e benchmarks add Postgres and WireGuard).
func BenchmarkConvergeNoChange10k(b *testing.B) {
	h := newBenchHarness(b, 10_000)
	b.ResetTimer()
	for range b.N {
		if err := h.r.Converge(h.ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResyncNoChange10k(b *testing.B) {
	h := newBenchHarness(b, 10_000)
	b.ResetTimer()
	for range b.N {
		if err := h.r.Resync(h.ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFlush10k(b *testing.B) {
	h := newBenchHarness(b, 10_000)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		for i := range 10_000 {
			h.plane.traffic(benchKey(i), 100, 100)
		}
		h.clk.add(time.Second)
		b.StartTimer()
		if err := h.r.Flush(h.ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func benchKey(i int) Key {
	var k Key
	k[0], k[1], k[2], k[31] = byte(i>>16), byte(i>>8), byte(i), 7
	return k
}

func newBenchHarness(b *testing.B, n int) *harness {
	node := testNodeRow()
	node.Address = netip.MustParsePrefix("10.8.0.1/16")
	h := &harness{t: nil, ctx: b.Context(), store: newFakeStore(node), plane: newFakePlane(),
		clk: &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		h.store.put(events.Peer{ID: fmt.Sprintf("p%06d", i), NodeID: testNode, PublicKey: benchKey(i).String(),
			Address: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 8, byte((i + 2) >> 8), byte(i + 2)}), 32),
			Enabled: true, CreatedAt: base.Add(time.Duration(i)), UpdatedAt: base})
	}
	r, err := New(Config{NodeID: testNode, Store: h.store, DataPlane: h.plane, Now: h.clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	h.r = r
	if err := r.Resync(h.ctx); err != nil {
		b.Fatal(err)
	}
	return h
}

// One changed row at 10,000 peers: the partial path.
func BenchmarkEventOnePeer10k(b *testing.B) {
	h := newBenchHarness(b, 10_000)
	b.ResetTimer()
	for i := range b.N {
		p := h.store.get(fmt.Sprintf("p%06d", i%10_000))
		p.DownloadKbps = int64(1000 + i)
		p.UpdatedAt = p.UpdatedAt.Add(time.Duration(i+1) * time.Millisecond)
		if err := h.r.Handle(h.ctx, []events.Event{{Kind: events.PeerChanged, ID: p.ID, Peer: &p}}); err != nil {
			b.Fatal(err)
		}
	}
}

// Live heap the reconciler keeps per peer (rows, state, decisions, index),
// after a resync and a flush, on the in-memory store and data plane.
func BenchmarkHeapPerPeer10k(b *testing.B) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	h := newBenchHarness(b, 10_000)
	for i := range 10_000 {
		h.plane.traffic(benchKey(i), 1, 1)
	}
	h.clk.add(time.Second)
	if err := h.r.Flush(h.ctx); err != nil {
		b.Fatal(err)
	}
	// The fakes hold rows and counters too: drop them from the count.
	h.store.set(func(s *fakeStore) { s.peers, s.status, s.usage = nil, nil, nil })
	h.plane.mu.Lock()
	h.plane.peers = nil
	h.plane.mu.Unlock()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/10_000, "heap-B/peer")
	runtime.KeepAlive(h.r)
}
