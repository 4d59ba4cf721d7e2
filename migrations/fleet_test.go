package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/migrations"
)

func pgCode(err error) (code, constraint string) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, pe.ConstraintName
	}
	return "", ""
}

// routes returns n disjoint /28s of 172.16.0.0/12 starting at the k-th.
func routes(k, n int) string {
	var out []string
	for i := range n {
		v := 0xac100000 + uint32(k+i)*16
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 28).String())
	}
	return "{" + strings.Join(out, ",") + "}"
}

// A node routes at most waylume.max_routed_prefixes() prefixes over all its
// peers: the write that would pass the bound fails with a named
// check_violation, concurrent writers cannot both pass it, and rows without
// routes are unaffected.
func TestRoutedPrefixesBoundedPerNode(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	a := dbfix.CreateNode(t, db, "routes-a", "10.70.0.1/16")
	b := dbfix.CreateNode(t, db, "routes-b", "10.71.0.1/16")
	var limit int
	if err := conn.QueryRow(ctx, `SELECT waylume.max_routed_prefixes()`).Scan(&limit); err != nil {
		t.Fatal(err)
	}
	insert := func(q interface {
		Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
	}, node, allowed string) error {
		_, err := q.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key, allowed_ips) VALUES ($1, `+keySQL+`, $2)`, node, allowed)
		return err
	}
	k := 0
	for range limit/128 - 1 {
		if err := insert(conn, a, routes(k, 128)); err != nil {
			t.Fatal(err)
		}
		k += 128
	}
	// Two writers race for the last 128: one commits, one is refused.
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range errs {
		c := connect(t, db.URL)
		at := k + i*128
		wg.Go(func() { errs[i] = insert(c, a, routes(at, 128)) })
	}
	wg.Wait()
	k += 256
	refused := 0
	for _, err := range errs {
		if err != nil {
			if code, con := pgCode(err); code != "23514" || con != "peers_allowed_ips_per_node" {
				t.Fatalf("racing writer: %v, want 23514 peers_allowed_ips_per_node", err)
			}
			refused++
		}
	}
	if refused != 1 {
		t.Fatalf("%d of 2 racing writers refused, want 1", refused)
	}
	var total int
	if err := conn.QueryRow(ctx, `SELECT sum(cardinality(allowed_ips)) FROM waylume.peers WHERE node_id = $1`, a).Scan(&total); err != nil || total != limit {
		t.Fatalf("node routes %d prefixes (%v), want %d", total, err, limit)
	}
	err := insert(conn, a, routes(k, 1))
	if code, con := pgCode(err); code != "23514" || con != "peers_allowed_ips_per_node" {
		t.Fatalf("one prefix past the bound: %v", err)
	}
	if err := insert(conn, a, "{}"); err != nil {
		t.Fatalf("a peer without routes on a full node: %v", err)
	}
	// Moving a routing peer onto the full node is refused; shrinking one is not.
	if err := insert(conn, b, routes(k, 2)); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `UPDATE waylume.peers SET node_id = $1 WHERE node_id = $2 AND cardinality(allowed_ips) > 0`, a, b)
	if code, _ := pgCode(err); code != "23514" {
		t.Fatalf("move onto a full node: %v", err)
	}
	if _, err := conn.Exec(ctx, `UPDATE waylume.peers SET allowed_ips = allowed_ips[1:64] WHERE id = (
		SELECT id FROM waylume.peers WHERE node_id = $1 AND cardinality(allowed_ips) = 128 LIMIT 1)`, a); err != nil {
		t.Fatalf("shrinking a peer's routes: %v", err)
	}
}

// setOnline makes the node look as a running node's heartbeat leaves it.
func setOnline(t *testing.T, db *pgtest.DB, node, lastSeen string) {
	t.Helper()
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET status = 'online', last_seen_at = now() - $2::interval WHERE id = $1`, node, lastSeen)
}

type placed struct {
	node string
	addr netip.Addr
}

// placeConcurrently inserts n peers without node_id at once, each in its
// own transaction, and returns where each landed (errors for the rest).
func placeConcurrently(t *testing.T, url string, n int) ([]placed, []error) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url+"&pool_max_conns=50")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var mu sync.Mutex
	var out []placed
	var errs []error
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			var p placed
			var a netip.Prefix
			err := pool.QueryRow(ctx, `INSERT INTO waylume.peers (public_key) VALUES (`+keySQL+`) RETURNING node_id::text, address`).Scan(&p.node, &a)
			p.addr = a.Addr()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			out = append(out, p)
		})
	}
	close(start)
	wg.Wait()
	return out, errs
}

