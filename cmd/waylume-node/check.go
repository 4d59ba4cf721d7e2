package main

// check: a preflight that prints one line per requirement, ok or FAIL with
// the fix, and exits 1 when anything failed. Kernel features are probed in
// a throwaway network namespace so the host's own namespace is only read,
// never changed.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/supabase/realtime"
)

type checkResult struct {
	Name   string
	OK     bool
	Detail string
	Fix    string // only when !OK
}

func pass(name, detail string) checkResult { return checkResult{Name: name, OK: true, Detail: detail} }
func fail(name, detail, fix string) checkResult {
	return checkResult{Name: name, Detail: detail, Fix: fix}
}

func (c *cli) checkCmd(args []string) int {
	fs := c.flagSet("check", "", "Preflight: one line per requirement (ok or FAIL with the fix). Exit code 1 when any failed.", forCheck)
	cf := bindConfig(fs, forCheck)
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "interface") {
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 60*time.Second)
	defer cancel()
	failed := 0
	for _, r := range runChecks(ctx, cfg) {
		printCheck(c.stdout, r)
		if !r.OK {
			failed++
		}
	}
	if failed > 0 {
		fmt.Fprintf(c.stdout, "%d check(s) failed\n", failed)
		return exitFail
	}
	fmt.Fprintln(c.stdout, "all checks passed")
	return exitOK
}

func printCheck(w io.Writer, r checkResult) {
	if r.OK {
		fmt.Fprintf(w, "ok    %-12s %s\n", r.Name, r.Detail)
		return
	}
	fmt.Fprintf(w, "FAIL  %-12s %s; fix: %s\n", r.Name, r.Detail, r.Fix)
}

func runChecks(ctx context.Context, cfg Config) []checkResult {
	var out []checkResult
	netAdmin := hasCap(unix.CAP_NET_ADMIN)
	out = append(out, checkTun(), checkWireGuard(cfg), checkNetAdmin(netAdmin))
	out = append(out, checkKernelNet()...)
	out = append(out, checkForward(), checkEgress(cfg.EgressInterface))
	out = append(out, checkDatabase(ctx, cfg)...)
	return out
}

func checkTun() checkResult {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fail("tun", fmt.Sprintf("/dev/net/tun: %v", err),
			"give the container the device (--device /dev/net/tun, compose: devices) or load the tun module (modprobe tun)")
	}
	f.Close()
	return pass("tun", "/dev/net/tun opens")
}

// kernelWireGuard says whether the kernel has (or can load) WireGuard,
// judged by module presence: creating a link to find out would be a change.
func kernelWireGuard() bool {
	if _, err := os.Stat("/sys/module/wireguard"); err == nil {
		return true
	}
	return moduleAvailable("wireguard")
}

// moduleAvailable looks for a module in the running kernel's module lists.
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
		f, err := os.Open(filepath.Join(dir, list))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			path, _, _ := strings.Cut(sc.Text(), ":")
			base := filepath.Base(path)
			if m, _, ok := strings.Cut(base, ".ko"); ok && (m == name || strings.ReplaceAll(m, "-", "_") == name) {
				f.Close()
				return true
			}
		}
		f.Close()
	}
	return false
}

func checkWireGuard(cfg Config) checkResult {
	kernel := kernelWireGuard()
	sock := filepath.Join("/var/run/wireguard", cfg.Interface+".sock")
	_, err := os.Stat(sock)
	existing := err == nil
	tunErr := func() error {
		f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
		if err == nil {
			f.Close()
		}
		return err
	}()
	switch cfg.WGMode {
	case "kernel":
		switch {
		case kernel:
			return pass("wireguard", "kernel module available (mode kernel)")
		case existing:
			return pass("wireguard", "existing device "+cfg.Interface+" reachable at "+sock+" (mode kernel adopts it)")
		}
		return fail("wireguard", "mode kernel but no WireGuard kernel module and no device at "+sock,
			"install the module (Linux >= 5.6 or wireguard-dkms) or set WAYLUME_WG_MODE=userspace")
	case "userspace":
		if tunErr != nil {
			return fail("wireguard", "mode userspace needs /dev/net/tun: "+tunErr.Error(), "provide /dev/net/tun (see tun)")
		}
		return pass("wireguard", "userspace (embedded wireguard-go) possible")
	}
	switch {
	case kernel:
		return pass("wireguard", "kernel module available (mode auto uses it)")
	case existing:
		return pass("wireguard", "existing device at "+sock+" (mode auto adopts it)")
	case tunErr == nil:
		return pass("wireguard", "no kernel module; mode auto uses the embedded userspace device")
	}
	return fail("wireguard", "no kernel module and /dev/net/tun unusable",
		"load the wireguard module or provide /dev/net/tun")
}

