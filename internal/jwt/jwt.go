// Package jwt signs the JSON Web Tokens a node presents to Supabase
// Realtime and reads the expiry of tokens it cannot verify. Verification
// is the servers' business (Realtime, PostgREST, the test servers), so
// nothing here trusts a token it parses.
package jwt

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"
)

// Claims are the claims of a node token: Supabase's role, the node's id
// and the registered claims Realtime checks.
type Claims struct {
	Role   string `json:"role"`
	NodeID string `json:"node_id"`
	Sub    string `json:"sub,omitempty"`
	Iss    string `json:"iss,omitempty"`
	Iat    int64  `json:"iat"`
	Exp    int64  `json:"exp"`
}

var b64 = base64.RawURLEncoding

// SignHS256 signs claims with a shared secret, as Supabase's legacy JWT
// secret does; the header has no kid.
func SignHS256(claims any, secret []byte) (string, error) { return SecretKey(secret).Sign(claims) }

// Expiry reads the exp claim of a JWT without verifying it: the node
// cannot verify its own token and only wants to warn, or renew, before
// Realtime refuses it. ok is false for a non-JWT key or no exp.
func Expiry(token string) (exp time.Time, ok bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	raw, err := b64.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var c struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(raw, &c); err != nil || c.Exp == nil {
		return time.Time{}, false
	}
	f, err := c.Exp.Float64()
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}
