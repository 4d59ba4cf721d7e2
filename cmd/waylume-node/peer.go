package main

// peer config: the client's wg-quick file from waylume.client_config, as
// text or as a QR code for the WireGuard mobile apps. The client's private
// key never goes to the database; --private-key-file fills it in here.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/parse"
	"github.com/waylume/waylume-node/internal/provision"
	"github.com/waylume/waylume-node/internal/qrcode"
)

const peerUsage = `Usage:
  waylume-node peer config ID [--private-key-file FILE] [--qr]
      print peer ID's client configuration (wg-quick format, waylume.client_config);
      the PrivateKey line is a placeholder unless FILE holds the client's private key
      (checked against the peer's public key; it is not sent anywhere);
      --qr prints it as a QR code for the WireGuard mobile apps instead
Needs the owner's or service credentials in WAYLUME_DATABASE_URL.
`

func (c *cli) peerCmd(args []string) int {
	if len(args) > 0 && args[0] == "config" {
		return c.peerConfig(args[1:])
	}
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(c.stdout, peerUsage)
		return exitOK
	}
	fmt.Fprint(c.stderr, peerUsage)
	return exitConfig
}

func (c *cli) peerConfig(args []string) int {
	fs := c.flagSet("peer config", " ID", "Print a peer's client configuration (wg-quick format).", forPeer)
	cf := bindConfig(fs, forPeer)
	keyFile := fs.String("private-key-file", "", "fill in the client's private key from this file")
	asQR := fs.Bool("qr", false, "print a QR code (for the WireGuard mobile apps) instead of the text")
	id, err := parseWithID(fs, args)
	if err != nil {
		if errors.Is(err, flagErrHelp) {
			return exitOK
		}
		fmt.Fprintf(c.stderr, "waylume-node peer config: %v\n", err)
		return exitConfig
	}
	cfg, err := cf.load(c.getenv)
	if err != nil {
		c.configFail(err)
		return exitConfig
	}
	if !c.validate(&cfg, "database-url") {
		return exitConfig
	}
	var key *wgtypes.Key
	if *keyFile != "" {
		k, err := provision.ReadKey(*keyFile)
		if err != nil {
			fmt.Fprintf(c.stderr, "waylume-node: invalid --private-key-file: %v\n", err)
			return exitConfig
		}
		key = &k
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	conf, err := provision.ClientConfig(ctx, cfg.DatabaseURL, id, key)
	if err != nil {
		return c.fail("peer config", err)
	}
	if !*asQR {
		fmt.Fprint(c.stdout, conf)
		return exitOK
	}
	if key == nil {
		fmt.Fprintln(c.stderr, "note: the QR code holds the PrivateKey placeholder; the WireGuard apps import it only with --private-key-file")
	}
	if err := qrcode.Write(c.stdout, conf); err != nil {
		fmt.Fprintf(c.stderr, "waylume-node peer config: %v\n", err)
		return exitFail
	}
	return exitOK
}

// parseWithID parses flags before and after the one positional argument,
// a peer id.
func parseWithID(fs interface {
	Parse([]string) error
	Args() []string
}, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return "", errors.New("missing the peer id (waylume.peers.id)")
	}
	id := strings.ToLower(rest[0])
	if err := fs.Parse(rest[1:]); err != nil {
		return "", err
	}
	if extra := fs.Args(); len(extra) > 0 {
		return "", fmt.Errorf("unexpected argument %q", extra[0])
	}
	if !parse.IsUUID(id) {
		return "", errors.New("the peer id is not a UUID (waylume.peers.id)")
	}
	return id, nil
}
