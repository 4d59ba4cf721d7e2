package migrations_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/migrations"
)

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestApplyTwiceIsNoop(t *testing.T) {
	ctx := context.Background()
	db := pgtest.New(t)
	conn := connect(t, db.URL)

	applied, err := migrations.Apply(ctx, conn)
	if err != nil {
		t.Fatalf("first apply: %v", err)
	}
	if diff := cmp.Diff(migrations.Versions(), applied); diff != "" {
		t.Fatalf("first apply (-want +got):\n%s", diff)
	}
	if len(applied) < 4 {
		t.Fatalf("only %d migrations", len(applied))
	}
	var recorded []string
	rows, err := conn.Query(ctx, `SELECT version FROM waylume.schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	recorded, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(migrations.Versions(), recorded); diff != "" {
		t.Fatalf("recorded versions (-want +got):\n%s", diff)
	}

	again, err := migrations.Apply(ctx, conn)
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if len(again) != 0 {
		t.Fatalf("second apply ran %v, want nothing", again)
	}
}

// Two Apply runs at once on one database: the advisory lock serialises
// them and each file runs once.
func TestApplyConcurrent(t *testing.T) {
	ctx := context.Background()
	db := pgtest.New(t)
	a, b := connect(t, db.URL), connect(t, db.URL)
	type result struct {
		applied []string
		err     error
	}
	ch := make(chan result, 2)
	for _, c := range []*pgx.Conn{a, b} {
		go func() {
			applied, err := migrations.Apply(ctx, c)
			ch <- result{applied, err}
		}()
	}
	r1, r2 := <-ch, <-ch
	if r1.err != nil || r2.err != nil {
		t.Fatalf("apply: %v, %v", r1.err, r2.err)
	}
	all := append(slices.Clone(r1.applied), r2.applied...)
	slices.Sort(all)
	if diff := cmp.Diff(migrations.Versions(), all); diff != "" {
		t.Fatalf("files applied once in total (-want +got):\n%s", diff)
	}
}

// A database that got the files through psql (each file recording itself)
// is recognised: Apply has nothing left to do.
func TestApplyAfterPlainSQL(t *testing.T) {
	ctx := context.Background()
	db := pgtest.New(t)
	conn := connect(t, db.URL)
	// Twice: the files are idempotent SQL, so a second psql run (or a
	// Supabase CLI deploy after `waylume-node migrate`) is harmless.
	for round := range 2 {
		for _, v := range migrations.Versions() {
			sql, err := fsRead(v + ".sql")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "BEGIN;\n"+sql+"\nCOMMIT;"); err != nil {
				t.Fatalf("round %d: %s as plain SQL: %v", round, v, err)
			}
		}
	}
	applied, err := migrations.Apply(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != 0 {
		t.Fatalf("Apply after psql ran %v, want nothing", applied)
	}
}

// Every contract table and column of docs/contract.md exists.
func TestContractColumns(t *testing.T) {
	ctx := context.Background()
	db := pgtest.New(t)
	conn := connect(t, db.URL)
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"nodes": {"id", "name", "endpoint", "listen_port", "address", "address6", "dns", "mtu",
			"public_key", "status", "last_seen_at", "version", "created_at", "updated_at", "draining", "max_peers"},
		"peers": {"id", "node_id", "public_key", "preshared_key", "address", "address6", "allowed_ips",
			"persistent_keepalive", "download_kbps", "upload_kbps", "quota_bytes", "quota_reset_at",
			"expires_at", "enabled", "metadata", "created_at", "updated_at"},
		"peer_status": {"peer_id", "node_id", "state", "reason", "last_handshake_at", "endpoint",
			"upload_bytes", "download_bytes", "rx_baseline", "tx_baseline", "counter_epoch",
			"applied_at", "updated_at"},
		"peer_usage":  {"node_id", "peer_id", "period_start", "period_end", "upload_bytes", "download_bytes"},
		"node_status": {"node_id", "status", "last_seen_at", "version", "peer_count", "active_sessions", "updated_at"},
		"node_canary": {"node_id", "nonce", "sent_at"},
		"node_overview": {"id", "name", "endpoint", "listen_port", "address", "address6", "dns", "mtu",
			"public_key", "status", "last_seen_at", "version", "peer_count", "active_sessions", "created_at", "updated_at"},
	}
	wantTypes := map[string]string{
		"nodes.id": "uuid", "nodes.address": "inet", "nodes.address6": "inet", "nodes.dns": "inet[]",
		"nodes.listen_port": "integer", "nodes.last_seen_at": "timestamp with time zone",
		"node_status.last_seen_at": "timestamp with time zone", "node_overview.last_seen_at": "timestamp with time zone",
		"peers.node_id": "uuid", "peers.address": "inet", "peers.allowed_ips": "cidr[]",
		"nodes.draining": "boolean", "nodes.max_peers": "integer", "peers.quota_bytes": "bigint", "peers.enabled": "boolean", "peers.metadata": "jsonb",
		"peer_usage.upload_bytes": "bigint", "peer_status.download_bytes": "bigint",
	}
	for table, cols := range want {
		rows, err := conn.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod)
			FROM pg_attribute a WHERE a.attrelid = ('waylume.' || $1)::regclass AND a.attnum > 0 AND NOT a.attisdropped`, table)
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		got := map[string]string{}
		for rows.Next() {
			var name, typ string
			if err := rows.Scan(&name, &typ); err != nil {
				t.Fatal(err)
			}
			got[name] = typ
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		for _, c := range cols {
			typ, ok := got[c]
			if !ok {
				t.Errorf("waylume.%s.%s missing", table, c)
				continue
			}
			if w, ok := wantTypes[table+"."+c]; ok && w != typ {
				t.Errorf("waylume.%s.%s is %s, want %s", table, c, typ, w)
			}
		}
	}

	// Realtime: peers, nodes and the canaries published with REPLICA
	// IDENTITY FULL; node and peer status and usage not published.
	rows, err := conn.Query(ctx, `SELECT tablename FROM pg_publication_tables
		WHERE pubname = 'supabase_realtime' AND schemaname = 'waylume' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"node_canary", "nodes", "peers"}, published); diff != "" {
		t.Errorf("published tables (-want +got):\n%s", diff)
	}
	for _, table := range []string{"nodes", "peers", "node_canary"} {
		var ident string
		if err := conn.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = ('waylume.' || $1)::regclass`, table).Scan(&ident); err != nil {
			t.Fatal(err)
		}
		if ident != "f" {
			t.Errorf("%s replica identity %q, want f (full)", table, ident)
		}
	}
	for _, table := range []string{"nodes", "peers", "peer_status", "peer_usage", "node_status", "node_canary"} {
		var rls bool
		if err := conn.QueryRow(ctx, `SELECT relrowsecurity FROM pg_class WHERE oid = ('waylume.' || $1)::regclass`, table).Scan(&rls); err != nil {
			t.Fatal(err)
		}
		if !rls {
			t.Errorf("%s: row level security off", table)
		}
	}
	for _, fn := range []string{"waylume.current_node_id()", "waylume.create_node(text,text,inet,inet,integer,inet[],integer)",
		"waylume.create_node_login(uuid,text)", "waylume.node_channel(uuid)", "waylume.client_config(uuid)",
		"waylume.node_online(uuid)", "waylume.max_routed_prefixes()", "waylume.node_topic(uuid)"} {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT to_regprocedure($1) IS NOT NULL`, fn).Scan(&ok); err != nil || !ok {
			t.Errorf("function %s missing (%v)", fn, err)
		}
	}
	var role bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'waylume_node' AND NOT rolcanlogin)`).Scan(&role); err != nil || !role {
		t.Errorf("group role waylume_node missing (%v)", err)
	}
}

