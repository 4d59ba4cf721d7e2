package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/waylume/waylume-node/migrations"
)

// migrateCmd applies the embedded SQL, or prints it (--print) for psql or
// the Supabase CLI. Run it with the project's owner/service credentials,
// not a node's.
func (c *cli) migrateCmd(args []string) int {
	fs := c.flagSet("migrate", "", "Apply the embedded SQL migrations (each file in its own transaction; re-running is a no-op).\n"+
		"Use the database owner's credentials (Supabase: the postgres user), not a node's.", forMigrate)
	cf := bindConfig(fs, forMigrate)
	printSQL := fs.Bool("print", false, "print the SQL instead of applying it (for psql or supabase/migrations/)")
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if *printSQL {
		if err := writeSQL(c); err != nil {
			fmt.Fprintf(c.stderr, "waylume-node migrate: %v\n", err)
			return exitFail
		}
		return exitOK
	}
	if !c.validate(&cfg, "database-url") {
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Minute)
	defer cancel()
	conn, err := connectDB(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node migrate: %s\n", oneLine(err.Error()))
		return exitFail
	}
	defer conn.Close(context.Background())
	applied, err := migrations.Apply(ctx, conn)
	for _, v := range applied {
		fmt.Fprintf(c.stdout, "applied %s\n", v)
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node migrate: %s\n", oneLine(err.Error()))
		return exitFail
	}
	if len(applied) == 0 {
		fmt.Fprintln(c.stdout, "up to date")
	}
	return exitOK
}

func writeSQL(c *cli) error {
	for _, v := range migrations.Versions() {
		b, err := fs.ReadFile(migrations.Files(), v+".sql")
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "-- %s.sql\n%s\n", v, strings.TrimRight(string(b), "\n"))
	}
	return nil
}

// checkMigrated compares the recorded versions with the embedded ones.
func checkMigrated(ctx context.Context, conn *pgx.Conn) checkResult {
	const fix = "run waylume-node migrate with the owner's credentials"
	rows, err := conn.Query(ctx, "SELECT version FROM waylume.schema_migrations")
	var have []string
	if err == nil {
		// pgx reports errors of the query itself (permission denied) here.
		have, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" {
			return fail("migrations", "schema waylume not installed", fix)
		}
		if errors.As(err, &pe) && pe.Code == "42501" {
			// A node's role cannot read the version table; the node row
			// check below still proves the schema is usable.
			return pass("migrations", "not verified: this role (node credentials) cannot read the version table")
		}
		return fail("migrations", oneLine(err.Error()), fix)
	}
	recorded := map[string]bool{}
	for _, v := range have {
		recorded[v] = true
	}
	var missing []string
	for _, v := range migrations.Versions() {
		if !recorded[v] {
			missing = append(missing, v)
		}
	}
	if len(missing) > 0 {
		return fail("migrations", "not applied: "+strings.Join(missing, ", "), fix)
	}
	return pass("migrations", fmt.Sprintf("%d of %d applied", len(migrations.Versions()), len(migrations.Versions())))
}
