package provision

import (
	"os"
	"path/filepath"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// A key written is read back; it is not replaced without force, and a
// forced write keeps the file 0600.
func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "private.key")
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	if err := WriteKey(path, k1, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteKey(path, k2, false); err == nil {
		t.Error("an existing key file was replaced without force")
	}
	if got, err := ReadKey(path); err != nil || got != k1 {
		t.Errorf("ReadKey = %v, %v", got, err)
	}
	os.Chmod(path, 0o644)
	if err := WriteKey(path, k2, true); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v after a forced write", st.Mode().Perm())
	}
	if got, _ := ReadKey(path); got != k2 {
		t.Error("the forced write did not replace the key")
	}
	if err := os.WriteFile(path, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKey(path); err == nil {
		t.Error("ReadKey accepted a file that holds no key")
	}
}
