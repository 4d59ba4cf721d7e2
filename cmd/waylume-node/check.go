package main

// check: a preflight that prints one line per requirement, ok or FAIL with
// the fix, and exits 1 when anything failed. The kernel is probed by
// netctl in a throwaway network namespace, so the host's own is only read;
// the schema is judged by migrations.Verify.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/waylume/waylume-node/migrations"
	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/supabase"
	"github.com/waylume/waylume-node/supabase/auth"
	"github.com/waylume/waylume-node/supabase/realtime"
)

type checkResult struct {
	Name   string
	OK     bool
	Warn   bool // OK, but weaker than it should be: printed as warn with the fix
	Detail string
	Fix    string // when !OK or Warn
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
	if r.OK && r.Warn {
		fmt.Fprintf(w, "warn  %-12s %s; fix: %s\n", r.Name, r.Detail, r.Fix)
		return
	}
	if r.OK {
		fmt.Fprintf(w, "ok    %-12s %s\n", r.Name, r.Detail)
		return
	}
	fmt.Fprintf(w, "FAIL  %-12s %s; fix: %s\n", r.Name, r.Detail, r.Fix)
}

func runChecks(ctx context.Context, cfg Config) []checkResult {
	probe, host := netctl.Probe(ctx), netctl.Host(cfg.Interface)
	out := []checkResult{checkTun(host), checkWireGuard(cfg, probe.WireGuardModule, host), checkNetAdmin(host.NetAdmin),
		checkTC(probe), checkIptables(probe), checkForward(host), checkEgress(cfg.EgressInterface)}
	return append(out, checkDatabase(ctx, cfg)...)
}

func checkTun(h netctl.HostReport) checkResult {
	if h.Tun != nil {
		return fail("tun", fmt.Sprintf("/dev/net/tun: %v", h.Tun),
			"give the container the device (--device /dev/net/tun, compose: devices) or load the tun module (modprobe tun)")
	}
	return pass("tun", "/dev/net/tun opens")
}

