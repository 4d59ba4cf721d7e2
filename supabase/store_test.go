package supabase_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/supabase"
)

const (
	key1 = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	key2 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
	psk  = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
)

// storeFixture: a migrated database, nodes A and B, and a URL for node A's
// login role (so every store test also runs under row level security).
type storeFixture struct {
	db     *pgtest.DB
	a, b   string
	urlA   string
	role   string // node A's login role
	ctx    context.Context
	cancel context.CancelFunc
}

func newStoreFixture(t testing.TB) *storeFixture {
	t.Helper()
	db := dbfix.Migrated(t)
	f := &storeFixture{db: db}
	f.a = dbfix.CreateNode6(t, db, "node-a", "10.8.0.1/16", "fd00:8::1/64")
	f.b = dbfix.CreateNode(t, db, "node-b", "10.9.0.1/16")
	f.urlA = dbfix.NodeLogin(t, db, f.a)
	f.role = "waylume_node_" + strings.ReplaceAll(f.a, "-", "")
	f.ctx, f.cancel = context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(f.cancel)
	return f
}

func (f *storeFixture) open(t testing.TB, url string) *supabase.Store {
	t.Helper()
	s, err := supabase.OpenStore(f.ctx, url, supabase.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func withMode(url, mode string) string {
	if mode == "" {
		return url
	}
	return url + "&default_query_exec_mode=" + mode
}

// The store's whole surface, in pgx's default mode and in the modes a
// transaction pooler needs (no server-side prepared statements).
func TestStoreModes(t *testing.T) {
	for _, mode := range []string{"", "simple_protocol", "exec"} {
		t.Run("mode="+mode, func(t *testing.T) {
			f := newStoreFixture(t)
			s := f.open(t, withMode(f.urlA, mode))
			ctx := f.ctx

			var id string
			dbfix.QueryRow(t, f.db, `INSERT INTO waylume.peers (node_id, public_key, preshared_key, allowed_ips,
				persistent_keepalive, download_kbps, upload_kbps, quota_bytes, quota_reset_at, expires_at, enabled)
				VALUES ($1, $2, $3, '{192.168.7.0/24,fd00:77::/64}', 25, 10000, 2000, 5000000000,
				'2026-01-01T00:00:00Z', '2027-01-01T00:00:00Z', false) RETURNING id::text`, []any{f.a, key1, psk}, &id)
			var bare string
			dbfix.QueryRow(t, f.db, `INSERT INTO waylume.peers (node_id, public_key, quota_reset_at) VALUES ($1, $2, NULL) RETURNING id::text`, []any{f.a, key2}, &bare)
			otherB := dbfix.AddPeers(t, f.db, f.b, 1)[0]
			dbfix.Exec(t, f.db, `UPDATE waylume.nodes SET dns = '{1.1.1.1,2606:4700:4700::1111}', mtu = 1380, listen_port = 51999 WHERE id = $1`, f.a)

			node, peers, err := s.Snapshot(ctx, f.a)
			if err != nil {
				t.Fatal(err)
			}
			wantNode := events.Node{ID: f.a, Name: "node-a", Endpoint: "node-a.test:51820", ListenPort: 51999,
				Address: netip.MustParsePrefix("10.8.0.1/16"), Address6: netip.MustParsePrefix("fd00:8::1/64"),
				DNS: []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("2606:4700:4700::1111")},
				MTU: 1380, Status: "offline"}
			if diff := cmp.Diff(wantNode, node, cmpopts.IgnoreFields(events.Node{}, "UpdatedAt"), netipEqual); diff != "" {
				t.Errorf("node (-want +got):\n%s", diff)
			}
			if node.UpdatedAt.IsZero() {
				t.Error("node UpdatedAt zero")
			}
			if len(peers) != 2 {
				t.Fatalf("snapshot has %d peers, want 2 (B's excluded)", len(peers))
			}
			want := events.Peer{ID: id, NodeID: f.a, PublicKey: key1, PresharedKey: psk,
				Address: netip.MustParsePrefix("10.8.0.2/32"), Address6: netip.MustParsePrefix("fd00:8::2/128"),
				AllowedIPs:          []netip.Prefix{netip.MustParsePrefix("192.168.7.0/24"), netip.MustParsePrefix("fd00:77::/64")},
				PersistentKeepalive: 25, DownloadKbps: 10000, UploadKbps: 2000, QuotaBytes: 5000000000,
				QuotaResetAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), ExpiresAt: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
			got, err := s.Peer(ctx, f.a, id)
			if err != nil {
				t.Fatal(err)
			}
			opts := []cmp.Option{cmpopts.IgnoreFields(events.Peer{}, "CreatedAt", "UpdatedAt"), netipEqual,
				cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })}
			if diff := cmp.Diff(want, got, opts...); diff != "" {
				t.Errorf("peer (-want +got):\n%s", diff)
			}
			gotBare, err := s.Peer(ctx, f.a, bare)
			if err != nil {
				t.Fatal(err)
			}
			wantBare := events.Peer{ID: bare, NodeID: f.a, PublicKey: key2, Enabled: true,
				Address: netip.MustParsePrefix("10.8.0.3/32"), Address6: netip.MustParsePrefix("fd00:8::3/128"), AllowedIPs: []netip.Prefix{}}
			if diff := cmp.Diff(wantBare, gotBare, opts...); diff != "" {
				t.Errorf("bare peer (-want +got):\n%s", diff)
			}
			for _, p := range peers {
				if p.ID == id {
					if diff := cmp.Diff(want, p, opts...); diff != "" {
						t.Errorf("snapshot peer (-want +got):\n%s", diff)
					}
				}
			}

			// Not found: other node's peer, unknown peer, other node.
			for _, pid := range []string{otherB, "00000000-0000-0000-0000-000000000001"} {
				if _, err := s.Peer(ctx, f.a, pid); !errors.Is(err, supabase.ErrNotFound) {
					t.Errorf("Peer(%s) = %v, want ErrNotFound", pid, err)
				}
			}
			if _, err := s.Node(ctx, f.b); !errors.Is(err, supabase.ErrNotFound) {
				t.Errorf("Node(B) as A = %v, want ErrNotFound", err)
			}
			if _, _, err := s.Snapshot(ctx, f.b); !errors.Is(err, supabase.ErrNotFound) {
				t.Errorf("Snapshot(B) as A = %v, want ErrNotFound", err)
			}

			// Heartbeat: node-owned columns only, liveness in node_status.
			if err := s.Heartbeat(ctx, f.a, events.Heartbeat{PublicKey: key2, Status: "online", Version: "v1.2.3", Peers: 2, ActiveSessions: 1}); err != nil {
				t.Fatal(err)
			}
			var pk, status, version string
			var seen, updated, updated2 time.Time
			var peerCount int
			dbfix.QueryRow(t, f.db, `SELECT public_key, status, version, last_seen_at, peer_count FROM waylume.node_overview WHERE id = $1`, []any{f.a},
				&pk, &status, &version, &seen, &peerCount)
			if pk != key2 || status != "online" || version != "v1.2.3" || time.Since(seen) > time.Minute || peerCount != 2 {
				t.Errorf("after heartbeat: %s %s %s %v %d", pk, status, version, seen, peerCount)
			}
			// At rest a heartbeat leaves the published row alone.
			dbfix.QueryRow(t, f.db, `SELECT updated_at FROM waylume.nodes WHERE id = $1`, []any{f.a}, &updated)
			if err := s.Heartbeat(ctx, f.a, events.Heartbeat{PublicKey: key2, Status: "online", Version: "v1.2.3", Peers: 3}); err != nil {
				t.Fatal(err)
			}
			dbfix.QueryRow(t, f.db, `SELECT updated_at FROM waylume.nodes WHERE id = $1`, []any{f.a}, &updated2)
			if !updated2.Equal(updated) {
				t.Errorf("a heartbeat with an unchanged key rewrote waylume.nodes (updated_at %v -> %v)", updated, updated2)
			}
			if err := s.Heartbeat(ctx, f.b, events.Heartbeat{Status: "online"}); !errors.Is(err, supabase.ErrNotFound) {
				t.Errorf("heartbeat for B as A = %v, want ErrNotFound", err)
			}

			// Status and usage round trip.
			now := time.Now().UTC().Truncate(time.Microsecond)
			st := events.PeerStatus{PeerID: id, NodeID: f.a, State: events.StateBlocked, Reason: "expired",
				LastHandshakeAt: now.Add(-time.Minute), Endpoint: "198.51.100.7:41641", UploadBytes: 100, DownloadBytes: 200,
				RxBaseline: 1100, TxBaseline: 1200, CounterEpoch: "boot-1/7", AppliedAt: now}
			usage := []events.Usage{{PeerID: id, PeriodStart: now.Add(-time.Minute), PeriodEnd: now, UploadBytes: 100, DownloadBytes: 200}}
			if err := s.WriteStatus(ctx, f.a, usage, []events.PeerStatus{st}); err != nil {
				t.Fatal(err)
			}
			sts, err := s.PeerStatuses(ctx, f.a)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]events.PeerStatus{st}, sts, opts...); diff != "" {
				t.Errorf("statuses (-want +got):\n%s", diff)
			}
			quota, err := s.QuotaUsage(ctx, f.a)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(map[string]int64{id: 300}, quota); diff != "" {
				t.Errorf("quota usage (-want +got):\n%s", diff)
			}

			// Errors name the operation and keep the SQLSTATE.
			bad := st
			bad.State = "weird"
			err = s.WriteStatus(ctx, f.a, nil, []events.PeerStatus{bad})
			var pgErr *pgconn.PgError
			var opErr *supabase.OpError
			if !errors.As(err, &pgErr) || pgErr.Code != "23514" || !errors.As(err, &opErr) || opErr.Op != "write status" {
				t.Errorf("bad status: %v, want a write status OpError with SQLSTATE 23514", err)
			}
		})
	}
}

