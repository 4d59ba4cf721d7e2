package netctl

// Peers are applied as a diff against the mirror of the device: missing
// peers are added, changed ones patched with UpdateOnly (allowed IPs
// replaced only for that peer), extra ones removed, unchanged ones not
// sent at all. ReplacePeers is never used: it drops every session.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ErrShaping: a limited peer's classes and filters could not be installed,
// so it is not served: a new peer is not added to WireGuard, one the device
// holds is cut. Its error also has a PeerReason for the peer's status.
var ErrShaping = errors.New("limits not installed, peer not served")

// errNoShapingAddr: limits are keyed by an IPv4 /32 allowed IP.
var errNoShapingAddr = errors.New("limits need an IPv4 /32 allowed IP to key them")

// shapingError is a peer's ErrShaping with its cause.
type shapingError struct{ err error }

func (e *shapingError) Error() string   { return ErrShaping.Error() + ": " + e.err.Error() }
func (e *shapingError) Unwrap() []error { return []error{ErrShaping, e.err} }

// PeerReason is why the peer is not served, as its status reports it.
func (e *shapingError) PeerReason() string { return "shaping: " + e.err.Error() }

func shapingFailed(k wgtypes.Key, err error) error {
	return fmt.Errorf("apply peer %s: %w", k, &shapingError{err: err})
}

// wgctrl sends one netlink message per peer once a call carries more than
// this; the kernel also caps a message's size (docs/dataplane.md).
const (
	maxPeersPerCall = 32
	maxIPsPerCall   = 256
)

// wgRefresh is how stale the peer mirror may get before SyncPeers reads
// the device again. Stats refreshes it for free (it reads the whole device
// anyway), so with the reconciler polling Stats every few seconds the
// mirror is always fresh and a no-change SyncPeers is an in-memory diff.
// Reading 10,000 peers costs 50-600 ms here, more than that budget.
const wgRefresh = 30 * time.Second

// tcRefresh is how stale the shaping mirror may get before SyncPeers
// dumps the classes and filters again. Dumping 20,000 classes and filters
// costs a few hundred ms, the whole budget of a no-change apply, and only
// someone running tc by hand makes the mirror drift.
const tcRefresh = 5 * time.Minute

// SyncPeers makes the device hold exactly all: it rereads the device's
// peers when the mirror is older than wgRefresh and the installed classes
// when theirs is older than tcRefresh (repairing drift made behind its
// back), then applies the difference.
// Calling it twice with the same set sends nothing the second time. A peer
// that fails is reported in failed and does not stop the others; err is
// for failures that are not any one peer's.
func (l *Link) SyncPeers(ctx context.Context, all []Peer) (failed map[wgtypes.Key]error, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.peersLoaded) > wgRefresh {
		if err := l.loadPeers(); err != nil {
			return nil, err
		}
	}
	if time.Since(l.tc.loaded) > tcRefresh {
		if err := l.tc.load(); err != nil {
			return nil, fmt.Errorf("read shaping state: %w", err)
		}
	}
	want := make(map[wgtypes.Key]struct{}, len(all))
	owned := make(map[netip.Addr]bool, len(all))
	failed = map[wgtypes.Key]error{}
	for _, p := range all {
		if _, dup := want[p.PublicKey]; dup {
			failed[p.PublicKey] = errors.New("peer listed twice")
			continue
		}
		want[p.PublicKey] = struct{}{}
		if a, ok := p.ShapingAddr(); ok {
			owned[a] = true
		}
	}
	var remove []wgtypes.Key
	for k := range l.peers {
		if _, ok := want[k]; !ok {
			remove = append(remove, k)
		}
	}
	// Classes no wanted peer owns are leftovers (a crash, a manual
	// change): they are removed with the rest.
	var leftovers []netip.Addr
	for a := range l.tc.classes {
		if !owned[a] {
			leftovers = append(leftovers, a)
		}
	}
	var errs []error
	for a, err := range l.apply(ctx, all, remove, leftovers, owned, failed) {
		errs = append(errs, fmt.Errorf("remove leftover shaping for %v: %w", a, err))
	}
	return failed, errors.Join(errs...)
}

