package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
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
		{nil, []string{"--node-id", goodNode}, "waylume-node: missing --signing-key, or legacy --jwt-secret-file (or WAYLUME_JWT_SECRET): the key to sign with\n"},
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

// writeSigningKey writes a P-256 key as `supabase gen signing-key
// --algorithm ES256` does (one private JWK) and returns its public half.
func writeSigningKey(t *testing.T, kid string) (string, *ecdsa.PublicKey) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := priv.Bytes()
	pub, _ := priv.PublicKey.Bytes()
	b, _ := json.Marshal(map[string]any{
		"kty": "EC", "kid": kid, "use": "sig", "key_ops": []string{"sign", "verify"}, "alg": "ES256", "ext": true,
		"d": b64.EncodeToString(d), "crv": "P-256", "x": b64.EncodeToString(pub[1:33]), "y": b64.EncodeToString(pub[33:]),
	})
	file := filepath.Join(t.TempDir(), "signing_key.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return file, &priv.PublicKey
}

// token --signing-key: ES256 with the JWK's kid, verified here with the
// public half alone; a 30-day default lifetime; no warning; the key is
// printed nowhere.
func TestTokenSigningKey(t *testing.T) {
	file, pub := writeSigningKey(t, "b81269f1-21d8-4f2e-b719-c2240a840d90")
	code, out, stderr := runCLI(t, nil, "token", "--node-id", goodNode, "--signing-key", file)
	if code != exitOK || stderr != "" {
		t.Fatalf("code %d stderr %q", code, stderr)
	}
	keyFile, _ := os.ReadFile(file)
	var jwk map[string]string
	json.Unmarshal(keyFile, &jwk)
	if strings.Contains(out, jwk["d"]) {
		t.Fatal("the private key is printed")
	}
	parts := strings.Split(strings.TrimSpace(out), ".")
	var head, claims map[string]any
	hb, _ := b64.DecodeString(parts[0])
	pb, _ := b64.DecodeString(parts[1])
	sig, _ := b64.DecodeString(parts[2])
	if json.Unmarshal(hb, &head) != nil || json.Unmarshal(pb, &claims) != nil {
		t.Fatal("token does not decode")
	}
	if head["alg"] != "ES256" || head["kid"] != "b81269f1-21d8-4f2e-b719-c2240a840d90" || head["typ"] != "JWT" {
		t.Errorf("header %v", head)
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if len(sig) != 64 || !ecdsa.Verify(pub, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatal("the signature does not verify with the key's public half")
	}
	if ttl := claims["exp"].(float64) - claims["iat"].(float64); ttl != 30*24*3600 || claims["role"] != "waylume_node" || claims["node_id"] != goodNode {
		t.Errorf("claims %v (lifetime %.0fs)", claims, ttl)
	}

	// Above 90 days: a warning; HS256: a warning; a PEM key needs --kid.
	if _, _, stderr := runCLI(t, nil, "token", "--node-id", goodNode, "--signing-key", file, "--ttl", "2400h"); !strings.Contains(stderr, "warning: a lifetime of") {
		t.Errorf("no warning for a 100-day token: %q", stderr)
	}
	if _, _, stderr := runCLI(t, map[string]string{"WAYLUME_JWT_SECRET": strings.Repeat("s", 40)}, "token", "--node-id", goodNode); !strings.Contains(stderr, "warning: HS256") {
		t.Errorf("no warning for HS256: %q", stderr)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(ec)
	pemFile := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	if code, _, stderr := runCLI(t, nil, "token", "--node-id", goodNode, "--signing-key", pemFile); code != exitConfig || !strings.Contains(stderr, "missing --kid") {
		t.Errorf("PEM without --kid: code %d %q", code, stderr)
	}
	if code, out, _ := runCLI(t, nil, "token", "--node-id", goodNode, "--signing-key", pemFile, "--kid", "pem-1"); code != exitOK || !strings.HasPrefix(out, "eyJ") {
		t.Errorf("PEM with --kid: code %d", code)
	}
}
