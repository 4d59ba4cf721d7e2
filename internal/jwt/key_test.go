package jwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
)

// genSigningKey writes a P-256 private key the way `supabase gen
// signing-key --algorithm ES256` does: one JWK object.
func genSigningKey(t *testing.T, kid string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d, err := priv.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := priv.PublicKey.Bytes()
	b, _ := json.Marshal(map[string]any{
		"kty": "EC", "kid": kid, "use": "sig", "key_ops": []string{"sign", "verify"}, "alg": "ES256", "ext": true,
		"d": b64.EncodeToString(d), "crv": "P-256", "x": b64.EncodeToString(pub[1:33]), "y": b64.EncodeToString(pub[33:]),
	})
	return priv, b
}

// split returns a token's header and signature and checks its payload.
func split(t *testing.T, tok string) (head map[string]any, input string, sig []byte) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	hb, _ := b64.DecodeString(parts[0])
	if err := json.Unmarshal(hb, &head); err != nil {
		t.Fatal(err)
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	return head, parts[0] + "." + parts[1], sig
}

// An ES256 token from a `gen signing-key` JWK carries its kid and verifies
// with the key's public half, also as published in a JWKS.
func TestES256FromJWK(t *testing.T) {
	for _, wrap := range []func([]byte) []byte{
		func(b []byte) []byte { return b },
		func(b []byte) []byte { return append(append([]byte("["), b...), ']') },
		func(b []byte) []byte { return append(append([]byte(`{"keys":[`), b...), "]}"...) },
	} {
		priv, file := genSigningKey(t, "7c1e3d2b-es256")
		k, err := ParseKey(wrap(file))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(k.String(), b64.EncodeToString(priv.D.Bytes())) {
			t.Fatal("String shows the private key")
		}
		tok, err := k.Sign(Claims{Role: "waylume_node", NodeID: "n", Exp: 1})
		if err != nil {
			t.Fatal(err)
		}
		head, input, sig := split(t, tok)
		if head["alg"] != "ES256" || head["kid"] != "7c1e3d2b-es256" || head["typ"] != "JWT" {
			t.Errorf("header %v", head)
		}
		sum := sha256.Sum256([]byte(input))
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if len(sig) != 64 || !ecdsa.Verify(&priv.PublicKey, sum[:], r, s) {
			t.Fatal("signature does not verify with the public key")
		}
		pub := k.PublicJWK()
		x, _ := b64.DecodeString(pub["x"].(string))
		y, _ := b64.DecodeString(pub["y"].(string))
		if pub["kty"] != "EC" || pub["kid"] != "7c1e3d2b-es256" || pub["d"] != nil ||
			new(big.Int).SetBytes(x).Cmp(priv.X) != 0 || new(big.Int).SetBytes(y).Cmp(priv.Y) != 0 {
			t.Errorf("public JWK %v", pub)
		}
	}
}

func TestRS256FromPEM(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(priv)
	for _, block := range []*pem.Block{
		{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)},
		{Type: "PRIVATE KEY", Bytes: pkcs8},
	} {
		k, err := ParseKey(pem.EncodeToMemory(block))
		if err != nil {
			t.Fatal(err)
		}
		k.ID = "rsa-1"
		tok, err := k.Sign(map[string]any{"role": "waylume_node"})
		if err != nil {
			t.Fatal(err)
		}
		head, input, sig := split(t, tok)
		sum := sha256.Sum256([]byte(input))
		if head["alg"] != "RS256" || head["kid"] != "rsa-1" || rsa.VerifyPKCS1v15(&priv.PublicKey, crypto.SHA256, sum[:], sig) != nil {
			t.Errorf("%s: header %v or signature wrong", block.Type, head)
		}
	}
}

func TestES256FromPEM(t *testing.T) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(priv)
	k, err := ParseKey(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	if err != nil || k.Alg != "ES256" || k.ID != "" {
		t.Fatalf("SEC 1 PEM: %v %v", k, err)
	}
}

// Keys that cannot sign ES256 or RS256 are refused with ErrKey and the
// error quotes none of the file.
func TestParseKeyRefuses(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384der, _ := x509.MarshalECPrivateKey(p384)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, file := genSigningKey(t, "k")
	var pubOnly map[string]any
	json.Unmarshal(file, &pubOnly)
	secretD := pubOnly["d"].(string)
	delete(pubOnly, "d")
	pubFile, _ := json.Marshal(pubOnly)
	var tampered map[string]any
	json.Unmarshal(file, &tampered)
	tampered["x"] = b64.EncodeToString(make([]byte, 32))
	tamperedFile, _ := json.Marshal(tampered)
	for name, data := range map[string][]byte{
		"P-384":       pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: p384der}),
		"RSA 1024":    pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(small)}),
		"public JWK":  pubFile,
		"wrong x":     tamperedFile,
		"public PEM":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}),
		"not a key":   []byte("hello " + secretD),
		"empty array": []byte("[]"),
	} {
		_, err := ParseKey(data)
		if !errors.Is(err, ErrKey) {
			t.Errorf("%s: %v, want ErrKey", name, err)
		}
		if err != nil && strings.Contains(err.Error(), secretD) {
			t.Errorf("%s: the error quotes the key", name)
		}
	}
}