// An existing publication FOR ALL TABLES (as some Supabase projects have)
// is left alone; an existing plain one gets only the missing tables.
func TestPublicationVariants(t *testing.T) {
	ctx := context.Background()
	t.Run("for all tables", func(t *testing.T) {
		db := pgtest.New(t)
		conn := connect(t, db.URL)
		if _, err := conn.Exec(ctx, `CREATE PUBLICATION supabase_realtime FOR ALL TABLES`); err != nil {
			t.Fatal(err)
		}
		if _, err := migrations.Apply(ctx, conn); err != nil {
			t.Fatalf("apply with FOR ALL TABLES publication: %v", err)
		}
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'supabase_realtime'
			AND schemaname = 'waylume' AND tablename IN ('peers', 'nodes')`).Scan(&n); err != nil || n != 2 {
			t.Fatalf("published waylume tables = %d (%v), want 2", n, err)
		}
	})
	t.Run("existing with peers", func(t *testing.T) {
		db := pgtest.New(t)
		conn := connect(t, db.URL)
		// The first two files create the tables; publish peers by hand
		// as an operator might have, then apply the rest.
		if _, err := conn.Exec(ctx, `CREATE TABLE public.other (id int PRIMARY KEY); CREATE PUBLICATION supabase_realtime FOR TABLE public.other`); err != nil {
			t.Fatal(err)
		}
		if _, err := migrations.Apply(ctx, conn); err != nil {
			t.Fatal(err)
		}
		rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime' ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"public.other", "waylume.node_canary", "waylume.nodes", "waylume.peers"}, got); diff != "" {
			t.Fatalf("publication (-want +got):\n%s", diff)
		}
	})
}
