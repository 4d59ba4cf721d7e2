package health

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Probe against a running endpoint: /healthz answers, /readyz does not
// before the node says it is ready, and the wildcard host is dialled as
// this machine.
func TestProbe(t *testing.T) {
	h := &State{}
	ms, err := Listen("127.0.0.1:0", prometheus.NewRegistry(), h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Shutdown() })
	_, port, _ := net.SplitHostPort(ms.Addr())
	ctx := context.Background()
	if err := Probe(ctx, "0.0.0.0:"+port, "/healthz"); err != nil {
		t.Errorf("/healthz: %v", err)
	}
	var se *StatusError
	if err := Probe(ctx, ms.Addr(), "/readyz"); !errors.As(err, &se) || se.Path != "/readyz" {
		t.Errorf("/readyz while starting: %v", err)
	}
	h.SetReadiness(func() error { return nil })
	if err := Probe(ctx, ms.Addr(), "/readyz"); err != nil {
		t.Errorf("/readyz when ready: %v", err)
	}
}
