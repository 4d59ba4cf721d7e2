// Package retry is the node's one retry policy: jittered exponential
// backoff for anything that reconnects (event sources, the control plane,
// resyncs) and the same backoff kept per key for rows whose apply failed.
//
// Jitter is not optional: a fleet of nodes that lost the same database or
// Realtime server at the same instant must not come back in lockstep.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Policy is a jittered exponential backoff: the n-th delay is about
// Initial*2^n, capped at Max, spread by ±Jitter of itself.
type Policy struct {
	Initial time.Duration
	Max     time.Duration
	// Jitter is the randomisation factor in [0, 1); 0 means DefaultJitter.
	Jitter float64
}

// DefaultJitter spreads each delay over ±30% of itself.
const DefaultJitter = 0.3

// Backoff is one sequence of delays; it is not safe for concurrent use.
type Backoff struct {
	b *backoff.ExponentialBackOff
}

// New starts a sequence at p.Initial.
func (p Policy) New() *Backoff {
	j := p.Jitter
	if j <= 0 || j >= 1 {
		j = DefaultJitter
	}
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(max(p.Initial, time.Millisecond)),
		backoff.WithMaxInterval(max(p.Max, p.Initial)),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(j),
		backoff.WithMaxElapsedTime(0),
	)
	return &Backoff{b: b}
}

// Next is the delay before the next attempt.
func (b *Backoff) Next() time.Duration { return b.b.NextBackOff() }

// Reset starts the sequence over, after a success.
func (b *Backoff) Reset() { b.b.Reset() }

// Sleep waits d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
