package migrations_test

import (
	"context"
	"errors"
	"io/fs"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/migrations"
)

// usageDB is a migrated database with nodes A and B, peers on each, and a
// connection as A's login role.
type usageDB struct {
	db     *pgtest.DB
	a, b   string
	aPeers []string
	bPeers []string
	login  *pgx.Conn
}

func newUsageDB(t *testing.T) *usageDB {
	t.Helper()
	db := dbfix.Migrated(t)
	u := &usageDB{db: db}
	u.a = dbfix.CreateNode(t, db, "node-a", "10.50.0.1/24")
	u.b = dbfix.CreateNode(t, db, "node-b", "10.51.0.1/24")
	u.aPeers = dbfix.AddPeers(t, db, u.a, 3)
	u.bPeers = dbfix.AddPeers(t, db, u.b, 2)
	u.login = connect(t, dbfix.NodeLogin(t, db, u.a))
	return u
}

// record calls record_usage as node A for one peer; end and start are SQL
// expressions.
func (u *usageDB) record(start, end, peer string, up, down int64) (bool, error) {
	var applied bool
	err := u.login.QueryRow(context.Background(), `SELECT waylume.record_usage(`+start+`, `+end+`, ARRAY[$1::uuid], ARRAY[$2::bigint], ARRAY[$3::bigint])`,
		peer, up, down).Scan(&applied)
	return applied, err
}

func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code {
		t.Fatalf("%s: got %v, want SQLSTATE %s", what, err, code)
	}
}

// A stolen node credential cannot forge usage: not for another node's
// peers (current or deleted), not for ids that never existed, not with a
// period ending in the future, not by writing the table directly.
func TestUsageForgeryRefused(t *testing.T) {
	u := newUsageDB(t)
	ctx := context.Background()
	deletedB := u.bPeers[1]
	dbfix.Exec(t, u.db, `DELETE FROM waylume.peers WHERE id = $1`, deletedB)
	direct := `INSERT INTO waylume.peer_usage (node_id, peer_id, period_start, period_end, upload_bytes, download_bytes)
		VALUES ($1, $2, now() - interval '2 minutes', now() - interval '1 minute', 1, 1)`
	for name, peer := range map[string]string{
		"another node's peer":         u.bPeers[0],
		"another node's deleted peer": deletedB,
		"an id that never existed":    "6b7f3e0e-4c1a-4d0e-9f51-000000000001",
	} {
		_, err := u.record("now() - interval '2 minutes'", "now() - interval '1 minute'", peer, 1, 1)
		wantCode(t, "record_usage for "+name, err, "42501")
		_, err = u.login.Exec(ctx, direct, u.a, peer)
		wantCode(t, "direct insert for "+name, err, "42501")
	}
	_, err := u.login.Exec(ctx, direct, u.a, u.aPeers[0])
	wantCode(t, "direct insert for its own peer", err, "42501")
	_, err = u.record("now() - interval '1 minute'", "now() + interval '10 minutes'", u.aPeers[0], 1, 1)
	wantCode(t, "period ending in the future", err, "23514")
	_, err = u.record("now() - interval '1 minute'", "now() - interval '2 minutes'", u.aPeers[0], 1, 1)
	wantCode(t, "empty period", err, "23514")
	_, err = u.record("now() - interval '1 minute'", "now()", u.aPeers[0], -1, 1)
	wantCode(t, "negative bytes", err, "23514")
	// Small clock skew is allowed.
	if ok, err := u.record("now() - interval '1 minute'", "now() + interval '30 seconds'", u.aPeers[0], 1, 1); err != nil || !ok {
		t.Fatalf("30 s ahead: applied %v, %v", ok, err)
	}
	var n int
	dbfix.QueryRow(t, u.db, `SELECT count(*) FROM waylume.peer_usage WHERE node_id = $1 AND peer_id <> $2`, []any{u.a, u.aPeers[0]}, &n)
	if n != 0 {
		t.Fatalf("%d forged usage rows", n)
	}
}