// UpdatePeers adds or patches the peers in set and removes those in
// remove, leaving every other peer alone. It diffs against what the Link
// last read or applied, so it does not reread the device.
func (l *Link) UpdatePeers(ctx context.Context, set []Peer, remove []wgtypes.Key) (failed map[wgtypes.Key]error, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	failed = map[wgtypes.Key]error{}
	claimed := make(map[netip.Addr]bool, len(set))
	for _, p := range set {
		if a, ok := p.ShapingAddr(); ok {
			claimed[a] = true
		}
	}
	l.apply(ctx, set, remove, nil, claimed, failed)
	return failed, nil
}

// apply sends the difference between set/remove and the mirror: shaping
// for new and changed peers first (traffic is limited from its first
// packet), then WireGuard in chunks, then shaping of removed peers and of
// the leftover addresses, whose errors it returns. A peer whose limits
// could not be installed is kept off WireGuard (withhold): limits fail
// closed.
//
// claimed holds the shaping address of every peer in set: an address
// released by one peer and claimed by another keeps the new owner's class.
func (l *Link) apply(ctx context.Context, set []Peer, remove []wgtypes.Key, leftovers []netip.Addr, claimed map[netip.Addr]bool, failed map[wgtypes.Key]error) map[netip.Addr]error {
	tcw, changes := l.plan(set, remove, leftovers, claimed, failed)
	pre, post, owner := l.shapingOps(tcw, failed)
	leftErrs := map[netip.Addr]error{}
	report := func(errs map[netip.Addr]error, refuse bool) {
		for a, err := range errs {
			switch k := owner[a]; {
			case k == (wgtypes.Key{}):
				leftErrs[a] = err
			case failed[k] == nil && refuse:
				failed[k] = shapingFailed(k, err)
			case failed[k] == nil:
				failed[k] = fmt.Errorf("apply peer %s shaping: %w", k, err)
			}
		}
	}
	report(l.tc.run(pre), true)
	wgFailed := l.configure(ctx, l.withhold(changes, set, failed))
	for k, err := range wgFailed {
		if failed[k] == nil {
			failed[k] = err
		}
	}
	// A peer whose removal failed keeps its limits.
	kept := post[:0]
	for _, op := range post {
		if k := owner[op.addr]; k == (wgtypes.Key{}) || wgFailed[k] == nil {
			kept = append(kept, op)
		}
	}
	report(l.tc.run(kept), false)
	return leftErrs
}

// tcWant is the wanted shaping of one address and the peer it is for
// (zero for a leftover).
type tcWant struct {
	lim limits
	key wgtypes.Key
}

// plan lists the WireGuard changes of set and remove and the wanted
// shaping of every address they touch: set peers' limits win over
// releases of the same address (an address moving between peers).
func (l *Link) plan(set []Peer, remove []wgtypes.Key, leftovers []netip.Addr, claimed map[netip.Addr]bool, failed map[wgtypes.Key]error) (map[netip.Addr]tcWant, []peerChange) {
	tcw := map[netip.Addr]tcWant{}
	release := func(a netip.Addr, k wgtypes.Key) {
		if !claimed[a] {
			if _, seen := tcw[a]; !seen {
				tcw[a] = tcWant{key: k}
			}
		}
	}
	var changes []peerChange
	for _, p := range set {
		if failed[p.PublicKey] != nil {
			continue
		}
		h, exists := l.peers[p.PublicKey]
		have := h.peer(p.PublicKey)
		if old, had := have.ShapingAddr(); exists && had {
			release(old, p.PublicKey)
		}
		a, ok := p.ShapingAddr()
		a6, _ := p.ShapingAddr6()
		switch lim := wantLimits(p.DownloadKbps, p.UploadKbps, a6); {
		case p.DownloadKbps < 0 || p.UploadKbps < 0:
			failed[p.PublicKey] = fmt.Errorf("apply peer %s: negative limit", p.PublicKey)
			continue
		case !ok && lim != (limits{}):
			failed[p.PublicKey] = shapingFailed(p.PublicKey, errNoShapingAddr)
		case !ok:
		case l.tc.classes[a] != lim:
			tcw[a] = tcWant{lim: lim, key: p.PublicKey}
		default:
			delete(tcw, a) // installed as wanted, whoever released it before
		}
		if pc, changed := diffPeer(have, exists, p); changed {
			changes = append(changes, peerChange{key: p.PublicKey, want: p, cfgs: splitIPs(pc)})
		}
	}
	for _, k := range remove {
		h, exists := l.peers[k]
		if !exists {
			continue
		}
		changes = append(changes, peerChange{key: k, remove: true, cfgs: []wgtypes.PeerConfig{{PublicKey: k, Remove: true}}})
		if a, ok := h.peer(k).ShapingAddr(); ok {
			release(a, k)
		}
	}
	for _, a := range leftovers {
		release(a, wgtypes.Key{})
	}
	return tcw, changes
}

