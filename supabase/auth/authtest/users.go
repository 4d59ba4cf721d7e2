package authtest

import (
	"crypto/rand"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/waylume/waylume-node/internal/jwt"
)

func (u *user) appMetadata() map[string]any {
	m := map[string]any{"provider": "email", "providers": []string{"email"}}
	maps.Copy(m, u.AppMeta)
	return m
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func userJSON(u *user) map[string]any {
	out := map[string]any{
		"id": u.ID, "aud": "authenticated", "role": "authenticated", "email": u.Email, "phone": "",
		"email_confirmed_at": ts(u.Confirmed), "confirmed_at": ts(u.Confirmed), "last_sign_in_at": ts(u.LastSignIn),
		"app_metadata": u.appMetadata(), "user_metadata": orEmpty(u.UserMeta), "identities": []any{},
		"created_at": ts(u.Created), "updated_at": ts(u.Created), "is_anonymous": false,
	}
	if !u.BannedUntil.IsZero() {
		out["banned_until"] = ts(u.BannedUntil)
	}
	return out
}

type userIn struct {
	Email        string         `json:"email"`
	Password     *string        `json:"password"`
	EmailConfirm bool           `json:"email_confirm"`
	AppMetadata  map[string]any `json:"app_metadata"`
	UserMetadata map[string]any `json:"user_metadata"`
	BanDuration  string         `json:"ban_duration"`
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request) {
	var in userIn
	if !readJSON(r, &in) {
		authError(w, http.StatusBadRequest, "bad_json", "Could not parse request body as JSON")
		return
	}
	if in.Email == "" || !strings.Contains(in.Email, "@") {
		authError(w, http.StatusBadRequest, "validation_failed", "Unable to validate email address: invalid format")
		return
	}
	if in.Password != nil && len(*in.Password) < 6 {
		authError(w, http.StatusUnprocessableEntity, "weak_password", "Password should be at least 6 characters.")
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.mu.users {
		if strings.EqualFold(u.Email, in.Email) {
			authError(w, http.StatusUnprocessableEntity, "email_exists", "A user with this email address has already been registered")
			return
		}
	}
	u := &user{ID: newUUID(), Email: strings.ToLower(in.Email), AppMeta: in.AppMetadata, UserMeta: in.UserMetadata, Created: now}
	if in.Password != nil {
		u.Password = *in.Password
	}
	if in.EmailConfirm {
		u.Confirmed = now
	}
	s.mu.users[u.ID] = u
	writeJSON(w, http.StatusOK, userJSON(u))
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	per, _ := strconv.Atoi(r.URL.Query().Get("per_page"))
	page, per = max(page, 1), min(max(per, 1), 1000)
	if r.URL.Query().Get("per_page") == "" {
		per = 50
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	all := slices.SortedFunc(maps.Values(s.mu.users), func(a, b *user) int { return a.Created.Compare(b.Created) })
	out := []any{}
	for i := (page - 1) * per; i < len(all) && i < page*per; i++ {
		out = append(out, userJSON(all[i]))
	}
	w.Header().Set("X-Total-Count", strconv.Itoa(len(all)))
	writeJSON(w, http.StatusOK, map[string]any{"users": out, "aud": "authenticated"})
}

// lookup finds the path's user or answers 404. s.mu is held.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) *user {
	u := s.mu.users[r.PathValue("id")]
	if u == nil {
		authError(w, http.StatusNotFound, "user_not_found", "User not found")
	}
	return u
}

func (s *Server) readUser(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.lookup(w, r); u != nil {
		writeJSON(w, http.StatusOK, userJSON(u))
	}
}

func (s *Server) updateUser(w http.ResponseWriter, r *http.Request) {
	var in userIn
	if !readJSON(r, &in) {
		authError(w, http.StatusBadRequest, "bad_json", "Could not parse request body as JSON")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.lookup(w, r)
	if u == nil {
		return
	}
	switch in.BanDuration {
	case "":
	case "none":
		u.BannedUntil = time.Time{}
	default:
		d, err := time.ParseDuration(in.BanDuration)
		if err != nil {
			authError(w, http.StatusBadRequest, "validation_failed", "invalid format for ban duration: "+err.Error())
			return
		}
		u.BannedUntil = time.Now().Add(d)
	}
	if in.Password != nil {
		u.Password = *in.Password
	}
	if in.EmailConfirm && u.Confirmed.IsZero() {
		u.Confirmed = time.Now()
	}
	if in.AppMetadata != nil {
		if u.AppMeta == nil {
			u.AppMeta = map[string]any{}
		}
		maps.Copy(u.AppMeta, in.AppMetadata)
	}
	writeJSON(w, http.StatusOK, userJSON(u))
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.lookup(w, r)
	if u == nil {
		return
	}
	delete(s.mu.users, u.ID)
	for id, se := range s.mu.sessions {
		if se.userID == u.ID {
			delete(s.mu.sessions, id)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// getUser answers GET /user for a valid access token of a live user.
func (s *Server) getUser(w http.ResponseWriter, r *http.Request) {
	bearer, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	sub, ok := s.subject(bearer)
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.mu.users[sub]
	if !ok || u == nil {
		authError(w, http.StatusForbidden, "bad_jwt", "invalid JWT: unable to parse or verify signature")
		return
	}
	writeJSON(w, http.StatusOK, userJSON(u))
}

// subject is the sub of an unexpired token this server signed.
func (s *Server) subject(token string) (string, bool) {
	var c struct {
		Sub string `json:"sub"`
		Exp int64  `json:"exp"`
	}
	if err := jwt.Verify(token, s.key, &c); err != nil || time.Now().Unix() >= c.Exp {
		return "", false
	}
	return c.Sub, true
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
