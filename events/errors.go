package events

import "errors"

// Errors a control-plane store classifies its failures into, so that the
// reconciler can tell with errors.Is what to do without knowing the
// database: a row that is gone is dropped, a write refused for good is not
// retried as is, anything else is transient and retried.
var (
	// ErrNotFound: the row does not exist or is not this node's (row level
	// security hides other nodes' rows, so the two look the same).
	ErrNotFound = errors.New("not found")
	// ErrRefused: the database refuses this write however often it is
	// retried (a permission or row level security check, a constraint).
	ErrRefused = errors.New("refused by the database")
)
