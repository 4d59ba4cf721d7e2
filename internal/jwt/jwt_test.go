package jwt

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// An HS256 token verifies with its secret, independently of SignHS256,
// and not with another; Expiry reads its exp.
func TestSignHS256(t *testing.T) {
	secret := []byte("super-secret-jwt-token-with-at-least-32-characters-long")
	exp := time.Now().Add(time.Hour).Unix()
	tok, err := SignHS256(Claims{Role: "waylume_node", NodeID: "n", Iat: 1, Exp: exp}, secret)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
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
	for _, s := range []struct {
		secret []byte
		want   bool
	}{{secret, true}, {[]byte("other"), false}} {
		mac := hmac.New(sha256.New, s.secret)
		mac.Write([]byte(parts[0] + "." + parts[1]))
		sig, _ := b64.DecodeString(parts[2])
		if hmac.Equal(sig, mac.Sum(nil)) != s.want {
			t.Errorf("signature verifies with %q: %v, want %v", s.secret, !s.want, s.want)
		}
	}
	if got, ok := Expiry(tok); !ok || got.Unix() != exp {
		t.Errorf("Expiry = %v %v, want %d", got, ok, exp)
	}
}

func TestExpiryOfNonJWT(t *testing.T) {
	for _, s := range []string{"", "sb_publishable_abc", "a.b.c", "a." + b64.EncodeToString([]byte(`{"role":"anon"}`)) + ".c"} {
		if _, ok := Expiry(s); ok {
			t.Errorf("Expiry(%q) reports an expiry", s)
		}
	}
}
