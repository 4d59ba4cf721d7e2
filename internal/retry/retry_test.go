package retry

import (
	"context"
	"slices"
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second, Jitter: 0.3}
	b := p.New()
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		w *= time.Millisecond
		d := b.Next()
		lo, hi := time.Duration(float64(w)*0.69), time.Duration(float64(w)*1.31)
		if d < lo || d > hi {
			t.Fatalf("delay %d = %v, want within [%v, %v]", i, d, lo, hi)
		}
	}
	b.Reset()
	if d := b.Next(); d > 131*time.Millisecond {
		t.Fatalf("after Reset: %v, want about Initial", d)
	}
}

// Two nodes that fail at the same instant must not retry in lockstep.
func TestBackoffSpreads(t *testing.T) {
	p := Policy{Initial: time.Second, Max: time.Minute}
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[p.New().Next()] = true
	}
	if len(seen) < 40 {
		t.Fatalf("50 first delays took only %d distinct values", len(seen))
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep reported the full delay with a cancelled context")
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep with a live context reported cancellation")
	}
}

func TestKeyed(t *testing.T) {
	q := NewKeyed[string](Policy{Initial: time.Second, Max: 8 * time.Second, Jitter: 0.01})
	t0 := time.Unix(1000, 0)
	if _, ok := q.Next(); ok {
		t.Fatal("empty queue has a next instant")
	}
	dueA := q.Fail("a", t0)
	if d := dueA.Sub(t0); d < 990*time.Millisecond || d > 1010*time.Millisecond {
		t.Fatalf("first failure due in %v, want about 1s", d)
	}
	dueA2 := q.Fail("a", t0)
	if d := dueA2.Sub(t0); d < 1980*time.Millisecond || d > 2020*time.Millisecond {
		t.Fatalf("second failure due in %v, want about 2s", d)
	}
	q.Fail("b", t0)
	if got := q.Due(t0.Add(1500 * time.Millisecond)); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("due at 1.5s = %v, want [b]", got)
	}
	if next, _ := q.Next(); next.Sub(t0) > 1010*time.Millisecond {
		t.Fatalf("next = %v after t0, want b's ~1s", next.Sub(t0))
	}
	for range 10 {
		q.Fail("a", t0)
	}
	if d := q.Fail("a", t0).Sub(t0); d > 8100*time.Millisecond {
		t.Fatalf("capped delay %v, want at most about 8s", d)
	}
	q.Forget("a")
	if q.Failing("a") || q.Len() != 1 {
		t.Fatalf("after Forget: failing=%v len=%d", q.Failing("a"), q.Len())
	}
	if d := q.Fail("a", t0).Sub(t0); d > 1010*time.Millisecond {
		t.Fatalf("after Forget the first delay is %v, want about 1s", d)
	}
}
