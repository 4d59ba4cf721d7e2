package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// runNode wires sources, reconciler, usage and heartbeat (issue 5).
func runNode(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) error {
	return errors.New("run: not implemented yet")
}
