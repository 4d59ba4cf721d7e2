package jwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
)

// Key signs tokens: a shared secret (HS256) or a private key, EC P-256
// (ES256) or RSA (RS256), with the key id (kid) the verifier looks it up
// by. Its String never shows the key material.
type Key struct {
	Alg string // "HS256", "ES256" or "RS256"
	ID  string // the kid header; empty: none

	secret []byte
	ec     *ecdsa.PrivateKey
	rsa    *rsa.PrivateKey
}

// ErrKey is wrapped by every error about a key file's content.
var ErrKey = errors.New("unusable signing key")

// SecretKey is a shared secret for HS256 (Supabase's legacy JWT secret).
func SecretKey(secret []byte) Key { return Key{Alg: "HS256", secret: secret} }

func (k Key) String() string { return fmt.Sprintf("%s key %q", k.Alg, k.ID) }

// ParseKey reads a private signing key: a JWK (as `supabase gen
// signing-key` writes it), an array of JWKs or a JWK set (the first
// private key in it), or PEM (PKCS#8, SEC 1 "EC PRIVATE KEY" or PKCS#1
// "RSA PRIVATE KEY"). A PEM key has no kid; set Key.ID. Errors never
// quote the content.
func ParseKey(data []byte) (Key, error) {
	if b, _ := pem.Decode(data); b != nil {
		return parsePEM(b)
	}
	var one jwk
	if err := json.Unmarshal(data, &one); err == nil && one.Kty != "" {
		return one.key()
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	var list []jwk
	if err := json.Unmarshal(data, &list); err != nil {
		if err := json.Unmarshal(data, &set); err != nil {
			return Key{}, fmt.Errorf("%w: neither PEM nor JSON (JWK)", ErrKey)
		}
		list = set.Keys
	}
	for _, k := range list {
		if k.D != "" || k.K != "" {
			return k.key()
		}
	}
	return Key{}, fmt.Errorf("%w: no private key in the JWK list", ErrKey)
}

// LoadKey reads a key file with ParseKey; kid, when set, replaces the
// file's. A key without a kid is refused: verifiers find keys by it.
func LoadKey(path, kid string) (Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Key{}, err
	}
	k, err := ParseKey(b)
	if err != nil {
		return Key{}, err
	}
	if kid != "" {
		k.ID = kid
	}
	if k.ID == "" {
		return Key{}, ErrNoKid
	}
	return k, nil
}

// ErrNoKid: the key file names no key id and none was given.
var ErrNoKid = errors.New("the key names no kid")

func parsePEM(b *pem.Block) (Key, error) {
	var parsed any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return Key{}, fmt.Errorf("%w: PEM block %q is not a private key", ErrKey, b.Type)
	}
	if err != nil {
		return Key{}, fmt.Errorf("%w: PEM %s: cannot parse it", ErrKey, b.Type)
	}
	switch p := parsed.(type) {
	case *ecdsa.PrivateKey:
		return ecKey(p, "")
	case *rsa.PrivateKey:
		return rsaKey(p, "")
	}
	return Key{}, fmt.Errorf("%w: want an EC P-256 or RSA key", ErrKey)
}

func ecKey(p *ecdsa.PrivateKey, kid string) (Key, error) {
	if p.Curve != elliptic.P256() {
		return Key{}, fmt.Errorf("%w: EC key on %s, want P-256 (ES256)", ErrKey, p.Curve.Params().Name)
	}
	return Key{Alg: "ES256", ID: kid, ec: p}, nil
}

func rsaKey(p *rsa.PrivateKey, kid string) (Key, error) {
	if p.N.BitLen() < 2048 {
		return Key{}, fmt.Errorf("%w: RSA key of %d bits, want at least 2048", ErrKey, p.N.BitLen())
	}
	if err := p.Validate(); err != nil {
		return Key{}, fmt.Errorf("%w: RSA key does not validate", ErrKey)
	}
	return Key{Alg: "RS256", ID: kid, rsa: p}, nil
}

// Sign makes a compact JWT of claims: header {"alg","typ":"JWT"} and the
// kid when the key has one.
func (k Key) Sign(claims any) (string, error) {
	head := map[string]string{"alg": k.Alg, "typ": "JWT"}
	if k.ID != "" {
		head["kid"] = k.ID
	}
	hb, err := json.Marshal(head)
	if err != nil {
		return "", err
	}
	pb, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode claims: %w", err)
	}
	input := b64.EncodeToString(hb) + "." + b64.EncodeToString(pb)
	sig, err := k.sign([]byte(input))
	if err != nil {
		return "", err
	}
	return input + "." + b64.EncodeToString(sig), nil
}

func (k Key) sign(input []byte) ([]byte, error) {
	sum := sha256.Sum256(input)
	switch {
	case k.Alg == "HS256" && k.secret != nil:
		mac := hmac.New(sha256.New, k.secret)
		mac.Write(input)
		return mac.Sum(nil), nil
	case k.Alg == "ES256" && k.ec != nil:
		r, s, err := ecdsa.Sign(rand.Reader, k.ec, sum[:])
		if err != nil {
			return nil, fmt.Errorf("es256: %w", err)
		}
		// JWS wants R and S as two 32-byte big-endian halves, not ASN.1.
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return sig, nil
	case k.Alg == "RS256" && k.rsa != nil:
		sig, err := rsa.SignPKCS1v15(rand.Reader, k.rsa, crypto.SHA256, sum[:])
		if err != nil {
			return nil, fmt.Errorf("rs256: %w", err)
		}
		return sig, nil
	}
	return nil, fmt.Errorf("%w: no key material for %s", ErrKey, k.Alg)
}

// PublicJWK is the verifying half as a JWK for a JWKS (kty, kid, alg, use
// and the public parameters); nil for a shared secret, which has none.
func (k Key) PublicJWK() map[string]any {
	out := map[string]any{"kid": k.ID, "alg": k.Alg, "use": "sig", "key_ops": []string{"verify"}}
	switch {
	case k.ec != nil:
		pub, err := k.ec.PublicKey.Bytes() // 0x04 || X || Y
		if err != nil {
			return nil
		}
		out["kty"], out["crv"] = "EC", "P-256"
		out["x"], out["y"] = b64.EncodeToString(pub[1:33]), b64.EncodeToString(pub[33:])
	case k.rsa != nil:
		out["kty"] = "RSA"
		out["n"] = b64.EncodeToString(k.rsa.N.Bytes())
		out["e"] = b64.EncodeToString(big.NewInt(int64(k.rsa.E)).Bytes())
	default:
		return nil
	}
	return out
}

// ErrSignature is returned by Verify for a token that k did not sign.
var ErrSignature = errors.New("token signature does not verify")

// Verify checks that k signed token and decodes its claims into out. It
// checks neither exp nor any other claim.
func Verify(token string, k Key, out any) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ErrSignature
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		return ErrSignature
	}
	input := []byte(parts[0] + "." + parts[1])
	sum := sha256.Sum256(input)
	var ok bool
	switch {
	case k.ec != nil:
		ok = len(sig) == 64 && ecdsa.Verify(&k.ec.PublicKey, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	case k.rsa != nil:
		ok = rsa.VerifyPKCS1v15(&k.rsa.PublicKey, crypto.SHA256, sum[:], sig) == nil
	case k.secret != nil:
		mac := hmac.New(sha256.New, k.secret)
		mac.Write(input)
		ok = hmac.Equal(sig, mac.Sum(nil))
	}
	if !ok {
		return ErrSignature
	}
	pb, err := b64.DecodeString(parts[1])
	if err != nil {
		return ErrSignature
	}
	return json.Unmarshal(pb, out)
}
