package main

import (
	"errors"
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/provision"
)

// keygenCmd writes a new private key to --out (0600, never overwritten
// without --force) and prints the public key; without --out the private key
// goes to stdout and the public key to stderr, like `wg genkey | wg pubkey`
// in one step. The private key is never logged.
func (c *cli) keygenCmd(args []string) int {
	fs := c.flagSet("keygen", "", "Generate a WireGuard private key. With --out, stdout is the public key only.", 0)
	out := fs.String("out", "", "write the private key to this file (mode 0600) instead of stdout")
	force := fs.Bool("force", false, "overwrite --out if it exists")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "waylume-node keygen: unexpected argument %q\n", fs.Arg(0))
		return exitConfig
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node keygen: %v\n", err)
		return exitFail
	}
	if *out == "" {
		fmt.Fprintln(c.stdout, key.String())
		fmt.Fprintf(c.stderr, "public key: %s\n", key.PublicKey())
		return exitOK
	}
	if err := provision.WriteKey(*out, key, *force); err != nil {
		fmt.Fprintf(c.stderr, "waylume-node keygen: %v\n", err)
		return exitFail
	}
	fmt.Fprintln(c.stdout, key.PublicKey().String())
	return exitOK
}

// parseExit maps a flag parse error to an exit code: --help is success.
func parseExit(err error) int {
	if errors.Is(err, flagErrHelp) {
		return exitOK
	}
	return exitConfig
}
