package supabase

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/waylume/waylume-node/events"
)

// ErrNotFound is events.ErrNotFound: the row does not exist or is not the
// node's (row level security hides other nodes' rows, so the two look the
// same).
var ErrNotFound = events.ErrNotFound

// OpError is a failed store operation. It keeps the cause reachable for
// errors.As (*pgconn.PgError and its SQLSTATE) and errors.Is, and
// classifies it: errors.Is(err, events.ErrRefused) holds when the database
// refused the statement for good (SQLSTATE 42501, insufficient privilege
// or a row level security check, or class 23, integrity constraint
// violation), so that callers need not know SQLSTATEs.
type OpError struct {
	Op  string // what the store was doing, e.g. "write status"
	Err error
}

func (e *OpError) Error() string { return e.Op + ": " + e.Err.Error() }

func (e *OpError) Unwrap() error { return e.Err }

// Is reports whether e is a refusal for good; other targets are matched
// through Unwrap.
func (e *OpError) Is(target error) bool {
	return target == events.ErrRefused && refused(e.Err)
}

func refused(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && (pg.Code == "42501" || strings.HasPrefix(pg.Code, "23"))
}

// opError names the failed operation; nil stays nil.
func opError(op string, err error) error {
	if err == nil {
		return nil
	}
	return &OpError{Op: op, Err: err}
}