// checkWireGuard judges the mode against what is there: the kernel
// module, a device to adopt, or /dev/net/tun for the embedded one.
func checkWireGuard(cfg Config, kernel bool, h netctl.HostReport) checkResult {
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

func checkNetAdmin(ok bool) checkResult {
	if ok {
		return pass("net_admin", "CAP_NET_ADMIN effective")
	}
	return fail("net_admin", "CAP_NET_ADMIN missing", "run as root or grant it (docker: --cap-add NET_ADMIN; systemd: AmbientCapabilities=CAP_NET_ADMIN)")
}

func checkTC(rep netctl.ProbeReport) checkResult {
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

func checkIptables(rep netctl.ProbeReport) checkResult {
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

func checkForward(h netctl.HostReport) checkResult {
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

func checkEgress(name string) checkResult {
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

// checkDatabase covers the control plane: reachable, migrated, the node row,
// an event source (LISTEN or Realtime) and the publication.
func checkDatabase(ctx context.Context, cfg Config) []checkResult {
	if cfg.DatabaseURL == "" {
		return []checkResult{fail("database", "WAYLUME_DATABASE_URL not set", "set WAYLUME_DATABASE_URL (Supabase: direct connection or session pooler)")}
	}
	tlsLine := checkDatabaseTLS(cfg.DatabaseURL)
	conn, err := supabase.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return []checkResult{tlsLine, fail("database", oneLine(err.Error()),
			"check the URL, password and network; Supabase direct connections may be IPv6-only: use the session pooler (port 5432 on pooler.supabase.com)")}
	}
	defer conn.Close(context.Background())
	serverVersion, err := supabase.ServerVersion(ctx, conn)
	if err != nil {
		return []checkResult{tlsLine, fail("database", oneLine(err.Error()), "check the role's permissions")}
	}
	schema := migrations.Verify(ctx, conn)
	out := []checkResult{tlsLine, pass("database", "reachable (PostgreSQL "+serverVersion+")"),
		checkMigrated(schema), checkNodeRow(ctx, conn, cfg.NodeID)}
	switch {
	case cfg.RealtimeURL == "":
		out = append(out, checkListen(ctx, conn, cfg.DatabaseURL))
	case cfg.AuthEmail != "":
		r, tok := checkAuth(ctx, cfg)
		out = append(out, r)
		if r.OK {
			cfg.AccessToken = tok
			out = append(out, checkRealtime(ctx, cfg))
		}
	default:
		out = append(out, checkRealtime(ctx, cfg))
	}
	return append(out, checkPublication(schema))
}

// checkDatabaseTLS judges the sslmode Validate let through: anything short
// of verify-full lets an on-path attacker with any certificate in.
func checkDatabaseTLS(dbURL string) checkResult {
	const fix = "download the project's CA certificate and use sslmode=verify-full&sslrootcert=/path/to/ca.crt"
	pc, err := pgconn.ParseConfig(dbURL)
	if err != nil {
		return fail("database_tls", "connection string does not parse", "see the database line")
	}
	r := pass("database_tls", "")
	switch supabase.DatabaseTLS(pc) {
	case supabase.TLSLocal:
		r.Detail = "local connection (loopback or unix socket): no TLS needed"
	case supabase.TLSVerifyFull:
		r.Detail = "sslmode=verify-full: certificate and host name verified"
	case supabase.TLSOff:
		return fail("database_tls", "a remote host may be reached in plain text", fix)
	case supabase.TLSVerifyCA:
		r.Warn, r.Fix = true, fix
		r.Detail = "sslmode=verify-ca: the certificate chain is verified, the host name is not"
	default:
		r.Warn, r.Fix = true, fix
		r.Detail = "sslmode=require: encrypted, but the server is not verified (an on-path attacker can impersonate it)"
	}
	return r
}

// checkMigrated compares the recorded versions with the embedded ones.
func checkMigrated(r migrations.Report) checkResult {
	const fix = "run waylume-node migrate with the owner's credentials"
	switch {
	case errors.Is(r.VersionsErr, migrations.ErrNotInstalled):
		return fail("migrations", "schema waylume not installed", fix)
	case errors.Is(r.VersionsErr, migrations.ErrNoAccess):
		// The node row check still proves the schema is usable.
		return pass("migrations", "not verified: this role (node credentials) cannot read the version table")
	case r.VersionsErr != nil:
		return fail("migrations", oneLine(r.VersionsErr.Error()), fix)
	case len(r.Missing) > 0:
		return fail("migrations", "not applied: "+strings.Join(r.Missing, ", "), fix)
	}
	n := len(migrations.Versions())
	return pass("migrations", fmt.Sprintf("%d of %d applied", n, n))
}

func checkNodeRow(ctx context.Context, conn *pgx.Conn, nodeID string) checkResult {
	if nodeID == "" {
		return fail("node", "WAYLUME_NODE_ID not set", "create the node (waylume-node node create) and set WAYLUME_NODE_ID to its id")
	}
	n, err := supabase.NodeRow(ctx, conn, nodeID)
	switch {
	case errors.Is(err, supabase.ErrNotFound):
		return fail("node", "no row "+nodeID+" in waylume.nodes visible to this role",
			"create it (waylume-node node create) or fix WAYLUME_NODE_ID / the node's credentials")
	case err != nil:
		return fail("node", oneLine(err.Error()), "run waylume-node migrate; check the role's grants")
	}
	return pass("node", fmt.Sprintf("row %s (%s)", nodeID, n.Name))
}

func checkListen(ctx context.Context, conn *pgx.Conn, dbURL string) checkResult {
	const fix = "set WAYLUME_REALTIME_URL (and WAYLUME_SUPABASE_KEY, WAYLUME_ACCESS_TOKEN): Realtime is required as the event source here, or connect directly / through the session pooler"
	if supabase.TransactionPooler(dbURL) {
		return fail("events", "the transaction pooler (port 6543) does not support LISTEN", fix)
	}
	if err := supabase.ListenRoundTrip(ctx, conn); err != nil {
		return fail("events", oneLine(err.Error()), fix)
	}
	return pass("events", "LISTEN/NOTIFY works (no WAYLUME_REALTIME_URL: the node uses it)")
}

// checkAuth signs in as the node's Auth user, as run does, and checks
// that the user stands for this node (app_metadata.node_id).
func checkAuth(ctx context.Context, cfg Config) (checkResult, string) {
	const fix = "check WAYLUME_AUTH_EMAIL, the password file and WAYLUME_SUPABASE_KEY (publishable); a revoked node's user is gone: waylume-node node auth makes a new one"
	client, err := auth.NewClient(cfg.SupabaseURL, cfg.SupabaseKey, nil)
	if err != nil {
		return fail("auth", oneLine(err.Error()), "fix WAYLUME_SUPABASE_URL"), ""
	}
	s, err := client.SignInWithPassword(ctx, cfg.AuthEmail, cfg.AuthPassword)
	if err != nil {
		return fail("auth", oneLine(err.Error()), fix), ""
	}
	if got := s.User.NodeID(); got != cfg.NodeID {
		return fail("auth", fmt.Sprintf("Auth user %s has app_metadata.node_id %q, not this node", s.User.ID, got),
			"make the node's user with waylume-node node auth --node-id "+cfg.NodeID), ""
	}
	return pass("auth", fmt.Sprintf("signed in as Auth user %s (app_metadata.node_id matches; token for %s)",
		s.User.ID, time.Until(s.Expiry()).Round(time.Second))), s.AccessToken
}

// checkRealtime joins the node's channel the way run does and waits for
// "Subscribed to PostgreSQL", which proves the URL, the key, the token and
// the server's view of the publication.
func checkRealtime(ctx context.Context, cfg Config) checkResult {
	host := cfg.RealtimeURL
	if u, err := url.Parse(cfg.RealtimeURL); err == nil {
		host = u.Host
	}
	err := realtime.Probe(ctx, realtime.Config{
		URL: cfg.RealtimeURL, APIKey: cfg.SupabaseKey, AccessToken: cfg.AccessToken, NodeID: cfg.NodeID,
		Mode: cfg.RealtimeMode, Logger: newLogger(io.Discard, "error", "json"),
	}, 20*time.Second)
	var rerr *realtime.Error
	switch {
	case err == nil:
		return pass("realtime", cfg.RealtimeMode+" subscribed at "+host)
	case errors.Is(err, realtime.ErrProbeTimeout):
		return fail("realtime", "no subscription within 20s at "+host, "check that Realtime is enabled and reachable from this host")
	case errors.As(err, &rerr) && rerr.Hint() != "":
		return fail("realtime", oneLine(err.Error()), rerr.Hint())
	}
	return fail("realtime", oneLine(err.Error()),
		"check WAYLUME_REALTIME_URL, WAYLUME_SUPABASE_KEY and the token (waylume-node token; expired?), and that Realtime is enabled for the project")
}

func checkPublication(r migrations.Report) checkResult {
	const fix = "run waylume-node migrate (it adds waylume.peers and waylume.nodes to supabase_realtime with REPLICA IDENTITY FULL)"
	if r.PublicationErr != nil {
		return fail("publication", oneLine(r.PublicationErr.Error()), fix)
	}
	var names, missing []string
	for _, t := range r.Tables {
		names = append(names, t.Name)
		if !t.Published {
			missing = append(missing, t.Name+" not published")
		} else if !t.ReplicaFull {
			missing = append(missing, t.Name+" lacks REPLICA IDENTITY FULL")
		}
	}
	if len(missing) > 0 {
		return fail("publication", strings.Join(missing, ", "), fix)
	}
	return pass("publication", "supabase_realtime holds "+strings.Join(names, " and ")+" (REPLICA IDENTITY FULL)")
}
