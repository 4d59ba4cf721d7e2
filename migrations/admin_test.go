package migrations_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/migrations"
)

func TestCreateNodeAndLogin(t *testing.T) {
	db := dbfix.Migrated(t)
	ctx := context.Background()
	conn := connect(t, db.URL)
	spec := migrations.NodeSpec{
		Name: "edge-1", Endpoint: "vpn.example.net:51820", ListenPort: 51821,
		Address: netip.MustParsePrefix("10.66.0.1/16"), Address6: netip.MustParsePrefix("fd00:66::1/64"),
		DNS: []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("9.9.9.9")}, MTU: 1380,
	}
	id, err := migrations.CreateNode(ctx, conn, spec)
	if err != nil {
		t.Fatal(err)
	}
	var row string
	dbfix.QueryRow(t, db, `SELECT concat_ws(' ', name, endpoint, listen_port, address, address6,
		array_to_string(array(SELECT host(d) FROM unnest(dns) d), ','), mtu) FROM waylume.nodes WHERE id = $1`, []any{id}, &row)
	if want := "edge-1 vpn.example.net:51820 51821 10.66.0.1/16 fd00:66::1/64 1.1.1.1,9.9.9.9 1380"; row != want {
		t.Errorf("row %q, want %q", row, want)
	}
	// Optional fields left out are stored as NULL (no IPv6 pool, default MTU).
	other, err := migrations.CreateNode(ctx, conn, migrations.NodeSpec{Name: "edge-2", Endpoint: "b:1", ListenPort: 51820, Address: netip.MustParsePrefix("10.67.0.1/16")})
	if err != nil {
		t.Fatal(err)
	}
	var nulls string
	dbfix.QueryRow(t, db, `SELECT concat(address6 IS NULL, mtu IS NULL, cardinality(dns)) FROM waylume.nodes WHERE id = $1`, []any{other}, &nulls)
	if nulls != "tt0" {
		t.Errorf("optional fields: %s", nulls)
	}
	// A duplicate name is the database's unique violation, reachable as such.
	_, err = migrations.CreateNode(ctx, conn, spec)
	if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "23505" {
		t.Errorf("duplicate name: %v, want SQLSTATE 23505", err)
	}

	role, pw, err := migrations.CreateNodeLogin(ctx, conn, id)
	if err != nil {
		t.Fatal(err)
	}
	if role != "waylume_node_"+strings.ReplaceAll(id, "-", "") || len(pw) < 24 {
		t.Fatalf("role %q, password of %d characters", role, len(pw))
	}
	var verifier string
	dbfix.QueryRow(t, db, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", []any{role}, &verifier)
	if !strings.HasPrefix(verifier, "SCRAM-SHA-256$4096:") || strings.Contains(verifier, pw) {
		t.Errorf("stored password is not a SCRAM verifier: %.20q", verifier)
	}
	// Again: the same role, a new password.
	again, pw2, err := migrations.CreateNodeLogin(ctx, conn, id)
	if err != nil || again != role || pw2 == pw {
		t.Errorf("reset: role %q (want %q), new password %v, err %v", again, role, pw2 != pw, err)
	}
}
