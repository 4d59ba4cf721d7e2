package reconcile

// Run's two loops: one takes event batches from the queue, the other runs
// everything on a clock (resync, expiry, retries of failed rows, usage
// flushes, heartbeats). Both go through the exported entry points, which
// take the lock.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/waylume/waylume-node/internal/retry"
)

// Run applies events from Sink, resyncs every ResyncInterval, enforces
// expiry, retries failed rows, flushes usage and sends heartbeats until ctx
// ends. Then it stops taking events, flushes usage once more, marks the
// node offline and saves the local state; the data plane is left as it is.
func (r *Reconciler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.eventLoop(ctx)
	}()
	wg.Go(func() { r.saveLoop(ctx) })
	r.timerLoop(ctx)
	wg.Wait()
	r.queue.Close()

	// Shutdown: a fresh context, the caller's has ended.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*r.cfg.StoreTimeout)
	defer cancel()
	var errs []error
	if err := r.flushScope(sctx, scopeAll); err != nil {
		errs = append(errs, fmt.Errorf("final usage flush: %w", err))
	}
	if err := r.heartbeat(sctx, "offline"); err != nil {
		errs = append(errs, fmt.Errorf("mark offline: %w", err))
	}
	if err := r.saveLocal(); err != nil {
		r.log.Warn("save local state", "err", err)
	}
	return errors.Join(errs...)
}

// Ready reports nil once the first snapshot is applied and while the
// control plane answered within grace; ErrServingLocalState while serving
// a restored state.
func (r *Reconciler) Ready(grace time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.synced {
		return errors.New("waiting for the first snapshot of the node's rows")
	}
	if r.local {
		return ErrServingLocalState
	}
	if since := r.now().Sub(r.contact); since > grace {
		return fmt.Errorf("control plane unreachable for %s", since.Round(time.Second))
	}
	return nil
}

func (r *Reconciler) eventLoop(ctx context.Context) {
	for {
		batch, ok := r.queue.Get(ctx)
		if !ok {
			return
		}
		if wait := r.eventResyncWait(batch); wait > 0 {
			r.m.eventResyncsDelayed.Inc()
			if !retry.Sleep(ctx, wait) {
				r.queue.Done(batch)
				return
			}
		}
		err := r.Handle(ctx, batch)
		if err != nil && ctx.Err() == nil {
			r.log.Warn("apply events", "events", len(batch), "err", err)
		}
		if err == nil {
			r.requestSave()
		}
		r.queue.Done(batch)
	}
}

// timers are the timer loop's clocks.
type timers struct {
	resync, usage, hb *time.Ticker
	expiry            *time.Timer // the next expiry of an active peer
	rows              *time.Timer // the next failed row due for a retry
	again             *time.Timer // a failed resync's retry; the first resync
	kickDelay         *time.Timer // a flush asked for too soon after the last
	lastKick          time.Time
	resyncBackoff     *retry.Backoff
}

func (r *Reconciler) newTimers() *timers {
	return &timers{
		resync:    time.NewTicker(r.cfg.ResyncInterval),
		usage:     time.NewTicker(r.cfg.UsageInterval),
		hb:        time.NewTicker(r.cfg.HeartbeatInterval),
		expiry:    time.NewTimer(time.Hour),
		rows:      time.NewTimer(time.Hour),
		again:     time.NewTimer(0), // the first resync runs at once
		kickDelay: time.NewTimer(time.Hour),
		// A failed resync is retried soon after a blip, but a fleet of
		// nodes does not hammer a database coming back from an outage in
		// lockstep, nor wait longer than the next periodic resync.
		resyncBackoff: retry.Policy{Initial: time.Second, Max: min(r.cfg.ResyncInterval, time.Minute)}.New(),
	}
}

func (t *timers) stop() {
	for _, tk := range []*time.Ticker{t.resync, t.usage, t.hb} {
		tk.Stop()
	}
	for _, tm := range []*time.Timer{t.expiry, t.rows, t.again, t.kickDelay} {
		tm.Stop()
	}
}

func (r *Reconciler) timerLoop(ctx context.Context) {
	t := r.newTimers()
	defer t.stop()
	for {
		r.arm(t)
		select {
		case <-ctx.Done():
			return
		case <-r.rearm:
			// arm at the top of the loop picks the new instants.
		case <-t.again.C:
			r.resyncNow(ctx, t)
			r.warn(ctx, "heartbeat", r.heartbeat(ctx, "online"))
		case <-t.resync.C:
			r.resyncNow(ctx, t)
		case <-t.expiry.C:
			r.warn(ctx, "expiry", r.Converge(ctx))
		case <-t.rows.C:
			r.warn(ctx, "retry failed rows", r.retryFailed(ctx))
		case <-t.usage.C:
			r.flushNow(ctx, t, scopeDue)
			r.warn(ctx, "quota from local state", r.refreshLocal(ctx))
		case <-r.kick:
			// Leaving peers and status changes flush soon, at most 5 times a second.
			if wait := 200*time.Millisecond - time.Since(t.lastKick); wait > 0 {
				t.kickDelay.Reset(wait)
				continue
			}
			r.flushNow(ctx, t, scopeMust)
		case <-t.kickDelay.C:
			r.flushNow(ctx, t, scopeMust)
		case <-t.hb.C:
			r.warn(ctx, "heartbeat", r.heartbeat(ctx, "online"))
		}
	}
}

// arm points the expiry and row retry timers at the instants converging
// last scheduled.
func (r *Reconciler) arm(t *timers) {
	r.mu.Lock()
	expiry, rows := r.nextExpiry, r.nextRetry
	r.mu.Unlock()
	t.expiry.Reset(r.until(expiry))
	t.rows.Reset(r.until(rows))
}

// until is the wait for instant at; an hour when nothing is scheduled.
func (r *Reconciler) until(at time.Time) time.Duration {
	if at.IsZero() {
		return time.Hour
	}
	return max(at.Sub(r.now()), 0)
}

func (r *Reconciler) resyncNow(ctx context.Context, t *timers) {
	defer r.afterBulk()
	err := r.Resync(ctx)
	if err == nil {
		t.resyncBackoff.Reset()
		r.requestSave()
		return
	}
	if ctx.Err() == nil {
		d := t.resyncBackoff.Next()
		r.log.Warn("resync failed; keeping the applied state", "err", err, "retry_in", d.Round(time.Millisecond))
		t.again.Reset(d)
	}
}

func (r *Reconciler) flushNow(ctx context.Context, t *timers, s scope) {
	defer r.afterBulk()
	t.lastKick = time.Now()
	if err := r.flushScope(ctx, s); err != nil {
		if ctx.Err() == nil {
			r.log.Warn("usage flush failed; counters keep the bytes", "err", err)
		}
		return
	}
	r.requestSave()
}

func (r *Reconciler) afterBulk() {
	if r.cfg.AfterBulk != nil {
		r.cfg.AfterBulk()
	}
}

// warn logs a failed timer run unless the loop is stopping.
func (r *Reconciler) warn(ctx context.Context, what string, err error) {
	if err != nil && ctx.Err() == nil {
		r.log.Warn(what, "err", err)
	}
}
