package netctl

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/waylume/waylume-node/internal/netns"
)

func TestProbeOnThisKernel(t *testing.T) {
	netns.Require(t, "iptables", "iptables-restore")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep := Probe(ctx)
	if rep.Namespace != nil || rep.IFB != nil || rep.TC != nil || rep.Iptables != nil {
		t.Fatalf("Probe: %+v", rep)
	}
	if want, _ := exec.LookPath("iptables"); rep.IptablesPath != want || want == "" {
		t.Errorf("IptablesPath = %q, want %q", rep.IptablesPath, want)
	}
	if rep.MissingModules != nil {
		t.Errorf("MissingModules = %v after a probe that ran", rep.MissingModules)
	}
	// Everything was made in the throwaway namespace: the host's has none of it.
	for _, name := range []string{probeConfig.Interface, ifbName(probeConfig.Interface)} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("link %s exists in the host's namespace", name)
		}
	}
	if out, err := exec.Command("iptables-save").CombinedOutput(); err == nil && strings.Contains(string(out), probeConfig.Interface) {
		t.Errorf("the host's rules name the probe's link:\n%s", out)
	}
}

// Without iptables on PATH the firewall is reported and not run; the
// shaping, which needs no tools, is still probed.
func TestProbeWithoutIptables(t *testing.T) {
	netns.Require(t)
	t.Setenv("PATH", t.TempDir())
	rep := Probe(context.Background())
	if !errors.Is(rep.Iptables, ErrNoIptables) || rep.IptablesPath != "" {
		t.Errorf("Iptables = %v, path %q; want ErrNoIptables", rep.Iptables, rep.IptablesPath)
	}
	if rep.Namespace != nil || rep.IFB != nil || rep.TC != nil {
		t.Errorf("shaping areas: %+v", rep)
	}
}

// A failure in the tree lands on TC, with the IFB step passed: a /32 pool
// has no address for the probe's limit.
func TestProbeReportsShapingFailure(t *testing.T) {
	netns.Require(t, "iptables", "iptables-restore")
	rep := probe(context.Background(), Config{Interface: "wlprobe0", Address: netip.MustParsePrefix("10.0.0.1/32")})
	if rep.Namespace != nil || rep.IFB != nil {
		t.Fatalf("namespace/IFB: %+v", rep)
	}
	if rep.TC == nil || errors.Is(rep.TC, ErrNotProbed) {
		t.Errorf("TC = %v, want the shaping failure", rep.TC)
	}
	if rep.Iptables != nil {
		t.Errorf("Iptables = %v", rep.Iptables)
	}
}
