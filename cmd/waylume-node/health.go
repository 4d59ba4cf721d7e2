package main

// The run command's HTTP endpoint: /metrics from the node's own registry,
// /healthz (the process serves requests) and /readyz (the running node says the data
// plane is set up and the control plane is reachable or within its grace).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Health carries readiness from the running node to /readyz; it is the
// node.Health the run command hands to node.Run.
//
// SetReadiness(f) is called once the data plane is up; f is called on every /readyz request and returns nil when ready or an error
// saying why not (e.g. "control plane unreachable for 2m"). It must be cheap
// and safe for concurrent use. Before SetReadiness, /readyz answers 503
// "starting". All methods are no-ops on a nil *Health.
type Health struct {
	check atomic.Pointer[func() error]
}

// SetReadiness installs the readiness check; nil puts /readyz back to
// "starting" (e.g. while shutting down).
func (h *Health) SetReadiness(f func() error) {
	if h == nil {
		return
	}
	if f == nil {
		h.check.Store(nil)
		return
	}
	h.check.Store(&f)
}

// Ready reports nil when the node is ready.
func (h *Health) Ready() error {
	if h == nil {
		return errors.New("starting")
	}
	f := h.check.Load()
	if f == nil {
		return errors.New("starting")
	}
	return (*f)()
}

func healthHandler(reg *prometheus.Registry, h *Health, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: false,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := h.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// metricsServer listens before run continues, so a taken port is a
// startup error rather than a log line later.
type metricsServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

func startMetrics(addr string, reg *prometheus.Registry, h *Health, log *slog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	m := &metricsServer{
		srv: &http.Server{
			Handler:           healthHandler(reg, h, log),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan error, 1),
	}
	go func() { m.done <- m.srv.Serve(ln) }()
	return m, nil
}

// Addr is the bound address (the port when addr asked for :0).
func (m *metricsServer) Addr() string { return m.ln.Addr().String() }

func (m *metricsServer) Shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := m.srv.Shutdown(ctx)
	if serr := <-m.done; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
