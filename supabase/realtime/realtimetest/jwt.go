package realtimetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/waylume/waylume-node/internal/testkit"
)

// Token mints an HS256 JWT with claims, as Supabase's legacy keys and the
// node's `token` command do. Tests use it for anon/service keys and node
// tokens.
func Token(secret string, claims map[string]any) string { return testkit.HS256(secret, claims) }

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

// jwtError carries the server's texts: the join reply's reason is
// "code: msg"; a pushed token that fails closes the channel with push
// (the real server's shutdown text, which for some errors is the Elixir
// atom).
type jwtError struct{ code, msg, push string }

func (e *jwtError) Error() string {
	if e.code == "" {
		return e.msg
	}
	return e.code + ": " + e.msg
}

// closeText is the system message of a channel closed over a pushed token.
func (e *jwtError) closeText() string {
	if e.push != "" {
		return e.push
	}
	return e.msg
}

var (
	errMalformed = &jwtError{"MalformedJWT", "The token provided is not a valid JWT", ""}
	errMissing   = &jwtError{"InvalidJWTToken", "Fields `role` and `exp` are required in JWT", ""}
	errSignature = &jwtError{"JwtSignatureError", "Failed to validate JWT signature", ":signature_error"}
	errNoSigner  = &jwtError{"JwtSignerError", "Failed to generate JWT signer, check your JWT secret or JWKS configuration", ":error_generating_signer"}
	errIat       = &jwtError{"", "Unknown Error on Channel", `[message: "Invalid token", claim: "iat"]`}
)

func errSignerKid(kid string) *jwtError {
	return &jwtError{"JwtSignerError", fmt.Sprintf("Failed to generate JWT signer for key ID (kid) %q, check your JWT secret or JWKS configuration", kid), ""}
}

// claims is a verified token's payload.
type claims struct {
	raw  json.RawMessage // as signed, for request.jwt.claims
	role string
	exp  time.Time
}

// publicKey is one JWKS entry.
type publicKey struct {
	Kty, Kid, Crv string
	X, Y, N, E, K string
}

// keyring verifies tokens as the real server does (RealtimeWeb.
// JwtVerification): ES256/RS256 by kid against the project's JWKS, HS256
// by an "oct" JWK with that kid or else the shared secret; then exp (and
// iat when present) must be numbers, exp in the future; role and exp are
// required. A JWKS URL is fetched at start and again, at most once a
// second, when a kid is unknown (a rotated-in key).
type keyring struct {
	secret []byte
	url    string
	http   *http.Client

	mu      sync.Mutex
	keys    []publicKey
	fetched time.Time
}

func newKeyring(cfg Config) (*keyring, error) {
	k := &keyring{url: cfg.JWKSURL, http: &http.Client{Timeout: 5 * time.Second}}
	if cfg.JWTSecret != "" {
		k.secret = []byte(cfg.JWTSecret)
	}
	if len(cfg.JWKS) > 0 {
		if err := k.load(cfg.JWKS); err != nil {
			return nil, err
		}
	}
	if k.url != "" {
		if err := k.fetch(); err != nil {
			return nil, err
		}
	}
	if k.secret == nil && len(k.keys) == 0 && k.url == "" {
		return nil, errors.New("realtimetest: JWTSecret, JWKS or JWKSURL is required")
	}
	return k, nil
}

func (k *keyring) load(raw []byte) error {
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return fmt.Errorf("realtimetest: JWKS: %w", err)
	}
	keys := make([]publicKey, 0, len(set.Keys))
	for _, m := range set.Keys {
		s := func(f string) string { v, _ := m[f].(string); return v }
		keys = append(keys, publicKey{Kty: s("kty"), Kid: s("kid"), Crv: s("crv"), X: s("x"), Y: s("y"), N: s("n"), E: s("e"), K: s("k")})
	}
	k.mu.Lock()
	k.keys = append(k.keys[:0], keys...)
	k.mu.Unlock()
	return nil
}

