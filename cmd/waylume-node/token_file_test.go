package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/jwt"
)

func mintTestToken(t *testing.T, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	tok, err := jwt.SignHS256(jwt.Claims{Role: nodeRole, NodeID: goodNode, Iat: now.Unix(), Exp: now.Add(ttl).Unix()}, []byte("secret-secret-secret-secret-1234"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAccessTokenFileConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	tok := mintTestToken(t, time.Hour)
	if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(env map[string]string) (Config, error) {
		fs := (&cli{stderr: &bytes.Buffer{}}).flagSet("run", "", "", forRun)
		cf := bindConfig(fs, forRun)
		if err := fs.Parse(nil); err != nil {
			t.Fatal(err)
		}
		return cf.load(envMap(env))
	}
	c, err := load(map[string]string{"WAYLUME_SUPABASE_KEY": "anon", "WAYLUME_ACCESS_TOKEN_FILE": file})
	if err != nil {
		t.Fatal(err)
	}
	if c.AccessToken != tok {
		t.Errorf("AccessToken not read from the file")
	}
	_, err = load(map[string]string{"WAYLUME_ACCESS_TOKEN_FILE": file, "WAYLUME_ACCESS_TOKEN": "jwt"})
	if err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("token and token file together: %v", err)
	}
	_, err = load(map[string]string{"WAYLUME_ACCESS_TOKEN_FILE": filepath.Join(dir, "missing")})
	if err == nil || !strings.HasPrefix(err.Error(), "invalid --access-token-file (WAYLUME_ACCESS_TOKEN_FILE): ") {
		t.Errorf("missing token file: %v", err)
	}
	if err := os.WriteFile(file, []byte("two\ntokens\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = load(map[string]string{"WAYLUME_ACCESS_TOKEN_FILE": file})
	if err == nil || strings.Contains(err.Error(), "tokens") {
		t.Errorf("malformed token file (content must not be echoed): %v", err)
	}
}
