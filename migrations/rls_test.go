package migrations_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/waylume/waylume-node/internal/dbfix"
)

// asNode runs fn in a transaction (rolled back afterwards) acting as a
// node: either connected as the node's login role, or as a superuser
// session switched the way Realtime/PostgREST do it.
type asNode func(t *testing.T, fn func(tx pgx.Tx))

func TestRLS(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	a := dbfix.CreateNode(t, db, "node-a", "10.50.0.1/24")
	b := dbfix.CreateNode(t, db, "node-b", "10.50.0.1/24")
	aPeers := dbfix.AddPeers(t, db, a, 3)
	bPeers := dbfix.AddPeers(t, db, b, 2)
	dbfix.Exec(t, db, `INSERT INTO waylume.peer_status (peer_id, node_id, state) VALUES ($1, $2, 'active'), ($3, $4, 'active')`, aPeers[0], a, bPeers[0], b)
	dbfix.Exec(t, db, `INSERT INTO waylume.peer_usage (node_id, peer_id, period_start, period_end, upload_bytes, download_bytes)
		VALUES ($1, $2, now() - interval '1 minute', now(), 1, 2), ($3, $4, now() - interval '1 minute', now(), 3, 4)`, a, aPeers[0], b, bPeers[0])

	loginURL := dbfix.NodeLogin(t, db, a)
	login := connect(t, loginURL)
	admin := connect(t, db.URL)

	identities := map[string]asNode{
		"login role": func(t *testing.T, fn func(tx pgx.Tx)) {
			tx, err := login.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			fn(tx)
		},
		"jwt claims": func(t *testing.T, fn func(tx pgx.Tx)) {
			tx, err := admin.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if err := dbfix.ActAsNodeJWT(ctx, tx, a); err != nil {
				t.Fatal(err)
			}
			fn(tx)
		},
	}
	count := func(t *testing.T, tx pgx.Tx, sql string, args ...any) int {
		t.Helper()
		var n int
		if err := tx.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}
	// wantErr runs sql in a savepoint and checks its SQLSTATE.
	wantErr := func(t *testing.T, tx pgx.Tx, code, sql string, args ...any) {
		t.Helper()
		sp, err := tx.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer sp.Rollback(ctx)
		_, err = sp.Exec(ctx, sql, args...)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != code {
			t.Fatalf("%s: got %v, want SQLSTATE %s", sql, err, code)
		}
	}
	affected := func(t *testing.T, tx pgx.Tx, sql string, args ...any) int64 {
		t.Helper()
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return tag.RowsAffected()
	}

	for name, as := range identities {
		t.Run(name, func(t *testing.T) {
			as(t, func(tx pgx.Tx) {
				var me string
				if err := tx.QueryRow(ctx, `SELECT waylume.current_node_id()::text`).Scan(&me); err != nil || me != a {
					t.Fatalf("current_node_id = %q (%v), want %s", me, err, a)
				}
			})
			t.Run("reads only its own rows", func(t *testing.T) {
				as(t, func(tx pgx.Tx) {
					if n := count(t, tx, `SELECT count(*) FROM waylume.peers`); n != len(aPeers) {
						t.Errorf("sees %d peers, want %d", n, len(aPeers))
					}
					if n := count(t, tx, `SELECT count(*) FROM waylume.peers WHERE id = $1`, bPeers[0]); n != 0 {
						t.Errorf("sees node B's peer")
					}
					if n := count(t, tx, `SELECT count(*) FROM waylume.nodes`); n != 1 {
						t.Errorf("sees %d nodes, want 1", n)
					}
					if n := count(t, tx, `SELECT count(*) FROM waylume.nodes WHERE id = $1`, b); n != 0 {
						t.Errorf("sees node B")
					}
					if n := count(t, tx, `SELECT count(*) FROM waylume.peer_status`); n != 1 {
						t.Errorf("sees %d status rows, want 1", n)
					}
					if n := count(t, tx, `SELECT count(*) FROM waylume.peer_usage`); n != 1 {
						t.Errorf("sees %d usage rows, want 1", n)
					}
					if n := count(t, tx, `SELECT count(*) FROM waylume.schema_migrations`); n < 4 {
						t.Errorf("sees %d schema versions, want all", n)
					}
					wantErr(t, tx, "42501", `SELECT * FROM waylume.node_credentials`)
					wantErr(t, tx, "42501", `SELECT * FROM waylume.address_pools`)
				})
			})
			t.Run("writes its own status and usage", func(t *testing.T) {
				as(t, func(tx pgx.Tx) {
					affected(t, tx, `INSERT INTO waylume.peer_status (peer_id, node_id, state, upload_bytes) VALUES ($1, $2, 'active', 5)
						ON CONFLICT (peer_id) DO UPDATE SET upload_bytes = EXCLUDED.upload_bytes`, aPeers[1], a)
					if n := affected(t, tx, `UPDATE waylume.peer_status SET state = 'blocked', reason = 'expired' WHERE peer_id = $1`, aPeers[0]); n != 1 {
						t.Errorf("updated %d own status rows, want 1", n)
					}
					// updated_at ends as now() whatever the writer sets (the
					// touch trigger is skipped only when it already is now()).
					for _, set := range []string{"state = 'active'", "updated_at = '2000-01-01'", "updated_at = now()"} {
						if n := count(t, tx, `WITH u AS (UPDATE waylume.peer_status SET `+set+` WHERE peer_id = $1 RETURNING updated_at)
							SELECT count(*) FROM u WHERE updated_at = now()`, aPeers[0]); n != 1 {
							t.Errorf("SET %s: updated_at is not now()", set)
						}
					}
					var applied bool
					if err := tx.QueryRow(ctx, `SELECT waylume.record_usage(now() - interval '2 minutes', now() - interval '1 minute',
						ARRAY[$1::uuid], '{10}', '{20}')`, aPeers[1]).Scan(&applied); err != nil || !applied {
						t.Errorf("record_usage of its own peer: applied %v, %v", applied, err)
					}
				})
			})
			t.Run("cannot write B's status or usage", func(t *testing.T) {
				as(t, func(tx pgx.Tx) {
					wantErr(t, tx, "42501", `INSERT INTO waylume.peer_status (peer_id, node_id, state) VALUES ($1, $2, 'active')`, bPeers[1], b)
					// Claiming B's peer under its own node id breaks the (peer, node) reference.
					wantErr(t, tx, "23503", `INSERT INTO waylume.peer_status (peer_id, node_id, state) VALUES ($1, $2, 'active')`, bPeers[1], a)
					if n := affected(t, tx, `UPDATE waylume.peer_status SET state = 'blocked' WHERE peer_id = $1`, bPeers[0]); n != 0 {
						t.Errorf("updated B's status row")
					}
					wantErr(t, tx, "42501", `UPDATE waylume.peer_status SET node_id = $1 WHERE peer_id = $2`, b, aPeers[0])
					// Usage only through record_usage, never for a peer that was not its own.
					wantErr(t, tx, "42501", `INSERT INTO waylume.peer_usage (node_id, peer_id, period_start, period_end, upload_bytes, download_bytes)
						VALUES ($1, $2, now() - interval '1 minute', now(), 1, 1)`, a, aPeers[0])
					wantErr(t, tx, "42501", `SELECT waylume.record_usage(now() - interval '1 minute', now(), ARRAY[$1::uuid], '{1}', '{1}')`, bPeers[0])
					wantErr(t, tx, "42501", `UPDATE waylume.peer_usage SET upload_bytes = 0`)
					wantErr(t, tx, "42501", `DELETE FROM waylume.peer_usage`)
				})
			})
			t.Run("cannot change peers", func(t *testing.T) {
				as(t, func(tx pgx.Tx) {
					wantErr(t, tx, "42501", `UPDATE waylume.peers SET enabled = false WHERE id = $1`, aPeers[0])
					wantErr(t, tx, "42501", `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, $2)`, a, goodKey)
					wantErr(t, tx, "42501", `DELETE FROM waylume.peers WHERE id = $1`, aPeers[0])
					wantErr(t, tx, "42501", `SELECT waylume.create_node('x', 'x.test:1', '10.60.0.1/24')`)
					wantErr(t, tx, "42501", `SELECT waylume.create_node_login($1)`, a)
				})
			})
			t.Run("updates only node-owned columns of its own row", func(t *testing.T) {
				as(t, func(tx pgx.Tx) {
					n := affected(t, tx, `UPDATE waylume.nodes SET public_key = $1, status = 'online', last_seen_at = now(), version = 'v1', peer_count = 3, active_sessions = 1 WHERE id = $2`, goodKey, a)
					if n != 1 {
						t.Errorf("heartbeat updated %d rows, want 1", n)
					}
					if n := affected(t, tx, `UPDATE waylume.nodes SET status = 'online' WHERE id = $1`, b); n != 0 {
						t.Errorf("updated node B")
					}
					wantErr(t, tx, "42501", `UPDATE waylume.nodes SET endpoint = 'evil.test:1' WHERE id = $1`, a)
					wantErr(t, tx, "42501", `UPDATE waylume.nodes SET address = '10.70.0.1/16' WHERE id = $1`, a)
					wantErr(t, tx, "42501", `UPDATE waylume.nodes SET id = $1 WHERE id = $2`, b, a)
					wantErr(t, tx, "42501", `DELETE FROM waylume.nodes WHERE id = $1`, a)
				})
			})
		})
	}

	// A login role cannot borrow another node's identity through claims,
	// not even after switching to the group role.
	t.Run("login role ignores claims", func(t *testing.T) {
		tx, err := login.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if err := dbfix.ActAsNodeJWT(ctx, tx, b); err != nil {
			t.Fatal(err)
		}
		if n := count(t, tx, `SELECT count(*) FROM waylume.peers WHERE node_id = $1`, b); n != 0 {
			t.Fatalf("login role of A read %d of B's peers through forged claims", n)
		}
		if n := count(t, tx, `SELECT count(*) FROM waylume.peers`); n != len(aPeers) {
			t.Fatalf("sees %d peers, want A's %d", n, len(aPeers))
		}
	})
	t.Run("claims without node or other role see nothing", func(t *testing.T) {
		for _, claims := range []string{`{"role":"waylume_node"}`, `{"role":"anon","node_id":"` + a + `"}`, `not json`, `{"role":"waylume_node","node_id":"nope"}`} {
			tx, err := admin.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `SELECT set_config('request.jwt.claims', $1, true)`, claims); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `SET LOCAL ROLE waylume_node`); err != nil {
				t.Fatal(err)
			}
			if n := count(t, tx, `SELECT count(*) FROM waylume.peers`); n != 0 {
				t.Errorf("claims %s: sees %d peers, want 0", claims, n)
			}
			tx.Rollback(ctx)
		}
	})
	t.Run("dropped login cannot connect; deleted node's login sees nothing", func(t *testing.T) {
		c := dbfix.CreateNode(t, db, "node-c", "10.80.0.1/24")
		dbfix.AddPeers(t, db, c, 1)
		url := dbfix.NodeLogin(t, db, c)
		conn := connect(t, url)
		dbfix.Exec(t, db, `DELETE FROM waylume.node_credentials WHERE node_id = $1`, c)
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM waylume.peers`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("revoked login sees %d peers (%v)", n, err)
		}
		conn.Close(ctx)
		dbfix.Exec(t, db, `SELECT waylume.drop_node_login($1)`, c)
		if c, err := pgx.Connect(ctx, url); err == nil {
			c.Close(ctx)
			t.Fatal("dropped login still connects")
		}
	})
}
