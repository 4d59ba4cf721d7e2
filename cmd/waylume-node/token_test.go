package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/jwt"
)

var b64 = base64.RawURLEncoding

// verifyHS256 checks a token the way Realtime does, independently of
// jwt.SignHS256.
func verifyHS256(t *testing.T, token string, secret []byte) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	var head map[string]any
	hb, err := b64.DecodeString(parts[0])
	if err != nil || json.Unmarshal(hb, &head) != nil {
		t.Fatalf("header: %v", err)
	}
	if head["alg"] != "HS256" || head["typ"] != "JWT" {
		t.Errorf("header %v", head)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := b64.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		t.Fatal("signature does not verify with the secret")
	}
	var claims map[string]any
	pb, err := b64.DecodeString(parts[1])
	if err != nil || json.Unmarshal(pb, &claims) != nil {
		t.Fatalf("payload: %v", err)
	}
	return claims
}

func TestTokenRoundTrip(t *testing.T) {
	secret := "super-secret-jwt-token-with-at-least-32-characters-long"
	file := filepath.Join(t.TempDir(), "jwt-secret")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Unix()
	for name, run := range map[string]func() (int, string, string){
		"secret file": func() (int, string, string) {
			return runCLI(t, nil, "token", "--node-id", strings.ToUpper(goodNode), "--jwt-secret-file", file, "--ttl", "720h")
		},
		"secret env": func() (int, string, string) {
			return runCLI(t, map[string]string{"WAYLUME_JWT_SECRET": secret, "WAYLUME_NODE_ID": goodNode}, "token", "--ttl", "720h")
		},
	} {
		t.Run(name, func(t *testing.T) {
			code, out, stderr := run()
			if code != exitOK {
				t.Fatalf("code %d: %s", code, stderr)
			}
			if strings.Contains(out+stderr, secret) {
				t.Fatal("the secret is printed")
			}
			tok := strings.TrimSpace(out)
			claims := verifyHS256(t, tok, []byte(secret))
			if claims["role"] != "waylume_node" || claims["node_id"] != goodNode || claims["iss"] != "waylume" {
				t.Errorf("claims %v", claims)
			}
			iat, exp := int64(claims["iat"].(float64)), int64(claims["exp"].(float64))
			if iat < before || iat > time.Now().Unix() || exp-iat != 720*3600 {
				t.Errorf("iat %d exp %d", iat, exp)
			}
			if got, ok := jwt.Expiry(tok); !ok || got.Unix() != exp {
				t.Errorf("jwt.Expiry = %v %v, want %d", got, ok, exp)
			}
		})
	}
	// A different secret does not verify: the test above would catch a
	// token signed with anything else.
	_, out, _ := runCLI(t, map[string]string{"WAYLUME_JWT_SECRET": secret}, "token", "--node-id", goodNode)
	parts := strings.Split(strings.TrimSpace(out), ".")
	mac := hmac.New(sha256.New, []byte("other"))
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if sig, _ := b64.DecodeString(parts[2]); hmac.Equal(sig, mac.Sum(nil)) {
		t.Error("signature verifies with the wrong secret")
	}
}

func TestTokenErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, []string{"--node-id", goodNode}, "waylume-node: missing --jwt-secret-file (or WAYLUME_JWT_SECRET): the project's JWT secret\n"},
		{map[string]string{"WAYLUME_JWT_SECRET": "s"}, nil, "waylume-node: missing --node-id (WAYLUME_NODE_ID): required\n"},
		{map[string]string{"WAYLUME_JWT_SECRET": "s"}, []string{"--node-id", "n1"}, "waylume-node: invalid --node-id (WAYLUME_NODE_ID): not a UUID (waylume.nodes.id)\n"},
		{map[string]string{"WAYLUME_JWT_SECRET": "s"}, []string{"--node-id", goodNode, "--ttl", "-1h"}, "waylume-node: invalid --ttl: must be positive\n"},
	} {
		code, _, stderr := runCLI(t, tc.env, append([]string{"token"}, tc.args...)...)
		if code != exitConfig || stderr != tc.want {
			t.Errorf("token %v: code %d stderr %q, want %q", tc.args, code, stderr, tc.want)
		}
	}
}
