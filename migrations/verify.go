package migrations

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// ErrNotInstalled: the database has no waylume schema.
	ErrNotInstalled = errors.New("schema waylume not installed")
	// ErrNoAccess: the role may not read the version table, as a node's
	// own login may not.
	ErrNoAccess = errors.New("the version table is not readable by this role")
	// ErrNoPublication: publication supabase_realtime does not exist.
	ErrNoPublication = errors.New("supabase_realtime does not exist")
)

// realtimeTables are the tables change events come from, in the order
// they are reported.
var realtimeTables = []string{"peers", "nodes"}

// Report is what Verify found.
type Report struct {
	// Missing are the embedded versions the database has not recorded, in
	// apply order.
	Missing []string
	// VersionsErr is why the recorded versions could not be read: it wraps
	// ErrNotInstalled or ErrNoAccess, or is the query's error.
	VersionsErr error
	// Tables are the tables change events come from, as the publication
	// carries them.
	Tables []PublishedTable
	// PublicationErr wraps ErrNoPublication, or is why the catalog could
	// not be read.
	PublicationErr error
}

// PublishedTable is one table change events come from.
type PublishedTable struct {
	Name        string // schema-qualified
	Published   bool   // in supabase_realtime, or it publishes every table
	ReplicaFull bool   // REPLICA IDENTITY FULL: events carry the old row
}

// Verify reports whether the database holds what the embedded migrations
// make: every version recorded, and publication supabase_realtime with
// the event tables at REPLICA IDENTITY FULL. It only reads.
func Verify(ctx context.Context, conn *pgx.Conn) Report {
	var r Report
	r.Missing, r.VersionsErr = missingVersions(ctx, conn)
	r.Tables, r.PublicationErr = publishedTables(ctx, conn)
	return r
}

func missingVersions(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, "SELECT version FROM waylume.schema_migrations")
	var have []string
	if err == nil {
		// pgx reports errors of the query itself (permission denied) here.
		have, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && pe.Code == "42P01":
		return nil, fmt.Errorf("%w: %w", ErrNotInstalled, err)
	case errors.As(err, &pe) && pe.Code == "42501":
		return nil, fmt.Errorf("%w: %w", ErrNoAccess, err)
	case err != nil:
		return nil, fmt.Errorf("read versions: %w", err)
	}
	recorded := map[string]bool{}
	for _, v := range have {
		recorded[v] = true
	}
	var missing []string
	for _, v := range Versions() {
		if !recorded[v] {
			missing = append(missing, v)
		}
	}
	return missing, nil
}

func publishedTables(ctx context.Context, conn *pgx.Conn) ([]PublishedTable, error) {
	var all bool
	err := conn.QueryRow(ctx, "SELECT puballtables FROM pg_publication WHERE pubname = 'supabase_realtime'").Scan(&all)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoPublication
	}
	if err != nil {
		return nil, fmt.Errorf("read publication: %w", err)
	}
	out := make([]PublishedTable, 0, len(realtimeTables))
	for _, t := range realtimeTables {
		var in bool
		var ident string
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables
				WHERE pubname = 'supabase_realtime' AND schemaname = 'waylume' AND tablename = $1),
			coalesce((SELECT relreplident::text FROM pg_class WHERE oid = to_regclass('waylume.' || $1)), '')`, t).Scan(&in, &ident)
		if err != nil {
			return nil, fmt.Errorf("read publication of waylume.%s: %w", t, err)
		}
		out = append(out, PublishedTable{Name: "waylume." + t, Published: in || all, ReplicaFull: ident == "f"})
	}
	return out, nil
}