// A peer inserted without node_id lands on the least-loaded node that is
// online, not draining and under max_peers; 50 concurrent placements on two
// such nodes split 25/25; the allocator gives each placed row an address of
// its node's pool; RETURNING reads both back.
func TestPlacement(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	a := dbfix.CreateNode(t, db, "place-a", "10.80.0.1/24")
	b := dbfix.CreateNode(t, db, "place-b", "10.81.0.1/24")
	draining := dbfix.CreateNode(t, db, "place-draining", "10.82.0.1/24")
	stale := dbfix.CreateNode(t, db, "place-stale", "10.83.0.1/24")
	full := dbfix.CreateNode(t, db, "place-full", "10.84.0.1/24")
	stopped := dbfix.CreateNode(t, db, "place-stopped", "10.85.0.1/24")
	never := dbfix.CreateNode(t, db, "place-never", "10.86.0.1/24")
	for _, n := range []string{a, b, draining, full} {
		setOnline(t, db, n, "10 seconds")
	}
	setOnline(t, db, stale, "3 minutes")
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET status = 'offline', last_seen_at = now() WHERE id = $1`, stopped)
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET draining = true WHERE id = $1`, draining)
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET max_peers = 0 WHERE id = $1`, full)
	_ = never // no heartbeat at all

	got, errs := placeConcurrently(t, db.URL, 50)
	if len(errs) > 0 {
		t.Fatalf("%d placements failed, first: %v", len(errs), errs[0])
	}
	per := map[string]int{}
	seen := map[placed]bool{}
	pools := map[string]netip.Prefix{a: netip.MustParsePrefix("10.80.0.0/24"), b: netip.MustParsePrefix("10.81.0.0/24")}
	for _, p := range got {
		per[p.node]++
		if pool, ok := pools[p.node]; !ok || !pool.Contains(p.addr) || seen[p] {
			t.Errorf("placed on %s at %s: not an eligible node's free pool address", p.node, p.addr)
		}
		seen[p] = true
	}
	if per[a]+per[b] != 50 || per[a] < 24 || per[a] > 26 {
		t.Fatalf("50 placements split %d/%d (others %v), want 25/25 or 26/24", per[a], per[b], per)
	}

	// The least-loaded one: b after three more peers on a.
	dbfix.AddPeers(t, db, a, 3)
	var node string
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (public_key) VALUES (`+keySQL+`) RETURNING node_id::text`).Scan(&node); err != nil || node != b {
		t.Fatalf("placed on %s (%v), want the least-loaded %s", node, err, b)
	}

	// Draining a: it keeps its peers and gets no new ones.
	var before int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM waylume.peers WHERE node_id = $1`, a).Scan(&before); err != nil {
		t.Fatal(err)
	}
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET draining = true WHERE id = $1`, a)
	for range 5 {
		if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (public_key) VALUES (`+keySQL+`) RETURNING node_id::text`).Scan(&node); err != nil || node != b {
			t.Fatalf("placed on %s (%v) with a draining, want %s", node, err, b)
		}
	}
	var after int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM waylume.peers WHERE node_id = $1`, a).Scan(&after); err != nil || after != before {
		t.Fatalf("draining node has %d peers, had %d", after, before)
	}

	// Nowhere to go: a clear error, nothing stored.
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET max_peers = (SELECT count(*) FROM waylume.peers WHERE node_id = $1) WHERE id = $1`, b)
	_, err := conn.Exec(ctx, `INSERT INTO waylume.peers (public_key) VALUES (`+keySQL+`)`)
	if code, _ := pgCode(err); code != "53400" {
		t.Fatalf("placement with no eligible node: %v, want 53400", err)
	}
	// An explicit node_id on a full node is refused too; max_peers is the
	// node's capacity, whoever picks the node.
	_, err = conn.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+keySQL+`)`, b)
	if code, con := pgCode(err); code != "53400" || con != "peers_node_max_peers" {
		t.Fatalf("explicit insert on a full node: %v", err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+keySQL+`)`, stale); err != nil {
		t.Fatalf("explicit insert on a node without max_peers: %v", err)
	}
}

// Concurrent placements never take a node past max_peers.
func TestPlacementNeverExceedsCapacity(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	a := dbfix.CreateNode(t, db, "cap-a", "10.90.0.1/24")
	b := dbfix.CreateNode(t, db, "cap-b", "10.91.0.1/24")
	for _, n := range []string{a, b} {
		setOnline(t, db, n, "1 second")
		dbfix.Exec(t, db, `UPDATE waylume.nodes SET max_peers = 10 WHERE id = $1`, n)
	}
	got, errs := placeConcurrently(t, db.URL, 30)
	if len(got) != 20 || len(errs) != 10 {
		t.Fatalf("%d placed, %d refused, want 20 and 10", len(got), len(errs))
	}
	for _, err := range errs {
		if code, _ := pgCode(err); code != "53400" {
			t.Fatalf("refused placement: %v, want 53400", err)
		}
	}
	conn := connect(t, db.URL)
	for _, n := range []string{a, b} {
		var count int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM waylume.peers WHERE node_id = $1`, n).Scan(&count); err != nil || count != 10 {
			t.Errorf("node %s holds %d peers (%v), want its max_peers 10", n, count, err)
		}
	}
}

