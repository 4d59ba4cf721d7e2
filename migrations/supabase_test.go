package migrations_test

import (
	"context"
	"testing"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/migrations"
)

// A Supabase-shaped database: the migrating role is not a superuser (only
// CREATEROLE and database owner, like Supabase's postgres role),
// authenticator, anon and service_role (BYPASSRLS) exist, and the
// publication exists FOR ALL TABLES, owned by a superuser.
func TestSupabaseShapedDatabase(t *testing.T) {
	ctx := context.Background()
	dbfix.SupabaseRoles(t)
	db := pgtest.New(t)
	dbfix.SupabaseRealtime(t, db)
	super := connect(t, db.URL)
	for _, sql := range []string{
		`DO $$ BEGIN
			IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supa_owner') THEN CREATE ROLE supa_owner LOGIN CREATEROLE; END IF;
			IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN CREATE ROLE authenticator LOGIN NOINHERIT; END IF;
			IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
			IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN BYPASSRLS; END IF;
		END $$`,
		`GRANT anon, service_role TO authenticator`,
		`GRANT service_role, supabase_realtime_admin TO supa_owner`,
		`ALTER DATABASE ` + db.Name + ` OWNER TO supa_owner`,
		`CREATE PUBLICATION supabase_realtime FOR ALL TABLES`,
	} {
		if _, err := super.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	owner := connect(t, db.URLAs("supa_owner"))
	if _, err := migrations.Apply(ctx, owner); err != nil {
		t.Fatalf("migrate as a non-superuser owner: %v", err)
	}
	var granted bool
	if err := super.QueryRow(ctx, `SELECT pg_has_role('authenticator', 'waylume_node', 'MEMBER')`).Scan(&granted); err != nil || !granted {
		t.Fatalf("waylume_node not granted to authenticator (%v)", err)
	}
	// Broadcast from Database: triggers and policies made by the
	// non-superuser owner (a member of the realtime schema's owner, as
	// Supabase's postgres role is).
	var triggers, policies int
	if err := super.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%broadcast'),
		(SELECT count(*) FROM pg_policies WHERE schemaname = 'realtime' AND tablename = 'messages')`).Scan(&triggers, &policies); err != nil ||
		triggers != 3 || policies != 2 {
		t.Fatalf("broadcast triggers %d, realtime.messages policies %d (%v); want 3 and 2", triggers, policies, err)
	}

	// The operator path works for the non-superuser owner.
	var a, b string
	if err := owner.QueryRow(ctx, `SELECT waylume.create_node('a', 'a.test:51820', '10.1.0.1/24')::text`).Scan(&a); err != nil {
		t.Fatal(err)
	}
	if err := owner.QueryRow(ctx, `SELECT waylume.create_node('b', 'b.test:51820', '10.1.0.1/24')::text`).Scan(&b); err != nil {
		t.Fatal(err)
	}
	var role string
	if err := owner.QueryRow(ctx, `SELECT waylume.create_node_login($1, 'pw-not-logged')`, a).Scan(&role); err != nil {
		t.Fatalf("create_node_login as non-superuser: %v", err)
	}

	// The service role (app backends) writes peers and reads everything.
	tx, err := owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL ROLE service_role`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key) SELECT $1::uuid, `+dbfix.RandomKeySQL+` UNION ALL SELECT $2::uuid, `+dbfix.RandomKeySQL, a, b); err != nil {
		t.Fatalf("service_role inserts peers: %v", err)
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM waylume.peers`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("service_role sees %d peers (%v), want 2", n, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// PostgREST's path: authenticator switches to the JWT's role.
	auth := connect(t, db.URLAs("authenticator"))
	tx, err = auth.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := dbfix.ActAsNodeJWT(ctx, tx, a); err != nil {
		t.Fatalf("authenticator acting as waylume_node: %v", err)
	}
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM waylume.peers`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("node a via authenticator sees %d peers (%v), want 1", n, err)
	}
	// anon sees nothing and may not touch the schema.
	sp, err := tx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Exec(ctx, `RESET ROLE; SET LOCAL ROLE anon`); err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Exec(ctx, `SELECT count(*) FROM waylume.peers`); err == nil {
		t.Fatal("anon reads waylume.peers")
	}
	sp.Rollback(ctx)

	// The non-superuser owner revokes a node whose login owns a large
	// object and has a session open: it borrows the role's privileges.
	nodeLogin := connect(t, db.URLAs(role))
	if _, err := nodeLogin.Exec(ctx, `SELECT lo_from_bytea(0, 'x')`); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Exec(ctx, `SELECT waylume.revoke_node($1::uuid)`, a); err != nil {
		t.Fatalf("revoke_node as a non-superuser owner: %v", err)
	}
	if err := nodeLogin.Ping(ctx); err == nil {
		t.Error("the revoked login's session survived")
	}
	var left int
	if err := super.QueryRow(ctx, `SELECT count(*) FROM pg_largeobject_metadata m JOIN pg_roles r ON r.oid = m.lomowner WHERE r.rolname = $1`, role).Scan(&left); err != nil || left != 0 {
		t.Errorf("large objects of the revoked login: %d (%v)", left, err)
	}
	if _, err := owner.Exec(ctx, `SELECT waylume.drop_node_login($1::uuid)`, a); err != nil {
		t.Fatalf("drop_node_login as a non-superuser owner: %v", err)
	}

	// Applying again (a second node, a redeploy) is a no-op.
	if applied, err := migrations.Apply(ctx, owner); err != nil || len(applied) != 0 {
		t.Fatalf("re-apply: %v %v", applied, err)
	}
}
