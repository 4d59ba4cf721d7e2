package netctl

// Probe: what a preflight needs to know of the kernel, found by doing it.
// The shaper and firewall that serve the node build their real tree and
// chains on a stand-in link in a throwaway namespace, so the host's own
// namespace is never changed and nothing is left behind. Where no namespace
// can be made (a container with NET_ADMIN only: that takes CAP_SYS_ADMIN)
// the probe runs in the process's own namespace instead, on throwaway links
// and chains named for the probe, which carry no traffic and are removed.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	// ErrNotProbed: an earlier step failed, so the area was not exercised.
	ErrNotProbed = errors.New("not probed")
	// ErrNoIptables: iptables or iptables-restore is not on PATH.
	ErrNoIptables = errors.New("iptables or iptables-restore not on PATH")
)

// ProbeReport is what Probe found, per area. A nil error is a pass.
type ProbeReport struct {
	// WireGuardModule: the kernel has WireGuard loaded, built in or
	// installed as a module. It is judged from the module lists, because
	// creating a link to find out would be a change.
	WireGuardModule bool
	// Namespace is why no throwaway namespace could be made (it takes
	// CAP_SYS_ADMIN). The areas are then probed in place (InPlace), in
	// the process's own namespace on throwaway links and chains.
	Namespace error
	InPlace   bool
	// Without CAP_NET_ADMIN nothing can be probed: IFB, TC and Iptables
	// are ErrNotProbed, MissingModules lists the shaping modules the
	// kernel's module lists lack and UnlistedModules those it cannot tell
	// (no /lib/modules for this kernel, as in a container, and not in
	// /sys/module): the best that can be said without trying.
	MissingModules  []string
	UnlistedModules []string
	// IFB is creating the upload device.
	IFB error
	// TC is the rest of the shaping tree: HTB roots, the hashed u32
	// tables with one limited address read back, the ingress qdisc and
	// its mirred redirect, then their removal.
	TC error
	// Iptables is the node's filter and nat chains, hooked and filled
	// (conntrack and MASQUERADE included), then removed. It wraps
	// ErrNoIptables when a tool is missing.
	Iptables error
	// IptablesPath is the iptables the firewall runs ("" if none).
	IptablesPath string
}

// shapingModules are the kernel modules the shaper's tree needs.
var shapingModules = []string{"sch_htb", "cls_u32", "sch_ingress", "ifb", "act_mirred"}

// probeConfig is the stand-in link's: a /16 pool has the two-level hash
// tables most nodes use.
var probeConfig = Config{Interface: "wlprobe0", Address: netip.MustParsePrefix("10.8.0.1/16")}

// Probe exercises the kernel features the node needs in a throwaway
// network namespace and reports each area.
func Probe(ctx context.Context) ProbeReport {
	return probe(ctx, probeConfig)
}

func probe(ctx context.Context, cfg Config) ProbeReport {
	rep := ProbeReport{WireGuardModule: moduleStatus("wireguard") == moduleAvailable}
	rep.IptablesPath, rep.Iptables = iptablesTools()
	ns, err := tempNamespace()
	if err != nil {
		rep.Namespace = err
		return probeInPlace(inPlaceConfig(cfg), rep)
	}
	defer ns.close()
	rep.IFB, rep.TC = probeShaping(ns, cfg)
	if rep.Iptables == nil {
		rep.Iptables = probeFirewall(ctx, ns, cfg)
	}
	return rep
}

// inPlaceConfig names the stand-in link for this process, so that neither
// it nor its IFB can be a link of the node's (or of another probe's).
func inPlaceConfig(cfg Config) Config {
	cfg.Interface = fmt.Sprintf("wlp%x", os.Getpid())
	return cfg
}

// probeInPlace is the probe in the process's own namespace. Refused for
// want of CAP_NET_ADMIN, it falls back to the module lists.
func probeInPlace(cfg Config, rep ProbeReport) ProbeReport {
	rep.IFB, rep.TC = probeShaping(nil, cfg)
	if errors.Is(rep.IFB, os.ErrPermission) {
		rep.IFB, rep.TC = ErrNotProbed, ErrNotProbed
		if rep.Iptables == nil {
			rep.Iptables = ErrNotProbed
		}
		for _, m := range shapingModules {
			switch moduleStatus(m) {
			case moduleMissing:
				rep.MissingModules = append(rep.MissingModules, m)
			case moduleUnlisted:
				rep.UnlistedModules = append(rep.UnlistedModules, m)
			}
		}
		return rep
	}
	rep.InPlace = true
	if rep.Iptables == nil {
		rep.Iptables = probeFirewallInPlace(cfg)
	}
	return rep
}

func iptablesTools() (string, error) {
	path, err := exec.LookPath("iptables")
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoIptables, err)
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		return path, fmt.Errorf("%w: %w", ErrNoIptables, err)
	}
	return path, nil
}

// probeShaping sets up the shaper's whole tree on a stand-in link, limits
// one address and tears it all down again.
func probeShaping(ns *namespace, cfg Config) (ifbErr, tcErr error) {
	h, err := ns.openNetlink()
	if err != nil {
		return err, ErrNotProbed
	}
	defer h.Close()
	s := newShaper(h, cfg, slog.New(slog.DiscardHandler))
	ifb, err := s.ensureIFB()
	if err != nil {
		return err, ErrNotProbed
	}
	// The stand-in for the WireGuard interface is a second IFB: its module
	// is known to be there now, and the tree does not care what the device
	// is (WireGuard itself is judged apart).
	dev, err := standIn(h, cfg.Interface)
	if err == nil {
		err = s.build(dev, ifb)
	}
	if err == nil {
		err = probeLimit(s, cfg.Address.Addr().Next())
	}
	err = errors.Join(err, s.teardown())
	// In a throwaway namespace the link goes with it; in place it must go.
	if l, lerr := h.LinkByName(cfg.Interface); lerr == nil {
		if derr := h.LinkDel(l); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete stand-in link %s: %w", cfg.Interface, derr))
		}
	}
	return nil, err
}

