package migrations

// Operator actions on a migrated database. They go through the SQL
// functions the migrations define (waylume.create_node,
// waylume.create_node_login, waylume.revoke_node), so psql users and the
// command do the same thing, and need the owner's or service credentials.

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/netip"

	"github.com/jackc/pgx/v5"
)

// NodeSpec is a node row to create.
type NodeSpec struct {
	Name       string
	Endpoint   string       // host:port clients dial
	Address    netip.Prefix // the node's tunnel address with the pool prefix
	Address6   netip.Prefix // optional, likewise
	ListenPort int
	DNS        []netip.Addr
	MTU        int // 0: none stored, the node's default
}

// CreateNode inserts the node's row and returns its id.
func CreateNode(ctx context.Context, conn *pgx.Conn, n NodeSpec) (string, error) {
	var addr6 *netip.Prefix
	if n.Address6.IsValid() {
		addr6 = &n.Address6
	}
	var mtu *int
	if n.MTU != 0 {
		mtu = &n.MTU
	}
	dns := n.DNS
	if dns == nil {
		dns = []netip.Addr{}
	}
	var id string
	err := conn.QueryRow(ctx, `SELECT waylume.create_node($1, $2, $3::inet, $4::inet, $5, $6::inet[], $7)::text`,
		n.Name, n.Endpoint, n.Address, addr6, n.ListenPort, dns, mtu).Scan(&id)
	if err != nil {
		return "", fmt.Errorf("create node: %w", err)
	}
	return id, nil
}

// CreateNodeLogin creates (or resets) node nodeID's login role with a new
// random password and returns both. Only a SCRAM verifier reaches the
// server (as psql's \password sends it), so the password is in no
// statement log.
func CreateNodeLogin(ctx context.Context, conn *pgx.Conn, nodeID string) (role, password string, err error) {
	if err := conn.QueryRow(ctx, "SELECT waylume.create_node_login($1::uuid, NULL)", nodeID).Scan(&role); err != nil {
		return "", "", fmt.Errorf("create login: %w", err)
	}
	b := make([]byte, 24)
	rand.Read(b)
	password = base64.RawURLEncoding.EncodeToString(b)
	verifier, err := scramVerifier(password)
	if err != nil {
		return "", "", err
	}
	// The verifier is base64 and '$' only: safe inside the quotes.
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", pgx.Identifier{role}.Sanitize(), verifier)); err != nil {
		return "", "", fmt.Errorf("set password: %w", err)
	}
	return role, password, nil
}

// scramVerifier computes PostgreSQL's SCRAM-SHA-256 password verifier
// (RFC 5802/7677): SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>.
// The password is ASCII, so SASLprep leaves it unchanged.
func scramVerifier(password string) (string, error) {
	const iter = 4096
	salt := make([]byte, 16)
	rand.Read(salt)
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		return "", fmt.Errorf("scram: %w", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	server := mac(salted, "Server Key")
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iter, enc(salt), enc(stored[:]), enc(server)), nil
}

// RevokeNode runs waylume.revoke_node: tokens issued up to now refused,
// the node's login role disabled with its sessions ended and what it owns
// dropped, and its Auth users banned where Supabase Auth shares the
// database. It returns the function's account of what it did.
func RevokeNode(ctx context.Context, conn *pgx.Conn, nodeID string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT waylume.revoke_node($1::uuid)`, nodeID)
	if err != nil {
		return nil, fmt.Errorf("revoke node: %w", err)
	}
	said, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("revoke node: %w", err)
	}
	return said, nil
}
