package preflight

import (
	"errors"
	"strings"
	"testing"

	"github.com/waylume/waylume-node/netctl"
)

// The tc and iptables lines for each way the probe can run: in a
// throwaway namespace, in place (a container with NET_ADMIN only), or not
// at all (no NET_ADMIN), where only the module lists can be read.
func TestCheckProbeLines(t *testing.T) {
	noNS := errors.New("new namespace: operation not permitted")
	notProbed := netctl.ProbeReport{Namespace: noNS, IFB: netctl.ErrNotProbed, TC: netctl.ErrNotProbed, Iptables: netctl.ErrNotProbed, IptablesPath: "/usr/sbin/iptables"}
	missing, unlisted := notProbed, notProbed
	missing.MissingModules = []string{"ifb"}
	unlisted.UnlistedModules = []string{"cls_u32", "ifb"}
	for _, c := range []struct {
		name     string
		rep      netctl.ProbeReport
		tcOK     bool
		tcDetail string
		iptOK    bool
	}{
		{"namespace", netctl.ProbeReport{IptablesPath: "/usr/sbin/iptables"}, true, "probed in a throwaway namespace", true},
		{"in place", netctl.ProbeReport{Namespace: noNS, InPlace: true, IptablesPath: "/usr/sbin/iptables"}, true, "probed on a throwaway link in this namespace", true},
		{"in place, shaping fails", netctl.ProbeReport{Namespace: noNS, InPlace: true, TC: errors.New("add class: invalid argument")}, false, "add class", true},
		{"no NET_ADMIN, modules listed", notProbed, true, "modules present", true},
		{"no NET_ADMIN, a module missing", missing, false, "modules not found: ifb", true},
		{"no NET_ADMIN, no module lists", unlisted, true, "cls_u32, ifb not verified", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			tc := checkTC(c.rep)
			if tc.OK != c.tcOK || !strings.Contains(tc.Detail, c.tcDetail) {
				t.Errorf("tc line %+v, want ok=%v with %q", tc, c.tcOK, c.tcDetail)
			}
			if ipt := checkIptables(c.rep); ipt.OK != c.iptOK {
				t.Errorf("iptables line %+v, want ok=%v", ipt, c.iptOK)
			}
		})
	}
}
