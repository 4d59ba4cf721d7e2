package reconcile

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

func TestResyncAppliesAndIsIdempotent(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2), peerRow(3))
	h.resync()
	for n := 1; n <= 3; n++ {
		h.wantInPlane(n, true)
	}
	if h.plane.node.Address != testNodeRow().Address || h.plane.node.MTU != 1420 {
		t.Fatalf("node config %+v", h.plane.node)
	}
	adds, updates := h.plane.adds, h.plane.updates
	for range 3 {
		h.resync()
		if err := h.r.Converge(h.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if h.plane.adds != adds || h.plane.updates != updates || h.plane.removes != 0 {
		t.Fatalf("repeat resyncs changed the data plane: adds %d->%d updates %d->%d removes %d",
			adds, h.plane.adds, updates, h.plane.updates, h.plane.removes)
	}
	h.flush()
	h.wantStatus(1, events.StateActive, "")
	if h.store.statusOf(peerRow(1).ID).AppliedAt.IsZero() {
		t.Fatal("applied_at not written")
	}
}

func TestEventsInsertUpdateDelete(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	p := peerRow(2)
	h.change(p)
	h.wantInPlane(2, true)

	p.DownloadKbps = 20000
	h.change(p)
	if c, _ := h.plane.has(key(2)); c.DownloadKbps != 20000 {
		t.Fatalf("limit not applied: %+v", c)
	}

	// LISTEN-style event without the row: the reconciler fetches it.
	p.UploadKbps = 1000
	h.store.put(p)
	h.event(events.Event{Kind: events.PeerChanged, ID: p.ID, Source: "listen"})
	if c, _ := h.plane.has(key(2)); c.UploadKbps != 1000 {
		t.Fatalf("fetched row not applied: %+v", c)
	}

	h.plane.traffic(key(2), 100, 200)
	h.store.del(p.ID)
	h.event(events.Event{Kind: events.PeerDeleted, ID: p.ID})
	// Cut at once, removed once its last bytes are committed.
	if c, ok := h.plane.has(key(2)); !ok || len(c.AllowedIPs) != 0 {
		t.Fatalf("deleted peer not cut first: %+v %v", c, ok)
	}
	h.flush()
	h.wantInPlane(2, false)
	h.wantInPlane(1, true)
	if up, down := h.store.usageSum(p.ID); up != 100 || down != 200 {
		t.Fatalf("final usage of deleted peer %d/%d, want 100/200", up, down)
	}
}

// A stolen address or key arriving by event is checked against every row:
// the owner's peer is never touched, not even transiently.
func TestStolenAddressNeverHijacks(t *testing.T) {
	owner := peerRow(1)
	owner.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}
	h := newHarness(t, owner)
	h.resync()
	before, _ := h.plane.has(key(1))
	updates := h.plane.updates

	thief := peerRow(2)
	thief.Address = owner.Address
	h.change(thief)
	thief2 := peerRow(3)
	thief2.PublicKey = owner.PublicKey
	h.change(thief2)
	thief3 := peerRow(4)
	thief3.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("192.168.1.128/25")}
	h.change(thief3)
	h.resync()

	after, _ := h.plane.has(key(1))
	if !after.Equal(before) || h.plane.updates != updates {
		t.Fatalf("owner reprogrammed: %+v -> %+v", before, after)
	}
	h.wantInPlane(2, false)
	h.wantInPlane(4, false)
	h.flush()
	h.wantStatus(1, events.StateActive, "")
	h.wantStatus(2, events.StateRejected, "invalid: address 10.8.0.2 already used by peer "+owner.ID)
	h.wantStatus(3, events.StateRejected, "invalid: public key already used by peer "+owner.ID)
	h.wantStatus(4, events.StateRejected, "invalid: allowed_ips 192.168.1.128/25 overlap")

	// The owner leaves: the next claimant gets the address.
	h.store.del(owner.ID)
	h.event(events.Event{Kind: events.PeerDeleted, ID: owner.ID})
	h.flush() // owner's last bytes, then removal
	h.event(events.Event{Kind: events.Resync})
	h.wantInPlane(2, true)
}

