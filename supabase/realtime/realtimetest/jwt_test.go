package realtimetest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/jwt"
	"github.com/waylume/waylume-node/supabase/auth/authtest"
)

func jwks(t *testing.T, keys ...jwt.Key) json.RawMessage {
	t.Helper()
	set := []any{}
	for _, k := range keys {
		set = append(set, k.PublicJWK())
	}
	b, _ := json.Marshal(map[string]any{"keys": set})
	return b
}

func sign(t *testing.T, k jwt.Key, claims map[string]any) string {
	t.Helper()
	tok, err := k.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Tokens are checked as the real server checks them, with its texts for
// the join reply and for a pushed token's close.
func TestVerifyLikeRealtime(t *testing.T) {
	es, err := authtest.NewES256Key("es-1")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := authtest.NewES256Key("es-1") // same kid, another key
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	rs, err := jwt.ParseKey(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)}))
	if err != nil {
		t.Fatal(err)
	}
	rs.ID = "rs-1"
	noKid := es
	noKid.ID = ""
	unknownKid := es
	unknownKid.ID = "es-2"
	const secret = "legacy-secret-legacy-secret-legacy-secret"
	hs := jwt.SecretKey([]byte(secret))
	kr, err := newKeyring(Config{JWTSecret: secret, JWKS: jwks(t, es, rs)})
	if err != nil {
		t.Fatal(err)
	}
	noSecret, err := newKeyring(Config{JWKS: jwks(t, es)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ok := map[string]any{"role": "authenticated", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	expired := map[string]any{"role": "authenticated", "iat": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-42 * time.Second).Unix()}
	for _, tc := range []struct {
		name       string
		kr         *keyring
		token      string
		join, push string // "" = accepted
	}{
		{"ES256 by kid", kr, sign(t, es, ok), "", ""},
		{"RS256 by kid", kr, sign(t, rs, ok), "", ""},
		{"HS256 by the secret", kr, sign(t, hs, ok), "", ""},
		{"ES256 without kid", kr, sign(t, noKid, ok),
			"JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration", ":error_generating_signer"},
		{"unknown kid", kr, sign(t, unknownKid, ok),
			`JwtSignerError: Failed to generate JWT signer for key ID (kid) "es-2", check your JWT secret or JWKS configuration`,
			`Failed to generate JWT signer for key ID (kid) "es-2", check your JWT secret or JWKS configuration`},
		{"bad signature", kr, sign(t, other, ok), "JwtSignatureError: Failed to validate JWT signature", ":signature_error"},
		{"expired", kr, sign(t, es, expired), "InvalidJWTToken: Token has expired 42 seconds ago", "Token has expired 42 seconds ago"},
		{"no role", kr, sign(t, es, map[string]any{"exp": now.Add(time.Hour).Unix()}),
			"InvalidJWTToken: Fields `role` and `exp` are required in JWT", "Fields `role` and `exp` are required in JWT"},
		{"no exp", kr, sign(t, es, map[string]any{"role": "authenticated"}),
			"InvalidJWTToken: Fields `role` and `exp` are required in JWT", "Fields `role` and `exp` are required in JWT"},
		{"iat not a number", kr, sign(t, es, map[string]any{"role": "authenticated", "iat": "now", "exp": now.Add(time.Hour).Unix()}),
			"Unknown Error on Channel", `[message: "Invalid token", claim: "iat"]`},
		{"not a JWT", kr, "sb_publishable_abc", "MalformedJWT: The token provided is not a valid JWT", "The token provided is not a valid JWT"},
		{"HS256 without a secret", noSecret, sign(t, hs, ok),
			"JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration", ":error_generating_signer"},
	} {
		c, err := tc.kr.verify(tc.token, now)
		if tc.join == "" {
			if err != nil || c.role != "authenticated" {
				t.Errorf("%s: refused (%v)", tc.name, err)
			}
			continue
		}
		je, isJWT := err.(*jwtError)
		if !isJWT || je.Error() != tc.join || je.closeText() != tc.push {
			t.Errorf("%s: %v, want join %q, push %q", tc.name, err, tc.join, tc.push)
		}
	}
}

// Keys come from Auth's JWKS URL, as a project's stored JWKS does.
func TestJWKSURL(t *testing.T) {
	srv, err := authtest.New(authtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	kr, err := newKeyring(Config{JWKSURL: srv.JWKSURL()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := kr.verify(sign(t, srv.Key(), map[string]any{"role": "authenticated", "exp": now.Add(time.Hour).Unix()}), now); err != nil {
		t.Fatalf("the Auth server's token: %v", err)
	}
}
