package realtime

// Liveness that does not trust the server's silence. A joined channel can
// stop delivering without a word (change capture stopped, events over the
// rate limit dropped), so the node proves delivery: every CanaryInterval
// it writes a canary row through the database (Config.Canary), which
// comes back on its own channel like any change; a canary not back within
// CanaryTimeout ends the session, and the rejoin that follows resyncs.
// At most one canary row per interval: the bounded cost.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
)

// canaryProof tracks the session's outstanding canary; only the session
// goroutine touches it, the send runs on its own.
type canaryProof struct {
	send    func(ctx context.Context, nonce string) error
	timeout time.Duration
	nonce   string    // outstanding, "" when none
	sentAt  time.Time // when the outstanding one was written
	result  chan canaryResult
	// Round trips are kept for tests and the log.
	lastRTT time.Duration
}

type canaryResult struct {
	nonce string
	err   error
}

func newCanaryProof(send func(context.Context, string) error, timeout time.Duration) *canaryProof {
	return &canaryProof{send: send, timeout: timeout, result: make(chan canaryResult, 1)}
}

// enabled says whether the client proves delivery at all.
func (p *canaryProof) enabled() bool { return p != nil && p.send != nil }

// start writes a new canary unless one is outstanding; the write runs in
// its own goroutine with the canary timeout, reporting on p.result.
func (p *canaryProof) start(ctx context.Context) {
	if !p.enabled() || p.nonce != "" {
		return
	}
	var b [8]byte
	rand.Read(b[:])
	p.nonce, p.sentAt = hex.EncodeToString(b[:]), time.Now()
	nonce := p.nonce
	go func() {
		wctx, cancel := context.WithTimeout(ctx, p.timeout)
		defer cancel()
		err := p.send(wctx, nonce)
		select {
		case p.result <- canaryResult{nonce: nonce, err: err}:
		default:
		}
	}()
}

// written handles the write's outcome: a failed write proves nothing about
// the channel (the database may be down), so the canary is forgotten.
func (p *canaryProof) written(r canaryResult) error {
	if r.err == nil || r.nonce != p.nonce {
		return nil
	}
	p.nonce = ""
	return fmt.Errorf("write canary: %w", r.err)
}

// back records a canary that came back on the channel.
func (p *canaryProof) back(nonce string) {
	if p == nil || nonce == "" || nonce != p.nonce {
		return
	}
	p.lastRTT = time.Since(p.sentAt)
	p.nonce = ""
}

// overdue returns the liveness error when the outstanding canary is late.
func (p *canaryProof) overdue(now time.Time) error {
	if !p.enabled() || p.nonce == "" || now.Sub(p.sentAt) < p.timeout {
		return nil
	}
	return &Error{Op: "liveness", Reason: fmt.Sprintf("canary written %v ago did not come back: the channel stopped delivering",
		now.Sub(p.sentAt).Round(time.Second)), kind: ErrDeaf}
}
