package main

import (
	"context"

	"github.com/jackc/pgx/v5"
)

func (c *cli) migrateCmd(args []string) int { return exitFail }
func (c *cli) nodeCmd(args []string) int    { return exitFail }

func checkMigrated(ctx context.Context, conn *pgx.Conn) checkResult { return pass("migrations", "?") }
