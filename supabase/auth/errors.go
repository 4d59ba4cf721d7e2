package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// ErrRefused is wrapped by answers that retrying the same request cannot
// change: bad credentials, a used or unknown refresh token, a banned user,
// a bad key. A SessionSource answers a refused refresh with a password
// sign-in.
var ErrRefused = errors.New("refused by Auth")

// ErrUnavailable is wrapped by transport failures, timeouts, 5xx and rate
// limits: back off and retry.
var ErrUnavailable = errors.New("Auth unavailable")

// APIError is a non-2xx answer with Auth's error code and message
// (never a token: Auth does not echo them).
type APIError struct {
	Status int
	Code   string // error_code, e.g. "invalid_credentials", "refresh_token_already_used"
	Msg    string
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("HTTP %d", e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

// Unwrap classifies the answer as ErrRefused or ErrUnavailable.
func (e *APIError) Unwrap() error {
	if e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout {
		return ErrUnavailable
	}
	return ErrRefused
}

func apiError(status int, body []byte) error {
	var b struct {
		Code      any    `json:"code"`
		ErrorCode string `json:"error_code"`
		Msg       string `json:"msg"`
		Message   string `json:"message"`
		Error     string `json:"error"`
		ErrorDesc string `json:"error_description"`
	}
	_ = json.Unmarshal(body, &b)
	e := &APIError{Status: status, Code: b.ErrorCode, Msg: b.Msg}
	if e.Code == "" {
		e.Code = b.Error
	}
	for _, m := range []string{b.Message, b.ErrorDesc} {
		if e.Msg == "" {
			e.Msg = m
		}
	}
	if len(e.Msg) > 200 {
		e.Msg = e.Msg[:200]
	}
	return e
}

// NetError is a request that got no answer.
type NetError struct{ err error }

func (e *NetError) Error() string { return e.err.Error() }
func (e *NetError) Unwrap() []error {
	return []error{ErrUnavailable, e.err}
}
