package health

import (
	"context"
	"net"
	"net/http"
)

// StatusError is an endpoint's answer other than 200 OK.
type StatusError struct {
	Path   string
	Status string // e.g. "503 Service Unavailable"
}

func (e *StatusError) Error() string { return e.Path + " answered " + e.Status }

// Probe GETs path (/healthz or /readyz) of the node listening on
// listenAddr, the metrics address setting: nil when it answers 200, a
// *StatusError when it answers otherwise. The container HEALTHCHECK uses
// it, since the runtime image has no curl.
func Probe(ctx context.Context, listenAddr, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+dialAddr(listenAddr)+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &StatusError{Path: path, Status: resp.Status}
	}
	return nil
}

// dialAddr turns a listen address into one to dial: a wildcard host means
// this machine.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}
