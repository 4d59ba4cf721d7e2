package reconcile

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// errPanic marks the error a contained panic became.
var errPanic = errors.New("panic")

// contain turns a panic in the row-processing paths into an error. Rows
// are untrusted input: a row that trips a bug must cost a failed run, not
// the process, because with the embedded userspace device the process is
// every peer's session. It runs under the reconciler's lock, deferred after
// the unlock is, so the lock is released after it; the state it leaves
// half-updated is repaired by the next resync (level-triggered), which
// the caller schedules on error.
func (r *Reconciler) contain(op string, err *error) {
	v := recover()
	if v == nil {
		return
	}
	r.m.errors.Inc()
	r.log.Error("panic contained; the next resync repairs the state", "op", op, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	*err = fmt.Errorf("%s: %w: %v", op, errPanic, v)
}
