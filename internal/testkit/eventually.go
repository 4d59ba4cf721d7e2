package testkit

import (
	"testing"
	"time"
)

// pollEvery is short against the deadlines tests use and long enough not
// to busy-loop a two-core machine.
const pollEvery = 10 * time.Millisecond

// Eventually polls cond until it returns nil or timeout passes, then fails
// the test with cond's last error. It is how a test waits for something
// another goroutine or process does: never a bare sleep.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %v", timeout, err)
		}
		time.Sleep(pollEvery)
	}
}
