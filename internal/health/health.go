// Package health is the running node's HTTP endpoint: /metrics from the
// node's own registry, /healthz (the process serves requests) and /readyz
// (the running node says the data plane is set up and the control plane is
// reachable or within its grace). It is the only listening TCP socket the
// node opens, on loopback by default. Probe is its client, for the container
// HEALTHCHECK.
package health

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

// State carries readiness from the running node to /readyz; it is the
// node.Health the run command hands to node.Run.
//
// SetReadiness(f) is called once the data plane is up; f is called on every /readyz request and returns nil when ready or an error
// saying why not (e.g. "control plane unreachable for 2m"). It must be cheap
// and safe for concurrent use. Before SetReadiness, /readyz answers 503
// "starting". All methods are no-ops on a nil *State.
type State struct {
	check atomic.Pointer[func() error]
}

// SetReadiness installs the readiness check; nil puts /readyz back to
// "starting" (e.g. while shutting down).
func (h *State) SetReadiness(f func() error) {
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
func (h *State) Ready() error {
	if h == nil {
		return errors.New("starting")
	}
	f := h.check.Load()
	if f == nil {
		return errors.New("starting")
	}
	return (*f)()
}

func handler(reg *prometheus.Registry, h *State, log *slog.Logger) http.Handler {
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

// Server listens before Listen returns, so a taken port is a startup
// error rather than a log line later.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Listen serves the endpoint on addr.
func Listen(addr string, reg *prometheus.Registry, h *State, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	m := &Server{
		srv: &http.Server{
			Handler:           handler(reg, h, log),
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
func (m *Server) Addr() string { return m.ln.Addr().String() }

// Shutdown stops serving, waiting up to 5s for requests in flight.
func (m *Server) Shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := m.srv.Shutdown(ctx)
	if serr := <-m.done; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