func TestInvalidRowRejectedOthersServed(t *testing.T) {
	bad := peerRow(2)
	bad.PublicKey = "garbage"
	bad2 := peerRow(3)
	bad2.Address = netip.MustParsePrefix("192.0.2.1/32")
	h := newHarness(t, peerRow(1), bad, bad2)
	h.resync()
	h.wantInPlane(1, true)
	h.wantInPlane(3, false)
	h.flush()
	h.wantStatus(2, events.StateRejected, "invalid: public_key not base64 of 32 bytes")
	h.wantStatus(3, events.StateRejected, "invalid: address 192.0.2.1 outside the pool 10.8.0.0/24")

	// An applied peer whose row turns invalid leaves.
	p := peerRow(1)
	p.PersistentKeepalive = 70000
	h.change(p)
	h.flush()
	h.wantInPlane(1, false)
	h.wantStatus(1, events.StateRejected, "invalid: persistent_keepalive")
}

func TestDisableEnable(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	p := peerRow(1)
	p.Enabled = false
	h.change(p)
	h.flush()
	h.wantInPlane(1, false)
	h.wantStatus(1, events.StateBlocked, "disabled")
	p.Enabled = true
	h.change(p)
	h.flush() // the zero baseline is written before the peer comes back
	h.wantInPlane(1, true)
	h.flush()
	h.wantStatus(1, events.StateActive, "")
}

// Expiry is enforced by the node's own clock, with the database down.
func TestExpiryWithDatabaseDown(t *testing.T) {
	p := peerRow(1)
	p.ExpiresAt = time.Date(2026, 6, 1, 12, 0, 10, 0, time.UTC)
	h := newHarness(t, p, peerRow(2))
	h.resync()
	h.wantInPlane(1, true)
	if got := h.r.nextExpiry; !got.Equal(p.ExpiresAt) {
		t.Fatalf("expiry timer at %v, want %v", got, p.ExpiresAt)
	}
	h.store.set(func(s *fakeStore) { s.failReads, s.failWrites = true, true })
	h.clk.add(9 * time.Second)
	if err := h.r.Converge(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.wantInPlane(1, true)
	h.clk.add(time.Second)
	if err := h.r.Converge(h.ctx); err != nil {
		t.Fatal(err)
	}
	if c, ok := h.plane.has(key(1)); !ok || len(c.AllowedIPs) != 0 {
		t.Fatalf("expired peer not cut with the database down: %+v %v", c, ok)
	}
	if h.plane.traffic(key(1), 1, 1) {
		t.Fatal("expired peer still passes traffic")
	}
	h.wantInPlane(2, true)
	// A failing resync keeps everything as it is.
	if err := h.r.Resync(h.ctx); err == nil {
		t.Fatal("resync succeeded with the database down")
	}
	h.wantInPlane(2, true)

	h.store.set(func(s *fakeStore) { s.failReads, s.failWrites = false, false })
	h.flush()
	h.wantInPlane(1, false)
	h.wantStatus(1, events.StateBlocked, "expired")

	p.ExpiresAt = h.clk.Now().Add(time.Hour)
	h.change(p)
	h.flush()
	h.wantInPlane(1, true)
}

func TestQuota(t *testing.T) {
	p := peerRow(1)
	p.QuotaBytes = 1000
	h := newHarness(t, p)
	h.resync()
	h.plane.traffic(key(1), 300, 300)
	h.flush()
	h.wantInPlane(1, true)
	// Unflushed bytes count: 600 committed + 500 read = over.
	h.plane.traffic(key(1), 250, 250)
	h.flush()
	if c, ok := h.plane.has(key(1)); ok && len(c.AllowedIPs) != 0 {
		t.Fatalf("over-quota peer still serving: %+v", c)
	}
	h.flush()
	h.wantInPlane(1, false)
	h.wantStatus(1, events.StateBlocked, "quota_exceeded")

	// Quota reset brings it back.
	p.QuotaResetAt = h.clk.Now()
	h.change(p)
	h.flush()
	h.wantInPlane(1, true)
	h.flush()
	h.wantStatus(1, events.StateActive, "")
	if up, down := h.store.usageSum(p.ID); up != 550 || down != 550 {
		t.Fatalf("usage %d/%d, want 550/550", up, down)
	}

	// Quota counts from unflushed bytes before the first flush too.
	h.plane.traffic(key(1), 600, 500)
	if err := h.r.Heartbeat(h.ctx, "online"); err != nil { // reads counters
		t.Fatal(err)
	}
	if err := h.r.Converge(h.ctx); err != nil {
		t.Fatal(err)
	}
	if c, _ := h.plane.has(key(1)); len(c.AllowedIPs) != 0 {
		t.Fatal("unflushed bytes were not counted against the quota")
	}
}

func TestMovedPeerLeaves(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2))
	h.resync()
	p := peerRow(1)
	p.NodeID = "00000000-0000-0000-0000-00000000000b"
	h.change(p) // LISTEN and a Realtime UPDATE both deliver the row
	h.flush()
	h.wantInPlane(1, false)
	h.wantInPlane(2, true)

	// Realtime never tells the old node: the next resync does.
	q := peerRow(2)
	q.NodeID = "00000000-0000-0000-0000-00000000000b"
	h.store.put(q)
	h.resync()
	h.flush()
	h.wantInPlane(2, false)
}

