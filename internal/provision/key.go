package provision

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WriteKey writes a WireGuard private key to path, created with mode 0600
// (and its directory 0700); an existing file is replaced only with force,
// since the node's public key changes with it.
func WriteKey(path string, key wgtypes.Key, force bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("key directory: %w", err)
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists; use --force to replace it (the node's public key changes)", path)
	}
	if err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	if err := f.Chmod(0o600); err != nil { // O_TRUNC keeps an old file's mode
		f.Close()
		return fmt.Errorf("write key: %w", err)
	}
	if _, err := f.WriteString(key.String() + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write key: %w", err)
	}
	return f.Close()
}

// ReadKey reads a WireGuard private key file, as wg genkey writes it.
func ReadKey(path string) (wgtypes.Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, err
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return wgtypes.Key{}, errors.New("not a WireGuard private key (base64 of 32 bytes, as wg genkey writes)")
	}
	return k, nil
}