// shapingOps diffs the wanted shaping against the installed: pre are the
// classes to add or change (before WireGuard), post the ones to remove
// (after). owner maps each address to the peer its ops are for.
func (l *Link) shapingOps(tcw map[netip.Addr]tcWant, failed map[wgtypes.Key]error) (pre, post []tcOp, owner map[netip.Addr]wgtypes.Key) {
	owner = map[netip.Addr]wgtypes.Key{}
	for a, w := range tcw {
		ops, err := l.tc.diff(a, w.lim)
		if err != nil {
			failed[w.key] = shapingFailed(w.key, err)
			continue
		}
		owner[a] = w.key
		for _, op := range ops {
			if op.kbps != 0 {
				pre = append(pre, op)
			} else {
				post = append(post, op)
			}
		}
	}
	return pre, post, owner
}

// withhold keeps the peers of set whose limits are not installed off
// WireGuard: a new one is not added, one the device holds is cut (its
// allowed IPs emptied, so nothing is routed to or from it; its counters
// stay for accounting). The rest of changes go as planned.
func (l *Link) withhold(changes []peerChange, set []Peer, failed map[wgtypes.Key]error) []peerChange {
	refused := map[wgtypes.Key]bool{}
	for _, p := range set {
		if errors.Is(failed[p.PublicKey], ErrShaping) {
			refused[p.PublicKey] = true
		}
	}
	if len(refused) == 0 {
		return changes
	}
	out := make([]peerChange, 0, len(changes))
	for _, c := range changes {
		if !refused[c.key] {
			out = append(out, c)
		}
	}
	for k := range refused {
		h, held := l.peers[k]
		if !held || len(h.allowedIPs) == 0 {
			continue // not on the device, or already cut
		}
		cut := h.peer(k)
		cut.AllowedIPs = nil
		out = append(out, peerChange{key: k, want: cut, cfgs: []wgtypes.PeerConfig{{PublicKey: k, UpdateOnly: true, ReplaceAllowedIPs: true}}})
	}
	return out
}

type peerChange struct {
	key    wgtypes.Key
	want   Peer
	remove bool
	cfgs   []wgtypes.PeerConfig // more than one only for > maxIPsPerCall allowed IPs
}

// configure sends the changes in chunks; when a chunk fails its peers are
// retried one by one so the error lands on the peer that caused it. The
// mirror records only what succeeded.
func (l *Link) configure(ctx context.Context, changes []peerChange) map[wgtypes.Key]error {
	failed := map[wgtypes.Key]error{}
	for _, chunk := range chunkChanges(changes) {
		if err := ctx.Err(); err != nil {
			for _, c := range chunk {
				failed[c.key] = err
			}
			continue
		}
		var cfgs []wgtypes.PeerConfig
		for _, c := range chunk {
			cfgs = append(cfgs, c.cfgs...)
		}
		if err := l.wg.ConfigureDevice(l.cfg.Interface, wgtypes.Config{Peers: cfgs}); err == nil {
			for _, c := range chunk {
				l.record(c)
			}
			continue
		}
		for _, c := range chunk {
			var err error
			for _, pc := range c.cfgs {
				if err = l.wg.ConfigureDevice(l.cfg.Interface, wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}); err != nil {
					break
				}
			}
			if err != nil {
				failed[c.key] = fmt.Errorf("apply peer %s: %w", c.key, err)
				continue
			}
			l.record(c)
		}
	}
	return failed
}

