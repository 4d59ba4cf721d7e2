package authtest

import (
	"net/http"
	"strings"
	"time"
)

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Query().Get("grant_type") {
	case "password":
		s.passwordGrant(w, r)
	case "refresh_token":
		s.refreshGrant(w, r)
	default:
		authError(w, http.StatusBadRequest, "unsupported_grant_type", "unsupported_grant_type")
	}
}

func (s *Server) passwordGrant(w http.ResponseWriter, r *http.Request) {
	var in struct{ Email, Password string }
	if !readJSON(r, &in) {
		authError(w, http.StatusBadRequest, "bad_json", "Could not parse request body as JSON")
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var u *user
	for _, c := range s.mu.users {
		if strings.EqualFold(c.Email, in.Email) {
			u = c
		}
	}
	switch {
	case u == nil || u.Password != in.Password || in.Password == "":
		s.refuse(w, "invalid_credentials", "Invalid login credentials")
	case u.Confirmed.IsZero():
		s.refuse(w, "email_not_confirmed", "Email not confirmed")
	case u.BannedUntil.After(now):
		s.refuse(w, "user_banned", "User is banned")
	default:
		se := &sess{id: newUUID(), userID: u.ID}
		s.mu.sessions[se.id] = se
		rt := s.newRefreshToken(se)
		u.LastSignIn = now
		s.mu.stats.PasswordGrants++
		s.writeSession(w, u, se, rt, now)
	}
}

// refreshGrant rotates a refresh token. A used one sent again within the
// reuse window gets the session's live token (the answer was probably
// lost); later, it revokes the session, as Auth's reuse detection does.
func (s *Server) refreshGrant(w http.ResponseWriter, r *http.Request) {
	var in struct {
		RefreshToken string `json:"refresh_token"`
	}
	if !readJSON(r, &in) {
		authError(w, http.StatusBadRequest, "bad_json", "Could not parse request body as JSON")
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.mu.refresh[in.RefreshToken]
	var se *sess
	var u *user
	if rt != nil {
		se = s.mu.sessions[rt.session]
	}
	if se != nil && !se.revoked {
		u = s.mu.users[se.userID]
	}
	switch {
	case u == nil:
		s.refuse(w, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found")
		return
	case u.BannedUntil.After(now):
		s.refuse(w, "user_banned", "User is banned")
		return
	case !rt.usedAt.IsZero() && now.Sub(rt.usedAt) >= s.cfg.ReuseWindow:
		s.mu.stats.ReuseDetected++
		se.revoked = true
		s.refuse(w, "refresh_token_already_used", "Invalid Refresh Token: Already Used")
		return
	case !rt.usedAt.IsZero():
		s.mu.stats.ReuseInWindow++
	default:
		rt.usedAt = now
		rt.child = s.newRefreshToken(se)
	}
	s.mu.stats.Refreshes++
	if s.mu.loseNext > 0 {
		s.mu.loseNext--
		s.mu.stats.Dropped++
		hangUp(w)
		return
	}
	s.writeSession(w, u, se, se.current, now)
}

// refuse answers a grant with 400 and counts it. s.mu is held.
func (s *Server) refuse(w http.ResponseWriter, code, msg string) {
	s.mu.stats.Refused++
	authError(w, http.StatusBadRequest, code, msg)
}

// newRefreshToken makes se's live refresh token. s.mu is held.
func (s *Server) newRefreshToken(se *sess) string {
	t := randomString(12)
	s.mu.refresh[t] = &rtok{token: t, session: se.id}
	se.current = t
	return t
}

// writeSession answers a grant as Auth does. s.mu is held.
func (s *Server) writeSession(w http.ResponseWriter, u *user, se *sess, refresh string, now time.Time) {
	exp := now.Add(s.cfg.AccessTTL)
	tok, err := s.accessToken(u, se, now, exp)
	if err != nil {
		authError(w, http.StatusInternalServerError, "unexpected_failure", "cannot sign")
		return
	}
	s.mu.issued = append(s.mu.issued, tok)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok, "token_type": "bearer", "expires_in": int64(s.cfg.AccessTTL.Seconds()),
		"expires_at": exp.Unix(), "refresh_token": refresh, "user": userJSON(u),
	})
}

// accessToken signs the claims Auth puts in a user's token.
func (s *Server) accessToken(u *user, se *sess, now, exp time.Time) (string, error) {
	return s.key.Sign(map[string]any{
		"iss": s.URL() + "/auth/v1", "sub": u.ID, "aud": "authenticated",
		"exp": exp.Unix(), "iat": now.Unix(), "email": u.Email, "phone": "",
		"app_metadata": u.appMetadata(), "user_metadata": orEmpty(u.UserMeta),
		"role": "authenticated", "aal": "aal1",
		"amr":        []map[string]any{{"method": "password", "timestamp": now.Unix()}},
		"session_id": se.id, "is_anonymous": false,
	})
}
