package main

// status: what the local interface holds, read from the kernel (wgctrl for
// peers and counters, netlink for the tc classes), joined with the node's
// rows when the database is reachable. Read-only: it changes nothing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

type statusReport struct {
	Interface  string       `json:"interface"`
	PublicKey  string       `json:"public_key,omitempty"`
	ListenPort int          `json:"listen_port,omitempty"`
	KernelErr  string       `json:"kernel_error,omitempty"`
	Node       *statusNode  `json:"node,omitempty"`
	DBErr      string       `json:"database_error,omitempty"`
	Peers      []statusPeer `json:"peers"`
}

type statusNode struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Address    string     `json:"address"`
	Status     string     `json:"status"`
	LastSeenAt *time.Time `json:"last_seen_at,omitempty"`
}

type statusPeer struct {
	ID         string   `json:"id,omitempty"`
	PublicKey  string   `json:"public_key"`
	Address    string   `json:"address,omitempty"`
	AllowedIPs []string `json:"allowed_ips,omitempty"`
	Endpoint   string   `json:"endpoint,omitempty"`
	// Limits in kbit/s as installed in tc (0: none installed); the
	// database's wish is in the Want fields when it was reachable.
	DownloadKbps     int64      `json:"download_kbps"`
	UploadKbps       int64      `json:"upload_kbps"`
	WantDownloadKbps *int64     `json:"want_download_kbps,omitempty"`
	WantUploadKbps   *int64     `json:"want_upload_kbps,omitempty"`
	LastHandshake    *time.Time `json:"last_handshake,omitempty"`
	HandshakeAgeSec  *float64   `json:"handshake_age_seconds,omitempty"`
	UploadBytes      int64      `json:"upload_bytes"`   // client's view: WireGuard receive
	DownloadBytes    int64      `json:"download_bytes"` // client's view: WireGuard transmit
	InKernel         bool       `json:"in_kernel"`
	State            string     `json:"state,omitempty"`
	Reason           string     `json:"reason,omitempty"`
}

func (c *cli) statusCmd(args []string) int {
	fs := c.flagSet("status", "", "Show the local WireGuard interface, its peers, limits, handshakes and counters.\n"+
		"Joined with the node's rows when the database is reachable (WAYLUME_DATABASE_URL, WAYLUME_NODE_ID).", forStatus)
	cf := bindConfig(fs, forStatus)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "interface") {
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 15*time.Second)
	defer cancel()
	rep := collectStatus(ctx, cfg, time.Now())
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(c.stderr, "waylume-node status: %v\n", err)
			return exitFail
		}
	} else {
		printStatus(c.stdout, rep)
	}
	if rep.KernelErr != "" {
		return exitFail
	}
	return exitOK
}

func collectStatus(ctx context.Context, cfg Config, now time.Time) statusReport {
	rep := statusReport{Interface: cfg.Interface, Peers: []statusPeer{}}
	byKey := map[string]*statusPeer{}
	var order []string

	dev, err := readDevice(cfg.Interface)
	if err != nil {
		rep.KernelErr = err.Error()
	} else {
		rep.PublicKey = dev.PublicKey.String()
		rep.ListenPort = dev.ListenPort
		limits := readLimits(cfg.Interface)
		for _, p := range dev.Peers {
			sp := &statusPeer{PublicKey: p.PublicKey.String(), InKernel: true,
				UploadBytes: p.ReceiveBytes, DownloadBytes: p.TransmitBytes}
			for _, a := range p.AllowedIPs {
				sp.AllowedIPs = append(sp.AllowedIPs, a.String())
			}
			if p.Endpoint != nil {
				sp.Endpoint = p.Endpoint.String()
			}
			if !p.LastHandshakeTime.IsZero() {
				t := p.LastHandshakeTime.UTC()
				age := now.Sub(t).Seconds()
				sp.LastHandshake, sp.HandshakeAgeSec = &t, &age
			}
			for _, a := range p.AllowedIPs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok {
					l := limits[ip.Unmap()]
					if l.down > 0 || l.up > 0 {
						sp.DownloadKbps, sp.UploadKbps = l.down, l.up
						break
					}
				}
			}
			byKey[sp.PublicKey] = sp
			order = append(order, sp.PublicKey)
		}
	}

	if cfg.DatabaseURL != "" && cfg.NodeID != "" {
		node, rows, err := readNodeRows(ctx, cfg.DatabaseURL, cfg.NodeID)
		if err != nil {
			rep.DBErr = err.Error()
		} else {
			rep.Node = node
			for _, r := range rows {
				sp, ok := byKey[r.PublicKey]
				if !ok {
					sp = &statusPeer{PublicKey: r.PublicKey}
					byKey[r.PublicKey] = sp
					order = append(order, r.PublicKey)
				}
				sp.ID, sp.Address, sp.State, sp.Reason = r.ID, r.Address, r.State, r.Reason
				sp.WantDownloadKbps, sp.WantUploadKbps = orZero(r.DownloadKbps), orZero(r.UploadKbps)
			}
		}
	}
	for _, k := range order {
		rep.Peers = append(rep.Peers, *byKey[k])
	}
	sort.SliceStable(rep.Peers, func(i, j int) bool { return rep.Peers[i].Address < rep.Peers[j].Address })
	return rep
}