func TestStoreSnapshot10k(t *testing.T) {
	f := newStoreFixture(t)
	dbfix.AddPeers(t, f.db, f.a, 10000)
	dbfix.AddPeers(t, f.db, f.b, 100)
	s := f.open(t, f.urlA)
	node, peers, err := s.Snapshot(f.ctx, f.a)
	if err != nil {
		t.Fatal(err)
	}
	if node.ID != f.a || len(peers) != 10000 {
		t.Fatalf("snapshot: node %s, %d peers; want %s, 10000", node.ID, len(peers), f.a)
	}
	// The pool never holds more than 4 connections, however many callers.
	var wg sync.WaitGroup
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := s.Snapshot(f.ctx, f.a); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var conns int
	dbfix.QueryRow(t, f.db, `SELECT count(*) FROM pg_stat_activity WHERE usename = $1`, []any{f.role}, &conns)
	if conns < 1 || conns > 4 {
		t.Fatalf("%d connections of the node's role, want 1..4", conns)
	}
	seen := map[netip.Prefix]bool{}
	for _, p := range peers {
		if p.NodeID != f.a || !p.Address.IsValid() || !p.Address6.IsValid() || seen[p.Address] {
			t.Fatalf("bad peer in snapshot: %+v", p)
		}
		seen[p.Address] = true
	}
}

