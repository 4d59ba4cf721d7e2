package main

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/waylume/waylume-node/migrations"
	"github.com/waylume/waylume-node/supabase"
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
	conn, err := supabase.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return c.fail("migrate", err)
	}
	defer conn.Close(context.Background())
	applied, err := migrations.Apply(ctx, conn)
	for _, v := range applied {
		fmt.Fprintf(c.stdout, "applied %s\n", v)
	}
	if err != nil {
		return c.fail("migrate", err)
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
