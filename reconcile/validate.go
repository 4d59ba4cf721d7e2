package reconcile

import (
	"cmp"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/waylume/waylume-node/events"
)

// Bounds a row must respect; the schema's CHECK constraints say the same,
// the node checks again because rows are untrusted.
const (
	maxKbps       = 100_000_000 // 100 Gbit/s
	maxKeepalive  = 65535
	maxAllowedIPs = 128
)

// Reasons written to peer_status.reason.
const (
	reasonDisabled = "disabled"
	reasonExpired  = "expired"
	reasonQuota    = "quota_exceeded"
)

// decision is what one row should become.
type decision struct {
	state  string // events.StateActive, StateBlocked or StateRejected
	reason string
	cfg    PeerConfig // the peer to program when active
	key    Key        // the row's public key when it parses (also for rejected rows)
	keyOK  bool
	owner  bool // this row owns key: no older valid row claims it
}

// decide evaluates every row against the node and against each other.
// Rows are considered oldest first (created_at, then id), so of two rows
// claiming the same key or address the older keeps it whichever arrives
// last: an event carrying the newer row can never take the owner's traffic.
// Rejected rows claim nothing; blocked rows keep their claims (they may
// come back). quotaUsed reports a peer's bytes since its quota reset.
func decide(node events.Node, self Key, rows map[string]events.Peer, now time.Time, quotaUsed func(id string) int64) map[string]decision {
	out := make(map[string]decision, len(rows))
	decideInto(out, node, self, rows, now, quotaUsed)
	return out
}

// decideInto is decide writing into out, which ends holding exactly the
// rows' decisions: the full path reuses one map instead of leaving a
// 10,000-entry one as garbage at every resync. Entries are overwritten,
// not cleared first: a decision is stored out of line (over 128 bytes), and
// overwriting reuses its slot where clearing freed 10,000 of them.
func decideInto(out map[string]decision, node events.Node, self Key, rows map[string]events.Peer, now time.Time, quotaUsed func(id string) int64) {
	for id := range out {
		if _, ok := rows[id]; !ok {
			delete(out, id)
		}
	}
	// Sorted as small (created_at, id) pairs and each row then read from
	// the map once: a sorted copy of 10,000 rows was 2.9 MB of garbage.
	type ref struct {
		created time.Time
		id      string
	}
	order := make([]ref, 0, len(rows))
	for id, p := range rows {
		order = append(order, ref{p.CreatedAt, id})
	}
	slices.SortFunc(order, func(a, b ref) int {
		if c := a.created.Compare(b.created); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})

	keys := make(map[Key]string, len(rows))
	addrs := make(map[netip.Addr]string, len(rows))
	routes := newRouteIndex(rows) // allowed_ips beyond the pool
	for _, o := range order {
		row := rows[o.id]
		p := &row
		d := decision{}
		cfg, err := validRow(node, self, p)
		if k, kerr := parseKey(p.PublicKey); kerr == nil {
			d.key, d.keyOK = k, true
		}
		if err == nil {
			err = conflicts(p, cfg, keys, addrs, routes)
		}
		if err != nil {
			d.state, d.reason = events.StateRejected, "invalid: "+err.Error()
			if d.keyOK {
				_, taken := keys[d.key]
				d.owner = !taken
			}
			out[p.ID] = d
			continue
		}
		keys[cfg.PublicKey] = p.ID
		addrs[p.Address.Addr()] = p.ID
		if p.Address6.IsValid() {
			addrs[p.Address6.Addr()] = p.ID
		}
		routes.accept(p)
		d.cfg, d.owner = cfg, true
		switch {
		case !p.Enabled:
			d.state, d.reason = events.StateBlocked, reasonDisabled
		case !p.ExpiresAt.IsZero() && !now.Before(p.ExpiresAt):
			d.state, d.reason = events.StateBlocked, reasonExpired
		case p.QuotaBytes > 0 && quotaUsed(p.ID) >= p.QuotaBytes:
			d.state, d.reason = events.StateBlocked, reasonQuota
		default:
			d.state = events.StateActive
		}
		out[p.ID] = d
	}
}

// conflicts checks a valid row against what older rows already claim.
// Extra allowed IPs never overlap the pools (validRow), so they cannot
// contain a peer's address and are only compared with each other.
func conflicts(p *events.Peer, cfg PeerConfig, keys map[Key]string, addrs map[netip.Addr]string, routes *routeIndex) error {
	if o, ok := keys[cfg.PublicKey]; ok {
		return fmt.Errorf("public key already used by peer %s", o)
	}
	if o, ok := addrs[p.Address.Addr()]; ok {
		return fmt.Errorf("address %s already used by peer %s", p.Address.Addr(), o)
	}
	if p.Address6.IsValid() {
		if o, ok := addrs[p.Address6.Addr()]; ok {
			return fmt.Errorf("address6 %s already used by peer %s", p.Address6.Addr(), o)
		}
	}
	return routes.check(p)
}

func parseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, errors.New("not base64 of 32 bytes")
	}
	copy(k[:], b)
	return k, nil
}

// validRow checks one row on its own and returns the peer it programs.
// self is the node's own public key (zero: unknown).
func validRow(node events.Node, self Key, p *events.Peer) (PeerConfig, error) {
	var cfg PeerConfig
	k, err := parseKey(p.PublicKey)
	if err != nil {
		return cfg, fmt.Errorf("public_key %w", err)
	}
	if k.IsZero() {
		return cfg, errors.New("public_key is all zeros")
	}
	if !self.IsZero() && k == self {
		// WireGuard ignores a peer with its own key: it would look
		// applied and never work.
		return cfg, errors.New("public_key is the node's own key")
	}
	cfg.PublicKey = k
	if p.PresharedKey != "" {
		if cfg.PresharedKey, err = parseKey(p.PresharedKey); err != nil {
			return cfg, fmt.Errorf("preshared_key %w", err) // never the value: it is a secret
		}
	}
	if !node.Address.IsValid() || !node.Address.Addr().Is4() {
		return cfg, errors.New("node has no valid IPv4 address")
	}
	if err := inPool("address", p.Address, node.Address); err != nil {
		return cfg, err
	}
	cfg.AllowedIPs = append(cfg.AllowedIPs, netip.PrefixFrom(p.Address.Addr(), 32))
	if p.Address6.IsValid() {
		if !node.Address6.IsValid() {
			return cfg, errors.New("address6 set but the node has no IPv6 pool")
		}
		if err := inPool("address6", p.Address6, node.Address6); err != nil {
			return cfg, err
		}
		cfg.AllowedIPs = append(cfg.AllowedIPs, netip.PrefixFrom(p.Address6.Addr(), 128))
	}
	if len(p.AllowedIPs) > maxAllowedIPs {
		return cfg, fmt.Errorf("%d allowed_ips, at most %d", len(p.AllowedIPs), maxAllowedIPs)
	}
	for _, a := range p.AllowedIPs {
		switch {
		case !a.IsValid():
			return cfg, errors.New("allowed_ips holds an invalid prefix")
		case a.Addr().Is4In6():
			// Unmapped it is an IPv4 address with an IPv6 length: no
			// valid route, and WireGuard would drop the peer's others.
			return cfg, fmt.Errorf("allowed_ips %s is an IPv4-mapped IPv6 prefix: write it as IPv4", a)
		case a.Bits() == 0:
			return cfg, fmt.Errorf("allowed_ips %s would route everything to one peer", a)
		case a.Overlaps(node.Address.Masked()) || (node.Address6.IsValid() && a.Overlaps(node.Address6.Masked())):
			return cfg, fmt.Errorf("allowed_ips %s overlap the node's pool", a)
		}
		cfg.AllowedIPs = append(cfg.AllowedIPs, a.Masked())
	}
	if p.PersistentKeepalive < 0 || p.PersistentKeepalive > maxKeepalive {
		return cfg, fmt.Errorf("persistent_keepalive %d outside 0..%d", p.PersistentKeepalive, maxKeepalive)
	}
	cfg.Keepalive = time.Duration(p.PersistentKeepalive) * time.Second
	if p.DownloadKbps < 0 || p.DownloadKbps > maxKbps {
		return cfg, fmt.Errorf("download_kbps %d outside 0..%d", p.DownloadKbps, maxKbps)
	}
	if p.UploadKbps < 0 || p.UploadKbps > maxKbps {
		return cfg, fmt.Errorf("upload_kbps %d outside 0..%d", p.UploadKbps, maxKbps)
	}
	cfg.DownloadKbps, cfg.UploadKbps = p.DownloadKbps, p.UploadKbps
	if p.QuotaBytes < 0 {
		return cfg, fmt.Errorf("quota_bytes %d is negative", p.QuotaBytes)
	}
	return cfg, nil
}

// inPool checks a peer address against the node's prefix: inside the pool,
// not the node's own address, not the network or broadcast address.
func inPool(field string, a, node netip.Prefix) error {
	if !a.IsValid() {
		return fmt.Errorf("%s missing", field)
	}
	addr, pool := a.Addr(), node.Masked()
	if addr.Is4() != pool.Addr().Is4() {
		return fmt.Errorf("%s %s is not in the pool's family", field, addr)
	}
	if !pool.Contains(addr) {
		return fmt.Errorf("%s %s outside the pool %s", field, addr, pool)
	}
	if addr == node.Addr() {
		return fmt.Errorf("%s %s is the node's address", field, addr)
	}
	if addr == pool.Addr() {
		return fmt.Errorf("%s %s is the pool's network address", field, addr)
	}
	if addr.Is4() && pool.Bits() < 31 && addr == lastAddr(pool) {
		return fmt.Errorf("%s %s is the pool's broadcast address", field, addr)
	}
	return nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
