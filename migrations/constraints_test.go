package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/waylume/waylume-node/internal/dbfix"
)

const (
	goodKey  = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	goodKey2 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
)

// Each CHECK (and the pool checks of the address trigger) rejects a bad
// row with SQLSTATE 23514, its constraint name and a readable message,
// and accepts the same row with a good value.
func TestConstraints(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	node := dbfix.CreateNode(t, db, "n4", "10.20.0.1/24")
	node6 := dbfix.CreateNode6(t, db, "n6", "10.21.0.1/24", "fd00:21::1/64")
	peer := dbfix.AddPeers(t, db, node, 1)[0]
	dbfix.Exec(t, db, `INSERT INTO waylume.peers (node_id, public_key, allowed_ips) VALUES ($1, $2, '{192.168.60.0/24}')`, node, goodKey)

	peerSQL := func(nodeID, col, val string) string {
		return fmt.Sprintf(`INSERT INTO waylume.peers (node_id, public_key, %s) VALUES ('%s', '%s', %s)`, col, nodeID, goodKey2, val)
	}
	nodeSQL := func(col, val string) string {
		cols, vals := "name, address", "'nx', '10.30.0.1/24'"
		if col == "name" || col == "address" {
			cols, vals = "name, address", map[string]string{"name": val + ", '10.30.0.1/24'", "address": "'nx', " + val}[col]
		} else {
			cols += ", " + col
			vals += ", " + val
		}
		return fmt.Sprintf(`INSERT INTO waylume.nodes (%s) VALUES (%s)`, cols, vals)
	}
	statusSQL := func(col, val string) string {
		return fmt.Sprintf(`INSERT INTO waylume.peer_status (peer_id, node_id, state, %s) VALUES ('%s', '%s', 'active', %s)`, col, peer, node, val)
	}
	usageSQL := func(start, end, up, down string) string {
		return fmt.Sprintf(`INSERT INTO waylume.peer_usage (node_id, peer_id, period_start, period_end, upload_bytes, download_bytes)
			VALUES ('%s', gen_random_uuid(), %s, %s, %s, %s)`, node, start, end, up, down)
	}
	type tc struct {
		name       string
		good, bad  string
		constraint string
	}
	cases := []tc{
		{"peer public_key not base64", peerSQL(node, "enabled", "true"), `INSERT INTO waylume.peers (node_id, public_key) VALUES ('` + node + `', 'not a key')`, "peers_public_key_check"},
		{"peer public_key 31 bytes", peerSQL(node, "enabled", "true"), `INSERT INTO waylume.peers (node_id, public_key) VALUES ('` + node + `', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==')`, "peers_public_key_check"},
		{"peer preshared_key", peerSQL(node, "preshared_key", "'"+goodKey+"'"), peerSQL(node, "preshared_key", "'c2VjcmV0'"), "peers_preshared_key_check"},
		{"peer address outside pool", peerSQL(node, "address", "'10.20.0.50'"), peerSQL(node, "address", "'10.99.0.5'"), "peers_address_in_pool"},
		{"peer address is the node's", peerSQL(node, "address", "'10.20.0.51'"), peerSQL(node, "address", "'10.20.0.1'"), "peers_address_in_pool"},
		{"peer address network", peerSQL(node, "address", "'10.20.0.52'"), peerSQL(node, "address", "'10.20.0.0'"), "peers_address_in_pool"},
		{"peer address broadcast", peerSQL(node, "address", "'10.20.0.254'"), peerSQL(node, "address", "'10.20.0.255'"), "peers_address_in_pool"},
		{"peer address IPv6", peerSQL(node, "address", "'10.20.0.53'"), peerSQL(node, "address", "'fd00::5'"), "peers_address_check"},
		{"peer address6 without node pool", peerSQL(node6, "address6", "'fd00:21::9'"), peerSQL(node, "address6", "'fd00:21::9'"), "peers_address6_in_pool"},
		{"peer address6 outside pool", peerSQL(node6, "address6", "'fd00:21::a'"), peerSQL(node6, "address6", "'fd00:99::1'"), "peers_address6_in_pool"},
		{"peer allowed_ips overlap pool", peerSQL(node, "allowed_ips", "'{192.168.50.0/24}'"), peerSQL(node, "allowed_ips", "'{192.168.50.0/24,10.20.0.0/16}'"), "peers_allowed_ips_outside_pool"},
		{"peer allowed_ips default route", peerSQL(node, "allowed_ips", "'{192.168.51.0/24}'"), peerSQL(node, "allowed_ips", "'{0.0.0.0/0}'"), "peers_allowed_ips_outside_pool"},
		{"peer allowed_ips overlap v6 pool", peerSQL(node6, "allowed_ips", "'{fd00:22::/64}'"), peerSQL(node6, "allowed_ips", "'{fd00:21::/48}'"), "peers_allowed_ips_outside_pool"},
		{"peer allowed_ips v4-mapped v6", peerSQL(node, "allowed_ips", "'{192.168.52.0/24}'"), peerSQL(node, "allowed_ips", "'{::ffff:192.168.53.0/120}'"), "peers_allowed_ips_not_mapped"},
		{"peer allowed_ips overlap another peer's", peerSQL(node, "allowed_ips", "'{192.168.61.0/24}'"), peerSQL(node, "allowed_ips", "'{192.168.61.0/24,192.168.60.128/25}'"), "peers_allowed_ips_unique"},
		{"peer allowed_ips too many", peerSQL(node, "allowed_ips", "(SELECT array_agg(('172.16.' || i || '.0/24')::cidr) FROM generate_series(1, 128) i)"),
			peerSQL(node, "allowed_ips", "(SELECT array_agg(('172.16.' || i || '.0/24')::cidr) FROM generate_series(1, 129) i)"), "peers_allowed_ips_check"},
		{"peer keepalive high", peerSQL(node, "persistent_keepalive", "65535"), peerSQL(node, "persistent_keepalive", "65536"), "peers_persistent_keepalive_check"},
		{"peer keepalive negative", peerSQL(node, "persistent_keepalive", "0"), peerSQL(node, "persistent_keepalive", "-1"), "peers_persistent_keepalive_check"},
		{"peer download zero", peerSQL(node, "download_kbps", "1"), peerSQL(node, "download_kbps", "0"), "peers_download_kbps_check"},
		{"peer download absurd", peerSQL(node, "download_kbps", "100000000"), peerSQL(node, "download_kbps", "100000001"), "peers_download_kbps_check"},
		{"peer upload negative", peerSQL(node, "upload_kbps", "5000"), peerSQL(node, "upload_kbps", "-5"), "peers_upload_kbps_check"},
		{"peer quota zero", peerSQL(node, "quota_bytes", "1000000000"), peerSQL(node, "quota_bytes", "0"), "peers_quota_bytes_check"},
		{"peer metadata not object", peerSQL(node, "metadata", `'{"plan":"pro"}'`), peerSQL(node, "metadata", "'[1,2]'"), "peers_metadata_check"},
		{"peer metadata huge", peerSQL(node, "metadata", `'{"plan":"pro"}'`), peerSQL(node, "metadata", "jsonb_build_object('x', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 2000) i))"), "peers_metadata_check"},

		{"node name empty", nodeSQL("name", "'ok-name'"), nodeSQL("name", "''"), "nodes_name_check"},
		{"node name control chars", nodeSQL("name", "'ok name'"), nodeSQL("name", "E'bad\\nname'"), "nodes_name_check"},
		{"node endpoint without port", nodeSQL("endpoint", "'vpn.example.com:51820'"), nodeSQL("endpoint", "'vpn.example.com'"), "nodes_endpoint_check"},
		{"node endpoint garbage", nodeSQL("endpoint", "'[2001:db8::1]:51820'"), nodeSQL("endpoint", "'a b:1'"), "nodes_endpoint_check"},
		{"node listen_port zero", nodeSQL("listen_port", "1"), nodeSQL("listen_port", "0"), "nodes_listen_port_check"},
		{"node listen_port high", nodeSQL("listen_port", "65535"), nodeSQL("listen_port", "65536"), "nodes_listen_port_check"},
		{"node address network", nodeSQL("address", "'10.30.0.1/24'"), nodeSQL("address", "'10.30.0.0/24'"), "nodes_address_check"},
		{"node address broadcast", nodeSQL("address", "'10.30.0.254/24'"), nodeSQL("address", "'10.30.0.255/24'"), "nodes_address_check"},
		{"node address tiny pool", nodeSQL("address", "'10.30.0.1/30'"), nodeSQL("address", "'10.30.0.1/31'"), "nodes_address_check"},
		{"node address IPv6", nodeSQL("address", "'10.30.0.1/8'"), nodeSQL("address", "'fd00::1/64'"), "nodes_address_check"},
		{"node address6 IPv4", nodeSQL("address6", "'fd00:30::1/64'"), nodeSQL("address6", "'10.1.1.1/24'"), "nodes_address6_check"},
		{"node address6 huge pool", nodeSQL("address6", "'fd00:30::1/64'"), nodeSQL("address6", "'fd00:30::1/48'"), "nodes_address6_check"},
		{"node dns prefix", nodeSQL("dns", "'{1.1.1.1,2606:4700:4700::1111}'"), nodeSQL("dns", "'{10.0.0.0/8}'"), "nodes_dns_check"},
		{"node mtu", nodeSQL("mtu", "1420"), nodeSQL("mtu", "100"), "nodes_mtu_check"},
		{"node public_key", nodeSQL("public_key", "'"+goodKey+"'"), nodeSQL("public_key", "'AAAA'"), "nodes_public_key_check"},
		{"node status", nodeSQL("status", "'draining'"), nodeSQL("status", "'broken'"), "nodes_status_check"},
		{"node version length", nodeSQL("version", "'v1.2.3'"), nodeSQL("version", "repeat('v', 65)"), "nodes_version_check"},

		{"status state", statusSQL("reason", "''"), strings.Replace(statusSQL("reason", "''"), "'active'", "'weird'", 1), "peer_status_state_check"},
		{"status bytes negative", statusSQL("upload_bytes", "10"), statusSQL("upload_bytes", "-1"), "peer_status_bytes_check"},
		{"status baseline negative", statusSQL("rx_baseline", "10"), statusSQL("rx_baseline", "-1"), "peer_status_bytes_check"},
		{"status reason long", statusSQL("reason", "'quota_exceeded'"), statusSQL("reason", "repeat('x', 257)"), "peer_status_reason_check"},
		{"usage empty period", usageSQL("now() - interval '1 minute'", "now()", "1", "2"), usageSQL("now()", "now()", "1", "2"), "peer_usage_period_check"},
		{"usage negative", usageSQL("now() - interval '1 minute'", "now()", "0", "0"), usageSQL("now() - interval '1 minute'", "now()", "-1", "0"), "peer_usage_bytes_check"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if _, err := tx.Exec(ctx, c.good); err != nil {
				t.Fatalf("good row rejected: %v\n%s", err, c.good)
			}
			if _, err := tx.Exec(ctx, "ROLLBACK; BEGIN"); err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec(ctx, c.bad)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("bad row accepted (err %v):\n%s", err, c.bad)
			}
			if pgErr.Code != "23514" || pgErr.ConstraintName != c.constraint {
				t.Fatalf("bad row: SQLSTATE %s constraint %q (%s), want 23514 %q", pgErr.Code, pgErr.ConstraintName, pgErr.Message, c.constraint)
			}
			t.Logf("rejected: %s", pgErr.Message)
		})
	}
}

