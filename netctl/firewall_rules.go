package netctl

// The policy the firewall chains hold. A client reaches the internet and
// nothing else: not the node's neighbourhood (private, shared, link-local
// ranges: the cloud's metadata service, the operator's LAN), not the
// node's own services, and it cannot send from addresses that are not its
// own. Client-to-client traffic (anything routed back into the tunnel) is
// left to Isolation. The rules are a fixed handful per setting, never per
// peer.

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// nonGlobal4 are the IPv4 destinations that are not the internet. The
// documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)
// are left out: nothing answers there on a real network, and tests use
// them as "the internet".
var nonGlobal4 = mustParsePrefixes(
	"0.0.0.0/8",      // this network
	"10.0.0.0/8",     // private
	"100.64.0.0/10",  // shared address space (carrier-grade NAT)
	"127.0.0.0/8",    // loopback
	"169.254.0.0/16", // link-local, cloud metadata (169.254.169.254)
	"172.16.0.0/12",  // private
	"192.0.0.0/24",   // IETF protocol assignments
	"192.168.0.0/16", // private
	"198.18.0.0/15",  // benchmarking
	"224.0.0.0/4",    // multicast
	"240.0.0.0/4",    // reserved, limited broadcast
)

// nonGlobal6 are the IPv6 destinations that are not the internet, plus
// the NAT64 forms of nonGlobal4: a NAT64 gateway beside the node would
// otherwise translate 64:ff9b::a9fe:a9fe into 169.254.169.254.
var nonGlobal6 = append(mustParsePrefixes(
	"::/127",         // unspecified, loopback
	"::ffff:0:0/96",  // IPv4-mapped
	"64:ff9b:1::/48", // local-use NAT64
	"100::/64",       // discard-only
	"fc00::/7",       // unique local (ULA)
	"fe80::/10",      // link-local
	"fec0::/10",      // site-local (deprecated, still routed by some)
	"ff00::/8",       // multicast
), nat64(nonGlobal4)...)

func mustParsePrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// nat64 maps IPv4 prefixes into the well-known NAT64 prefix 64:ff9b::/96.
func nat64(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		b := netip.MustParseAddr("64:ff9b::").As16()
		v4 := p.Addr().As4()
		copy(b[12:], v4[:])
		out[i] = netip.PrefixFrom(netip.AddrFrom16(b), 96+p.Bits())
	}
	return out
}

// Service is a port (or range) on the node that clients may reach through
// the tunnel.
type Service struct {
	Proto    string // "tcp" or "udp"
	From, To uint16 // From == To for one port
}

// ErrBadService is a service that is not proto/port or proto/from-to.
var ErrBadService = errors.New("want tcp/PORT, udp/PORT or PROTO/FROM-TO")

// ParseServices parses a comma-separated list such as "udp/53,tcp/53" or
// "tcp/8000-8100"; "" is none.
func ParseServices(s string) ([]Service, error) {
	var out []Service
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" {
			continue
		}
		svc, err := parseService(f)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", f, err)
		}
		out = append(out, svc)
	}
	return out, nil
}

func parseService(f string) (Service, error) {
	proto, ports, ok := strings.Cut(f, "/")
	if !ok {
		return Service{}, ErrBadService
	}
	from, to, isRange := strings.Cut(ports, "-")
	if !isRange {
		to = from
	}
	a, errA := strconv.ParseUint(from, 10, 16)
	b, errB := strconv.ParseUint(to, 10, 16)
	if errA != nil || errB != nil {
		return Service{}, ErrBadService
	}
	svc := Service{Proto: proto, From: uint16(a), To: uint16(b)}
	return svc, svc.check()
}

func (s Service) check() error {
	if s.Proto != "tcp" && s.Proto != "udp" {
		return fmt.Errorf("protocol %q: %w", s.Proto, ErrBadService)
	}
	if s.From == 0 || s.To < s.From {
		return fmt.Errorf("ports must be 1-65535, low to high: %w", ErrBadService)
	}
	return nil
}

func (s Service) String() string {
	if s.From == s.To {
		return fmt.Sprintf("%s/%d", s.Proto, s.From)
	}
	return fmt.Sprintf("%s/%d-%d", s.Proto, s.From, s.To)
}

// match is the service as iptables arguments.
func (s Service) match() []string {
	port := strconv.Itoa(int(s.From))
	if s.To != s.From {
		port += ":" + strconv.Itoa(int(s.To))
	}
	return []string{"-p", s.Proto, "-m", s.Proto, "--dport", port}
}

