package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func mintTestToken(t *testing.T, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	tok, err := signToken(tokenClaims{Role: nodeRole, NodeID: goodNode, Iat: now.Unix(), Exp: now.Add(ttl).Unix()}, []byte("secret-secret-secret-secret-1234"))
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

// A rotated token file reaches the Realtime client (OnChange) and the
// expiry metric; an unreadable file keeps the current token.
func TestAccessTokenFileRotation(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	old := mintTestToken(t, time.Hour)
	if err := os.WriteFile(file, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	a := watchAccessToken(ctx, Config{AccessToken: old, AccessTokenFile: file}, reg, slog.New(slog.DiscardHandler))
	got := make(chan string, 4)
	a.OnChange(func(tok string) { got <- tok })

	if a.reload() {
		t.Fatal("an unchanged file counted as a new token")
	}
	if left := a.secondsLeft(); left < 3500 || left > 3600 {
		t.Fatalf("expiry of the first token: %.0fs left, want about 3600", left)
	}
	fresh := mintTestToken(t, 48*time.Hour)
	if err := os.WriteFile(file, []byte(fresh+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !a.reload() {
		t.Fatal("a rotated file was not picked up")
	}
	select {
	case tok := <-got:
		if tok != fresh {
			t.Fatal("OnChange got another token than the file's")
		}
	default:
		t.Fatal("OnChange not called for the new token")
	}
	if left := a.secondsLeft(); left < 47*3600 {
		t.Errorf("expiry metric still follows the old token: %.0fs left", left)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if a.reload() {
		t.Error("a missing file replaced the token")
	}
	if left := a.secondsLeft(); left < 47*3600 {
		t.Errorf("a missing file changed the token in use: %.0fs left", left)
	}
}
