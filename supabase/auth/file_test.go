package auth

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/waylume/waylume-node/internal/jwt"
	"github.com/waylume/waylume-node/internal/testkit"
)

const nodeID = "5a1e2f3c-0b1d-4e5f-8a9b-0c1d2e3f4a5b"

func mintTestToken(t *testing.T, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	tok, err := jwt.SignHS256(jwt.Claims{Role: "waylume_node", NodeID: nodeID, Iat: now.Unix(), Exp: now.Add(ttl).Unix()}, []byte("secret-secret-secret-secret-1234"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// gauge reads one gauge from reg; ok is false when it is not registered.
func gauge(t *testing.T, reg *prometheus.Registry, name string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && mf.GetType() == dto.MetricType_GAUGE {
			return mf.GetMetric()[0].GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// A rotated token file reaches the Realtime client (OnChange) and the
// expiry metric; an unreadable file keeps the current token.
func TestAccessTokenFileRotation(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	old := mintTestToken(t, time.Hour)
	if err := os.WriteFile(file, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	a := WatchFile(ctx, FileConfig{Token: old, Path: file, Registerer: reg, Log: slog.New(slog.DiscardHandler)})
	got := make(chan string, 4)
	a.OnChange(func(tok string) { got <- tok })

	if a.reload() {
		t.Fatal("an unchanged file counted as a new token")
	}
	if left := a.secondsLeft(); left < 3500 || left > 3600 {
		t.Fatalf("expiry of the first token: %.0fs left, want about 3600", left)
	}
	fresh := mintTestToken(t, 48*time.Hour)
	if err := os.WriteFile(file, []byte(fresh+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !a.reload() {
		t.Fatal("a rotated file was not picked up")
	}
	select {
	case tok := <-got:
		if tok != fresh {
			t.Fatal("OnChange got another token than the file's")
		}
	default:
		t.Fatal("OnChange not called for the new token")
	}
	if left := a.secondsLeft(); left < 47*3600 {
		t.Errorf("expiry metric still follows the old token: %.0fs left", left)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if a.reload() {
		t.Error("a missing file replaced the token")
	}
	if left := a.secondsLeft(); left < 47*3600 {
		t.Errorf("a missing file changed the token in use: %.0fs left", left)
	}
}

// A token three days from exp: a warning that does not quote it, and an
// expiry gauge counting down to its exp. A key without exp registers no
// gauge.
func TestAccessTokenExpiryMetricAndWarning(t *testing.T) {
	var logBuf testkit.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tok := mintTestToken(t, 3*24*time.Hour)
	reg := prometheus.NewRegistry()
	WatchFile(ctx, FileConfig{Token: tok, Registerer: reg, Log: log})
	if l := logBuf.String(); !strings.Contains(l, "access token expires soon") || strings.Contains(l, tok) {
		t.Errorf("a token 3 days from exp: log %q", l)
	}
	v, ok := gauge(t, reg, "waylume_access_token_expiry_seconds")
	if d := time.Duration(v * float64(time.Second)); !ok || d < 3*24*time.Hour-time.Minute || d > 3*24*time.Hour {
		t.Errorf("expiry gauge %v (registered %v), want about 72h", d, ok)
	}

	reg = prometheus.NewRegistry()
	WatchFile(ctx, FileConfig{Token: "sb_publishable_abc", Registerer: reg})
	if _, ok := gauge(t, reg, "waylume_access_token_expiry_seconds"); ok {
		t.Error("a key without exp registered the expiry gauge")
	}
}
