package authtest

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /auth/v1/.well-known/jwks.json", s.jwks)
	mux.HandleFunc("POST /auth/v1/token", s.withKey(s.token))
	mux.HandleFunc("GET /auth/v1/user", s.withKey(s.getUser))
	mux.HandleFunc("POST /auth/v1/admin/users", s.admin(s.createUser))
	mux.HandleFunc("GET /auth/v1/admin/users", s.admin(s.listUsers))
	mux.HandleFunc("GET /auth/v1/admin/users/{id}", s.admin(s.readUser))
	mux.HandleFunc("PUT /auth/v1/admin/users/{id}", s.admin(s.updateUser))
	mux.HandleFunc("DELETE /auth/v1/admin/users/{id}", s.admin(s.deleteUser))
	return s.dropping(mux)
}

// dropping closes the connection unanswered while DropRequests says so.
func (s *Server) dropping(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		drop := s.mu.dropNext > 0
		if drop {
			s.mu.dropNext--
			s.mu.stats.Dropped++
		}
		s.mu.Unlock()
		if drop {
			hangUp(w)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", "*")
		next.ServeHTTP(w, r)
	})
}

// hangUp closes the client's connection without an answer.
func hangUp(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

// withKey requires an accepted apikey, as the project's API gateway does.
func (s *Server) withKey(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("apikey")
		if !slices.Contains(s.cfg.PublishableKeys, key) && !slices.Contains(s.cfg.SecretKeys, key) {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."})
			return
		}
		h(w, r)
	}
}

// admin requires a secret key as apikey and bearer.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return s.withKey(func(w http.ResponseWriter, r *http.Request) {
		bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case !ok || bearer == "":
			authError(w, http.StatusUnauthorized, "no_authorization", "This endpoint requires a valid Bearer token")
		case !slices.Contains(s.cfg.SecretKeys, bearer) || !slices.Contains(s.cfg.SecretKeys, r.Header.Get("apikey")):
			authError(w, http.StatusForbidden, "not_admin", "User not allowed")
		default:
			h(w, r)
		}
	})
}

func (s *Server) jwks(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.mu.stats.JWKSFetches++
	s.mu.Unlock()
	keys := []any{}
	if pub := s.key.PublicJWK(); pub != nil {
		keys = append(keys, pub)
	}
	w.Header().Set("Cache-Control", "public, max-age=600")
	writeJSON(w, http.StatusOK, map[string]any{"keys": keys})
}

// authError writes Auth's error shape: {"code","error_code","msg"}.
func authError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"code": status, "error_code": code, "msg": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func readJSON(r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	return err == nil && json.Unmarshal(b, v) == nil
}
