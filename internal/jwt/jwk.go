package jwt

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"math/big"
)

// jwk is a private JSON Web Key (RFC 7517/7518) of the kinds Supabase
// signs with: EC P-256, RSA, or a shared secret ("oct").
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d"`
	N   string `json:"n"`
	E   string `json:"e"`
	P   string `json:"p"`
	Q   string `json:"q"`
	K   string `json:"k"`
}

func (j jwk) key() (Key, error) {
	switch j.Kty {
	case "EC":
		return j.ecKey()
	case "RSA":
		return j.rsaKey()
	case "oct":
		k, err := b64.DecodeString(j.K)
		if err != nil || len(k) == 0 {
			return Key{}, fmt.Errorf("%w: JWK oct: bad k", ErrKey)
		}
		return Key{Alg: "HS256", ID: j.Kid, secret: k}, nil
	}
	return Key{}, fmt.Errorf("%w: JWK kty %q, want EC, RSA or oct", ErrKey, j.Kty)
}

func (j jwk) ecKey() (Key, error) {
	if j.Crv != "P-256" {
		return Key{}, fmt.Errorf("%w: JWK curve %q, want P-256 (ES256)", ErrKey, j.Crv)
	}
	d, err1 := b64.DecodeString(j.D)
	x, err2 := b64.DecodeString(j.X)
	y, err3 := b64.DecodeString(j.Y)
	if err1 != nil || err2 != nil || err3 != nil || len(d) == 0 {
		return Key{}, fmt.Errorf("%w: JWK EC: bad d, x or y (a public key cannot sign)", ErrKey)
	}
	priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), leftPad(d, 32))
	if err != nil {
		return Key{}, fmt.Errorf("%w: JWK EC: d is not a P-256 scalar", ErrKey)
	}
	pub, err := priv.PublicKey.Bytes()
	if err != nil || !bytes.Equal(pub[1:33], leftPad(x, 32)) || !bytes.Equal(pub[33:], leftPad(y, 32)) {
		return Key{}, fmt.Errorf("%w: JWK EC: x, y do not belong to d", ErrKey)
	}
	return ecKey(priv, j.Kid)
}

func (j jwk) rsaKey() (Key, error) {
	ints := make([]*big.Int, 5)
	for i, s := range []string{j.N, j.E, j.D, j.P, j.Q} {
		b, err := b64.DecodeString(s)
		if err != nil || len(b) == 0 {
			return Key{}, fmt.Errorf("%w: JWK RSA: want n, e, d, p and q", ErrKey)
		}
		ints[i] = new(big.Int).SetBytes(b)
	}
	if !ints[1].IsInt64() {
		return Key{}, fmt.Errorf("%w: JWK RSA: bad e", ErrKey)
	}
	priv := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: ints[0], E: int(ints[1].Int64())},
		D:         ints[2], Primes: []*big.Int{ints[3], ints[4]},
	}
	priv.Precompute()
	return rsaKey(priv, j.Kid)
}

func leftPad(b []byte, n int) []byte {
	if len(b) >= n {
		return b
	}
	return append(make([]byte, n-len(b)), b...)
}