func TestStoreWriteStatus10k(t *testing.T) {
	f := newStoreFixture(t)
	ids := dbfix.AddPeers(t, f.db, f.a, 10000)
	bPeer := dbfix.AddPeers(t, f.db, f.b, 1)[0]
	s := f.open(t, f.urlA)
	end := time.Now().UTC().Add(-2 * time.Minute).Truncate(time.Second)
	usage, status := usageBatch(ids, end)

	// A peer deleted after the node measured it: its usage is kept
	// (billing), its status skipped. A status row for node B's peer is
	// skipped, the batch does not fail.
	gone := ids[17]
	dbfix.Exec(t, f.db, `DELETE FROM waylume.peers WHERE id = $1`, gone)
	status = append(status, events.PeerStatus{PeerID: bPeer, NodeID: f.a, State: events.StateActive})
	// The same peer twice in one batch: its deltas add up.
	dup := usage[5]
	dup.UploadBytes = 99999
	usage = append(usage, dup)
	status = append(status, status[6])
	wantUp := int64(10000*1000 + 99999)

	for attempt := range 2 { // the retry after a lost commit is a no-op
		if err := s.WriteStatus(f.ctx, f.a, usage, status); err != nil {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
		var nUsage, nStatus int
		var sumUp int64
		dbfix.QueryRow(t, f.db, `SELECT (SELECT count(*) FROM waylume.peer_usage), (SELECT count(*) FROM waylume.peer_status),
			(SELECT sum(upload_bytes) FROM waylume.peer_usage)`, nil, &nUsage, &nStatus, &sumUp)
		if nUsage != 10000 || nStatus != 9999 || sumUp != wantUp {
			t.Fatalf("attempt %d: %d usage rows (want 10000), %d status rows (want 9999), upload sum %d (want %d)", attempt, nUsage, nStatus, sumUp, wantUp)
		}
	}
	// The next flush adds to the same bucket rows (a second bucket only
	// across an hour boundary); an id spelled in upper case is the same peer.
	next := events.Usage{PeerID: ids[0], PeriodStart: end, PeriodEnd: end.Add(time.Minute), UploadBytes: 7, DownloadBytes: 7}
	upper := next
	upper.PeerID, upper.UploadBytes = strings.ToUpper(ids[1]), 8
	if err := s.WriteStatus(f.ctx, f.a, []events.Usage{upper, next}, nil); err != nil {
		t.Fatalf("next flush: %v", err)
	}
	var flushes int
	var sumUp int64
	dbfix.QueryRow(t, f.db, `SELECT sum(flushes)::int, sum(upload_bytes)::bigint FROM waylume.peer_usage`, nil, &flushes, &sumUp)
	if flushes != 10002 || sumUp != wantUp+15 {
		t.Fatalf("next flush: %d flushes in the rows (want 10002), upload sum %d (want %d)", flushes, sumUp, wantUp+15)
	}
	var goneUsage int
	dbfix.QueryRow(t, f.db, `SELECT count(*) FROM waylume.peer_usage WHERE peer_id = $1`, []any{gone}, &goneUsage)
	if goneUsage != 1 {
		t.Fatalf("deleted peer's usage rows: %d, want 1", goneUsage)
	}
	sts, err := s.PeerStatuses(f.ctx, f.a)
	if err != nil || len(sts) != 9999 {
		t.Fatalf("PeerStatuses: %d rows (%v)", len(sts), err)
	}
}

// A peer moved from node A to node B: A's last delta is billed (under A),
// and B's quota counts what the peer used on A, so the move does not
// reset its quota.
func TestStoreMovedPeerBilledAndQuotaFollows(t *testing.T) {
	f := newStoreFixture(t)
	p := dbfix.AddPeers(t, f.db, f.a, 1)[0]
	dbfix.Exec(t, f.db, `UPDATE waylume.peers SET quota_bytes = 1000000, quota_reset_at = now() - interval '1 hour' WHERE id = $1`, p)
	a := f.open(t, f.urlA)
	b := f.open(t, dbfix.NodeLogin(t, f.db, f.b))
	end := time.Now().UTC().Add(-time.Minute)
	if err := a.WriteStatus(f.ctx, f.a, []events.Usage{{PeerID: p, PeriodStart: end.Add(-time.Minute), PeriodEnd: end, UploadBytes: 300, DownloadBytes: 200}}, nil); err != nil {
		t.Fatal(err)
	}
	dbfix.Exec(t, f.db, `UPDATE waylume.peers SET node_id = $1, address = NULL, address6 = NULL WHERE id = $2`, f.b, p)
	// A's final read after the move.
	if err := a.WriteStatus(f.ctx, f.a, []events.Usage{{PeerID: p, PeriodStart: end, PeriodEnd: end.Add(time.Second), UploadBytes: 40, DownloadBytes: 2}}, nil); err != nil {
		t.Fatalf("the old node's last delta: %v", err)
	}
	var billed int64
	dbfix.QueryRow(t, f.db, `SELECT sum(upload_bytes + download_bytes)::bigint FROM waylume.peer_usage WHERE peer_id = $1 AND node_id = $2`, []any{p, f.a}, &billed)
	if billed != 542 {
		t.Fatalf("billed on A %d, want 542", billed)
	}
	used, err := b.QuotaUsage(f.ctx, f.b)
	if err != nil {
		t.Fatal(err)
	}
	if used[p] != 542 {
		t.Fatalf("B's quota usage of the moved peer %d, want 542 (used on A)", used[p])
	}
	if used, err := a.QuotaUsage(f.ctx, f.a); err != nil || len(used) != 0 {
		t.Fatalf("A still sees quota usage %v (%v) of a peer it no longer has", used, err)
	}
}

var netipEqual = cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})