// orZero turns SQL NULL (unlimited) into 0 so it compares with "no class".
func orZero(p *int64) *int64 {
	if p == nil {
		return new(int64)
	}
	return p
}

func readDevice(name string) (*wgtypes.Device, error) {
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("wireguard control: %w", err)
	}
	defer wg.Close()
	dev, err := wg.Device(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("interface %s: no WireGuard device of that name in this network namespace (is the node running? WAYLUME_INTERFACE?)", name)
	}
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", name, err)
	}
	return dev, nil
}

type limit struct{ down, up int64 }

// readLimits maps peer addresses to installed HTB rates. It relies only on
// what any per-peer u32 shaping looks like (a /32 key on the destination
// address at offset 16 for download, source at 12 for upload on the IFB the
// ingress redirects to), not on netctl's handle numbering. Errors leave the
// map empty: limits are informational here.
func readLimits(ifname string) map[netip.Addr]limit {
	out := map[netip.Addr]limit{}
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return out
	}
	for ip, kbps := range classRates(link, 16) {
		l := out[ip]
		l.down = kbps
		out[ip] = l
	}
	// The upload side: follow the ingress redirect to the IFB device.
	filters, _ := netlink.FilterList(link, netlink.HANDLE_INGRESS)
	for _, f := range filters {
		u, ok := f.(*netlink.U32)
		if !ok || u.RedirIndex == 0 {
			continue
		}
		ifb, err := netlink.LinkByIndex(u.RedirIndex)
		if err != nil {
			continue
		}
		for ip, kbps := range classRates(ifb, 12) {
			l := out[ip]
			l.up = kbps
			out[ip] = l
		}
		break
	}
	return out
}

// classRates returns the HTB rate (kbit/s) of the class each /32 u32 key at
// offset off leads to, for every HTB qdisc on link.
func classRates(link netlink.Link, off int32) map[netip.Addr]int64 {
	out := map[netip.Addr]int64{}
	classes, err := netlink.ClassList(link, 0)
	if err != nil {
		return out
	}
	rate := map[uint32]int64{}
	for _, c := range classes {
		if h, ok := c.(*netlink.HtbClass); ok {
			rate[h.Handle] = int64(h.Rate * 8 / 1000) // bytes/s -> kbit/s
		}
	}
	qdiscs, err := netlink.QdiscList(link)
	if err != nil {
		return out
	}
	for _, q := range qdiscs {
		if q.Type() != "htb" {
			continue
		}
		filters, err := netlink.FilterList(link, q.Attrs().Handle)
		if err != nil {
			continue
		}
		for _, f := range filters {
			u, ok := f.(*netlink.U32)
			if !ok || u.ClassId == 0 || u.Sel == nil {
				continue
			}
			for _, k := range u.Sel.Keys {
				if k.Mask == 0xffffffff && k.Off == off {
					ip := netip.AddrFrom4([4]byte{byte(k.Val >> 24), byte(k.Val >> 16), byte(k.Val >> 8), byte(k.Val)})
					if r, ok := rate[u.ClassId]; ok {
						out[ip] = r
					}
				}
			}
		}
	}
	return out
}

type peerRow struct {
	ID, PublicKey, Address, State, Reason string
	DownloadKbps, UploadKbps              *int64
}

