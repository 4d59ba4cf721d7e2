package auth

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// Source is a Realtime access token that may change while the node runs.
type Source interface {
	Token(ctx context.Context) (string, error)
	OnChange(f func(token string))
}

var (
	_ Source = (*SessionSource)(nil)
	_ Source = (*TokenFile)(nil)
)

// SourceConfig picks the node's identity: an Auth user when Email is set,
// else a minted token (followed in TokenFile when set).
type SourceConfig struct {
	ProjectURL, APIKey string
	Email, Password    string
	Token, TokenFile   string
	Log                *slog.Logger
	Registerer         prometheus.Registerer
}

// Start returns the configured source, running until ctx ends.
func Start(ctx context.Context, cfg SourceConfig) (Source, error) {
	if cfg.Email == "" {
		return WatchFile(ctx, FileConfig{Token: cfg.Token, Path: cfg.TokenFile, Registerer: cfg.Registerer, Log: cfg.Log}), nil
	}
	client, err := NewClient(cfg.ProjectURL, cfg.APIKey, nil)
	if err != nil {
		return nil, err
	}
	src, err := NewSessionSource(SessionConfig{Client: client, Email: cfg.Email, Password: cfg.Password, Log: cfg.Log, Registerer: cfg.Registerer})
	if err != nil {
		return nil, err
	}
	go src.Run(ctx)
	return src, nil
}
