package migrations_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/migrations"
)

var wantTables = []migrations.PublishedTable{
	{Name: "waylume.peers", Published: true, ReplicaFull: true},
	{Name: "waylume.nodes", Published: true, ReplicaFull: true},
}

func TestVerifyFreshDatabase(t *testing.T) {
	db := dbfix.Migrated(t)
	r := migrations.Verify(context.Background(), connect(t, db.URL))
	if r.VersionsErr != nil || r.Missing != nil || r.PublicationErr != nil {
		t.Fatalf("migrated database: %+v", r)
	}
	if diff := cmp.Diff(wantTables, r.Tables); diff != "" {
		t.Errorf("tables (-want +got):\n%s", diff)
	}
}

func TestVerifyEmptyDatabase(t *testing.T) {
	db := pgtest.New(t)
	r := migrations.Verify(context.Background(), connect(t, db.URL))
	if !errors.Is(r.VersionsErr, migrations.ErrNotInstalled) {
		t.Errorf("VersionsErr = %v, want ErrNotInstalled", r.VersionsErr)
	}
	if !errors.Is(r.PublicationErr, migrations.ErrNoPublication) {
		t.Errorf("PublicationErr = %v, want ErrNoPublication", r.PublicationErr)
	}
}

// A database missing a migration, and a publication that lost a table and
// a replica identity: each is reported by name.
func TestVerifyReportsWhatIsMissing(t *testing.T) {
	db := dbfix.Migrated(t)
	ctx := context.Background()
	conn := connect(t, db.URL)
	versions := migrations.Versions()
	last := versions[len(versions)-1]
	dbfix.Exec(t, db, "DELETE FROM waylume.schema_migrations WHERE version = $1", last)
	dbfix.Exec(t, db, "ALTER PUBLICATION supabase_realtime DROP TABLE waylume.peers")
	dbfix.Exec(t, db, "ALTER TABLE waylume.nodes REPLICA IDENTITY DEFAULT")
	r := migrations.Verify(ctx, conn)
	if r.VersionsErr != nil || !cmp.Equal(r.Missing, []string{last}) {
		t.Errorf("versions: missing %v, err %v; want [%s]", r.Missing, r.VersionsErr, last)
	}
	want := []migrations.PublishedTable{
		{Name: "waylume.peers", Published: false, ReplicaFull: true},
		{Name: "waylume.nodes", Published: true, ReplicaFull: false},
	}
	if diff := cmp.Diff(want, r.Tables); diff != "" || r.PublicationErr != nil {
		t.Errorf("tables (-want +got):\n%s\nerr %v", diff, r.PublicationErr)
	}

	dbfix.Exec(t, db, "DROP PUBLICATION supabase_realtime")
	if r := migrations.Verify(ctx, conn); !errors.Is(r.PublicationErr, migrations.ErrNoPublication) {
		t.Errorf("dropped publication: %v, want ErrNoPublication", r.PublicationErr)
	}
}

// A node's own login reads the version table and the catalog; a role
// that may not read the table gets ErrNoAccess, not a failure.
func TestVerifyAsNode(t *testing.T) {
	db := dbfix.Migrated(t)
	node := dbfix.CreateNode(t, db, "verify", "10.8.0.1/16")
	conn := connect(t, dbfix.NodeLogin(t, db, node))
	r := migrations.Verify(context.Background(), conn)
	if r.VersionsErr != nil || r.Missing != nil {
		t.Errorf("versions as the node: missing %v, err %v", r.Missing, r.VersionsErr)
	}
	if diff := cmp.Diff(wantTables, r.Tables); diff != "" || r.PublicationErr != nil {
		t.Errorf("tables (-want +got):\n%s\nerr %v", diff, r.PublicationErr)
	}
	dbfix.Exec(t, db, "REVOKE SELECT ON waylume.schema_migrations FROM waylume_node")
	if r := migrations.Verify(context.Background(), conn); !errors.Is(r.VersionsErr, migrations.ErrNoAccess) {
		t.Errorf("VersionsErr = %v, want ErrNoAccess", r.VersionsErr)
	}
}