// hasCap reads the effective capability set of this process.
func hasCap(bit int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<uint(bit)) != 0
		}
	}
	return false
}

func checkNetAdmin(ok bool) checkResult {
	if ok {
		return pass("net_admin", "CAP_NET_ADMIN effective")
	}
	return fail("net_admin", "CAP_NET_ADMIN missing", "run as root or grant it (docker: --cap-add NET_ADMIN; systemd: AmbientCapabilities=CAP_NET_ADMIN)")
}

// checkKernelNet probes tc (HTB, u32 hashing, ingress, ifb, mirred) and
// iptables (nat, MASQUERADE) in a throwaway namespace. Without the rights to
// make one it falls back to module presence.
func checkKernelNet() []checkResult {
	tcErr, iptErr, nsErr := probeInNamespace()
	iptPath, lookErr := exec.LookPath("iptables")
	_, restoreErr := exec.LookPath("iptables-restore")
	var out []checkResult
	if nsErr != nil {
		var missing []string
		for _, m := range []string{"sch_htb", "cls_u32", "sch_ingress", "ifb", "act_mirred"} {
			if !moduleAvailable(m) {
				missing = append(missing, m)
			}
		}
		if len(missing) > 0 {
			out = append(out, fail("tc", "modules not found: "+strings.Join(missing, ", ")+" (probe impossible: "+nsErr.Error()+")",
				"use a kernel with HTB, u32, ingress, ifb and mirred (modprobe "+strings.Join(missing, " ")+")"))
		} else {
			out = append(out, pass("tc", "HTB, u32, ingress, ifb, mirred modules present (not probed: "+nsErr.Error()+")"))
		}
	} else if tcErr != nil {
		out = append(out, fail("tc", tcErr.Error(), "use a kernel with HTB, u32 hashing, ingress, ifb and mirred (modprobe sch_htb cls_u32 sch_ingress ifb act_mirred)"))
	} else {
		out = append(out, pass("tc", "HTB, hashed u32, ingress, ifb and mirred work (probed in a throwaway namespace)"))
	}
	switch {
	case lookErr != nil || restoreErr != nil:
		out = append(out, fail("iptables", "iptables or iptables-restore not on PATH", "install iptables (apt-get install iptables)"))
	case nsErr == nil && iptErr != nil:
		out = append(out, fail("iptables", iptErr.Error(), "install iptables with the nat table and MASQUERADE (iptables-nft or legacy)"))
	case nsErr == nil:
		out = append(out, pass("iptables", iptPath+": nat and MASQUERADE work (probed in a throwaway namespace)"))
	default:
		out = append(out, pass("iptables", iptPath+" and iptables-restore present (not probed)"))
	}
	return out
}

// probeInNamespace runs the tc and iptables probes in a new network
// namespace on a locked thread that is never unlocked: the thread ends with
// the goroutine, so the namespace cannot leak into other goroutines, and it
// disappears when the thread does.
func probeInNamespace() (tcErr, iptErr, nsErr error) {
	type result struct{ tc, ipt, ns error }
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			done <- result{ns: fmt.Errorf("new namespace: %v", err)}
			return
		}
		defer ns.Close()
		r := result{tc: probeTC()}
		r.ipt = probeIptables()
		done <- r
	}()
	r := <-done
	return r.tc, r.ipt, r.ns
}

func probeTC() error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %v", err)
	}
	defer h.Close()
	mk := func(name string) (netlink.Link, error) {
		if err := h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			return nil, fmt.Errorf("ifb: %v", err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("ifb: %v", err)
		}
		return l, h.LinkSetUp(l)
	}
	dev, err := mk("wlprobe0")
	if err != nil {
		return err
	}
	ifb, err := mk("wlprobe1")
	if err != nil {
		return err
	}
	idx := dev.Attrs().Index
	root := netlink.MakeHandle(1, 0)
	if err := h.QdiscAdd(netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: idx, Handle: root, Parent: netlink.HANDLE_ROOT})); err != nil {
		return fmt.Errorf("htb qdisc: %v", err)
	}
	class := netlink.MakeHandle(1, 10)
	if err := h.ClassAdd(netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: idx, Parent: root, Handle: class},
		netlink.HtbClassAttrs{Rate: 1_000_000, Quantum: 1500})); err != nil {
		return fmt.Errorf("htb class: %v", err)
	}
	// A hash table (divisor 256) and a leaf in one of its buckets, as the
	// shaping uses them.
	table := uint32(0x100) << 20
	if err := h.FilterAdd(&netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: root, Handle: table, Priority: 1, Protocol: unix.ETH_P_IP},
		Divisor: 256}); err != nil {
		return fmt.Errorf("u32 hash table: %v", err)
	}
	leaf := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: root, Handle: table | 1<<12 | 1, Priority: 1, Protocol: unix.ETH_P_IP},
		ClassId: class, Hash: table | 1<<12,
		Sel: &netlink.TcU32Sel{Flags: nl32Terminal, Keys: []netlink.TcU32Key{{Mask: 0xffffffff, Val: 0x0a000001, Off: 16}}}}
	if err := h.FilterAdd(leaf); err != nil {
		return fmt.Errorf("u32 filter: %v", err)
	}
	if err := h.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}); err != nil {
		return fmt.Errorf("ingress qdisc: %v", err)
	}
	redirect := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_ALL},
		Sel:     &netlink.TcU32Sel{Flags: nl32Terminal, Keys: []netlink.TcU32Key{{}}},
		Actions: []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)}}
	if err := h.FilterAdd(redirect); err != nil {
		return fmt.Errorf("mirred redirect: %v", err)
	}
	return nil
}

