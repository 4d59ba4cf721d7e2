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
	"os"
	"strings"
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

// watchAccessToken exports waylume_access_token_expiry_seconds (seconds
// until the access token's exp; negative once expired) and logs a warning
// at start and then daily while the token is within expiryWarning of its
// end. Tokens without exp register no metric.
func watchAccessToken(ctx context.Context, token string, reg prometheus.Registerer, log *slog.Logger) {
	exp, ok := tokenExpiry(token)
	if !ok {
		return
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "waylume_access_token_expiry_seconds",
		Help: "Seconds until the Realtime access token expires (negative: expired). Mint a new one with `waylume-node token`.",
	}, func() float64 { return time.Until(exp).Seconds() }))
	warn := func() {
		left := time.Until(exp)
		switch {
		case left <= 0:
			log.Error("access token expired: Realtime will refuse it; mint a new one with `waylume-node token`", "expired_at", exp.UTC())
		case left < expiryWarning:
			log.Warn("access token expires soon; mint a new one with `waylume-node token`", "expires_at", exp.UTC(), "left", left.Round(time.Minute).String())
		}
	}
	warn()
	go func() {
		t := time.NewTicker(24 * time.Hour)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				warn()
			}
		}
	}()
}