// policy is one family's share of the settings.
type policy struct {
	fam     family
	pool    netip.Prefix   // invalid: the family has no pool
	blocked []netip.Prefix // non-global destinations
	allow   []netip.Prefix // of AllowPrivate
	sources []netip.Prefix // the pool and RoutedSubnets
}

func policyFor(cfg Config, fam family) policy {
	is6 := fam.proto == ipv6.proto
	p := policy{fam: fam, pool: cfg.Pool(), blocked: nonGlobal4}
	if is6 {
		p.pool, p.blocked = cfg.Address6.Masked(), nonGlobal6
	}
	if p.pool.IsValid() {
		p.sources = append(p.sources, p.pool)
	}
	for _, a := range cfg.AllowPrivate {
		if a.Addr().Is6() == is6 {
			p.allow = append(p.allow, a)
		}
	}
	for _, s := range cfg.RoutedSubnets {
		if s.Addr().Is6() == is6 {
			p.sources = append(p.sources, s)
		}
	}
	return p
}

// fwRules are the desired contents of our chains for one family.
func fwRules(cfg Config, fam family, egress string) map[string][][]string {
	p := policyFor(cfg, fam)
	return map[string][][]string{
		chainForward: forwardRules(cfg, p),
		chainInput:   inputRules(cfg, p),
		chainSource:  sourceRules(p),
		chainPost:    masquerade(cfg.Interface, p.pool, egress),
	}
}

// forwardRules: sources first, then client-to-client (which the tunnel
// routes back to itself, so it never meets the destination rules), then
// the operator's allowed private networks, then everything that is not
// the internet is dropped.
func forwardRules(cfg Config, p policy) [][]string {
	wg := cfg.Interface
	fwd := [][]string{{"-i", wg, "-j", chainSource}}
	if cfg.Isolation {
		fwd = append(fwd, []string{"-i", wg, "-o", wg, "-j", "DROP"})
	} else {
		fwd = append(fwd, []string{"-i", wg, "-o", wg, "-j", "ACCEPT"})
	}
	for _, a := range p.allow {
		fwd = append(fwd, []string{"-i", wg, "-d", a.String(), "-j", "ACCEPT"})
	}
	for _, b := range p.blocked {
		fwd = append(fwd, []string{"-i", wg, "-d", b.String(), "-j", "DROP"})
	}
	return append(fwd,
		[]string{"-i", wg, "-j", "ACCEPT"},
		[]string{"-o", wg, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
	)
}

// inputRules: from the tunnel the node answers replies, ping and the
// allowed services, and drops everything else, whichever of its addresses
// it is sent to.
func inputRules(cfg Config, p policy) [][]string {
	wg := cfg.Interface
	echo := []string{"-p", "icmp", "-m", "icmp", "--icmp-type", "8"}
	if p.fam.proto == ipv6.proto {
		echo = []string{"-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "128"}
	}
	in := [][]string{
		{"-i", wg, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		{"-i", wg, "-j", chainSource},
		append(append([]string{"-i", wg}, echo...), "-j", "ACCEPT"),
	}
	for _, s := range cfg.AllowLocal {
		in = append(in, append(append([]string{"-i", wg}, s.match()...), "-j", "ACCEPT"))
	}
	return append(in, []string{"-i", wg, "-j", "DROP"})
}

// sourceRules returns to the caller for the sources a client may use and
// drops the rest: WireGuard already pins each peer to its allowed IPs, but
// a routed allowed IP (128.0.0.0/1) would let a peer send from anywhere.
func sourceRules(p policy) [][]string {
	var src [][]string
	for _, s := range p.sources {
		src = append(src, []string{"-s", s.String(), "-j", "RETURN"})
	}
	return append(src, []string{"-j", "DROP"})
}

// masquerade NATs the pool on the egress interface, or on anything but the
// tunnel when there is none. A family without a pool has nothing to NAT:
// its chains only drop.
func masquerade(wg string, pool netip.Prefix, egress string) [][]string {
	if !pool.IsValid() {
		return nil
	}
	masq := []string{"-s", pool.String()}
	if egress != "" {
		masq = append(masq, "-o", egress)
	} else {
		masq = append(masq, "!", "-o", wg)
	}
	return [][]string{append(masq, "-j", "MASQUERADE")}
}