// nl32Terminal is TC_U32_TERMINAL: a match ends classification.
const nl32Terminal = 1

func probeIptables() error {
	for _, args := range [][]string{
		{"-w", "5", "-t", "nat", "-N", "WAYLUME-PROBE"},
		{"-w", "5", "-t", "nat", "-A", "WAYLUME-PROBE", "-s", "10.0.0.0/24", "-j", "MASQUERADE"},
		{"-w", "5", "-t", "filter", "-N", "WAYLUME-PROBE"},
	} {
		if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables %s: %s", strings.Join(args[2:], " "), oneLine(string(out)))
		}
	}
	return nil
}

func checkForward() checkResult {
	const p = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(p)
	if err != nil {
		return fail("ip_forward", err.Error(), "mount /proc")
	}
	if strings.TrimSpace(string(b)) == "1" {
		return pass("ip_forward", "on")
	}
	if unix.Access(p, unix.W_OK) == nil {
		return pass("ip_forward", "off now; the node turns it on at start")
	}
	return fail("ip_forward", "off and /proc/sys is read-only here",
		"sysctl -w net.ipv4.ip_forward=1 on the host, or compose: sysctls: net.ipv4.ip_forward=1")
}

func checkEgress(name string) checkResult {
	if name != "" {
		if _, err := netlink.LinkByName(name); err != nil {
			return fail("egress", fmt.Sprintf("interface %s: %v", name, err), "set WAYLUME_EGRESS_INTERFACE to the uplink (ip route show default)")
		}
		return pass("egress", name+" (WAYLUME_EGRESS_INTERFACE)")
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err == nil {
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					return pass("egress", l.Attrs().Name+" (default route)")
				}
			}
		}
	}
	return fail("egress", "no IPv4 default route to NAT clients through", "add a default route or set WAYLUME_EGRESS_INTERFACE")
}

// checkDatabase covers the control plane: reachable, migrated, the node row,
// an event source (LISTEN or Realtime) and the publication.
func checkDatabase(ctx context.Context, cfg Config) []checkResult {
	if cfg.DatabaseURL == "" {
		return []checkResult{fail("database", "WAYLUME_DATABASE_URL not set", "set WAYLUME_DATABASE_URL (Supabase: direct connection or session pooler)")}
	}
	var out []checkResult
	conn, err := connectDB(ctx, cfg.DatabaseURL)
	if err != nil {
		return []checkResult{fail("database", oneLine(err.Error()),
			"check the URL, password and network; Supabase direct connections may be IPv6-only: use the session pooler (port 5432 on pooler.supabase.com)")}
	}
	defer conn.Close(context.Background())
	var serverVersion string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&serverVersion); err != nil {
		return []checkResult{fail("database", oneLine(err.Error()), "check the role's permissions")}
	}
	out = append(out, pass("database", "reachable (PostgreSQL "+serverVersion+")"))
	out = append(out, checkMigrated(ctx, conn))
	out = append(out, checkNodeRow(ctx, conn, cfg.NodeID))
	if cfg.RealtimeURL == "" {
		out = append(out, checkListen(ctx, conn, cfg.DatabaseURL))
	} else {
		out = append(out, checkRealtime(ctx, cfg))
	}
	out = append(out, checkPublication(ctx, conn))
	return out
}

func checkNodeRow(ctx context.Context, conn *pgx.Conn, nodeID string) checkResult {
	if nodeID == "" {
		return fail("node", "WAYLUME_NODE_ID not set", "create the node (waylume-node node create) and set WAYLUME_NODE_ID to its id")
	}
	var name string
	err := conn.QueryRow(ctx, "SELECT name FROM waylume.nodes WHERE id = $1", nodeID).Scan(&name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fail("node", "no row "+nodeID+" in waylume.nodes visible to this role",
			"create it (waylume-node node create) or fix WAYLUME_NODE_ID / the node's credentials")
	case err != nil:
		return fail("node", oneLine(err.Error()), "run waylume-node migrate; check the role's grants")
	}
	return pass("node", fmt.Sprintf("row %s (%s)", nodeID, name))
}

