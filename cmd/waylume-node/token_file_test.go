package main

import (
	"bytes"
	"errors"
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

// A 2026 node: the project URL gives Realtime's URL, the publishable key
// is the apikey and never the access token, the Auth user is the
// identity; the combinations that cannot work are refused with one line.
func TestAuthUserConfig(t *testing.T) {
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte("correct horse battery\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(env map[string]string) (Config, error) {
		fs := (&cli{stderr: &bytes.Buffer{}}).flagSet("run", "", "", forRun)
		cf := bindConfig(fs, forRun)
		if err := fs.Parse(nil); err != nil {
			t.Fatal(err)
		}
		c, err := cf.load(envMap(env))
		if err == nil {
			c.requireFor("node-id")
			err = c.Validate()
		}
		return c, err
	}
	base := func() map[string]string {
		return map[string]string{"WAYLUME_NODE_ID": goodNode, "WAYLUME_SUPABASE_URL": "https://abcdefgh.supabase.co/",
			"WAYLUME_SUPABASE_KEY": "sb_publishable_x", "WAYLUME_AUTH_EMAIL": "n@nodes.example", "WAYLUME_AUTH_PASSWORD_FILE": pwFile}
	}
	c, err := load(base())
	if err != nil {
		t.Fatal(err)
	}
	if c.RealtimeURL != "wss://abcdefgh.supabase.co/realtime/v1/websocket" || c.AccessToken != "" || c.AuthPassword != "correct horse battery" {
		t.Errorf("derived realtime %q, access token %q, password read %v", c.RealtimeURL, c.AccessToken, c.AuthPassword != "")
	}
	env := base()
	env["WAYLUME_REALTIME_URL"] = "ws://127.0.0.1:4000/realtime/v1/websocket"
	if c, err := load(env); err != nil || c.RealtimeURL != env["WAYLUME_REALTIME_URL"] {
		t.Errorf("an explicit Realtime URL: %q %v", c.RealtimeURL, err)
	}
	for name, mod := range map[string]func(map[string]string){
		"sb_ key as token": func(e map[string]string) {
			delete(e, "WAYLUME_AUTH_EMAIL")
			e["WAYLUME_ACCESS_TOKEN"] = "sb_publishable_x"
		},
		"no identity":        func(e map[string]string) { delete(e, "WAYLUME_AUTH_EMAIL"); delete(e, "WAYLUME_AUTH_PASSWORD_FILE") },
		"no password":        func(e map[string]string) { delete(e, "WAYLUME_AUTH_PASSWORD_FILE") },
		"auth and token":     func(e map[string]string) { e["WAYLUME_ACCESS_TOKEN"] = "eyJ.x.y" },
		"bad project URL":    func(e map[string]string) { e["WAYLUME_SUPABASE_URL"] = "abcdefgh.supabase.co" },
		"no key":             func(e map[string]string) { delete(e, "WAYLUME_SUPABASE_KEY") },
		"missing password":   func(e map[string]string) { e["WAYLUME_AUTH_PASSWORD_FILE"] = pwFile + ".missing" },
		"auth without a URL": func(e map[string]string) { delete(e, "WAYLUME_SUPABASE_URL") },
	} {
		env := base()
		mod(env)
		_, err := load(env)
		var ce *configError
		if !errors.As(err, &ce) {
			t.Errorf("%s: %v, want a config error", name, err)
		} else if strings.Contains(err.Error(), "correct horse") || strings.Contains(err.Error(), "sb_publishable_x") {
			t.Errorf("%s: the error quotes a secret: %v", name, err)
		}
	}
}
