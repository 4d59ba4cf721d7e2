package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/waylume/waylume-node/internal/health"
	"github.com/waylume/waylume-node/internal/testkit"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestMetricsEndpoint(t *testing.T) {
	var logBuf testkit.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	reg := health.NewRegistry(version)
	h := &health.State{}
	// The default host, any free port: the server binds loopback only.
	host, _, _ := net.SplitHostPort(defaultMetricsAddr)
	ms, err := health.Listen(net.JoinHostPort(host, "0"), reg, h, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ms.Shutdown(); err != nil {
			t.Error(err)
		}
	})
	if ip := net.ParseIP(strings.Split(ms.Addr(), ":")[0]); ip == nil || !ip.IsLoopback() {
		t.Errorf("metrics bound to %s, want loopback", ms.Addr())
	}
	base := "http://" + ms.Addr()

	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`waylume_build_info{version="dev"} 1`,
		"go_goroutines",
		"process_cpu_seconds_total",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if code, body := get(t, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Errorf("/readyz before the data plane: %d %q", code, body)
	}
	h.SetReadiness(func() error { return nil })
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready: %d", code)
	}
	h.SetReadiness(func() error { return errors.New("control plane unreachable for 3m") })
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "control plane unreachable") {
		t.Errorf("/readyz when not ready: %d %q", code, body)
	}
	if code, _ := get(t, base+"/nothing"); code != http.StatusNotFound {
		t.Errorf("unknown path: %d", code)
	}

	// The healthcheck subcommand reads the same address setting.
	c, out, stderr := runCLI(t, map[string]string{"WAYLUME_METRICS_ADDR": ms.Addr()}, "healthcheck")
	if c != exitOK || out != "ok\n" {
		t.Errorf("healthcheck: code %d out %q err %q", c, out, stderr)
	}
	if c, _, _ := runCLI(t, map[string]string{"WAYLUME_METRICS_ADDR": ms.Addr()}, "healthcheck", "--ready"); c != exitFail {
		t.Errorf("healthcheck --ready while not ready: code %d, want %d", c, exitFail)
	}
}

func TestHealthcheckNothingListening(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if c, _, stderr := runCLI(t, map[string]string{"WAYLUME_METRICS_ADDR": addr}, "healthcheck"); c != exitFail || stderr == "" {
		t.Errorf("healthcheck against a closed port: code %d stderr %q", c, stderr)
	}
}
