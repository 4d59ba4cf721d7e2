package health

import "testing"

func TestNilHealthIsSafe(t *testing.T) {
	var h *State
	h.SetReadiness(func() error { return nil })
	if h.Ready() == nil {
		t.Error("nil State reports ready")
	}
}