func (l *Link) record(c peerChange) {
	if c.remove {
		delete(l.peers, c.key)
		return
	}
	p := c.want
	l.peers[c.key] = held{psk: p.PresharedKey, keepalive: p.Keepalive, allowedIPs: normalize(p.AllowedIPs)}
}

// chunkChanges groups changes so no call carries more than maxPeersPerCall
// peer configs or maxIPsPerCall allowed IPs; a change split in parts stays
// whole inside one chunk when it fits, else its parts fill chunks alone.
func chunkChanges(changes []peerChange) [][]peerChange {
	var out [][]peerChange
	var cur []peerChange
	peers, ips := 0, 0
	for _, c := range changes {
		cp, ci := len(c.cfgs), 0
		for _, pc := range c.cfgs {
			ci += len(pc.AllowedIPs)
		}
		if len(cur) > 0 && (peers+cp > maxPeersPerCall || ips+ci > maxIPsPerCall) {
			out = append(out, cur)
			cur, peers, ips = nil, 0, 0
		}
		cur = append(cur, c)
		peers += cp
		ips += ci
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// diffPeer returns the patch that turns have into want, and whether there
// is anything to send.
func diffPeer(have Peer, exists bool, want Peer) (wgtypes.PeerConfig, bool) {
	pc := wgtypes.PeerConfig{PublicKey: want.PublicKey}
	if !exists {
		if want.PresharedKey != (wgtypes.Key{}) {
			k := want.PresharedKey
			pc.PresharedKey = &k
		}
		if want.Keepalive != 0 {
			d := want.Keepalive
			pc.PersistentKeepaliveInterval = &d
		}
		pc.ReplaceAllowedIPs = true
		pc.AllowedIPs = ipNets(want.AllowedIPs)
		return pc, true
	}
	pc.UpdateOnly = true
	changed := false
	if have.PresharedKey != want.PresharedKey {
		k := want.PresharedKey // the zero key removes it
		pc.PresharedKey = &k
		changed = true
	}
	if have.Keepalive != want.Keepalive {
		d := want.Keepalive
		pc.PersistentKeepaliveInterval = &d
		changed = true
	}
	// The mirror holds normalized prefixes; desired ones usually are too,
	// so compare as they are before paying for normalizing.
	if !slices.Equal(have.AllowedIPs, want.AllowedIPs) && !slices.Equal(normalize(have.AllowedIPs), normalize(want.AllowedIPs)) {
		pc.ReplaceAllowedIPs = true
		pc.AllowedIPs = ipNets(want.AllowedIPs)
		changed = true
	}
	return pc, changed
}

// splitIPs cuts a config with more allowed IPs than one call may carry
// into parts: the first replaces, the rest append to the same peer.
func splitIPs(pc wgtypes.PeerConfig) []wgtypes.PeerConfig {
	if len(pc.AllowedIPs) <= maxIPsPerCall {
		return []wgtypes.PeerConfig{pc}
	}
	out := []wgtypes.PeerConfig{}
	ips := pc.AllowedIPs
	first := pc
	first.AllowedIPs = ips[:maxIPsPerCall]
	out = append(out, first)
	for rest := ips[maxIPsPerCall:]; len(rest) > 0; {
		n := min(len(rest), maxIPsPerCall)
		out = append(out, wgtypes.PeerConfig{PublicKey: pc.PublicKey, UpdateOnly: true, AllowedIPs: rest[:n]})
		rest = rest[n:]
	}
	return out
}

// normalize returns masked, sorted, deduplicated prefixes: the device
// stores allowed IPs that way, so comparing normalized sets is exact.
func normalize(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range normalize(ps) {
		out = append(out, *prefixIPNet(p))
	}
	return out
}
