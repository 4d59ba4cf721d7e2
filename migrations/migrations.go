// Package migrations holds the SQL that sets up a Supabase project (or any
// PostgreSQL 15+ database) for Waylume nodes, embedded in the binary.
//
// Files are named NNNN_name.sql and applied in name order, each in its own
// transaction, and recorded in waylume.schema_migrations by version (the
// name without .sql). Each file also records itself, so a project that
// applied the files with psql or the Supabase CLI is recognised here.
//
// What the SQL provides (names are a contract, see docs/contract.md):
//   - tables waylume.nodes, peers, peer_status, peer_usage with CHECK
//     constraints and updated_at triggers;
//   - the peer address allocator (NULL address on insert);
//   - publication supabase_realtime with peers and nodes (REPLICA IDENTITY FULL);
//   - NOTIFY on channel waylume.node_channel(node_id) = "waylume_node_<uuid>",
//     payload {"table","op","id","node_id"};
//   - group role waylume_node, waylume.current_node_id(), row level security;
//   - operator functions waylume.create_node(name, endpoint, address, ...),
//     waylume.create_node_login(node_id, password) and
//     waylume.revoke_node(node_id);
//   - Auth-user nodes (role authenticated, app_metadata.node_id) and claims
//     trusted only in JWT proxies' sessions (waylume_jwt_proxy).
//
// Apply installs it, Verify reports what of it a database lacks, and
// CreateNode and CreateNodeLogin are the operator's calls of those
// functions (admin.go).
package migrations

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed *.sql
var files embed.FS

// lockKey serialises concurrent Apply runs (pg_advisory_xact_lock).
const lockKey int64 = 0x7761796c756d65 // "waylume"

// Files returns the embedded SQL files.
func Files() fs.FS { return files }

// Versions returns the versions of the embedded files in apply order.
func Versions() []string {
	names, _ := fs.Glob(files, "*.sql")
	sort.Strings(names)
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.TrimSuffix(n, ".sql")
	}
	return out
}

// Apply applies the files not yet recorded and returns their versions.
// Each file runs in its own transaction holding an advisory lock, so
// concurrent runs do not interleave and a failed file leaves nothing
// behind. Running it again is a no-op. It works through a transaction
// pooler too (no session state is used).
func Apply(ctx context.Context, conn *pgx.Conn) (applied []string, err error) {
	for _, v := range Versions() {
		done, err := applyOne(ctx, conn, v)
		if err != nil {
			return applied, err
		}
		if done {
			applied = append(applied, v)
		}
	}
	return applied, nil
}

func applyOne(ctx context.Context, conn *pgx.Conn, version string) (bool, error) {
	sql, err := fs.ReadFile(files, version+".sql")
	if err != nil {
		return false, fmt.Errorf("migration %s: %w", version, err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("migration %s: begin: %w", version, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey); err != nil {
		return false, fmt.Errorf("migration %s: lock: %w", version, err)
	}
	var applied bool
	// Two steps: a query naming the table fails to plan while it is absent.
	err = tx.QueryRow(ctx, `SELECT to_regclass('waylume.schema_migrations') IS NOT NULL`).Scan(&applied)
	if err == nil && applied {
		err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM waylume.schema_migrations WHERE version = $1)`, version).Scan(&applied)
	}
	if err != nil {
		return false, fmt.Errorf("migration %s: check: %w", version, err)
	}
	if applied {
		return false, nil
	}
	// No arguments: pgx sends the file with the simple protocol, which
	// allows many statements in one string.
	if _, err := tx.Exec(ctx, string(sql)); err != nil {
		return false, fmt.Errorf("migration %s: %w", version, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO waylume.schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING`, version); err != nil {
		return false, fmt.Errorf("migration %s: record: %w", version, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("migration %s: commit: %w", version, err)
	}
	return true, nil
}
