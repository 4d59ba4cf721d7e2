package retry

import (
	"time"
)

// Keyed keeps a backoff per key, like client-go's per-item rate limiter:
// each failure of a key pushes its next attempt further out, Forget
// clears it after a success. Only failing keys hold memory. It is not
// safe for concurrent use; the caller's lock guards it.
type Keyed[K comparable] struct {
	policy Policy
	keys   map[K]*keyState
}

type keyState struct {
	b   *Backoff
	due time.Time
}

// NewKeyed returns an empty per-key backoff with policy p.
func NewKeyed[K comparable](p Policy) *Keyed[K] {
	return &Keyed[K]{policy: p, keys: map[K]*keyState{}}
}

// Fail records a failed attempt of k at now and returns when k is due
// again.
func (q *Keyed[K]) Fail(k K, now time.Time) time.Time {
	s := q.keys[k]
	if s == nil {
		s = &keyState{b: q.policy.New()}
		q.keys[k] = s
	}
	s.due = now.Add(s.b.Next())
	return s.due
}

// Forget drops k's history: its next failure starts at Initial again.
func (q *Keyed[K]) Forget(k K) { delete(q.keys, k) }

// Failing reports whether k has failed since it was last forgotten.
func (q *Keyed[K]) Failing(k K) bool { _, ok := q.keys[k]; return ok }

// Due returns the keys whose next attempt is at or before now.
func (q *Keyed[K]) Due(now time.Time) []K {
	var out []K
	for k, s := range q.keys {
		if !s.due.After(now) {
			out = append(out, k)
		}
	}
	return out
}

// Next is the earliest instant a key is due; ok is false with no keys.
func (q *Keyed[K]) Next() (at time.Time, ok bool) {
	for _, s := range q.keys {
		if !ok || s.due.Before(at) {
			at, ok = s.due, true
		}
	}
	return at, ok
}

// Len is the number of failing keys.
func (q *Keyed[K]) Len() int { return len(q.keys) }
