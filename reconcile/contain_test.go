package reconcile

import (
	"errors"
	"testing"

	"github.com/waylume/waylume-node/events"
)

// A panic while applying a row costs that run, not the process (whose
// embedded device holds every session), and leaves the reconciler usable:
// its lock is released and the next resync converges.
func TestPanicContained(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	h.plane.panics = 1
	h.store.put(peerRow(2))
	err := h.r.Handle(h.ctx, []events.Event{{Kind: events.PeerChanged, ID: peerRow(2).ID}})
	if !errors.Is(err, errPanic) {
		t.Fatalf("Handle after a panic: err = %v, want a contained panic", err)
	}
	h.plane.panics = 1
	if err := h.r.Resync(h.ctx); !errors.Is(err, errPanic) {
		t.Fatalf("Resync after a panic: err = %v, want a contained panic", err)
	}
	h.resync()
	h.wantInPlane(1, true)
	h.wantInPlane(2, true)
}
