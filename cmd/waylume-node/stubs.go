package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

func watchAccessToken(ctx context.Context, token string, reg *prometheus.Registry, log *slog.Logger) {
}

func (c *cli) migrateCmd(args []string) int     { return exitFail }
func (c *cli) nodeCmd(args []string) int        { return exitFail }
func (c *cli) checkCmd(args []string) int       { return exitFail }
func (c *cli) statusCmd(args []string) int      { return exitFail }
func (c *cli) keygenCmd(args []string) int      { return exitFail }
func (c *cli) tokenCmd(args []string) int       { return exitFail }
func (c *cli) healthcheckCmd(args []string) int { return exitFail }