func usageBatch(ids []string, end time.Time) ([]events.Usage, []events.PeerStatus) {
	usage := make([]events.Usage, len(ids))
	status := make([]events.PeerStatus, len(ids))
	for i, id := range ids {
		usage[i] = events.Usage{PeerID: id, PeriodStart: end.Add(-time.Minute), PeriodEnd: end, UploadBytes: 1000, DownloadBytes: 2000}
		status[i] = events.PeerStatus{PeerID: id, State: events.StateActive, LastHandshakeAt: end.Add(-10 * time.Second),
			Endpoint: fmt.Sprintf("198.51.100.%d:%d", i%250+1, 40000+i%20000), UploadBytes: 1000, DownloadBytes: 2000,
			RxBaseline: 1000, TxBaseline: 2000, CounterEpoch: "boot/1", AppliedAt: end.Add(-time.Hour)}
	}
	return usage, status
}

func TestOpenStoreErrors(t *testing.T) {
	ctx := context.Background()
	_, err := supabase.OpenStore(ctx, "postgres://user:s3cret@[::1", supabase.StoreOptions{})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad URL: %v (must fail without echoing the password)", err)
	}
	db := pgtest.New(t)
	_, err = supabase.OpenStore(ctx, db.URLAs("no_such_role"), supabase.StoreOptions{})
	var pgErr *pgconn.PgError
	var opErr *supabase.OpError
	if !errors.As(err, &pgErr) || !errors.As(err, &opErr) || opErr.Op != "open store" {
		t.Fatalf("unknown role: %v, want an open store OpError wrapping a PgError", err)
	}
}