func standIn(h *netlink.Handle, name string) (int, error) {
	if err := h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		return 0, fmt.Errorf("create stand-in link %s: %w", name, err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("stand-in link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return 0, fmt.Errorf("set stand-in link %s up: %w", name, err)
	}
	return l.Attrs().Index, nil
}

// probeLimit limits a both ways and reads the limits back the way a
// restarted node does.
func probeLimit(s *shaper, a netip.Addr) error {
	want := limits{down: 1000, up: 1000}
	ops, err := s.diff(a, want)
	if err != nil {
		return err
	}
	if err := s.run(ops)[a]; err != nil {
		return err
	}
	if err := s.load(); err != nil {
		return err
	}
	if got := s.classes[a]; got != want {
		return fmt.Errorf("limits of %v read back as %d/%d kbit/s, want %d/%d", a, got.down, got.up, want.down, want.up)
	}
	return nil
}

// probeFirewall fills and hooks the node's chains and removes them. It
// leaves forwarding alone: the preflight reports that on its own, and
// /proc/sys may be read-only where iptables works.
func probeFirewall(ctx context.Context, ns *namespace, cfg Config) error {
	fw := newFirewall(ns, slog.New(slog.DiscardHandler))
	err := ns.do(func() error { return setupChains(ctx, cfg, "", fw.log) })
	return errors.Join(err, fw.teardown(ctx))
}

// probeFirewallInPlace fills and hooks chains of the probe's own with what
// the node's need (conntrack in filter, MASQUERADE in nat), then removes
// them. The hooks match only the stand-in link, which carries no traffic,
// and the node's chains are not touched.
func probeFirewallInPlace(cfg Config) error {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5))
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	link := cfg.Interface
	chain := "WLPROBE-" + strings.ToUpper(strings.TrimPrefix(link, "wlp"))
	rules := []struct {
		table, hook string
		rule        []string
	}{
		{"filter", "FORWARD", []string{"-o", link, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
		{"nat", "POSTROUTING", []string{"-s", cfg.Pool().String(), "-o", link, "-j", "MASQUERADE"}},
	}
	removeProbeChains(ipt, chain, link) // a probe killed halfway, same pid
	for _, r := range rules {
		if err = probeChain(ipt, r.table, r.hook, chain, link, r.rule); err != nil {
			break
		}
	}
	return errors.Join(err, removeProbeChains(ipt, chain, link))
}

func probeChain(ipt *iptables.IPTables, table, hook, chain, link string, rule []string) error {
	if err := ipt.NewChain(table, chain); err != nil {
		return fmt.Errorf("create chain %s in %s: %w", chain, table, err)
	}
	if err := ipt.Append(table, chain, rule...); err != nil {
		return fmt.Errorf("rule in %s (%s): %w", chain, table, err)
	}
	if err := ipt.Insert(table, hook, 1, "-o", link, "-j", chain); err != nil {
		return fmt.Errorf("hook %s into %s: %w", chain, hook, err)
	}
	return nil
}

func removeProbeChains(ipt *iptables.IPTables, chain, link string) error {
	var errs []error
	for _, t := range []struct{ table, hook string }{{"filter", "FORWARD"}, {"nat", "POSTROUTING"}} {
		if ok, _ := ipt.Exists(t.table, t.hook, "-o", link, "-j", chain); ok {
			if err := ipt.Delete(t.table, t.hook, "-o", link, "-j", chain); err != nil {
				errs = append(errs, fmt.Errorf("unhook %s from %s: %w", chain, t.hook, err))
			}
		}
		if ok, _ := ipt.ChainExists(t.table, chain); ok {
			if err := ipt.ClearAndDeleteChain(t.table, chain); err != nil {
				errs = append(errs, fmt.Errorf("delete chain %s in %s: %w", chain, t.table, err))
			}
		}
	}
	return errors.Join(errs...)
}

// moduleState is what the kernel's module lists say of a module.
type moduleState int

const (
	moduleMissing   moduleState = iota // the lists exist and lack it
	moduleAvailable                    // loaded, built in, or installed
	moduleUnlisted                     // no lists to read: cannot tell
)

// moduleStatus looks for a module in the running kernel: in /sys/module
// (loaded, or built in with parameters or a version), then in the
// kernel's modules.builtin and modules.dep. A container usually has no
// /lib/modules, and a kernel without loadable modules none at all: then a
// module absent from /sys/module may still be built in.
func moduleStatus(name string) moduleState {
	return moduleStatusIn("/sys/module", kernelModulesDir(), name)
}

func kernelModulesDir() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
}

func moduleStatusIn(sysModule, modulesDir, name string) moduleState {
	if _, err := os.Stat(filepath.Join(sysModule, name)); err == nil {
		return moduleAvailable
	}
	state := moduleUnlisted
	for _, list := range []string{"modules.builtin", "modules.dep"} {
		switch listed, err := moduleListed(filepath.Join(modulesDir, list), name); {
		case err != nil:
		case listed:
			return moduleAvailable
		default:
			state = moduleMissing
		}
	}
	return state
}

// moduleListed reports whether a modules.builtin or modules.dep file names
// the module (file names use '-' and '_' alike).
func moduleListed(path, name string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p, _, _ := strings.Cut(sc.Text(), ":")
		if m, _, ok := strings.Cut(filepath.Base(p), ".ko"); ok && (m == name || strings.ReplaceAll(m, "-", "_") == name) {
			return true, nil
		}
	}
	return false, sc.Err()
}
