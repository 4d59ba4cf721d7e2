package supabase

import (
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// CheckDatabaseURL refuses a connection string that does not parse or that
// may reach a remote host in plain text (ErrSSLMode). It never echoes the
// URL: it may carry a password.
func CheckDatabaseURL(v string) error {
	if strings.HasPrefix(v, "postgres://") || strings.HasPrefix(v, "postgresql://") {
		u, err := url.Parse(v)
		if err != nil {
			// url's message quotes the bad part, which may be the password.
			return errors.New("bad URL: cannot parse it (percent-encode special characters in the password)")
		}
		if u.Host == "" && u.Query().Get("host") == "" {
			return errors.New("bad URL: no host (want postgres://user:pass@host:5432/db)")
		}
	} else if !strings.Contains(v, "=") {
		return errors.New("bad URL: want postgres://user:pass@host:5432/db or key=value pairs")
	}
	pc, err := pgconn.ParseConfig(v)
	if err != nil {
		return errors.New("bad URL: not a valid Postgres connection string")
	}
	if DatabaseTLS(pc) == TLSOff {
		return ErrSSLMode
	}
	return nil
}

// ErrSSLMode: pgx's default sslmode (prefer) verifies nothing and falls back
// to plain text, so anyone on the path reads the node's rows and password.
var ErrSSLMode = errors.New("a database host that is not loopback or a unix socket needs sslmode=require, verify-ca or verify-full: " +
	"add ?sslmode=verify-full&sslrootcert=/path/to/ca.crt (Supabase: the project's CA certificate from the dashboard) or at least sslmode=require")

// TLSLevel is what a connection string promises about TLS for the hosts
// that are not local, read from the connection settings pgconn derived
// (URL, key=value and PG* environment variables alike).
type TLSLevel int

const (
	TLSLocal      TLSLevel = iota // every host is loopback or a unix socket
	TLSOff                        // some remote host may be reached in plain text (disable, allow, prefer)
	TLSNoVerify                   // encrypted, server not verified (require)
	TLSVerifyCA                   // certificate chain verified, host name not (verify-ca)
	TLSVerifyFull                 // chain and host name verified (verify-full)
)

// DatabaseTLS returns the weakest TLS of any remote host among pc's
// attempts: pgconn lists a plain-text fallback as a separate attempt.
func DatabaseTLS(pc *pgconn.Config) TLSLevel {
	type attempt struct {
		host string
		tls  *tls.Config
	}
	all := []attempt{{pc.Host, pc.TLSConfig}}
	for _, f := range pc.Fallbacks {
		all = append(all, attempt{f.Host, f.TLSConfig})
	}
	level := TLSLocal
	for _, a := range all {
		if localHost(a.host) {
			continue
		}
		var l TLSLevel
		switch {
		case a.tls == nil:
			l = TLSOff
		case !a.tls.InsecureSkipVerify:
			l = TLSVerifyFull
		case a.tls.VerifyPeerCertificate != nil:
			l = TLSVerifyCA
		default:
			l = TLSNoVerify
		}
		if level == TLSLocal || l < level {
			level = l
		}
	}
	return level
}

// localHost: a unix socket directory or a loopback address, where there is
// no path to be on.
func localHost(h string) bool {
	if strings.HasPrefix(h, "/") || strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}

// RealtimeURL is the project's Realtime websocket: https://<ref>.supabase.co
// becomes wss://<ref>.supabase.co/realtime/v1/websocket. An unparsable URL
// gives "".
func RealtimeURL(project string) string {
	u, err := url.Parse(project)
	if err != nil || u.Host == "" {
		return ""
	}
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	case "http":
		u.Scheme = "ws"
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/realtime/v1/websocket"
	return u.String()
}