func TestNodeConfigChangeKeepsPeers(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2))
	h.resync()
	adds, updates, removes := h.plane.adds, h.plane.updates, h.plane.removes
	n := testNodeRow()
	n.MTU, n.ListenPort = 1380, 51999
	n.DNS = []netip.Addr{netip.MustParseAddr("1.1.1.1")}
	h.store.set(func(s *fakeStore) { s.node = n })
	h.event(events.Event{Kind: events.NodeChanged, ID: n.ID, Node: &n})
	if h.plane.node.MTU != 1380 || h.plane.node.ListenPort != 51999 || len(h.plane.node.DNS) != 1 {
		t.Fatalf("node config not applied: %+v", h.plane.node)
	}
	if h.plane.adds != adds || h.plane.updates != updates || h.plane.removes != removes {
		t.Fatal("a node config change touched the peers")
	}
	// Changing the pool revalidates every peer.
	n.Address = netip.MustParsePrefix("10.9.0.1/24")
	h.event(events.Event{Kind: events.NodeChanged, ID: n.ID, Node: &n})
	h.flush()
	h.wantInPlane(1, false)
	h.wantStatus(1, events.StateRejected, "invalid: address 10.8.0.2 outside the pool 10.9.0.0/24")
}

func TestReadFailureKeepsState(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2))
	h.resync()
	h.store.set(func(s *fakeStore) { s.failReads = true })
	if err := h.r.Handle(h.ctx, []events.Event{{Kind: events.PeerChanged, ID: peerRow(1).ID}}); err == nil {
		t.Fatal("fetch failure not reported")
	}
	if err := h.r.Handle(h.ctx, []events.Event{{Kind: events.Resync}}); err == nil {
		t.Fatal("snapshot failure not reported")
	}
	h.wantInPlane(1, true)
	h.wantInPlane(2, true)
	if h.plane.removes != 0 {
		t.Fatal("a read failure removed peers")
	}
}

func TestDataPlaneFailureRetried(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.plane.fail = errFake
	if err := h.r.Resync(h.ctx); err == nil {
		t.Fatal("data plane failure not reported")
	}
	h.plane.fail = nil
	h.resync()
	h.wantInPlane(1, true)
}

