package migrations_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
)

// identityFixture: nodes a and b with peers, a superuser connection
// (which Realtime is trusted as) and helpers acting with claims.
type identityFixture struct {
	db     *pgtest.DB
	admin  *pgx.Conn
	a, b   string
	aPeers []string
}

func newIdentityFixture(t *testing.T) *identityFixture {
	t.Helper()
	dbfix.SupabaseRoles(t)
	f := &identityFixture{db: dbfix.Migrated(t)}
	f.a = dbfix.CreateNode(t, f.db, "node-a", "10.60.0.1/24")
	f.b = dbfix.CreateNode(t, f.db, "node-b", "10.60.0.1/24")
	f.aPeers = dbfix.AddPeers(t, f.db, f.a, 3)
	dbfix.AddPeers(t, f.db, f.b, 2)
	f.admin = connect(t, f.db.URL)
	return f
}

// visible counts the peers and nodes conn sees acting as role with
// claims, the way Realtime and PostgREST switch (SET LOCAL ROLE after
// request.jwt.claims).
func visible(t *testing.T, conn *pgx.Conn, role string, claims map[string]any) (peers, nodes int) {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	b, _ := json.Marshal(claims)
	if _, err := tx.Exec(ctx, `SELECT set_config('request.jwt.claims', $1, true)`, string(b)); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+pgx.Identifier{role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM waylume.peers), (SELECT count(*) FROM waylume.nodes)`).Scan(&peers, &nodes); err != nil {
		t.Fatal(err)
	}
	return peers, nodes
}

func authClaims(nodeID string, iat time.Time) map[string]any {
	return map[string]any{"role": "authenticated", "sub": "3b7c4d1e-0000-4000-8000-000000000001", "aud": "authenticated",
		"iat": iat.Unix(), "exp": iat.Add(time.Hour).Unix(), "app_metadata": map[string]any{"provider": "email", "node_id": nodeID}}
}

// A Supabase Auth user with app_metadata.node_id reads its node's row and
// peers through Realtime/PostgREST as authenticated; an end user of the
// same project, or a claim anywhere but app_metadata, reads nothing.
func TestAuthenticatedNodeIdentity(t *testing.T) {
	f := newIdentityFixture(t)
	now := time.Now()
	if p, n := visible(t, f.admin, "authenticated", authClaims(f.a, now)); p != 3 || n != 1 {
		t.Errorf("Auth user of node a sees %d peers, %d nodes; want 3, 1", p, n)
	}
	for name, claims := range map[string]map[string]any{
		"end user":          {"role": "authenticated", "sub": "u", "iat": now.Unix(), "app_metadata": map[string]any{"provider": "email"}},
		"user_metadata":     {"role": "authenticated", "iat": now.Unix(), "user_metadata": map[string]any{"node_id": f.a}},
		"top-level node_id": {"role": "authenticated", "iat": now.Unix(), "node_id": f.a},
		"anon":              {"role": "anon", "node_id": f.a, "app_metadata": map[string]any{"node_id": f.a}},
		"not a uuid":        authClaims("node-a", now),
		"not an object":     {"role": "authenticated", "app_metadata": "node_id"},
	} {
		role := "authenticated"
		if claims["role"] == "anon" {
			role = "waylume_node"
		}
		if p, n := visible(t, f.admin, role, claims); p != 0 || n != 0 {
			t.Errorf("%s: sees %d peers, %d nodes; want nothing", name, p, n)
		}
	}
	// authenticated may read nodes and peers (under RLS) and nothing else.
	ctx := context.Background()
	for _, sql := range []string{
		`SELECT count(*) FROM waylume.peer_status`, `SELECT count(*) FROM waylume.peer_usage`,
		`SELECT count(*) FROM waylume.node_credentials`, `SELECT count(*) FROM waylume.node_revocations`,
		`UPDATE waylume.nodes SET status = 'online'`, `SELECT waylume.foreign_peers(gen_random_uuid(), '{}')`,
	} {
		tx, _ := f.admin.Begin(ctx)
		b, _ := json.Marshal(authClaims(f.a, now))
		tx.Exec(ctx, `SELECT set_config('request.jwt.claims', $1, true)`, string(b))
		tx.Exec(ctx, `SET LOCAL ROLE authenticated`)
		_, err := tx.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("authenticated: %s: %v, want 42501", sql, err)
		}
		tx.Rollback(ctx)
	}
}

// Claims count only in sessions of a JWT proxy (superuser, or a direct
// member of waylume_jwt_proxy such as PostgREST's authenticator): a login
// that merely holds waylume_node or authenticated cannot claim a node.
func TestClaimsTrustedOnlyForJWTProxies(t *testing.T) {
	f := newIdentityFixture(t)
	suffix := strings.ReplaceAll(f.a[:8], "-", "")
	rogue, proxy := "rogue_"+suffix, "proxy_"+suffix
	dbfix.Exec(t, f.db, `CREATE ROLE `+rogue+` LOGIN`)
	dbfix.Exec(t, f.db, `GRANT waylume_node, authenticated TO `+rogue)
	dbfix.Exec(t, f.db, `CREATE ROLE `+proxy+` LOGIN NOINHERIT`)
	dbfix.Exec(t, f.db, `GRANT waylume_node, authenticated, waylume_jwt_proxy TO `+proxy)
	t.Cleanup(func() { dbfix.Exec(t, f.db, `DROP OWNED BY `+rogue+`, `+proxy+`; DROP ROLE `+rogue+`, `+proxy) })
	now := time.Now()
	node := map[string]any{"role": "waylume_node", "node_id": f.a, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}

	rc := connect(t, f.db.URLAs(rogue))
	for _, tc := range []struct {
		role   string
		claims map[string]any
	}{{"waylume_node", node}, {"authenticated", authClaims(f.a, now)}} {
		if p, n := visible(t, rc, tc.role, tc.claims); p != 0 || n != 0 {
			t.Errorf("a non-proxy login acting as %s with node a's claims sees %d peers, %d nodes", tc.role, p, n)
		}
	}
	pc := connect(t, f.db.URLAs(proxy))
	if p, _ := visible(t, pc, "waylume_node", node); p != 3 {
		t.Errorf("a JWT proxy's session sees %d of node a's peers, want 3", p)
	}
	if p, _ := visible(t, pc, "authenticated", authClaims(f.a, now)); p != 3 {
		t.Errorf("a JWT proxy's session (Auth user) sees %d of node a's peers, want 3", p)
	}
	// A node's own login role is never trusted with claims.
	login := connect(t, dbfix.NodeLogin(t, f.db, f.b))
	if p, _ := visible(t, login, "waylume_node", node); p != 2 {
		t.Errorf("node b's login claiming node a sees %d peers, want its own 2", p)
	}
}

// Node login roles have a connection limit; drop_node_login ends the
// role's sessions and drops what it owns, large objects included.
func TestDropNodeLoginWithOwnedObjects(t *testing.T) {
	f := newIdentityFixture(t)
	ctx := context.Background()
	var role string
	var limit int
	dbfix.QueryRow(t, f.db, `SELECT waylume.create_node_login($1::uuid)`, []any{f.a}, &role)
	dbfix.QueryRow(t, f.db, `SELECT rolconnlimit FROM pg_roles WHERE rolname = $1`, []any{role}, &limit)
	if limit != 8 {
		t.Errorf("node login connection limit %d, want 8", limit)
	}
	login := connect(t, f.db.URLAs(role))
	var lo uint32
	if err := login.QueryRow(ctx, `SELECT lo_from_bytea(0, 'x')`).Scan(&lo); err != nil {
		t.Fatal(err)
	}
	if _, err := login.Exec(ctx, `CREATE TEMP TABLE t (x int)`); err != nil {
		t.Fatal(err)
	}
	dbfix.Exec(t, f.db, `SELECT waylume.drop_node_login($1::uuid)`, f.a)
	var n int
	dbfix.QueryRow(t, f.db, `SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1) + (SELECT count(*) FROM pg_largeobject_metadata WHERE oid = $2)`, []any{role, lo}, &n)
	if n != 0 {
		t.Errorf("role or its large object still there (%d)", n)
	}
	if err := login.Ping(ctx); err == nil {
		t.Error("the dropped role's session still works")
	}
}

// revoke_node(a) refuses a's tokens issued before it (Auth user and
// minted), disables a's login role (session ended, owned objects gone),
// bans a's Auth users where Auth shares the database; node b and tokens
// issued afterwards are unaffected.
func TestRevokeNode(t *testing.T) {
	f := newIdentityFixture(t)
	ctx := context.Background()
	// Supabase Auth's tables, as far as revoke_node touches them.
	dbfix.Exec(t, f.db, `CREATE SCHEMA auth;
		CREATE TABLE auth.users (id uuid PRIMARY KEY, raw_app_meta_data jsonb, banned_until timestamptz);
		CREATE TABLE auth.sessions (id uuid PRIMARY KEY, user_id uuid REFERENCES auth.users (id) ON DELETE CASCADE)`)
	dbfix.Exec(t, f.db, `INSERT INTO auth.users VALUES (gen_random_uuid(), jsonb_build_object('node_id', $1::text), NULL),
		(gen_random_uuid(), jsonb_build_object('node_id', $2::text), NULL)`, f.a, f.b)
	dbfix.Exec(t, f.db, `INSERT INTO auth.sessions SELECT gen_random_uuid(), id FROM auth.users`)

	aLogin := connect(t, dbfix.NodeLogin(t, f.db, f.a))
	bLogin := connect(t, dbfix.NodeLogin(t, f.db, f.b))
	var lo uint32
	if err := aLogin.QueryRow(ctx, `SELECT lo_from_bytea(0, 'x')`).Scan(&lo); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Minute)
	minted := map[string]any{"role": "waylume_node", "node_id": f.a, "iat": before.Unix(), "exp": before.Add(24 * time.Hour).Unix()}

	rows, err := f.admin.Query(ctx, `SELECT waylume.revoke_node($1::uuid)`, f.a)
	if err != nil {
		t.Fatal(err)
	}
	said, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(said) != 3 || !strings.Contains(said[2], "1 Auth user(s) banned") {
		t.Fatalf("revoke_node said %q (%v)", said, err)
	}

	if p, n := visible(t, f.admin, "waylume_node", minted); p+n != 0 {
		t.Errorf("a's minted token from before the revocation sees %d peers, %d nodes", p, n)
	}
	if p, n := visible(t, f.admin, "authenticated", authClaims(f.a, before)); p+n != 0 {
		t.Errorf("a's Auth token from before the revocation sees %d peers, %d nodes", p, n)
	}
	noIat := map[string]any{"role": "waylume_node", "node_id": f.a, "exp": time.Now().Add(time.Hour).Unix()}
	if p, _ := visible(t, f.admin, "waylume_node", noIat); p != 0 {
		t.Error("a token without iat passes the revocation floor")
	}
	if err := aLogin.Ping(ctx); err == nil {
		t.Error("a's login session survived the revocation")
	}
	if _, err := pgx.Connect(ctx, f.db.URLAs("waylume_node_"+strings.ReplaceAll(f.a, "-", ""))); err == nil {
		t.Error("a's login role can still log in")
	}
	var banned, others, los int
	dbfix.QueryRow(t, f.db, `SELECT
		(SELECT count(*) FROM auth.users WHERE banned_until > now() + interval '50 years' AND raw_app_meta_data->>'node_id' = $1),
		(SELECT count(*) FROM auth.users WHERE banned_until IS NOT NULL AND raw_app_meta_data->>'node_id' = $2)
		 + (SELECT count(*) FROM auth.sessions s JOIN auth.users u ON u.id = s.user_id WHERE u.raw_app_meta_data->>'node_id' = $1),
		(SELECT count(*) FROM pg_largeobject_metadata WHERE oid = $3)`, []any{f.a, f.b, lo}, &banned, &others, &los)
	if banned != 1 || others != 0 || los != 0 {
		t.Errorf("a's Auth users banned %d (want 1); b's banned or a's sessions left %d (want 0); a's large objects %d", banned, others, los)
	}

	// b is unaffected; a works again with credentials made afterwards.
	var bPeers int
	if err := bLogin.QueryRow(ctx, `SELECT count(*) FROM waylume.peers`).Scan(&bPeers); err != nil || bPeers != 2 {
		t.Errorf("b's login after a's revocation: %d peers (%v)", bPeers, err)
	}
	if p, _ := visible(t, f.admin, "authenticated", authClaims(f.b, before)); p != 2 {
		t.Errorf("b's Auth token after a's revocation sees %d peers, want 2", p)
	}
	after := time.Now().Add(2 * time.Second)
	if p, _ := visible(t, f.admin, "authenticated", authClaims(f.a, after)); p != 3 {
		t.Errorf("a token issued after the revocation sees %d peers, want 3", p)
	}
	again := connect(t, dbfix.NodeLogin(t, f.db, f.a))
	if err := again.QueryRow(ctx, `SELECT count(*) FROM waylume.peers`).Scan(&bPeers); err != nil || bPeers != 3 {
		t.Errorf("a's re-created login: %d peers (%v)", bPeers, err)
	}
}
