package main

// The token subcommand: a node-scoped Realtime token minted by the
// operator with the project's JWT secret (HS256, as Supabase signs its own
// tokens); Realtime switches to the role claim and RLS reads node_id
// through waylume.current_node_id(). The node itself never holds the
// secret. Signing lives in internal/jwt.

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/waylume/waylume-node/internal/jwt"
)

const (
	nodeRole    = "waylume_node"
	tokenIssuer = "waylume"
	defaultTTL  = 365 * 24 * time.Hour
)

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
	tok, err := jwt.SignHS256(jwt.Claims{
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
