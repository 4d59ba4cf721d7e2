package main

// Node-scoped Realtime tokens. The operator mints one per node with the
// project's JWT secret (HS256, as Supabase signs its own tokens); Realtime
// switches to the role claim and RLS reads node_id through
// waylume.current_node_id(). The node itself never holds the secret.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	nodeRole      = "waylume_node"
	tokenIssuer   = "waylume"
	defaultTTL    = 365 * 24 * time.Hour
	expiryWarning = 14 * 24 * time.Hour // warn this long before the token expires
)

type tokenClaims struct {
	Role   string `json:"role"`
	NodeID string `json:"node_id"`
	Sub    string `json:"sub,omitempty"`
	Iss    string `json:"iss,omitempty"`
	Iat    int64  `json:"iat"`
	Exp    int64  `json:"exp"`
}

func (c *cli) tokenCmd(args []string) int {
	fs := c.flagSet("token", "",
		"Mint a node-scoped JWT for Realtime (WAYLUME_ACCESS_TOKEN). Run by the operator with the project's\n"+
			"JWT secret, never on the node. The secret comes from --jwt-secret-file or WAYLUME_JWT_SECRET.", 0)
	nodeID := fs.String("node-id", "", "the node's waylume.nodes.id (env WAYLUME_NODE_ID)")
	secretFile := fs.String("jwt-secret-file", "", "file holding the project's JWT secret (env WAYLUME_JWT_SECRET holds the secret itself)")
	ttl := fs.Duration("ttl", defaultTTL, "lifetime of the token")
	issuer := fs.String("issuer", tokenIssuer, "iss claim")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "waylume-node token: unexpected argument %q\n", fs.Arg(0))
		return exitConfig
	}
	if *nodeID == "" {
		*nodeID, _ = c.getenv("WAYLUME_NODE_ID")
	}
	*nodeID = strings.ToLower(*nodeID)
	switch {
	case *nodeID == "":
		fmt.Fprintln(c.stderr, "waylume-node: missing --node-id (WAYLUME_NODE_ID): required")
		return exitConfig
	case !uuidRE.MatchString(*nodeID):
		fmt.Fprintln(c.stderr, "waylume-node: invalid --node-id (WAYLUME_NODE_ID): not a UUID (waylume.nodes.id)")
		return exitConfig
	case *ttl <= 0:
		fmt.Fprintln(c.stderr, "waylume-node: invalid --ttl: must be positive")
		return exitConfig
	}
	var secret []byte
	if *secretFile != "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			fmt.Fprintf(c.stderr, "waylume-node: invalid --jwt-secret-file: %v\n", err)
			return exitConfig
		}
		secret = []byte(strings.TrimRight(string(b), "\r\n"))
	} else if s, ok := c.getenv("WAYLUME_JWT_SECRET"); ok {
		secret = []byte(s)
	}
	if len(secret) == 0 {
		fmt.Fprintln(c.stderr, "waylume-node: missing --jwt-secret-file (or WAYLUME_JWT_SECRET): the project's JWT secret")
		return exitConfig
	}
	if len(secret) < 32 {
		fmt.Fprintln(c.stderr, "waylume-node token: warning: the JWT secret is shorter than 32 bytes")
	}
	now := time.Now()
	tok, err := signToken(tokenClaims{
		Role: nodeRole, NodeID: *nodeID, Sub: *nodeID, Iss: *issuer,
		Iat: now.Unix(), Exp: now.Add(*ttl).Unix(),
	}, secret)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node token: %v\n", err)
		return exitFail
	}
	fmt.Fprintln(c.stdout, tok)
	return exitOK
}

var b64 = base64.RawURLEncoding

func signToken(claims tokenClaims, secret []byte) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode claims: %w", err)
	}
	head := b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + b64.EncodeToString(payload)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(head))
	return head + "." + b64.EncodeToString(mac.Sum(nil)), nil
}

// tokenExpiry reads the exp claim of a JWT without verifying it: the node
// cannot verify (it has no secret) and only wants to warn before Realtime
// starts refusing the token. ok is false for a non-JWT key or no exp.
func tokenExpiry(token string) (exp time.Time, ok bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	raw, err := b64.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var c struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(raw, &c); err != nil || c.Exp == nil {
		return time.Time{}, false
	}
	f, err := c.Exp.Float64()
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

// tokenFilePoll is how often a token file is reread: far below any sane
// token lifetime, and a stat plus a small read each time.
const tokenFilePoll = 30 * time.Second

// readTokenFile reads a JWT (or key) from path: one line, surrounding space
// trimmed. The error never includes the content.
func readTokenFile(path string) (string, error) {
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

// accessToken is the Realtime access token the node presents. With a token
// file it follows the file, so an operator rotates a node's token by
// replacing the file: the new token is pushed to the live channel (and
// used on every rejoin) without a restart that would cost an event gap.
type accessToken struct {
	path string
	log  *slog.Logger
	poll time.Duration

	mu       sync.Mutex
	token    string
	exp      time.Time
	hasExp   bool
	onChange func(string)
}

// watchAccessToken starts following cfg's access token: it exports
// waylume_access_token_expiry_seconds (seconds until the current token's
// exp; negative once expired), warns at start and daily while the token is
// within expiryWarning of its end, and rereads cfg.AccessTokenFile.
// Tokens without exp register no metric unless a file may bring one.
func watchAccessToken(ctx context.Context, cfg Config, reg prometheus.Registerer, log *slog.Logger) *accessToken {
	a := &accessToken{path: cfg.AccessTokenFile, log: log, poll: tokenFilePoll}
	a.set(cfg.AccessToken)
	if a.hasExp || a.path != "" {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "waylume_access_token_expiry_seconds",
			Help: "Seconds until the Realtime access token expires (negative: expired). Mint a new one with `waylume-node token`.",
		}, a.secondsLeft))
	}
	a.warn()
	go a.run(ctx)
	return a
}

func (a *accessToken) set(tok string) {
	exp, ok := tokenExpiry(tok)
	a.mu.Lock()
	a.token, a.exp, a.hasExp = tok, exp, ok
	a.mu.Unlock()
}

func (a *accessToken) secondsLeft() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.hasExp {
		return math.Inf(1)
	}
	return time.Until(a.exp).Seconds()
}

// OnChange registers f to receive each new token read from the file. Nil
// receivers (tests without a watcher) do nothing.
func (a *accessToken) OnChange(f func(string)) {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.onChange = f
	a.mu.Unlock()
}

func (a *accessToken) warn() {
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
	case left < expiryWarning:
		a.log.Warn("access token expires soon; mint a new one with `waylume-node token`", "expires_at", exp.UTC(), "left", left.Round(time.Minute).String())
	}
}

// reload rereads the token file and reports whether the token changed. A
// file that cannot be read keeps the current token: a half-written or
// briefly missing file must not cut the node off.
func (a *accessToken) reload() bool {
	if a.path == "" {
		return false
	}
	tok, err := readTokenFile(a.path)
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

func (a *accessToken) run(ctx context.Context) {
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
