package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var keyRE = regexp.MustCompile(`^[A-Za-z0-9+/]{43}=$`)

func TestKeygenToFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "private.key")
	code, out, stderr := runCLI(t, nil, "keygen", "--out", path)
	if code != exitOK {
		t.Fatalf("code %d: %s", code, stderr)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	priv := strings.TrimSuffix(string(b), "\n")
	if !keyRE.MatchString(priv) {
		t.Fatalf("key file content is not a base64 key")
	}
	k, err := wgtypes.ParseKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pub := strings.TrimSpace(out)
	if pub != k.PublicKey().String() {
		t.Errorf("printed %q, want the public key %q", pub, k.PublicKey())
	}
	if strings.Contains(out+stderr, priv) {
		t.Error("the private key is printed")
	}
	// No silent overwrite: the node's identity would change.
	if code, _, stderr := runCLI(t, nil, "keygen", "--out", path); code != exitFail || !strings.Contains(stderr, "exists") {
		t.Errorf("second keygen: code %d %q", code, stderr)
	}
	os.Chmod(path, 0o644)
	if code, _, _ := runCLI(t, nil, "keygen", "--out", path, "--force"); code != exitOK {
		t.Errorf("--force: code %d", code)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("--force left mode %v", st.Mode().Perm())
	}
	if b2, _ := os.ReadFile(path); string(b2) == string(b) {
		t.Error("--force wrote the same key")
	}
}

func TestKeygenStdout(t *testing.T) {
	code, out, stderr := runCLI(t, nil, "keygen")
	if code != exitOK {
		t.Fatal(code)
	}
	priv := strings.TrimSpace(out)
	k, err := wgtypes.ParseKey(priv)
	if err != nil || !keyRE.MatchString(priv) {
		t.Fatalf("stdout %q is not a key", out)
	}
	if stderr != "public key: "+k.PublicKey().String()+"\n" {
		t.Errorf("stderr %q", stderr)
	}
}
