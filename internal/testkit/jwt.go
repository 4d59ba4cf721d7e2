package testkit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
)

// HS256 signs claims with secret as a compact JWT, the way a Supabase
// project's legacy keys and `waylume-node token` without a signing key are
// signed.
func HS256(secret string, claims map[string]any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	c, err := json.Marshal(claims)
	if err != nil {
		panic("testkit: claims do not marshal: " + err.Error())
	}
	s := h + "." + base64.RawURLEncoding.EncodeToString(c)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(s))
	return s + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
