package netctl

// Probe: what a preflight needs to know of the kernel, found by doing it.
// The shaper and firewall that serve the node build their real tree and
// chains on a stand-in link in a throwaway namespace, so the host's own
// namespace is never changed and nothing is left behind.

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
	// CAP_SYS_ADMIN). IFB, TC and Iptables are then ErrNotProbed, and
	// MissingModules lists the shaping modules the kernel's module lists
	// lack: the best that can be said without trying.
	Namespace      error
	MissingModules []string
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
	rep := ProbeReport{WireGuardModule: moduleAvailable("wireguard")}
	rep.IptablesPath, rep.Iptables = iptablesTools()
	ns, err := tempNamespace()
	if err != nil {
		rep.Namespace = err
		rep.IFB, rep.TC = ErrNotProbed, ErrNotProbed
		if rep.Iptables == nil {
			rep.Iptables = ErrNotProbed
		}
		for _, m := range shapingModules {
			if !moduleAvailable(m) {
				rep.MissingModules = append(rep.MissingModules, m)
			}
		}
		return rep
	}
	defer ns.close()
	rep.IFB, rep.TC = probeShaping(ns, cfg)
	if rep.Iptables == nil {
		rep.Iptables = probeFirewall(ctx, ns, cfg)
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
	return nil, errors.Join(err, s.teardown())
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

// moduleAvailable looks for a module in the running kernel: loaded, built
// in, or installed.
func moduleAvailable(name string) bool {
	if _, err := os.Stat("/sys/module/" + name); err == nil {
		return true
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	for _, list := range []string{"modules.builtin", "modules.dep"} {
		if moduleListed(filepath.Join(dir, list), name) {
			return true
		}
	}
	return false
}

// moduleListed reports whether a modules.builtin or modules.dep file names
// the module (file names use '-' and '_' alike).
func moduleListed(path, name string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p, _, _ := strings.Cut(sc.Text(), ":")
		if m, _, ok := strings.Cut(filepath.Base(p), ".ko"); ok && (m == name || strings.ReplaceAll(m, "-", "_") == name) {
			return true
		}
	}
	return false
}