// The last bytes of a peer that was the node's are billed even after the
// peer was deleted or moved to another node, under the node that counted
// them.
func TestUsageOfDepartedPeersKept(t *testing.T) {
	u := newUsageDB(t)
	deleted, moved := u.aPeers[0], u.aPeers[1]
	dbfix.Exec(t, u.db, `DELETE FROM waylume.peers WHERE id = $1`, deleted)
	dbfix.Exec(t, u.db, `UPDATE waylume.peers SET node_id = $1, address = NULL WHERE id = $2`, u.b, moved)
	var applied bool
	if err := u.login.QueryRow(context.Background(), `SELECT waylume.record_usage(now() - interval '1 minute', now(),
		ARRAY[$1::uuid, $2::uuid], '{10, 20}', '{1, 2}')`, deleted, moved).Scan(&applied); err != nil || !applied {
		t.Fatalf("last deltas of departed peers: applied %v, %v", applied, err)
	}
	var up int64
	dbfix.QueryRow(t, u.db, `SELECT sum(upload_bytes)::bigint FROM waylume.peer_usage WHERE node_id = $1`, []any{u.a}, &up)
	if up != 30 {
		t.Fatalf("billed upload %d, want 30", up)
	}
}

// Flushes within one bucket land in one row, incremented in place; a
// retried flush (same period end) is applied once; an older one refused.
func TestUsageBucketsExactlyOnce(t *testing.T) {
	u := newUsageDB(t)
	p := u.aPeers[0]
	base := "date_trunc('hour', now()) - interval '3 hours'"
	ends := []string{base + " + interval '50 minutes'", base + " + interval '55 minutes'", base + " + interval '65 minutes'"}
	start := base
	for i, end := range ends {
		for attempt := range 2 {
			ok, err := u.record(start, end, p, 100, 1)
			if err != nil || ok != (attempt == 0) {
				t.Fatalf("flush %d attempt %d: applied %v, %v", i, attempt, ok, err)
			}
		}
		start = end
	}
	_, err := u.record(base, ends[0], p, 1, 1)
	wantCode(t, "a period end before the last flush", err, "23514")
	var rows, flushes int
	var up int64
	dbfix.QueryRow(t, u.db, `SELECT count(*), sum(flushes)::int, sum(upload_bytes)::bigint FROM waylume.peer_usage WHERE peer_id = $1`, []any{p}, &rows, &flushes, &up)
	if rows != 2 || flushes != 3 || up != 300 {
		t.Fatalf("%d rows, %d flushes, upload %d; want 2 rows (two hours), 3 flushes, 300", rows, flushes, up)
	}

	// A day-wide bucket: the next flushes of the same day share a row.
	dbfix.Exec(t, u.db, `UPDATE waylume.usage_settings SET bucket_width = interval '1 day'`)
	if _, err := u.record(start, base+" + interval '70 minutes'", p, 1, 0); err != nil {
		t.Fatal(err)
	}
	dbfix.Exec(t, u.db, `UPDATE waylume.usage_settings SET bucket_width = interval '1 hour'`)
	var day time.Time
	dbfix.QueryRow(t, u.db, `SELECT bucket FROM waylume.peer_usage WHERE peer_id = $1 ORDER BY period_end DESC LIMIT 1`, []any{p}, &day)
	if !day.Equal(day.UTC().Truncate(24 * time.Hour)) {
		t.Fatalf("day bucket starts at %v, want a UTC midnight", day)
	}
	for _, bad := range []string{"interval '7 minutes'", "interval '2 days'", "interval '30 seconds'"} {
		ctx := context.Background()
		c := connect(t, u.db.URL)
		_, err := c.Exec(ctx, `UPDATE waylume.usage_settings SET bucket_width = `+bad)
		wantCode(t, "bucket width "+bad, err, "23514")
	}
}

