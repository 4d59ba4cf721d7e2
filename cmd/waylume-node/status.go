package main

// status: what the local interface holds (netctl.Inspect: peers, counters,
// installed limits), joined with the node's rows when the database is
// reachable. Read-only: it changes nothing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/supabase"
)

type statusReport struct {
	Interface  string       `json:"interface"`
	PublicKey  string       `json:"public_key,omitempty"`
	ListenPort int          `json:"listen_port,omitempty"`
	KernelErr  string       `json:"kernel_error,omitempty"`
	ShapingErr string       `json:"shaping_error,omitempty"`
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
	add := func(sp *statusPeer) {
		byKey[sp.PublicKey] = sp
		order = append(order, sp.PublicKey)
	}
	ins, err := netctl.Inspect(ctx, cfg.Interface, "")
	switch {
	case errors.Is(err, netctl.ErrNoDevice):
		rep.KernelErr = err.Error() + " (is the node running? WAYLUME_INTERFACE?)"
	case err != nil:
		rep.KernelErr = err.Error()
	default:
		rep.PublicKey, rep.ListenPort = ins.PublicKey.String(), ins.ListenPort
		if ins.ShapingErr != nil {
			rep.ShapingErr = ins.ShapingErr.Error()
		}
		for _, p := range ins.Peers {
			add(kernelPeer(p, now))
		}
	}
	if cfg.DatabaseURL != "" && cfg.NodeID != "" {
		o, err := readOverview(ctx, cfg)
		if err != nil {
			rep.DBErr = err.Error()
		} else {
			rep.Node = overviewNode(o)
		}
		for _, p := range o.Peers { // none when the read failed
			sp, ok := byKey[p.PublicKey]
			if !ok {
				sp = &statusPeer{PublicKey: p.PublicKey}
				add(sp)
			}
			st := o.Status[p.ID]
			sp.ID, sp.Address, sp.State, sp.Reason = p.ID, p.Address.Addr().String(), st.State, st.Reason
			sp.WantDownloadKbps, sp.WantUploadKbps = &p.DownloadKbps, &p.UploadKbps
		}
	}
	for _, k := range order {
		rep.Peers = append(rep.Peers, *byKey[k])
	}
	sort.SliceStable(rep.Peers, func(i, j int) bool { return rep.Peers[i].Address < rep.Peers[j].Address })
	return rep
}

func kernelPeer(p netctl.PeerStats, now time.Time) *statusPeer {
	sp := &statusPeer{PublicKey: p.PublicKey.String(), InKernel: true, UploadBytes: p.RxBytes, DownloadBytes: p.TxBytes,
		DownloadKbps: p.DownloadKbps, UploadKbps: p.UploadKbps}
	for _, a := range p.AllowedIPs {
		sp.AllowedIPs = append(sp.AllowedIPs, a.String())
	}
	if p.Endpoint.IsValid() {
		sp.Endpoint = p.Endpoint.String()
	}
	if !p.LastHandshake.IsZero() {
		t := p.LastHandshake.UTC()
		age := now.Sub(t).Seconds()
		sp.LastHandshake, sp.HandshakeAgeSec = &t, &age
	}
	return sp
}

// readOverview reads the node's rows through the store, so the node's own
// (RLS) credentials work as well as the service role.
func readOverview(ctx context.Context, cfg Config) (supabase.Overview, error) {
	s, err := supabase.OpenStore(ctx, cfg.DatabaseURL, supabase.StoreOptions{MaxConns: 1})
	if err != nil {
		return supabase.Overview{}, err
	}
	defer s.Close()
	o, err := s.Overview(ctx, cfg.NodeID)
	if errors.Is(err, supabase.ErrNotFound) {
		return o, fmt.Errorf("node %s: no such row in waylume.nodes (or not visible to this role)", cfg.NodeID)
	}
	return o, err
}

func overviewNode(o supabase.Overview) *statusNode {
	n := &statusNode{ID: o.Node.ID, Name: o.Node.Name, Address: o.Node.Address.String(), Status: o.Node.Status}
	if !o.LastSeenAt.IsZero() {
		n.LastSeenAt = &o.LastSeenAt
	}
	return n
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
	if rep.ShapingErr != "" {
		fmt.Fprintf(w, "shaping: %s\n", rep.ShapingErr)
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
