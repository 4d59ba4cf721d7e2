package netns

import (
	"context"
	"strings"
	"testing"
	"time"
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
	WaitFor(t, time.Second, func() error { return nil })
}
