// Package dbfix gives tests of any package a migrated throwaway database
// and one-line nodes, peers and node logins. It builds on internal/pgtest:
// the test package's TestMain must call pgtest.Main.
package dbfix

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/migrations"
)

// Roles are cluster-wide: migrating several databases of one cluster at
// once could race on CREATE ROLE. Tests of one binary migrate in turn.
var migrateMu sync.Mutex

// RandomKeySQL is an SQL expression for a random canonical WireGuard key
// (base64 of 32 bytes), without pgcrypto.
const RandomKeySQL = `encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64')`

// Migrated returns a new database of the package's pgtest cluster with all
// migrations applied.
func Migrated(t testing.TB) *pgtest.DB {
	t.Helper()
	db := pgtest.New(t)
	migrate(t, db)
	return db
}

// MigratedSupabase returns a new database shaped like a Supabase project
// (SupabaseRoles, the auth and realtime stand-ins of SupabaseRealtime)
// with all migrations applied on top, as the Supabase CLI would.
func MigratedSupabase(t testing.TB) *pgtest.DB {
	t.Helper()
	SupabaseRoles(t)
	db := pgtest.New(t)
	SupabaseRealtime(t, db)
	migrate(t, db)
	return db
}

func migrate(t testing.TB, db *pgtest.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatalf("dbfix: connect: %v", err)
	}
	defer conn.Close(ctx)
	migrateMu.Lock()
	defer migrateMu.Unlock()
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatalf("dbfix: migrate: %v", err)
	}
}

// SupabaseRoles creates, once per cluster, the roles a Supabase project
// has before the migrations run: service_role (BYPASSRLS, the app
// backend's admin path, which the migrations grant), authenticated (user
// tokens' role) and realtime_admin (LOGIN REPLICATION, the Realtime
// server's connection, trusted with request.jwt.claims as a member of
// waylume_jwt_proxy). Call it before
// Migrated so the grants land as they would on a project.
func SupabaseRoles(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.Current(t).URL("postgres", "postgres"))
	if err != nil {
		t.Fatalf("dbfix: connect: %v", err)
	}
	defer conn.Close(ctx)
	migrateMu.Lock()
	defer migrateMu.Unlock()
	if _, err := conn.Exec(ctx, `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
			CREATE ROLE service_role NOLOGIN BYPASSRLS; END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'realtime_admin') THEN
			CREATE ROLE realtime_admin LOGIN REPLICATION; END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
			CREATE ROLE authenticated NOLOGIN NOINHERIT; END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'waylume_jwt_proxy') THEN
			CREATE ROLE waylume_jwt_proxy NOLOGIN; END IF;
		GRANT authenticated, waylume_jwt_proxy TO realtime_admin; END $$`); err != nil {
		t.Fatalf("dbfix: supabase roles: %v", err)
	}
}

// superuser connects to db as the superuser for one statement; done
// closes the connection.
func superuser(t testing.TB, db *pgtest.DB) (ctx context.Context, conn *pgx.Conn, done func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		cancel()
		t.Fatalf("dbfix: connect: %v", err)
	}
	return ctx, conn, func() { conn.Close(ctx); cancel() }
}

// Exec runs sql as the superuser and fails the test on error.
func Exec(t testing.TB, db *pgtest.DB, sql string, args ...any) {
	t.Helper()
	ctx, conn, done := superuser(t, db)
	defer done()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("dbfix: %s: %v", sql, err)
	}
}

// QueryRow runs sql as the superuser and scans its one row into dest.
func QueryRow(t testing.TB, db *pgtest.DB, sql string, args []any, dest ...any) {
	t.Helper()
	ctx, conn, done := superuser(t, db)
	defer done()
	if err := conn.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		t.Fatalf("dbfix: %s: %v", sql, err)
	}
}

// CreateNode creates a node through waylume.create_node with endpoint
// "<name>.test:51820" and address, the node's tunnel address with its pool
// prefix (e.g. "10.8.0.1/16"), and returns its id.
func CreateNode(t testing.TB, db *pgtest.DB, name, address string) string {
	t.Helper()
	var id string
	QueryRow(t, db, `SELECT waylume.create_node(name => $1, endpoint => $1 || '.test:51820', address => $2::inet)::text`,
		[]any{name, address}, &id)
	return id
}

// CreateNode6 is CreateNode with an IPv6 pool too (e.g. "fd00::1/64").
func CreateNode6(t testing.TB, db *pgtest.DB, name, address, address6 string) string {
	t.Helper()
	var id string
	QueryRow(t, db, `SELECT waylume.create_node(name => $1, endpoint => $1 || '.test:51820', address => $2::inet, address6 => $3::inet)::text`,
		[]any{name, address, address6}, &id)
	return id
}

// AddPeers inserts n peers with random keys and allocated addresses into
// node nodeID and returns their ids in address order.
func AddPeers(t testing.TB, db *pgtest.DB, nodeID string, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatalf("dbfix: connect: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `WITH ins AS (
		INSERT INTO waylume.peers (node_id, public_key)
		SELECT $1::uuid, `+RandomKeySQL+` FROM generate_series(1, $2)
		RETURNING id, address)
		SELECT id::text FROM ins ORDER BY address`, nodeID, n)
	if err != nil {
		t.Fatalf("dbfix: add peers: %v", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("dbfix: add peers: %v", err)
	}
	return ids
}

// NodeLogin creates node nodeID's login role (waylume.create_node_login)
// and returns a connection URL for it (pgtest uses trust auth).
func NodeLogin(t testing.TB, db *pgtest.DB, nodeID string) string {
	t.Helper()
	var role string
	QueryRow(t, db, `SELECT waylume.create_node_login($1::uuid)`, []any{nodeID}, &role)
	return db.URLAs(role)
}

// ActAsNodeJWT makes the rest of transaction tx act as node nodeID the way
// Supabase Realtime and PostgREST do: request.jwt.claims set locally with
// role waylume_node and the node_id claim, then SET LOCAL ROLE waylume_node.
// tx must belong to a superuser (or authenticator-like) connection.
func ActAsNodeJWT(ctx context.Context, tx pgx.Tx, nodeID string) error {
	claims, err := json.Marshal(map[string]any{"role": "waylume_node", "node_id": nodeID, "exp": 4102444800})
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('request.jwt.claims', $1, true)`, string(claims)); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `SET LOCAL ROLE waylume_node`)
	return err
}
