package netctl

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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

// Where no namespace can be made (NET_ADMIN only, as in a container) the
// probe runs in the process's own namespace, and leaves it as it found it:
// the same links and the same rules, the node's chains included.
func TestProbeInPlace(t *testing.T) {
	netns.Require(t, "iptables", "iptables-restore", "iptables-save")
	ns := netns.New(t, "pip")
	// Stand-ins for a running node's interface and chains.
	ns.MustRun(t, "ip", "link", "add", "wg0", "type", "ifb")
	ns.MustRun(t, "iptables", "-N", chainForward)
	ns.MustRun(t, "iptables", "-A", "FORWARD", "-j", chainForward)
	ns.MustRun(t, "iptables", "-t", "nat", "-N", chainPost)
	ns.MustRun(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-j", chainPost)
	state := func() string {
		return ns.MustRun(t, "ip", "-o", "link", "show") + ns.MustRun(t, "iptables-save")
	}
	clean := func(s string) string { // counters and the timestamp comments
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	before := clean(state())
	n, err := openNamespace(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	var rep ProbeReport
	n.do(func() error {
		rep = probeInPlace(inPlaceConfig(probeConfig), ProbeReport{})
		return nil
	})
	if !rep.InPlace || rep.IFB != nil || rep.TC != nil || rep.Iptables != nil {
		t.Fatalf("probeInPlace: %+v", rep)
	}
	if after := clean(state()); after != before {
		t.Errorf("the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestModuleStatus(t *testing.T) {
	sys, mods := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(sys, "sch_htb"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(mods, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("modules.builtin", "kernel/net/sched/cls_u32.ko\n")
	write("modules.dep", "kernel/drivers/net/ifb.ko:\nkernel/net/sched/act-mirred.ko:\n")
	for name, want := range map[string]moduleState{
		"sch_htb":     moduleAvailable, // /sys/module
		"cls_u32":     moduleAvailable, // built in
		"ifb":         moduleAvailable, // installed
		"act_mirred":  moduleAvailable, // '-' and '_' alike
		"sch_ingress": moduleMissing,
	} {
		if got := moduleStatusIn(sys, mods, name); got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	// No /lib/modules for the kernel (a container): what /sys/module does
	// not show cannot be judged.
	none := filepath.Join(mods, "absent")
	if got := moduleStatusIn(sys, none, "cls_u32"); got != moduleUnlisted {
		t.Errorf("cls_u32 without module lists: %v, want unlisted", got)
	}
	if got := moduleStatusIn(sys, none, "sch_htb"); got != moduleAvailable {
		t.Errorf("sch_htb in /sys/module without module lists: %v, want available", got)
	}
}
