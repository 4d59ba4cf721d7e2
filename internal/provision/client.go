package provision

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/migrations"
)

// ClientConfig is peer id's wg-quick file (waylume.client_config). With
// key, the client's private key, the PrivateKey placeholder is filled in
// after checking that key is the peer's; the key goes nowhere else.
func ClientConfig(ctx context.Context, dbURL, id string, key *wgtypes.Key) (string, error) {
	var conf, pub string
	err := withConn(ctx, dbURL, func(conn *pgx.Conn) (err error) {
		conf, pub, err = migrations.ClientConfig(ctx, conn, id)
		return err
	})
	if err != nil {
		return "", err
	}
	if key == nil {
		return conf, nil
	}
	if got := key.PublicKey().String(); got != pub {
		return "", fmt.Errorf("the private key's public key %s is not the peer's %s", got, pub)
	}
	placeholder := "PrivateKey = " + migrations.PrivateKeyPlaceholder + "\n"
	if !strings.Contains(conf, placeholder) {
		return "", errors.New("the configuration has no PrivateKey placeholder to fill")
	}
	return strings.Replace(conf, placeholder, "PrivateKey = "+key.String()+"\n", 1), nil
}