// A node's pool cannot change under its peers.
func TestNodePoolChangeKeepsPeersValid(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	node := dbfix.CreateNode(t, db, "n", "10.40.0.1/24")
	dbfix.AddPeers(t, db, node, 3) // .2 .3 .4
	_, err := conn.Exec(ctx, `UPDATE waylume.nodes SET address = '10.41.0.1/24' WHERE id = $1`, node)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.ConstraintName != "nodes_address_fits_peers" {
		t.Fatalf("moving the pool away from peers: %v, want nodes_address_fits_peers", err)
	}
	// Growing the pool is fine; so is moving the node's own address to a free one.
	if _, err := conn.Exec(ctx, `UPDATE waylume.nodes SET address = '10.40.0.1/16' WHERE id = $1`, node); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `UPDATE waylume.nodes SET address = '10.40.0.3/16' WHERE id = $1`, node)
	if !errors.As(err, &pgErr) || pgErr.ConstraintName != "nodes_address_fits_peers" {
		t.Fatalf("node address onto a peer: %v", err)
	}
	// After a pool change the allocator starts over in the new pool.
	if got, err := insertPeer(ctx, conn, node); err != nil || got.String() != "10.40.0.5" {
		t.Fatalf("after growing: %s (%v), want 10.40.0.5", got, err)
	}
}