// After a restart the node adopts the device: unchanged peers are not
// recreated (sessions survive), their counters continue.
func TestAdoptOnRestart(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2), peerRow(3))
	h.resync()
	h.plane.traffic(key(1), 1000, 2000)
	h.flush()
	h.plane.traffic(key(1), 10, 20)
	// While the node is down: a row is disabled, another deleted, a stray peer appears.
	p := peerRow(2)
	p.Enabled = false
	h.store.put(p)
	h.store.del(peerRow(3).ID)
	h.plane.UpdatePeers(h.ctx, []PeerConfig{{PublicKey: key(77), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.8.0.77/32")}}})
	adds := h.plane.adds

	h.restart()
	h.resync()
	if h.plane.adds != adds {
		t.Fatalf("restart re-created %d peers", h.plane.adds-adds)
	}
	h.wantInPlane(1, true)
	if _, ok := h.plane.has(key(77)); ok {
		t.Fatal("stray peer kept")
	}
	if _, ok := h.plane.has(key(3)); ok {
		t.Fatal("peer of a deleted row kept")
	}
	h.flush()
	h.wantInPlane(2, false)
	if up, down := h.store.usageSum(peerRow(1).ID); up != 1010 || down != 2020 {
		t.Fatalf("usage across restart %d/%d, want 1010/2020", up, down)
	}
}

// A late event carrying an older version of a row than a snapshot does not
// roll the row back.
func TestStaleEventIgnored(t *testing.T) {
	p := peerRow(1)
	h := newHarness(t, p)
	p.DownloadKbps = 5000
	p.UpdatedAt = p.UpdatedAt.Add(time.Hour)
	h.store.put(p)
	h.resync()
	old := peerRow(1)
	h.event(events.Event{Kind: events.PeerChanged, ID: old.ID, Peer: &old})
	if c, _ := h.plane.has(key(1)); c.DownloadKbps != 5000 {
		t.Fatalf("stale event applied: %+v", c)
	}
}

func TestKeyChangeRemovesOldKeyFirst(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	h.plane.traffic(key(1), 5, 7)
	p := peerRow(1)
	p.PublicKey = key(500).String()
	h.change(p)
	if _, ok := h.plane.has(key(500)); ok {
		t.Fatal("new key added before the old key's bytes were flushed")
	}
	h.flush() // old key's bytes, removal
	h.flush() // zero baseline, then the new key
	if _, ok := h.plane.has(key(1)); ok {
		t.Fatal("old key kept")
	}
	if _, ok := h.plane.has(key(500)); !ok {
		t.Fatal("new key not added")
	}
	h.plane.traffic(key(500), 1, 1)
	h.flush()
	if up, down := h.store.usageSum(p.ID); up != 6 || down != 8 {
		t.Fatalf("usage %d/%d, want 6/8", up, down)
	}
}

func TestHeartbeat(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2))
	h.r.cfg.PublicKey, h.r.cfg.Version = "pub", "v1"
	h.resync()
	h.plane.traffic(key(1), 1, 1)
	h.clk.t = time.Unix(1_700_000_060, 0)
	if err := h.r.Heartbeat(h.ctx, "online"); err != nil {
		t.Fatal(err)
	}
	hb := h.store.heartbeats[len(h.store.heartbeats)-1]
	if hb.Status != "online" || hb.PublicKey != "pub" || hb.Version != "v1" || hb.Peers != 2 || hb.ActiveSessions != 1 {
		t.Fatalf("heartbeat %+v", hb)
	}
	if !strings.Contains(h.store.heartbeats[0].Status, "online") {
		t.Fatal("status")
	}
}

