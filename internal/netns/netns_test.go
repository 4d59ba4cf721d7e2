package netns

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/testkit"
)

func TestNamesAreShortAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		n := Name("wgclient")
		if len(n) > 15 {
			t.Fatalf("%q is longer than an interface name may be", n)
		}
		if seen[n] {
			t.Fatalf("%q repeated", n)
		}
		seen[n] = true
	}
}

func TestNamespacesVethAndPing(t *testing.T) {
	Require(t)
	a, b := New(t, "hta"), New(t, "htb")
	Veth(t, a, Name("va"), "10.250.0.1/24", b, Name("vb"), "10.250.0.2/24")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Ping(ctx, "10.250.0.2", 1); err != nil {
		t.Fatal(err)
	}
	// The host namespace has no such address: commands really ran inside.
	if out := a.MustRun(t, "ip", "-o", "addr"); !strings.Contains(out, "10.250.0.1/24") {
		t.Errorf("address not in namespace a:\n%s", out)
	}
	p := b.Start(t, "sleep", "30")
	p.Stop()
	if exited, _ := p.Exited(); !exited {
		t.Error("Stop did not end the process")
	}
}

// A child that outlives what the test started (a daemonising tool, a
// background job) is still found: the namespace is searched, not a list
// of started pids.
func TestLeftoverProcessesAreFound(t *testing.T) {
	Require(t, "sh", "sleep")
	n := New(t, "htl")
	p := n.Start(t, "sh", "-c", "sleep 60 >/dev/null 2>&1 & exit 0")
	testkit.Eventually(t, 10*time.Second, func() error {
		if exited, _ := p.Exited(); !exited {
			return errors.New("sh still running")
		}
		return nil
	})
	left := n.leftovers()
	if len(left) != 1 || !strings.Contains(left[0], "sleep 60") {
		t.Fatalf("leftovers = %q, want the one sleep", left)
	}
	n.killAll()
	if left := n.leftovers(); len(left) != 0 {
		t.Fatalf("after killAll: %q", left)
	}
}
