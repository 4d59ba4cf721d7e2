// Package preflight checks what the node needs before it runs, one Result
// per requirement, each with the fix when it fails. The kernel is probed by
// netctl in a throwaway network namespace, so the host's own is only read;
// the schema is judged by migrations.Verify.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/waylume/waylume-node/netctl"
)

// Config is what the checks read: the node's settings, validated.
type Config struct {
	Interface       string
	WGMode          string // "auto", "kernel" or "userspace"
	EgressInterface string // empty: from the default route
	DatabaseURL     string
	NodeID          string
	SupabaseURL     string
	SupabaseKey     string
	RealtimeURL     string // empty: LISTEN/NOTIFY is the event source
	RealtimeMode    string
	AccessToken     string
	AuthEmail       string
	AuthPassword    string
}

// Result is one requirement's verdict.
type Result struct {
	Name   string
	OK     bool
	Warn   bool // OK, but weaker than it should be: shown with the fix
	Detail string
	Fix    string // when !OK or Warn
}

func pass(name, detail string) Result { return Result{Name: name, OK: true, Detail: detail} }
func fail(name, detail, fix string) Result {
	return Result{Name: name, Detail: detail, Fix: fix}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Run checks the host (tun, WireGuard, capabilities, tc, iptables,
// forwarding, egress), then the control plane (database, schema, the node
// row, the event source, the publication).
func Run(ctx context.Context, cfg Config) []Result {
	probe, host := netctl.Probe(ctx), netctl.Host(cfg.Interface)
	out := []Result{checkTun(host), checkWireGuard(cfg, probe.WireGuardModule, host), checkNetAdmin(host.NetAdmin),
		checkTC(probe), checkIptables(probe), checkForward(host), checkEgress(cfg.EgressInterface)}
	return append(out, checkDatabase(ctx, cfg)...)
}

func checkTun(h netctl.HostReport) Result {
	if h.Tun != nil {
		return fail("tun", fmt.Sprintf("/dev/net/tun: %v", h.Tun),
			"give the container the device (--device /dev/net/tun, compose: devices) or load the tun module (modprobe tun)")
	}
	return pass("tun", "/dev/net/tun opens")
}

// checkWireGuard judges the mode against what is there: the kernel
// module, a device to adopt, or /dev/net/tun for the embedded one.
func checkWireGuard(cfg Config, kernel bool, h netctl.HostReport) Result {
	switch cfg.WGMode {
	case "kernel":
		switch {
		case kernel:
			return pass("wireguard", "kernel module available (mode kernel)")
		case h.Existing:
			return pass("wireguard", "existing device "+cfg.Interface+" reachable at "+h.Socket+" (mode kernel adopts it)")
		}
		return fail("wireguard", "mode kernel but no WireGuard kernel module and no device at "+h.Socket,
			"install the module (Linux >= 5.6 or wireguard-dkms) or set WAYLUME_WG_MODE=userspace")
	case "userspace":
		if h.Tun != nil {
			return fail("wireguard", "mode userspace needs /dev/net/tun: "+h.Tun.Error(), "provide /dev/net/tun (see tun)")
		}
		return pass("wireguard", "userspace (embedded wireguard-go) possible")
	}
	switch {
	case kernel:
		return pass("wireguard", "kernel module available (mode auto uses it)")
	case h.Existing:
		return pass("wireguard", "existing device at "+h.Socket+" (mode auto adopts it)")
	case h.Tun == nil:
		return pass("wireguard", "no kernel module; mode auto uses the embedded userspace device")
	}
	return fail("wireguard", "no kernel module and /dev/net/tun unusable",
		"load the wireguard module or provide /dev/net/tun")
}

func checkNetAdmin(ok bool) Result {
	if ok {
		return pass("net_admin", "CAP_NET_ADMIN effective")
	}
	return fail("net_admin", "CAP_NET_ADMIN missing", "run as root or grant it (docker: --cap-add NET_ADMIN; systemd: AmbientCapabilities=CAP_NET_ADMIN)")
}

func checkTC(rep netctl.ProbeReport) Result {
	const fix = "use a kernel with HTB, u32 hashing, ingress, ifb and mirred (modprobe sch_htb cls_u32 sch_ingress ifb act_mirred)"
	switch {
	case errors.Is(rep.TC, netctl.ErrNotProbed) && len(rep.MissingModules) > 0:
		return fail("tc", "modules not found: "+strings.Join(rep.MissingModules, ", ")+" (not probed: no CAP_NET_ADMIN)",
			"use a kernel with HTB, u32, ingress, ifb and mirred (modprobe "+strings.Join(rep.MissingModules, " ")+")")
	case errors.Is(rep.TC, netctl.ErrNotProbed) && len(rep.UnlistedModules) > 0:
		return pass("tc", "not probed (no CAP_NET_ADMIN) and no module lists for this kernel: "+
			strings.Join(rep.UnlistedModules, ", ")+" not verified")
	case errors.Is(rep.TC, netctl.ErrNotProbed) && errors.Is(rep.IFB, netctl.ErrNotProbed):
		return pass("tc", "HTB, u32, ingress, ifb, mirred modules present (not probed: no CAP_NET_ADMIN)")
	case rep.IFB != nil:
		return fail("tc", oneLine(rep.IFB.Error()), fix)
	case rep.TC != nil:
		return fail("tc", oneLine(rep.TC.Error()), fix)
	}
	if rep.InPlace {
		return pass("tc", "HTB, hashed u32, ingress, ifb and mirred work (probed on a throwaway link in this namespace)")
	}
	return pass("tc", "HTB, hashed u32, ingress, ifb and mirred work (probed in a throwaway namespace)")
}

func checkIptables(rep netctl.ProbeReport) Result {
	switch {
	case errors.Is(rep.Iptables, netctl.ErrNoIptables):
		return fail("iptables", "iptables or iptables-restore not on PATH", "install iptables (apt-get install iptables)")
	case errors.Is(rep.Iptables, netctl.ErrNotProbed):
		return pass("iptables", rep.IptablesPath+" and iptables-restore present (not probed)")
	case rep.Iptables != nil:
		return fail("iptables", oneLine(rep.Iptables.Error()), "install iptables with the nat table and MASQUERADE (iptables-nft or legacy)")
	}
	if rep.InPlace {
		return pass("iptables", rep.IptablesPath+": nat and MASQUERADE work (probed with throwaway chains in this namespace)")
	}
	return pass("iptables", rep.IptablesPath+": nat and MASQUERADE work (probed in a throwaway namespace)")
}

func checkForward(h netctl.HostReport) Result {
	switch {
	case h.ForwardErr != nil:
		return fail("ip_forward", h.ForwardErr.Error(), "mount /proc")
	case h.Forward:
		return pass("ip_forward", "on")
	case h.ForwardWritable:
		return pass("ip_forward", "off now; the node turns it on at start")
	}
	return fail("ip_forward", "off and /proc/sys is read-only here",
		"sysctl -w net.ipv4.ip_forward=1 on the host, or compose: sysctls: net.ipv4.ip_forward=1")
}

func checkEgress(name string) Result {
	iface, err := netctl.ResolveEgress(name)
	switch {
	case errors.Is(err, netctl.ErrNoDefaultRoute):
		return fail("egress", "no IPv4 default route to NAT clients through", "add a default route or set WAYLUME_EGRESS_INTERFACE")
	case err != nil:
		return fail("egress", oneLine(err.Error()), "set WAYLUME_EGRESS_INTERFACE to the uplink (ip route show default)")
	case name != "":
		return pass("egress", name+" (WAYLUME_EGRESS_INTERFACE)")
	}
	return pass("egress", iface+" (default route)")
}