// readNodeRows reads the node's row and its peers with their status
// through the contract tables, so it works with the node's own (RLS)
// credentials as well as the service role.
func readNodeRows(ctx context.Context, url, nodeID string) (*statusNode, []peerRow, error) {
	conn, err := connectDB(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close(context.Background())
	var n statusNode
	err = conn.QueryRow(ctx, `SELECT id::text, name, host(address) || '/' || masklen(address), coalesce(status, ''), last_seen_at
		FROM waylume.nodes WHERE id = $1`, nodeID).Scan(&n.ID, &n.Name, &n.Address, &n.Status, &n.LastSeenAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("node %s: no such row in waylume.nodes (or not visible to this role)", nodeID)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read node: %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT p.id::text, p.public_key, coalesce(host(p.address), ''),
			p.download_kbps::bigint, p.upload_kbps::bigint, coalesce(s.state, ''), coalesce(s.reason, '')
		FROM waylume.peers p LEFT JOIN waylume.peer_status s ON s.peer_id = p.id
		WHERE p.node_id = $1`, nodeID)
	if err != nil {
		return nil, nil, fmt.Errorf("read peers: %w", err)
	}
	var out []peerRow
	for rows.Next() {
		var r peerRow
		if err := rows.Scan(&r.ID, &r.PublicKey, &r.Address, &r.DownloadKbps, &r.UploadKbps, &r.State, &r.Reason); err != nil {
			return nil, nil, fmt.Errorf("read peers: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read peers: %w", err)
	}
	return &n, out, nil
}

// connectDB connects with a timeout. Errors never carry the URL.
func connectDB(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, errors.New("database: not a valid connection string")
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	return conn, nil
}

func printStatus(w io.Writer, rep statusReport) {
	fmt.Fprintf(w, "interface %s", rep.Interface)
	if rep.PublicKey != "" {
		fmt.Fprintf(w, "  public key %s  port %d", rep.PublicKey, rep.ListenPort)
	}
	fmt.Fprintln(w)
	if rep.KernelErr != "" {
		fmt.Fprintf(w, "kernel: %s\n", rep.KernelErr)
	}
	if rep.Node != nil {
		seen := "never"
		if rep.Node.LastSeenAt != nil {
			seen = rep.Node.LastSeenAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "node %s (%s)  address %s  status %s  last seen %s\n", rep.Node.ID, rep.Node.Name, rep.Node.Address, rep.Node.Status, seen)
	}
	if rep.DBErr != "" {
		fmt.Fprintf(w, "database: %s\n", rep.DBErr)
	}
	active := 0
	for _, p := range rep.Peers {
		if p.HandshakeAgeSec != nil && *p.HandshakeAgeSec < 180 {
			active++
		}
	}
	fmt.Fprintf(w, "%d peers, %d active (handshake < 3m)\n\n", len(rep.Peers), active)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tPUBLIC KEY\tADDRESS\tDOWN LIMIT\tUP LIMIT\tHANDSHAKE\tUPLOAD\tDOWNLOAD\tSTATE")
	for _, p := range rep.Peers {
		id := p.ID
		if id == "" {
			id = "-"
		} else if len(id) > 8 {
			id = id[:8]
		}
		addr := p.Address
		if addr == "" && len(p.AllowedIPs) > 0 {
			addr = strings.TrimSuffix(p.AllowedIPs[0], "/32")
		}
		hs := "never"
		if p.HandshakeAgeSec != nil {
			hs = humanAge(time.Duration(*p.HandshakeAgeSec*float64(time.Second))) + " ago"
		}
		state := p.State
		if state == "" {
			state = "-"
		}
		if p.Reason != "" {
			state += " (" + p.Reason + ")"
		}
		if !p.InKernel {
			hs = "not in kernel"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, shortKey(p.PublicKey), orDash(addr),
			limitStr(p.DownloadKbps, p.WantDownloadKbps), limitStr(p.UploadKbps, p.WantUploadKbps),
			hs, humanBytes(p.UploadBytes), humanBytes(p.DownloadBytes), state)
	}
	tw.Flush()
}

func shortKey(k string) string {
	if len(k) > 12 {
		return k[:12] + "…"
	}
	return k
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// limitStr shows the installed limit, and the database's wish when it
// differs (a change not applied yet, or a blocked peer).
func limitStr(kernel int64, want *int64) string {
	s := "none"
	if kernel > 0 {
		s = humanRate(kernel)
	}
	if want != nil && *want != kernel {
		s += " (want " + humanRate(*want) + ")"
	}
	return s
}

func humanRate(kbps int64) string {
	switch {
	case kbps >= 1000000 && kbps%1000000 == 0:
		return fmt.Sprintf("%dGbit/s", kbps/1000000)
	case kbps >= 1000:
		return strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.1f", float64(kbps)/1000), "0"), ".") + "Mbit/s"
	}
	return fmt.Sprintf("%dkbit/s", kbps)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