// A quota reset inside a bucket starts a row of its own, so the bytes
// after it are counted exactly; quota_usage sums every node's rows and
// answers only for the caller's current peers.
func TestQuotaUsageAcrossNodesAndResets(t *testing.T) {
	u := newUsageDB(t)
	ctx := context.Background()
	p, other := u.aPeers[0], u.aPeers[1]
	dbfix.Exec(t, u.db, `UPDATE waylume.peers SET quota_reset_at = '2000-01-01' WHERE id IN ($1, $2)`, p, other)
	if _, err := u.record("now() - interval '3 minutes'", "now() - interval '2 minutes'", p, 1000, 0); err != nil {
		t.Fatal(err)
	}
	dbfix.Exec(t, u.db, `UPDATE waylume.peers SET quota_reset_at = now() - interval '90 seconds' WHERE id = $1`, p)
	var applied bool
	if err := u.login.QueryRow(ctx, `SELECT waylume.record_usage(now() - interval '2 minutes', now() - interval '1 minute',
		ARRAY[$1::uuid, $2::uuid], '{7, 5}', '{0, 0}')`, p, other).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	quota := func(c *pgx.Conn) map[string]int64 {
		t.Helper()
		rows, err := c.Query(ctx, `SELECT peer_id::text, used_bytes FROM waylume.quota_usage()`)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		var id string
		var n int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { out[id] = n; return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := quota(u.login); got[p] != 7 || got[other] != 5 || len(got) != 2 {
		t.Fatalf("A's quota usage %v, want %s: 7 (since its reset), %s: 5", got, p, other)
	}
	// Moved to B: B sees A's bytes; A no longer sees the peer.
	dbfix.Exec(t, u.db, `UPDATE waylume.peers SET node_id = $1, address = NULL WHERE id = $2`, u.b, p)
	bLogin := connect(t, dbfix.NodeLogin(t, u.db, u.b))
	if got := quota(bLogin); got[p] != 7 || len(got) != 1 {
		t.Fatalf("B's quota usage %v, want only %s: 7", got, p)
	}
	if got := quota(u.login); len(got) != 1 || got[other] != 5 {
		t.Fatalf("A's quota usage after the move %v, want only %s", got, other)
	}
	anon := connect(t, u.db.URL)
	if got := quota(anon); len(got) != 0 {
		t.Fatalf("a session acting for no node sees %v", got)
	}
}

// Rollups per peer per day and month, per node per hour and per metadata
// key (a deleted peer counts under its last metadata); retention.
func TestUsageRollupsAndRetention(t *testing.T) {
	u := newUsageDB(t)
	p0, p1 := u.aPeers[0], u.aPeers[1]
	dbfix.Exec(t, u.db, `UPDATE waylume.peers SET metadata = jsonb_build_object('user_id', 'u1') WHERE id IN ($1, $2)`, p0, p1)
	dbfix.Exec(t, u.db, `INSERT INTO waylume.peer_usage (node_id, peer_id, period_start, period_end, upload_bytes, download_bytes) VALUES
		($1, $2, now() - interval '500 days 1 minute', now() - interval '500 days', 1, 1),
		($1, $2, now() - interval '2 hours 1 minute', now() - interval '2 hours', 10, 20),
		($1, $3, now() - interval '2 hours 1 minute', now() - interval '2 hours', 100, 200)`, u.a, p0, p1)
	if _, err := u.record("now() - interval '2 minutes'", "now() - interval '1 minute'", p0, 1000, 2000); err != nil {
		t.Fatal(err)
	}
	dbfix.Exec(t, u.db, `DELETE FROM waylume.peers WHERE id = $1`, p1)

	var day, month, hourPeers, hourUp, metaUp, metaPeers int64
	dbfix.QueryRow(t, u.db, `SELECT
		(SELECT sum(upload_bytes) FROM waylume.peer_usage_daily WHERE peer_id = $1 AND day >= now() - interval '3 days'),
		(SELECT sum(upload_bytes) FROM waylume.peer_usage_monthly WHERE peer_id = $1 AND month >= now() - interval '70 days'),
		(SELECT sum(peers) FROM waylume.node_usage_hourly WHERE node_id = $2 AND hour = date_trunc('hour', now() - interval '2 hours', 'UTC')),
		(SELECT sum(upload_bytes) FROM waylume.node_usage_hourly WHERE node_id = $2 AND hour >= now() - interval '1 day')`,
		[]any{p0, u.a}, &day, &month, &hourPeers, &hourUp)
	if day != 1010 || month != 1010 || hourPeers != 2 || hourUp != 1110 {
		t.Fatalf("daily %d (want 1010), monthly %d (1010), peers in the hour %d (2), node's day %d (1110)", day, month, hourPeers, hourUp)
	}
	dbfix.QueryRow(t, u.db, `SELECT upload_bytes, peers FROM waylume.usage_by_metadata('user_id', now() - interval '1 day', now() + interval '1 hour')
		WHERE value = 'u1'`, nil, &metaUp, &metaPeers)
	if metaUp != 1110 || metaPeers != 2 {
		t.Fatalf("user u1: upload %d over %d peers, want 1110 over 2 (one deleted)", metaUp, metaPeers)
	}
	var pruned int64
	dbfix.QueryRow(t, u.db, `SELECT waylume.prune_usage(interval '400 days')`, nil, &pruned)
	if pruned != 1 {
		t.Fatalf("pruned %d rows, want 1", pruned)
	}
	c := connect(t, u.db.URL)
	_, err := c.Exec(context.Background(), `SELECT waylume.prune_usage(interval '1 hour')`)
	wantCode(t, "prune keeping an hour", err, "22023")
	_, err = u.login.Exec(context.Background(), `SELECT waylume.prune_usage()`)
	wantCode(t, "prune as a node", err, "42501")
}

// An older database's append-only deltas become bucket rows: one per
// node, peer and hour, sums and counts kept; the node's next flush
// continues after its last one.
func TestUsageMigratesDeltas(t *testing.T) {
	ctx := context.Background()
	db := pgtest.New(t)
	conn := connect(t, db.URL)
	for _, v := range migrations.Versions() {
		if v >= "0007" {
			break
		}
		sql, err := fs.ReadFile(migrations.Files(), v+".sql")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, string(sql)); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
	}
	var node, peer string
	if err := conn.QueryRow(ctx, `SELECT waylume.create_node('old', 'old.test:1', '10.60.0.1/24')::text`).Scan(&node); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+dbfix.RandomKeySQL+`) RETURNING id::text`, node).Scan(&peer); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO waylume.peer_usage (node_id, peer_id, period_start, period_end, upload_bytes, download_bytes)
		SELECT $1, $2, t - interval '1 minute', t, 1, 2
		FROM generate_series(date_trunc('hour', now()) - interval '2 hours' + interval '1 minute', date_trunc('hour', now()) - interval '1 minute', interval '1 minute') t`,
		node, peer); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	var rows, flushes int
	var up, down int64
	if err := conn.QueryRow(ctx, `SELECT count(*), sum(flushes)::int, sum(upload_bytes)::bigint, sum(download_bytes)::bigint FROM waylume.peer_usage`).Scan(&rows, &flushes, &up, &down); err != nil {
		t.Fatal(err)
	}
	if rows != 2 || flushes != 119 || up != 119 || down != 238 {
		t.Fatalf("%d bucket rows, %d flushes, %d/%d bytes; want 2, 119, 119/238", rows, flushes, up, down)
	}
	var role string
	if err := conn.QueryRow(ctx, `SELECT waylume.create_node_login($1)`, node).Scan(&role); err != nil {
		t.Fatal(err)
	}
	login := connect(t, db.URLAs(role))
	var applied bool
	err := login.QueryRow(ctx, `SELECT waylume.record_usage(now() - interval '1 hour', date_trunc('hour', now()) - interval '30 minutes', ARRAY[$1::uuid], '{1}', '{1}')`, peer).Scan(&applied)
	wantCode(t, "a flush before the migrated node's last", err, "23514")
	if err := login.QueryRow(ctx, `SELECT waylume.record_usage(now() - interval '1 minute', now(), ARRAY[$1::uuid], '{1}', '{1}')`, peer).Scan(&applied); err != nil || !applied {
		t.Fatalf("first flush after the migration: %v %v", applied, err)
	}
}