// client_config writes the client's wg-quick file; it holds the preshared
// key, so only the admin path (owner, service_role) may call it: not anon,
// not authenticated end users, not nodes (login role or JWT).
func TestClientConfig(t *testing.T) {
	ctx := context.Background()
	dbfix.SupabaseRoles(t)
	admin := connect(t, pgtest.Current(t).URL("postgres", "postgres"))
	if _, err := admin.Exec(ctx, `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF; END $$`); err != nil {
		t.Fatal(err)
	}
	db := pgtest.New(t)
	conn := connect(t, db.URL)
	// As on Supabase: new functions are granted to the API roles by default.
	if _, err := conn.Exec(ctx, `ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO anon, authenticated;
		GRANT USAGE ON SCHEMA public TO anon, authenticated`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	// An operator exposing the schema to the API: only the function's own
	// grants stand between end users and the preshared keys.
	if _, err := conn.Exec(ctx, `GRANT USAGE ON SCHEMA waylume TO anon, authenticated`); err != nil {
		t.Fatal(err)
	}
	node := dbfix.CreateNode6(t, db, "conf", "10.95.0.1/16", "fd00:95::1/64")
	key := "pXCQ3TqvLIeTV2pe6hjVqRnkfd0Y9m9V9kDU1v4kIl0="
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET public_key = $2, dns = '{1.1.1.1,2606:4700:4700::1111}', mtu = 1380 WHERE id = $1`, node, key)
	psk := "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	var peer string
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key, preshared_key, address, address6)
		VALUES ($1, `+keySQL+`, $2, '10.95.0.7', 'fd00:95::7') RETURNING id::text`, node, psk).Scan(&peer); err != nil {
		t.Fatal(err)
	}
	var conf string
	if err := conn.QueryRow(ctx, `SELECT waylume.client_config($1)`, peer).Scan(&conf); err != nil {
		t.Fatal(err)
	}
	want := "[Interface]\nPrivateKey = <client's private key>\nAddress = 10.95.0.7/32, fd00:95::7/128\n" +
		"DNS = 1.1.1.1, 2606:4700:4700::1111\nMTU = 1380\n\n[Peer]\nPublicKey = " + key + "\nPresharedKey = " + psk +
		"\nEndpoint = conf.test:51820\nAllowedIPs = 0.0.0.0/0, ::/0\nPersistentKeepalive = 25\n"
	if conf != want {
		t.Errorf("client_config:\n%s\nwant:\n%s", conf, want)
	}
	// IPv4 only, no DNS, no preshared key, keepalive off.
	v4 := dbfix.CreateNode(t, db, "conf4", "10.96.0.1/16")
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET public_key = $2 WHERE id = $1`, v4, key)
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key, persistent_keepalive) VALUES ($1, `+keySQL+`, 0) RETURNING id::text`, v4).Scan(&peer); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT waylume.client_config($1)`, peer).Scan(&conf); err != nil {
		t.Fatal(err)
	}
	want = "[Interface]\nPrivateKey = <client's private key>\nAddress = 10.96.0.2/32\nMTU = 1420\n\n[Peer]\nPublicKey = " + key +
		"\nEndpoint = conf4.test:51820\nAllowedIPs = 0.0.0.0/0\n"
	if conf != want {
		t.Errorf("client_config (IPv4 only):\n%s\nwant:\n%s", conf, want)
	}
	// Unknown peer, node without a key: clear errors.
	if err := conn.QueryRow(ctx, `SELECT waylume.client_config(gen_random_uuid())`).Scan(&conf); err == nil {
		t.Error("client_config of an unknown peer succeeded")
	} else if code, _ := pgCode(err); code != "P0002" {
		t.Errorf("unknown peer: %v, want P0002", err)
	}
	nokey := dbfix.CreateNode(t, db, "conf-nokey", "10.97.0.1/16")
	fresh := dbfix.AddPeers(t, db, nokey, 1)[0]
	if err := conn.QueryRow(ctx, `SELECT waylume.client_config($1)`, fresh).Scan(&conf); err == nil {
		t.Error("client_config for a node that never ran succeeded")
	} else if code, _ := pgCode(err); code != "55000" {
		t.Errorf("node without public key: %v, want 55000", err)
	}

	call := func(t *testing.T, tx pgx.Tx) error {
		var s string
		return tx.QueryRow(ctx, `SELECT waylume.client_config($1)`, peer).Scan(&s)
	}
	asRole := func(role string) func(*testing.T) error {
		return func(t *testing.T) error {
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if _, err := tx.Exec(ctx, fmt.Sprintf(`SET LOCAL ROLE %s`, role)); err != nil {
				t.Fatal(err)
			}
			return call(t, tx)
		}
	}
	login := connect(t, dbfix.NodeLogin(t, db, v4))
	for name, try := range map[string]func(*testing.T) error{
		"anon": asRole("anon"), "authenticated": asRole("authenticated"),
		"node login": func(t *testing.T) error {
			tx, err := login.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			return call(t, tx)
		},
		"node jwt": func(t *testing.T) error {
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if err := dbfix.ActAsNodeJWT(ctx, tx, v4); err != nil {
				t.Fatal(err)
			}
			return call(t, tx)
		},
	} {
		if code, _ := pgCode(try(t)); code != "42501" {
			t.Errorf("%s called client_config: %v, want 42501", name, try(t))
		}
	}
	if err := asRole("service_role")(t); err != nil {
		t.Errorf("service_role: %v", err)
	}
}

// Two transactions adding overlapping routed prefixes to one node from
// separate connections (new rows with their own addresses, and existing
// rows given routes): the second waits for the first to commit, then its
// overlap check sees the first's prefixes and refuses; exactly one wins.
func TestOverlappingRoutesConcurrently(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	admin := connect(t, db.URL)
	cases := []struct {
		name, sql string
		args      func(node string, i int) []any
	}{
		{"insert", `INSERT INTO waylume.peers (node_id, public_key, address, allowed_ips) VALUES ($1, ` + dbfix.RandomKeySQL + `, $2::inet, $3::cidr[])`,
			func(node string, i int) []any {
				return []any{node, fmt.Sprintf("10.92.0.%d", 30+i), []string{"{192.168.70.0/24}", "{192.168.70.128/25}"}[i]}
			}},
		{"update", `UPDATE waylume.peers SET allowed_ips = $3::cidr[] WHERE node_id = $1 AND address = $2::inet`,
			func(node string, i int) []any {
				return []any{node, fmt.Sprintf("10.92.0.%d", 20+i), []string{"{192.168.70.0/24}", "{192.168.70.128/25}"}[i]}
			}},
	}
	for k, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			node := dbfix.CreateNode(t, db, fmt.Sprintf("ov%d", k), "10.92.0.1/24")
			for i := range 2 {
				if _, err := admin.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key, address) VALUES ($1, `+dbfix.RandomKeySQL+`, $2::inet)`,
					node, fmt.Sprintf("10.92.0.%d", 20+i)); err != nil {
					t.Fatal(err)
				}
			}
			first, second := connect(t, db.URL), connect(t, db.URL)
			tx, err := first.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, c.sql, c.args(node, 0)...); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := second.Exec(ctx, c.sql, c.args(node, 1)...)
				done <- err
			}()
			waitBlocked(t, admin, second, done)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			err = <-done
			if code, constraint := pgCode(err); code != "23514" || constraint != "peers_allowed_ips_unique" {
				t.Fatalf("second overlapping write: %v, want 23514 peers_allowed_ips_unique", err)
			}
			var n int
			if err := admin.QueryRow(ctx, `SELECT count(*) FROM waylume.peers WHERE node_id = $1 AND cardinality(allowed_ips) > 0`, node).Scan(&n); err != nil || n != 1 {
				t.Fatalf("%d routing peers on the node (%v), want 1", n, err)
			}
		})
	}
}

// waitBlocked returns once conn's statement waits for a lock, or has
// already finished (its result is left in done).
func waitBlocked(t *testing.T, admin, conn *pgx.Conn, done chan error) {
	t.Helper()
	pid := conn.PgConn().PID()
	testkit.Eventually(t, 30*time.Second, func() error {
		select {
		case err := <-done:
			done <- err
			return nil
		default:
		}
		var waiting bool
		if err := admin.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)`, pid).Scan(&waiting); err != nil {
			return err
		}
		if !waiting {
			return errors.New("second write not waiting yet")
		}
		return nil
	})
}
