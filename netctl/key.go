package netctl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// LoadOrCreateKey reads a base64 WireGuard private key from path, or
// creates one there (mode 0600, parent 0700) when the file does not exist.
// Errors never contain key material.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, perr := wgtypes.ParseKey(strings.TrimSpace(string(b)))
		if perr != nil {
			return wgtypes.Key{}, fmt.Errorf("private key file %s: not a base64 WireGuard key", path)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, fmt.Errorf("read private key file: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate private key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return wgtypes.Key{}, fmt.Errorf("create private key directory: %w", err)
	}
	// O_EXCL: two starting nodes must not both write a key and use different ones.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadOrCreateKey(path)
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("create private key file: %w", err)
	}
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		f.Close()
		return wgtypes.Key{}, fmt.Errorf("write private key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return wgtypes.Key{}, fmt.Errorf("write private key file %s: %w", path, err)
	}
	return k, nil
}
