package status

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable writes the report for people: the interface, the node, then
// one line per peer with installed and wanted limits, handshake age,
// traffic and state.
func (rep Report) WriteTable(w io.Writer) error {
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
	return tw.Flush()
}

// shortKey is a public key as the tables show it: its first 12 characters.
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