// A lazy store opens with the database unreachable and fails only when used.
func TestOpenStoreLazy(t *testing.T) {
	ctx := context.Background()
	// Port 1 on loopback: nothing listens, connecting is refused at once.
	s, err := supabase.OpenStore(ctx, "postgres://node:pw@127.0.0.1:1/db?connect_timeout=2", supabase.StoreOptions{Lazy: true})
	if err != nil {
		t.Fatalf("lazy open with the database down: %v", err)
	}
	defer s.Close()
	if _, err := s.Node(ctx, "00000000-0000-0000-0000-00000000000a"); err == nil {
		t.Fatal("a read through an unreachable database succeeded")
	}
	if _, err := supabase.OpenStore(ctx, "postgres://node:pw@127.0.0.1:1/db?connect_timeout=2", supabase.StoreOptions{}); err == nil {
		t.Fatal("an eager open with the database down succeeded")
	}
}

// The store classifies what the reconciler must tell apart: a row that is
// gone, a write the database refuses for good, and the rest (transient),
// each provoked for real under the node's login role.
func TestStoreErrorsClassified(t *testing.T) {
	f := newStoreFixture(t)
	s := f.open(t, f.urlA)
	ctx := f.ctx
	own := dbfix.AddPeers(t, f.db, f.a, 1)[0]
	otherB := dbfix.AddPeers(t, f.db, f.b, 1)[0]
	end := time.Now().UTC().Truncate(time.Microsecond)

	check := func(name string, err error, notFound, refused bool, code string) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: no error", name)
			return
		}
		if got := errors.Is(err, events.ErrNotFound); got != notFound {
			t.Errorf("%s: errors.Is(ErrNotFound) = %v, want %v (%v)", name, got, notFound, err)
		}
		if got := errors.Is(err, events.ErrRefused); got != refused {
			t.Errorf("%s: errors.Is(ErrRefused) = %v, want %v (%v)", name, got, refused, err)
		}
		var pgErr *pgconn.PgError
		if code != "" && (!errors.As(err, &pgErr) || pgErr.Code != code) {
			t.Errorf("%s: %v, want SQLSTATE %s", name, err, code)
		}
	}

	// Usage for a peer that was never the node's (42501).
	err := s.WriteStatus(ctx, f.b, []events.Usage{{PeerID: otherB, PeriodStart: end.Add(-time.Minute), PeriodEnd: end, UploadBytes: 1, DownloadBytes: 1}}, nil)
	check("usage as another node", err, false, true, "42501")
	// A period ending in the future (23514).
	err = s.WriteStatus(ctx, f.a, []events.Usage{{PeerID: own, PeriodStart: end, PeriodEnd: end.Add(time.Hour), UploadBytes: 1}}, nil)
	check("usage in the future", err, false, true, "23514")
	// A constraint: period_end must follow period_start (23514).
	err = s.WriteStatus(ctx, f.a, []events.Usage{{PeerID: own, PeriodStart: end, PeriodEnd: end.Add(-time.Minute), UploadBytes: 1}}, nil)
	check("usage period backwards", err, false, true, "23514")
	// Gone or another node's.
	_, err = s.Peer(ctx, f.a, otherB)
	check("peer of another node", err, true, false, "")
	_, err = s.Peer(ctx, f.a, "00000000-0000-0000-0000-000000000001")
	check("unknown peer", err, true, false, "")
	_, err = s.Node(ctx, f.b)
	check("another node", err, true, false, "")
	check("heartbeat of another node", s.Heartbeat(ctx, f.b, events.Heartbeat{Status: "online"}), true, false, "")
	// Transient: neither.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err = s.Snapshot(cctx, f.a)
	check("cancelled snapshot", err, false, false, "")

	// The refused writes changed nothing.
	var n int
	dbfix.QueryRow(t, f.db, `SELECT count(*) FROM waylume.peer_usage`, nil, &n)
	if n != 0 {
		t.Fatalf("%d usage rows after refused writes, want 0", n)
	}
}
