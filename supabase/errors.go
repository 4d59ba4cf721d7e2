package supabase

import (
	"errors"
	"fmt"
)

// ErrNotFound: the row does not exist or is not the node's (row level
// security hides other nodes' rows, so the two look the same).
var ErrNotFound = errors.New("not found")

// opError names the failed operation and keeps the cause reachable for
// errors.As (*pgconn.PgError and its SQLSTATE) and errors.Is.
func opError(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}