// The partial path (only the changed rows and those they may conflict
// with) decides exactly what deciding every row does, through random
// inserts, updates that move addresses and keys between rows, and deletes.
func TestPartialDecideEqualsFull(t *testing.T) {
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 7))
		h := newHarness(t)
		h.resync()
		for step := range 300 {
			n := 1 + rng.IntN(12)
			p := peerRow(n)
			if old, ok := h.r.rows[p.ID]; ok {
				p = old
			}
			switch op := rng.IntN(10); {
			case op < 2:
				h.store.del(p.ID)
				h.event(events.Event{Kind: events.PeerDeleted, ID: p.ID})
				continue
			case op < 4:
				p.Address = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 8, 0, byte(2 + rng.IntN(6))}), 32)
			case op < 6:
				p.PublicKey = key(1 + rng.IntN(6)).String()
			case op < 7:
				p.Enabled = !p.Enabled
			case op < 8:
				p.PublicKey = "bad"
			default:
				p = peerRow(n)
			}
			h.change(p)
			want := decide(h.r.node, h.r.self, h.r.rows, h.clk.Now(), h.r.quotaUsed)
			got := h.r.lastDec
			if len(got) != len(want) {
				t.Fatalf("seed %d step %d: %d decisions, want %d", seed, step, len(got), len(want))
			}
			for id, w := range want {
				if g := got[id]; g.state != w.state || g.reason != w.reason || !g.cfg.Equal(w.cfg) {
					t.Fatalf("seed %d step %d: %s: partial %s %q, full %s %q", seed, step, id, g.state, g.reason, w.state, w.reason)
				}
			}
			// Never, not even between flushes: a device peer passing
			// traffic that is not exactly an active row's config, or two
			// peers routing one address.
			active := map[Key]PeerConfig{}
			for _, w := range want {
				if w.state == events.StateActive {
					active[w.cfg.PublicKey] = w.cfg
				}
			}
			routed := map[netip.Prefix]Key{}
			h.plane.mu.Lock()
			for k, fp := range h.plane.peers {
				if len(fp.cfg.AllowedIPs) == 0 {
					continue
				}
				if a, ok := active[k]; !ok || !a.Equal(fp.cfg) {
					h.plane.mu.Unlock()
					t.Fatalf("seed %d step %d: device peer %s passes traffic as %+v; active: %v", seed, step, k, fp.cfg, ok)
				}
				for _, ip := range fp.cfg.AllowedIPs {
					if o, dup := routed[ip]; dup {
						h.plane.mu.Unlock()
						t.Fatalf("seed %d step %d: %s routed to %s and %s", seed, step, ip, o, k)
					}
					routed[ip] = k
				}
			}
			h.plane.mu.Unlock()
			if rng.IntN(3) > 0 {
				continue
			}
			// Once leaving keys are flushed and removed, the device holds
			// every active row's config.
			h.flush()
			h.flush()
			for id, w := range want {
				c, ok := h.plane.has(w.cfg.PublicKey)
				if w.state == events.StateActive && (!ok || !c.Equal(w.cfg)) {
					t.Fatalf("seed %d step %d: active %s not applied: %+v %v", seed, step, id, c, ok)
				}
			}
		}
	}
}

// A burst of row-less events (LISTEN) is served by one snapshot, not one
// read per row under the reconciler's lock; with the database down that
// is one failed read, not one timeout per event.
func TestRowlessBurstUsesOneSnapshot(t *testing.T) {
	h := newHarness(t)
	h.resync()
	var batch []events.Event
	for i := 1; i <= maxFetchesPerBatch+1; i++ {
		h.store.put(peerRow(i))
		batch = append(batch, events.Event{Kind: events.PeerChanged, ID: peerRow(i).ID})
	}
	reads, snaps := h.store.peerReads, h.store.snapshots
	if err := h.r.Handle(h.ctx, batch); err != nil {
		t.Fatal(err)
	}
	if got := h.store.peerReads - reads; got != 0 {
		t.Errorf("%d single-row reads for a burst of %d, want 0 (one snapshot)", got, len(batch))
	}
	if got := h.store.snapshots - snaps; got != 1 {
		t.Errorf("%d snapshots, want 1", got)
	}
	h.wantInPlane(1, true)
	h.wantInPlane(maxFetchesPerBatch+1, true)

	h.store.set(func(s *fakeStore) { s.failReads = true })
	reads, snaps = h.store.peerReads, h.store.snapshots
	if err := h.r.Handle(h.ctx, batch); err == nil {
		t.Fatal("a failed snapshot was not reported")
	}
	if got := h.store.peerReads - reads; got != 0 {
		t.Errorf("database down: %d single-row reads, want 0", got)
	}
	if got := h.store.snapshots - snaps; got != 1 {
		t.Errorf("database down: %d snapshots, want 1", got)
	}
	h.wantInPlane(1, true)
}
