package authtest_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/supabase/auth/authtest"
)

type jsError struct {
	Name   string `json:"name"`
	Status int    `json:"status"`
	Code   string `json:"code"`
}

type jsLine struct {
	Kind   string          `json:"kind"`
	Error  *jsError        `json:"error"`
	Raw    json.RawMessage `json:"-"`
	Fields map[string]json.RawMessage
}

// runJS runs js/conformance.js to its end; without node or its
// node_modules the test skips locally and fails in CI.
func runJS(t *testing.T, env []string) map[string]jsLine {
	t.Helper()
	dir, err := filepath.Abs("js")
	if err != nil {
		t.Fatal(err)
	}
	testkit.RequireNodeModule(t, dir, "@supabase/auth-js")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "conformance.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("conformance.js: %v\n%s\n%s", err, stdout, stderr.String())
	}
	lines := map[string]jsLine{}
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l jsLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		json.Unmarshal(sc.Bytes(), &l.Fields)
		lines[l.Kind] = l
	}
	if _, ok := lines["done"]; !ok {
		t.Fatalf("conformance.js did not finish:\n%s\n%s", stdout, stderr.String())
	}
	return lines
}

func field[T any](t *testing.T, l jsLine, name string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(l.Fields[name], &v); err != nil {
		t.Fatalf("%s.%s: %v (%s)", l.Kind, name, err, l.Fields[name])
	}
	return v
}

// The official client creates a node user with the admin API, signs in,
// refreshes (rotation, the reuse window), verifies the ES256 access token
// through the JWKS, and gets Auth's error codes for refusals, a ban and a
// deleted user.
func TestAuthJSConformance(t *testing.T) {
	srv, err := authtest.New(authtest.Config{AccessTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const nodeID = "0d9b5a0e-2d61-4c35-9a49-1f0f5b7d6a11"
	lines := runJS(t, []string{
		"AUTH_URL=" + srv.URL() + "/auth/v1", "AUTH_PUBLISHABLE=" + srv.PublishableKey(), "AUTH_SECRET=" + srv.SecretKey(),
		"EMAIL=node-a@nodes.example", "PASSWORD=pw-" + nodeID, "NODE_ID=" + nodeID,
	})
	for kind, want := range map[string]string{
		"admin_create": "", "sign_in": "", "claims": "", "refresh": "", "refresh_reuse_in_window": "", "admin_list": "",
		"admin_ban": "", "admin_delete": "",
		"admin_create_again":     "email_exists",
		"sign_in_wrong_password": "invalid_credentials",
		"refresh_unknown":        "refresh_token_not_found",
		"sign_in_banned":         "user_banned",
		"refresh_banned":         "user_banned",
		"sign_in_deleted":        "invalid_credentials",
		"admin_with_publishable": "not_admin",
	} {
		l, ok := lines[kind]
		switch {
		case !ok:
			t.Errorf("%s: no line", kind)
		case want == "" && l.Error != nil:
			t.Errorf("%s: error %+v", kind, *l.Error)
		case want != "" && (l.Error == nil || l.Error.Code != want):
			t.Errorf("%s: error %+v, want code %s", kind, l.Error, want)
		}
	}
	user := field[map[string]any](t, lines["admin_create"], "user")
	if meta, _ := user["app_metadata"].(map[string]any); meta["node_id"] != nodeID || user["email_confirmed_at"] == nil {
		t.Errorf("created user %v", user)
	}
	head := field[map[string]any](t, lines["claims"], "header")
	claims := field[map[string]any](t, lines["claims"], "claims")
	if head["alg"] != "ES256" || head["kid"] != srv.Key().ID {
		t.Errorf("header %v, want ES256 with kid %s", head, srv.Key().ID)
	}
	if meta, _ := claims["app_metadata"].(map[string]any); claims["role"] != "authenticated" || meta["node_id"] != nodeID || claims["sub"] != user["id"] || claims["session_id"] == nil {
		t.Errorf("claims %v", claims)
	}
	if !field[bool](t, lines["refresh"], "rotated") || !field[bool](t, lines["refresh_reuse_in_window"], "same_live_token") {
		t.Error("refresh did not rotate, or the reuse window did not answer with the live token")
	}
	if st := srv.Stats(); st.PasswordGrants != 1 || st.Refreshes != 2 || st.ReuseInWindow != 1 || st.ReuseDetected != 0 || st.JWKSFetches == 0 {
		t.Errorf("stats %+v (auth-js verifies ES256 through the JWKS)", st)
	}
}
