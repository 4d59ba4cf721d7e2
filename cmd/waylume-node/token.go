package main

// The token subcommand: a node-scoped Realtime token minted by the
// operator, signed with a private key the project trusts (ES256 or RS256,
// its kid in the header) or with the legacy shared JWT secret (HS256).
// Realtime switches to the role claim and RLS reads node_id through
// waylume.current_node_id(). The node itself never holds the key. Signing
// lives in internal/jwt.

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/waylume/waylume-node/internal/jwt"
	"github.com/waylume/waylume-node/internal/parse"
)

const (
	nodeRole    = "waylume_node"
	tokenIssuer = "waylume"
	defaultTTL  = 30 * 24 * time.Hour
	// longTTL is where the command starts warning: a stolen token works
	// until its exp (or until the node is revoked).
	longTTL = 90 * 24 * time.Hour
)

type tokenFlags struct {
	nodeID, signingKey, kid, secretFile, issuer *string
	ttl                                         *time.Duration
}

func (c *cli) tokenCmd(args []string) int {
	fs := c.flagSet("token", "",
		"Mint a node-scoped JWT for Realtime (WAYLUME_ACCESS_TOKEN_FILE). Run by the operator, never on the node,\n"+
			"with a signing key the project trusts (--signing-key: EC P-256 or RSA, JWK or PEM) or, legacy, the\n"+
			"project's JWT secret (--jwt-secret-file or WAYLUME_JWT_SECRET).", 0)
	f := tokenFlags{
		nodeID:     fs.String("node-id", "", "the node's waylume.nodes.id (env WAYLUME_NODE_ID)"),
		signingKey: fs.String("signing-key", "", "private key file: a JWK as `supabase gen signing-key` writes it (ES256/RS256) or PEM"),
		kid:        fs.String("kid", "", "key id for the JWT header (required for a PEM key; overrides the JWK's)"),
		secretFile: fs.String("jwt-secret-file", "", "legacy: file holding the project's JWT secret (env WAYLUME_JWT_SECRET holds the secret itself)"),
		ttl:        fs.Duration("ttl", defaultTTL, "lifetime of the token"),
		issuer:     fs.String("issuer", tokenIssuer, "iss claim"),
	}
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "waylume-node token: unexpected argument %q\n", fs.Arg(0))
		return exitConfig
	}
	if *f.nodeID == "" {
		*f.nodeID, _ = c.getenv("WAYLUME_NODE_ID")
	}
	*f.nodeID = strings.ToLower(*f.nodeID)
	switch {
	case *f.nodeID == "":
		fmt.Fprintln(c.stderr, "waylume-node: missing --node-id (WAYLUME_NODE_ID): required")
		return exitConfig
	case !parse.IsUUID(*f.nodeID):
		fmt.Fprintln(c.stderr, "waylume-node: invalid --node-id (WAYLUME_NODE_ID): not a UUID (waylume.nodes.id)")
		return exitConfig
	case *f.ttl <= 0:
		fmt.Fprintln(c.stderr, "waylume-node: invalid --ttl: must be positive")
		return exitConfig
	}
	key, err := c.tokenKey(f)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node: %s\n", err)
		return exitConfig
	}
	if *f.ttl > longTTL {
		fmt.Fprintf(c.stderr, "waylume-node token: warning: a lifetime of %s: a stolen token works that long unless the node is revoked; prefer %s or less\n", *f.ttl, defaultTTL)
	}
	now := time.Now()
	tok, err := key.Sign(jwt.Claims{
		Role: nodeRole, NodeID: *f.nodeID, Sub: *f.nodeID, Iss: *f.issuer,
		Iat: now.Unix(), Exp: now.Add(*f.ttl).Unix(),
	})
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node token: %v\n", err)
		return exitFail
	}
	fmt.Fprintln(c.stdout, tok)
	return exitOK
}

// tokenKey loads the signing key: the key file, else the shared secret
// (with a warning). Errors never quote key material.
func (c *cli) tokenKey(f tokenFlags) (jwt.Key, error) {
	if *f.signingKey != "" {
		if *f.secretFile != "" {
			return jwt.Key{}, errors.New("invalid --signing-key: set either it or --jwt-secret-file, not both")
		}
		key, err := jwt.LoadKey(*f.signingKey, *f.kid)
		if errors.Is(err, jwt.ErrNoKid) {
			return jwt.Key{}, errors.New("missing --kid: the key file names no key id; give the kid the project lists for this key")
		}
		if err != nil {
			return jwt.Key{}, fmt.Errorf("invalid --signing-key: %v", err)
		}
		return key, nil
	}
	var secret []byte
	if *f.secretFile != "" {
		b, err := os.ReadFile(*f.secretFile)
		if err != nil {
			return jwt.Key{}, fmt.Errorf("invalid --jwt-secret-file: %v", err)
		}
		secret = []byte(strings.TrimRight(string(b), "\r\n"))
	} else if s, ok := c.getenv("WAYLUME_JWT_SECRET"); ok {
		secret = []byte(s)
	}
	if len(secret) == 0 {
		return jwt.Key{}, errors.New("missing --signing-key, or legacy --jwt-secret-file (or WAYLUME_JWT_SECRET): the key to sign with")
	}
	fmt.Fprintln(c.stderr, "waylume-node token: warning: HS256 with the project's legacy JWT secret: revoking that secret stops every node at once; prefer an Auth user per node (node create --auth-email) or --signing-key")
	if len(secret) < 32 {
		fmt.Fprintln(c.stderr, "waylume-node token: warning: the JWT secret is shorter than 32 bytes")
	}
	key := jwt.SecretKey(secret)
	key.ID = *f.kid
	return key, nil
}