func (k *keyring) fetch() error {
	k.mu.Lock()
	k.fetched = time.Now()
	k.mu.Unlock()
	resp, err := k.http.Get(k.url)
	if err != nil {
		return fmt.Errorf("realtimetest: JWKS: %w", err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return fmt.Errorf("realtimetest: JWKS: %w", err)
	}
	return k.load(raw)
}

// find returns the JWKS entry of type kty with kid, refetching once a
// second for an unknown kid.
func (k *keyring) find(kty, kid string) (publicKey, bool) {
	for attempt := 0; attempt < 2; attempt++ {
		k.mu.Lock()
		i := slices.IndexFunc(k.keys, func(p publicKey) bool { return p.Kty == kty && p.Kid == kid })
		stale := k.url != "" && time.Since(k.fetched) > time.Second
		var key publicKey
		if i >= 0 {
			key = k.keys[i]
		}
		k.mu.Unlock()
		if i >= 0 {
			return key, true
		}
		if !stale || k.fetch() != nil {
			break
		}
	}
	return publicKey{}, false
}

// verify checks token's form, signature and claims in the real server's
// order; the error is a *jwtError with its texts.
func (k *keyring) verify(token string, now time.Time) (claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return claims{}, errMalformed
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	pb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	var payload map[string]any
	if errors.Join(err1, err2, err3) != nil || json.Unmarshal(pb, &payload) != nil || payload == nil {
		return claims{}, errMalformed
	}
	var hdr struct {
		Alg string  `json:"alg"`
		Kid *string `json:"kid"`
	}
	if json.Unmarshal(hb, &hdr) != nil {
		return claims{}, errMalformed
	}
	check, err := k.signer(hdr.Alg, hdr.Kid)
	if err != nil {
		return claims{}, err
	}
	if !check([]byte(parts[0]+"."+parts[1]), sig) {
		return claims{}, errSignature
	}
	return checkClaims(pb, payload, now)
}

// checkClaims applies the exp and iat validators, then requires role and
// exp.
func checkClaims(pb []byte, payload map[string]any, now time.Time) (claims, error) {
	if iat, ok := payload["iat"]; ok {
		if _, num := iat.(float64); !num {
			return claims{}, errIat
		}
	}
	exp, hasExp := payload["exp"].(float64)
	if _, present := payload["exp"]; present && !hasExp {
		return claims{}, errMissing
	}
	if hasExp && float64(now.Unix()) >= exp {
		msg := fmt.Sprintf("Token has expired %d seconds ago", now.Unix()-int64(exp))
		return claims{}, &jwtError{"InvalidJWTToken", msg, ""}
	}
	role, _ := payload["role"].(string)
	if _, ok := payload["role"]; !ok || !hasExp {
		return claims{}, errMissing
	}
	return claims{raw: pb, role: role, exp: time.Unix(int64(exp), 0)}, nil
}

// signer picks the verification for alg and kid as the real server's
// generate_signer does.
func (k *keyring) signer(alg string, kid *string) (func(input, sig []byte) bool, error) {
	switch {
	case (alg == "ES256" || alg == "RS256") && kid != nil:
		kty := map[string]string{"ES256": "EC", "RS256": "RSA"}[alg]
		pk, ok := k.find(kty, *kid)
		if !ok {
			return nil, errSignerKid(*kid)
		}
		return asymmetric(alg, pk)
	case alg == "HS256" && kid != nil:
		if pk, ok := k.find("oct", *kid); ok {
			secret, err := base64.RawURLEncoding.DecodeString(pk.K)
			if err != nil {
				return nil, errSignerKid(*kid)
			}
			return hs256(secret), nil
		}
		if k.secret == nil {
			return nil, errSignerKid(*kid)
		}
		return hs256(k.secret), nil
	case alg == "HS256" && k.secret != nil:
		return hs256(k.secret), nil
	}
	return nil, errNoSigner
}

func hs256(secret []byte) func(input, sig []byte) bool {
	return func(input, sig []byte) bool {
		m := hmac.New(sha256.New, secret)
		m.Write(input)
		return hmac.Equal(sig, m.Sum(nil))
	}
}

// asymmetric verifies with a JWK's public key: ES256 signatures are R||S,
// RS256 PKCS #1 v1.5.
func asymmetric(alg string, pk publicKey) (func(input, sig []byte) bool, error) {
	num := func(s string) *big.Int {
		b, _ := base64.RawURLEncoding.DecodeString(s)
		return new(big.Int).SetBytes(b)
	}
	if alg == "ES256" {
		if pk.Crv != "P-256" {
			return nil, errSignerKid(pk.Kid)
		}
		pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: num(pk.X), Y: num(pk.Y)}
		return func(input, sig []byte) bool {
			sum := sha256.Sum256(input)
			return len(sig) == 64 && ecdsa.Verify(pub, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
		}, nil
	}
	pub := &rsa.PublicKey{N: num(pk.N), E: int(num(pk.E).Int64())}
	return func(input, sig []byte) bool {
		sum := sha256.Sum256(input)
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) == nil
	}, nil
}

// apiKeyRole is the role of an opaque API key: sb_publishable_ keys act
// as anon, sb_secret_ keys as service_role. ok is false for keys the
// project does not have.
func (s *Server) apiKeyRole(key string) (role string, ok bool) {
	if !slices.Contains(s.cfg.APIKeys, key) {
		return "", false
	}
	if strings.HasPrefix(key, "sb_secret_") {
		return "service_role", true
	}
	return "anon", true
}

// checkAPIKey admits a connection's apikey: one of the project's opaque
// keys, or a JWT that verifies.
func (s *Server) checkAPIKey(key string, now time.Time) error {
	if _, ok := s.apiKeyRole(key); ok {
		return nil
	}
	_, err := s.keys.verify(key, now)
	return err
}

// joinClaims are the claims a join acts with: its access_token, or the
// connection's apikey when there is none or it is an sb_ key (which the
// real server ignores as a token). An opaque apikey acts as its role for
// 24 hours, as a connection without a user token is limited to.
func (s *Server) joinClaims(accessToken, apikey string, now time.Time) (claims, error) {
	tok := accessToken
	if tok == "" || strings.HasPrefix(tok, "sb_") {
		tok = apikey
	}
	if role, ok := s.apiKeyRole(tok); ok {
		exp := now.Add(24 * time.Hour)
		raw, _ := json.Marshal(map[string]any{"role": role, "exp": exp.Unix()})
		return claims{raw: raw, role: role, exp: exp}, nil
	}
	return s.keys.verify(tok, now)
}
