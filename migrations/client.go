package migrations

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoPeer: the peer id names no row.
var ErrNoPeer = errors.New("no such peer")

// PrivateKeyPlaceholder is the value of the PrivateKey line in
// waylume.client_config's output: the client's key never reaches the
// database.
const PrivateKeyPlaceholder = "<client's private key>"

// ClientConfig returns peer peerID's wg-quick file (waylume.client_config)
// and the public key its row holds, against which a private key filled in
// locally can be checked. It needs the owner's or service credentials.
func ClientConfig(ctx context.Context, conn *pgx.Conn, peerID string) (conf, publicKey string, err error) {
	err = conn.QueryRow(ctx, `SELECT waylume.client_config($1::uuid), (SELECT public_key FROM waylume.peers WHERE id = $1::uuid)`,
		peerID).Scan(&conf, &publicKey)
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "P0002" {
		return "", "", fmt.Errorf("client config of peer %s: %w", peerID, ErrNoPeer)
	}
	if err != nil {
		return "", "", fmt.Errorf("client config: %w", err)
	}
	return conf, publicKey, nil
}
