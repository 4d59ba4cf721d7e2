package realtime

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/waylume/waylume-node/events"
)

// ErrProbeTimeout: the subscription did not go live within the probe's
// time.
var ErrProbeTimeout = errors.New("no live subscription in time")

// Probe subscribes once with cfg (OnState and Canary are its own) and
// reports whether the subscription went live within timeout: nil, or the
// first session's error (an *Error whose Hint says what to fix), or
// ErrProbeTimeout.
func Probe(ctx context.Context, cfg Config, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	states := make(chan State, 16)
	cfg.Canary = nil
	cfg.OnState = func(s State) {
		select {
		case states <- s:
		default:
		}
	}
	c, err := New(cfg, events.SinkFunc(func(events.Event) {}))
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for {
		select {
		case s := <-states:
			switch {
			case s.Phase == Live:
				return nil
			case s.Phase == Disconnected && s.Err != nil && ctx.Err() == nil:
				return s.Err
			}
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", ErrProbeTimeout, timeout)
		}
	}
}
