package realtimetest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Token mints an HS256 JWT with claims, as Supabase's keys and the node's
// `token` command do. Tests use it for anon/service keys and node tokens.
func Token(secret string, claims map[string]any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	c, _ := json.Marshal(claims)
	s := h + "." + base64.RawURLEncoding.EncodeToString(c)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(s))
	return s + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// NodeToken mints a node-scoped token (role waylume_node, node_id claim)
// valid for ttl (negative: already expired).
func NodeToken(secret, nodeID string, ttl time.Duration) string {
	return Token(secret, map[string]any{
		"role": "waylume_node", "node_id": nodeID, "sub": nodeID,
		"iat": time.Now().Unix(), "exp": time.Now().Add(ttl).Unix(),
	})
}

// ServiceKey mints a service_role key valid for ten years.
func ServiceKey(secret string) string {
	return Token(secret, map[string]any{"role": "service_role", "iss": "supabase", "exp": time.Now().AddDate(10, 0, 0).Unix()})
}

// AnonKey mints an anon key valid for ten years.
func AnonKey(secret string) string {
	return Token(secret, map[string]any{"role": "anon", "iss": "supabase", "exp": time.Now().AddDate(10, 0, 0).Unix()})
}

// jwtError carries the server's error texts: code and message.
type jwtError struct{ code, msg string }

func (e *jwtError) Error() string { return e.code + ": " + e.msg }

// claims is a verified token's payload.
type claims struct {
	raw  json.RawMessage // as signed, for request.jwt.claims
	role string
	exp  time.Time
}

// verify checks an HS256 token like Realtime does: signature, then the
// required role and exp claims, then expiry.
func verify(secret, token string, now time.Time) (claims, error) {
	parts := strings.Split(token, ".")
	if token == "" || len(parts) != 3 {
		return claims{}, &jwtError{"InvalidJWTToken", "Token is malformed"}
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	pb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return claims{}, &jwtError{"InvalidJWTToken", "Token is malformed"}
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(hb, &hdr) != nil || hdr.Alg != "HS256" {
		return claims{}, &jwtError{"InvalidJWTToken", fmt.Sprintf("Unsupported algorithm %q", hdr.Alg)}
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(parts[0] + "." + parts[1]))
	if !hmac.Equal(sig, m.Sum(nil)) {
		return claims{}, &jwtError{"JwtSignatureError", "Failed to validate JWT signature"}
	}
	var c struct {
		Role string       `json:"role"`
		Exp  *json.Number `json:"exp"`
	}
	if json.Unmarshal(pb, &c) != nil || c.Role == "" || c.Exp == nil {
		return claims{}, &jwtError{"InvalidJWTToken", "Fields `role` and `exp` are required in JWT"}
	}
	exp, err := c.Exp.Int64()
	if err != nil {
		return claims{}, &jwtError{"InvalidJWTToken", "Fields `role` and `exp` are required in JWT"}
	}
	out := claims{raw: pb, role: c.Role, exp: time.Unix(exp, 0)}
	if !now.Before(out.exp) {
		return claims{}, &jwtError{"InvalidJWTToken", fmt.Sprintf("Token has expired %d seconds ago", int64(now.Sub(out.exp).Seconds()))}
	}
	return out, nil
}
