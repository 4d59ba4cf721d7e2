package node

import (
	"runtime/debug"
	"testing"
)

func TestTuneMemory(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })

	TuneMemory(func(string) (string, bool) { return "", false })
	if got := debug.SetGCPercent(100); got != defaultGCPercent {
		t.Errorf("without GOGC the GC percent is %d, want %d", got, defaultGCPercent)
	}
	// An operator's GOGC (already applied by the runtime) is left alone.
	TuneMemory(func(k string) (string, bool) { return "100", k == "GOGC" })
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("with GOGC=100 the GC percent is %d, want 100", got)
	}
}
