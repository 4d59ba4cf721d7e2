package main

import (
	"context"
	"errors"
	"log/slog"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/internal/health"
	"github.com/waylume/waylume-node/internal/node"
	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/supabase/auth"
)

// runCmd is the run subcommand around node.Run: config, logger, registry,
// metrics endpoint and signals; node.Run does the node's work and returns
// when ctx ends.
func (c *cli) runCmd(args []string) int {
	fs := c.flagSet("run", "", "Run the node until SIGTERM or SIGINT.", forRun)
	cf := bindConfig(fs, forRun)
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "database-url", "node-id", "private-key-file", "interface") {
		return exitConfig
	}
	log := node.NewLogger(c.stderr, cfg.LogLevel, cfg.LogFormat)
	readiness := &health.State{}
	node.TuneMemory(c.getenv)

	reg := health.NewRegistry(version)
	ctx, stop := signal.NotifyContext(c.ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	tokens, err := auth.Start(ctx, cfg.tokens(reg, log))
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitFail
	}

	if cfg.MetricsAddr != "" {
		ms, err := health.Listen(cfg.MetricsAddr, reg, readiness, log)
		if err != nil {
			log.Error("cannot start", "err", err)
			return exitFail
		}
		log.Info("metrics listening", "addr", ms.Addr())
		defer func() {
			if err := ms.Shutdown(); err != nil {
				log.Warn("metrics shutdown", "err", err)
			}
		}()
	}

	log.Info("starting", "version", version, "node_id", cfg.NodeID, "interface", cfg.Interface, "wg_mode", cfg.WGMode)
	err = node.Run(ctx, cfg.node(), node.Runtime{Log: log, Registerer: reg, Health: readiness, Tokens: tokens})
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("stopped", "err", err)
		return exitFail
	}
	log.Info("stopped")
	return exitOK
}

// stateDir is where the local state lives: beside the private key unless
// set, the one directory the node already keeps secrets in.
func (c Config) stateDir() string {
	if c.StateDir != "" {
		return c.StateDir
	}
	return filepath.Dir(c.PrivateKeyFile)
}

// node is the run command's share of the settings.
func (c Config) node() node.Config {
	return node.Config{
		DatabaseURL: c.DatabaseURL, NodeID: c.NodeID,
		RealtimeURL: c.RealtimeURL, RealtimeMode: c.RealtimeMode, SupabaseKey: c.SupabaseKey, AccessToken: c.AccessToken,
		Interface: c.Interface, WGMode: c.WGMode, PrivateKeyFile: c.PrivateKeyFile, StateDir: c.stateDir(),
		EgressInterface: c.EgressInterface, Isolation: c.Isolation, TeardownOnExit: c.TeardownOnExit,
		AllowPrivate: c.AllowPrivate, AllowLocal: c.AllowLocal, RoutedSubnets: c.RoutedSubnets,
		ResyncInterval: c.ResyncInterval, UsageInterval: c.UsageInterval, Version: version,
		// The same binary, even if the file was replaced since it started.
		DeviceCommand: []string{"/proc/self/exe", "device"},
		ReturnMemory:  true,
	}
}

// deviceCmd is the userspace device's own process (netctl.DeviceMain);
// run starts it with a lifeline and its arguments.
func (c *cli) deviceCmd(args []string) int {
	return netctl.DeviceMain(args, c.stderr)
}

// tokens is the run command's Realtime identity: the Auth user's session,
// or the token setting followed in its file.
func (c Config) tokens(reg prometheus.Registerer, log *slog.Logger) auth.SourceConfig {
	return auth.SourceConfig{ProjectURL: c.SupabaseURL, APIKey: c.SupabaseKey, Email: c.AuthEmail,
		Password: c.AuthPassword, Token: c.AccessToken, TokenFile: c.AccessTokenFile, Log: log, Registerer: reg}
}
