package auth

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/internal/jwt"
)

// FilePoll is how often a token file is reread: far below any sane token
// lifetime, and a stat plus a small read each time.
const FilePoll = 30 * time.Second

// ExpiryWarning is how long before a minted token's exp the node starts
// warning (at start and daily).
const ExpiryWarning = 14 * 24 * time.Hour

// ReadTokenFile reads a JWT (or key) from path: one line, surrounding
// space trimmed. The error never includes the content.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("%s: want one token on one line", path)
	}
	return tok, nil
}

// FileConfig configures a TokenFile.
type FileConfig struct {
	// Token is the token in use at start (read from Path by the caller,
	// or given directly when Path is empty).
	Token string
	// Path, when set, is reread every Poll (default FilePoll).
	Path       string
	Poll       time.Duration
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// TokenFile is an operator-minted Realtime access token. With a path it
// follows the file, so an operator rotates a node's token by replacing the
// file: the new token is pushed to the live channel (and used on every
// rejoin) without a restart that would cost an event gap.
type TokenFile struct {
	path string
	log  *slog.Logger
	poll time.Duration

	mu       sync.Mutex
	token    string
	exp      time.Time
	hasExp   bool
	onChange func(string)
}

// WatchFile starts following cfg's token: it exports
// waylume_access_token_expiry_seconds (seconds until the current token's
// exp; negative once expired), warns at start and daily while the token is
// within ExpiryWarning of its end, and rereads cfg.Path until ctx ends.
// Tokens without exp register no metric unless a file may bring one.
func WatchFile(ctx context.Context, cfg FileConfig) *TokenFile {
	if cfg.Poll <= 0 {
		cfg.Poll = FilePoll
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	a := &TokenFile{path: cfg.Path, log: cfg.Log, poll: cfg.Poll}
	a.set(cfg.Token)
	if (a.hasExp || a.path != "") && cfg.Registerer != nil {
		cfg.Registerer.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "waylume_access_token_expiry_seconds",
			Help: "Seconds until the Realtime access token expires (negative: expired). Mint a new one with `waylume-node token`.",
		}, a.secondsLeft))
	}
	a.warn()
	go a.run(ctx)
	return a
}

func (a *TokenFile) set(tok string) {
	exp, ok := jwt.Expiry(tok)
	a.mu.Lock()
	a.token, a.exp, a.hasExp = tok, exp, ok
	a.mu.Unlock()
}

func (a *TokenFile) secondsLeft() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return secondsLeft(a.exp, a.hasExp)
}

// Token returns the token in use.
func (a *TokenFile) Token(context.Context) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.token, nil
}

// OnChange registers f to receive each new token read from the file. Nil
// receivers (tests without a watcher) do nothing.
func (a *TokenFile) OnChange(f func(string)) {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.onChange = f
	a.mu.Unlock()
}

func (a *TokenFile) warn() {
	a.mu.Lock()
	exp, ok := a.exp, a.hasExp
	a.mu.Unlock()
	if !ok {
		return
	}
	left := time.Until(exp)
	switch {
	case left <= 0:
		a.log.Error("access token expired: Realtime will refuse it; mint a new one with `waylume-node token`", "expired_at", exp.UTC())
	case left < ExpiryWarning:
		a.log.Warn("access token expires soon; mint a new one with `waylume-node token`", "expires_at", exp.UTC(), "left", left.Round(time.Minute).String())
	}
}

// reload rereads the token file and reports whether the token changed. A
// file that cannot be read keeps the current token: a half-written or
// briefly missing file must not cut the node off.
func (a *TokenFile) reload() bool {
	if a.path == "" {
		return false
	}
	tok, err := ReadTokenFile(a.path)
	if err != nil {
		a.log.Warn("cannot reread the access token file; keeping the current token", "err", err)
		return false
	}
	a.mu.Lock()
	same := tok == a.token
	a.mu.Unlock()
	if same {
		return false
	}
	a.set(tok)
	a.mu.Lock()
	f := a.onChange
	a.mu.Unlock()
	a.log.Info("access token file changed; using the new token", "path", a.path)
	if f != nil {
		f(tok)
	}
	a.warn()
	return true
}

func (a *TokenFile) run(ctx context.Context) {
	daily := time.NewTicker(24 * time.Hour)
	defer daily.Stop()
	var poll <-chan time.Time
	if a.path != "" {
		t := time.NewTicker(a.poll)
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-daily.C:
			a.warn()
		case <-poll:
			a.reload()
		}
	}
}

// ReadSecretFile reads a password or key: the file's content without the
// final line break, on one line. The error never includes the content.
func ReadSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" || strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("%s: want the secret on one line", path)
	}
	return s, nil
}
