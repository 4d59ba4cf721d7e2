package trim

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// counted returns a Trimmer whose trims are sent on the returned channel,
// stamped, instead of collecting.
func counted(quiet, every, spacing time.Duration) (*Trimmer, <-chan time.Time) {
	t := New(quiet, every, spacing)
	trims := make(chan time.Time, 100)
	t.free = func() { trims <- time.Now() }
	return t, trims
}

func run(tb testing.TB, t *Trimmer) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { t.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
}

func TestBurstTrimsOnceAfterQuiet(t *testing.T) {
	tr, trims := counted(50*time.Millisecond, time.Hour, 0)
	run(t, tr)
	var lastPoke time.Time
	for range 10 {
		tr.Poke()
		lastPoke = time.Now()
	}
	at := <-trims
	if gap := at.Sub(lastPoke); gap < tr.quiet {
		t.Fatalf("trimmed %v after the last poke, want at least %v", gap, tr.quiet)
	}
	// A second trim would need a second poke: none comes within ten quiet
	// periods.
	select {
	case <-trims:
		t.Fatal("a burst trimmed twice")
	case <-time.After(10 * tr.quiet):
	}
	tr.Poke()
	<-trims
}

func TestSteadyPokesTrimEveryAndSpaced(t *testing.T) {
	const every, spacing = 60 * time.Millisecond, 100 * time.Millisecond
	tr, trims := counted(30*time.Millisecond, every, spacing)
	run(t, tr)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// Pokes closer together than Quiet: the burst never pauses.
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				tr.Poke()
			}
		}
	}()
	first := <-trims
	prev := first
	for range 3 {
		at := <-trims
		if gap := at.Sub(prev); gap < spacing {
			t.Fatalf("two trims %v apart, want at least %v", gap, spacing)
		}
		prev = at
	}
}

func TestRunStopsWithContext(t *testing.T) {
	tr, _ := counted(time.Hour, time.Hour, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	tr.Poke() // mid-burst
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// The real trim: the heap's free pages go back to the OS.
func TestFreeReturnsMemory(t *testing.T) {
	tr := New(time.Millisecond, time.Second, 0)
	freed := make(chan struct{}, 1)
	inner := tr.free
	tr.free = func() { inner(); freed <- struct{}{} }
	run(t, tr)
	garbage := make([][]byte, 0, 64)
	for range 64 {
		garbage = append(garbage, make([]byte, 1<<20))
	}
	for _, g := range garbage {
		g[0] = 1
	}
	garbage = nil
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	tr.Poke()
	<-freed
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if got := after.HeapReleased - before.HeapReleased; got < 32<<20 {
		t.Fatalf("released %d MB after freeing 64 MB of garbage, want at least 32", got>>20)
	}
}

// A poke made while a trim waits out its spacing is covered by that trim:
// it does not start another burst.
func TestPokeDuringSpacingTrimsOnce(t *testing.T) {
	const spacing = 200 * time.Millisecond
	tr, trims := counted(10*time.Millisecond, time.Hour, spacing)
	run(t, tr)
	tr.Poke()
	<-trims
	tr.Poke()                         // the next burst, which waits for the spacing
	time.Sleep(50 * time.Millisecond) // past its quiet period, inside the spacing: the pace of the pokes, not synchronisation
	tr.Poke()
	<-trims
	select {
	case <-trims:
		t.Fatal("a poke made during the spacing started another trim")
	case <-time.After(3 * spacing):
	}
}
