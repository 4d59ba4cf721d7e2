// Package status is what the local interface holds (netctl.Inspect: peers,
// counters, installed limits), joined with the node's rows when the
// database is reachable, and what run would change there (Plan); each as
// JSON or a table for people (WriteTable). Read-only: it changes nothing.
package status

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/supabase"
)

// Report is the local interface joined with the node's rows; its JSON is
// `status --json`.
type Report struct {
	Interface  string `json:"interface"`
	PublicKey  string `json:"public_key,omitempty"`
	ListenPort int    `json:"listen_port,omitempty"`
	KernelErr  string `json:"kernel_error,omitempty"`
	ShapingErr string `json:"shaping_error,omitempty"`
	Node       *Node  `json:"node,omitempty"`
	DBErr      string `json:"database_error,omitempty"`
	Peers      []Peer `json:"peers"`
}

// Node is the node's row as the database has it.
type Node struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Address    string     `json:"address"`
	Status     string     `json:"status"`
	LastSeenAt *time.Time `json:"last_seen_at,omitempty"`
}

// Peer is one peer of the kernel, the rows or both.
type Peer struct {
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

// Config says what to read: the interface, and the node's rows when both
// database fields are set.
type Config struct {
	Interface   string
	DatabaseURL string
	NodeID      string
}

// Collect reads the interface and, when configured, the node's rows, and
// joins them by public key; handshake ages are taken at now. A read that
// fails is reported in the Report, not returned.
func Collect(ctx context.Context, cfg Config, now time.Time) Report {
	rep := Report{Interface: cfg.Interface, Peers: []Peer{}}
	byKey := map[string]*Peer{}
	var order []string
	add := func(sp *Peer) {
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
				sp = &Peer{PublicKey: p.PublicKey}
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

func kernelPeer(p netctl.PeerStats, now time.Time) *Peer {
	sp := &Peer{PublicKey: p.PublicKey.String(), InKernel: true, UploadBytes: p.RxBytes, DownloadBytes: p.TxBytes,
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

func overviewNode(o supabase.Overview) *Node {
	n := &Node{ID: o.Node.ID, Name: o.Node.Name, Address: o.Node.Address.String(), Status: o.Node.Status}
	if !o.LastSeenAt.IsZero() {
		n.LastSeenAt = &o.LastSeenAt
	}
	return n
}