// transactionPooler recognises Supabase's transaction pooler (Supavisor
// on port 6543), where LISTEN does not work.
func transactionPooler(dbURL string) bool {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return false
	}
	return cfg.Port == 6543
}

func checkListen(ctx context.Context, conn *pgx.Conn, dbURL string) checkResult {
	const fix = "set WAYLUME_REALTIME_URL (and WAYLUME_SUPABASE_KEY, WAYLUME_ACCESS_TOKEN): Realtime is required as the event source here, or connect directly / through the session pooler"
	if transactionPooler(dbURL) {
		return fail("events", "the transaction pooler (port 6543) does not support LISTEN", fix)
	}
	if _, err := conn.Exec(ctx, "LISTEN waylume_check"); err != nil {
		return fail("events", "LISTEN: "+oneLine(err.Error()), fix)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_notify('waylume_check', 'ping')"); err != nil {
		return fail("events", "NOTIFY: "+oneLine(err.Error()), fix)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := conn.WaitForNotification(wctx); err != nil {
		return fail("events", "LISTEN/NOTIFY round trip failed: "+oneLine(err.Error()), fix)
	}
	conn.Exec(ctx, "UNLISTEN waylume_check")
	return pass("events", "LISTEN/NOTIFY works (no WAYLUME_REALTIME_URL: the node uses it)")
}

// checkRealtime joins the node's channel the way run does and waits for
// "Subscribed to PostgreSQL", which proves the URL, the key, the token and
// the server's view of the publication.
func checkRealtime(ctx context.Context, cfg Config) checkResult {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	states := make(chan realtime.State, 16)
	rt, err := realtime.New(realtime.Config{
		URL: cfg.RealtimeURL, APIKey: cfg.SupabaseKey, AccessToken: cfg.AccessToken, NodeID: cfg.NodeID,
		Logger: newLogger(io.Discard, "error", "json"),
		OnState: func(s realtime.State) {
			select {
			case states <- s:
			default:
			}
		},
	}, events.SinkFunc(func(events.Event) {}))
	if err != nil {
		return fail("realtime", oneLine(err.Error()), "fix WAYLUME_REALTIME_URL / WAYLUME_SUPABASE_KEY")
	}
	go rt.Run(ctx)
	host := cfg.RealtimeURL
	if u, err := url.Parse(cfg.RealtimeURL); err == nil {
		host = u.Host
	}
	for {
		select {
		case s := <-states:
			switch {
			case s.Phase == realtime.Live:
				return pass("realtime", "subscribed at "+host)
			case s.Phase == realtime.Disconnected && s.Err != nil:
				return fail("realtime", oneLine(s.Err.Error()),
					"check WAYLUME_REALTIME_URL, WAYLUME_SUPABASE_KEY and the token (waylume-node token; expired?), and that Realtime is enabled for the project")
			}
		case <-ctx.Done():
			return fail("realtime", "no subscription within 20s at "+host, "check that Realtime is enabled and reachable from this host")
		}
	}
}

func checkPublication(ctx context.Context, conn *pgx.Conn) checkResult {
	const fix = "run waylume-node migrate (it adds waylume.peers and waylume.nodes to supabase_realtime with REPLICA IDENTITY FULL)"
	var all bool
	err := conn.QueryRow(ctx, "SELECT puballtables FROM pg_publication WHERE pubname = 'supabase_realtime'").Scan(&all)
	if errors.Is(err, pgx.ErrNoRows) {
		return fail("publication", "supabase_realtime does not exist", fix)
	}
	if err != nil {
		return fail("publication", oneLine(err.Error()), fix)
	}
	var missing []string
	for _, t := range []string{"peers", "nodes"} {
		var in bool
		var ident string
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables
				WHERE pubname = 'supabase_realtime' AND schemaname = 'waylume' AND tablename = $1),
			coalesce((SELECT relreplident::text FROM pg_class WHERE oid = to_regclass('waylume.' || $1)), '')`, t).Scan(&in, &ident)
		if err != nil {
			return fail("publication", oneLine(err.Error()), fix)
		}
		if !in && !all {
			missing = append(missing, "waylume."+t+" not published")
		} else if ident != "f" {
			missing = append(missing, "waylume."+t+" lacks REPLICA IDENTITY FULL")
		}
	}
	if len(missing) > 0 {
		return fail("publication", strings.Join(missing, ", "), fix)
	}
	return pass("publication", "supabase_realtime holds waylume.peers and waylume.nodes (REPLICA IDENTITY FULL)")
}
