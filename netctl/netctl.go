package netctl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Mode chooses how the WireGuard interface is provided.
type Mode string

const (
	// ModeAuto adopts an existing device or creates a kernel one, and
	// falls back to the embedded userspace device when the kernel has no
	// WireGuard.
	ModeAuto Mode = "auto"
	// ModeKernel uses a device the node does not own the process of: the
	// kernel module, or an existing interface reachable over a UAPI socket
	// (e.g. an external wireguard-go). It creates one only through the
	// kernel and fails clearly when the kernel cannot.
	ModeKernel Mode = "kernel"
	// ModeUserspace runs wireguard-go, in its own process with
	// Config.DeviceCommand or else in this one, with its UAPI socket open
	// so `wg show` and wgctrl work on it.
	ModeUserspace Mode = "userspace"
)

// ParseMode parses "auto", "kernel" or "userspace"; "" is auto.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return ModeAuto, nil
	case ModeAuto, ModeKernel, ModeUserspace:
		return m, nil
	}
	return "", fmt.Errorf("wireguard mode %q: want auto, kernel or userspace", s)
}

// Config is the node-level state of the interface.
type Config struct {
	Interface  string
	Mode       Mode // "" = ModeAuto
	PrivateKey wgtypes.Key
	ListenPort int
	// Address is the node's tunnel address with the pool prefix
	// (10.8.0.1/16: the pool is 10.8.0.0/16). Address6 is optional.
	Address, Address6 netip.Prefix
	MTU               int    // 0 = 1420
	EgressInterface   string // NAT uplink; "" = the default route's interface
	Isolation         bool   // block client-to-client traffic
	// AllowPrivate are destinations clients may reach although they are
	// not global (an operator routing a private network on purpose); by
	// default clients reach only global addresses (firewall_rules.go).
	AllowPrivate []netip.Prefix
	// AllowLocal are the node's own ports clients may reach through the
	// tunnel (e.g. a DNS resolver); everything else addressed to the node
	// from the tunnel is dropped, apart from replies and ping.
	AllowLocal []Service
	// RoutedSubnets are the sources, besides the pools, forwarded from the
	// tunnel, un-NATed: networks behind peers that the operator routes.
	// Any other source is dropped.
	RoutedSubnets []netip.Prefix
	// Netns is the path of a network namespace to manage instead of the
	// process's own (e.g. /var/run/netns/x). Tests use it; see doc.go.
	Netns string
	// DeviceCommand runs a userspace device the Link starts in its own
	// process: a program and its leading arguments, to which DeviceMain's
	// arguments are appended (waylume-node: its executable and "device").
	// Empty runs the device in this process.
	DeviceCommand []string
}

const defaultMTU = 1420

func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	if c.MTU == 0 {
		c.MTU = defaultMTU
	}
	return c
}

// Validate checks the fields Open and Reconfigure depend on.
func (c Config) Validate() error {
	var errs []error
	if c.Interface == "" || len(c.Interface) > 15 || strings.ContainsAny(c.Interface, "/ \t\n") {
		errs = append(errs, fmt.Errorf("interface name %q: want 1-15 characters without '/' or spaces", c.Interface))
	}
	if _, err := ParseMode(string(c.Mode)); err != nil {
		errs = append(errs, err)
	}
	if c.PrivateKey == (wgtypes.Key{}) {
		errs = append(errs, errors.New("private key is missing"))
	}
	if c.ListenPort < 0 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("listen port %d out of range", c.ListenPort))
	}
	if !c.Address.IsValid() || !c.Address.Addr().Is4() {
		errs = append(errs, fmt.Errorf("address %v: want an IPv4 address with the pool prefix", c.Address))
	} else if c.Address.Bits() < 8 || c.Address.Bits() > 30 {
		errs = append(errs, fmt.Errorf("address %v: pool prefix must be /8 to /30", c.Address))
	}
	if c.Address6.IsValid() && !c.Address6.Addr().Is6() {
		errs = append(errs, fmt.Errorf("address6 %v is not IPv6", c.Address6))
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 9000) {
		errs = append(errs, fmt.Errorf("mtu %d: want 1280-9000", c.MTU))
	}
	errs = append(errs, checkPrefixes("allowed private destination", c.AllowPrivate), checkPrefixes("routed subnet", c.RoutedSubnets))
	for _, s := range c.AllowLocal {
		if err := s.check(); err != nil {
			errs = append(errs, fmt.Errorf("allowed local service %v: %w", s, err))
		}
	}
	return errors.Join(errs...)
}

// checkPrefixes refuses what would not mean what it says: invalid prefixes
// and addresses with host bits set (10.20.0.1/16 is 10.20.0.0/16 or a typo).
func checkPrefixes(what string, ps []netip.Prefix) error {
	var errs []error
	for _, p := range ps {
		if !p.IsValid() || p != p.Masked() {
			errs = append(errs, fmt.Errorf("%s %v: want a network address, e.g. %v", what, p, p.Masked()))
		}
	}
	return errors.Join(errs...)
}

// equal reports whether c and o are the same configuration (Config holds
// slices, so == does not compile).
func (c Config) equal(o Config) bool { return reflect.DeepEqual(c, o) }

// Pool is the client address pool: the network of Address.
func (c Config) Pool() netip.Prefix { return c.Address.Masked() }

// Peer is the desired state of one WireGuard peer. Shaping is keyed by the
// peer's first IPv4 /32 allowed IP, and its first IPv6 /128 allowed IP is
// shaped by the same classes; a limit of 0 means unlimited.
type Peer struct {
	PublicKey    wgtypes.Key
	PresharedKey wgtypes.Key // zero = none
	AllowedIPs   []netip.Prefix
	Keepalive    time.Duration
	DownloadKbps int64 // node -> client
	UploadKbps   int64 // client -> node
}

// ShapingAddr is the address the peer's limits are keyed by: its first
// IPv4 /32 allowed IP, or false if it has none.
func (p Peer) ShapingAddr() (netip.Addr, bool) {
	for _, a := range p.AllowedIPs {
		if a.Addr().Is4() && a.Bits() == 32 {
			return a.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// ShapingAddr6 is the IPv6 address the same limits shape: the peer's
// first IPv6 /128 allowed IP, or false if it has none.
func (p Peer) ShapingAddr6() (netip.Addr, bool) {
	for _, a := range p.AllowedIPs {
		if a.Addr().Is6() && !a.Addr().Is4In6() && a.Bits() == 128 {
			return a.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// PeerStats is the actual state of one peer as the device reports it.
// RxBytes is what the node received from the client (upload), TxBytes what
// it sent (download). Limits are the installed tc classes, 0 = none.
type PeerStats struct {
	PublicKey     wgtypes.Key
	Endpoint      netip.AddrPort
	LastHandshake time.Time
	RxBytes       int64
	TxBytes       int64
	AllowedIPs    []netip.Prefix
	DownloadKbps  int64
	UploadKbps    int64
}

// Link is one managed WireGuard interface with its shaping and firewall.
// Its methods are safe for concurrent use; they serialise on one mutex
// because every one of them is a read-modify-write of kernel state.
type Link struct {
	log *slog.Logger
	ns  *namespace
	nl  *netlink.Handle
	wg  wgClient

	mu      sync.Mutex
	cfg     Config
	dev     *ownedDevice // nil when the device is the kernel's or adopted
	ifindex int
	epoch   string
	// peers mirrors what the device holds, by public key: refreshed from
	// the device by SyncPeers, updated with what each apply changed.
	peers       map[wgtypes.Key]held
	peersLoaded time.Time // when peers was last read from the device
	checked     time.Time // when the node config was last verified against the kernel
	tc          *shaper
	fw          *firewall
}

// PublicKey is the node's public key.
func (l *Link) PublicKey() wgtypes.Key {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg.PrivateKey.PublicKey()
}

// Epoch identifies the lifetime of the device's counters: boot id, ifindex
// and, for the embedded device, its instance. When it changes, counters
// restarted from zero.
func (l *Link) Epoch() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epoch
}

// DeviceLost delivers an error if the device process ends while the Link
// is open: the interface went with it. It is nil (never ready) for any
// other device.
func (l *Link) DeviceLost() <-chan error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dev == nil {
		return nil
	}
	return l.dev.lost
}

// Userspace reports whether the device is one the Link started.
func (l *Link) Userspace() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dev != nil
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "noboot"
	}
	return strings.TrimSpace(string(b))
}

// Open creates or adopts the interface described by cfg, then its shaping
// and firewall. An existing working interface is adopted with its peers,
// never deleted and recreated.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Link, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("netctl config: %w", err)
	}
	ns, err := openNamespace(cfg.Netns)
	if err != nil {
		return nil, err
	}
	l := &Link{log: log.With("interface", cfg.Interface), ns: ns, cfg: cfg}
	if err := l.open(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Link) open(ctx context.Context) error {
	var err error
	if l.nl, err = l.ns.openNetlink(); err != nil {
		return err
	}
	if err := l.openDevice(ctx); err != nil {
		return err
	}
	if err := l.configureLink(ctx, Config{}); err != nil {
		return err
	}
	if err := l.loadPeers(); err != nil {
		return err
	}
	l.tc = newShaper(l.nl, l.cfg, l.log)
	if err := l.tc.setup(l.ifindex); err != nil {
		return fmt.Errorf("shaping setup: %w", err)
	}
	l.fw = newFirewall(l.ns, l.log)
	if err := l.fw.setup(ctx, l.cfg, l.nl); err != nil {
		return fmt.Errorf("firewall setup: %w", err)
	}
	l.checked = time.Now()
	return nil
}

// Reconfigure applies a changed node configuration (key, port, addresses,
// MTU, egress, isolation) without touching peers. An unchanged config is
// a no-op unless the last check is older than five minutes, when the
// interface and firewall are verified and repaired again. The interface name,
// mode and namespace cannot change on a live Link.
func (l *Link) Reconfigure(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("netctl config: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cfg.Interface != l.cfg.Interface || cfg.Netns != l.cfg.Netns {
		return fmt.Errorf("reconfigure %s: interface and namespace cannot change on a live link", l.cfg.Interface)
	}
	// The reconciler calls this on every node event and resync; checking
	// means reading the whole device and running iptables a few times, so
	// an unchanged config is checked again only every tcRefresh.
	if cfg.equal(l.cfg) && time.Since(l.checked) < tcRefresh {
		return nil
	}
	old := l.cfg
	l.cfg = cfg
	var errs []error
	if err := l.configureLink(ctx, old); err != nil {
		errs = append(errs, err)
	}
	if old.Pool() != cfg.Pool() {
		// Handles are derived from the pool: a new pool is a new tree.
		// Peers' classes are re-added by the next SyncPeers.
		if err := l.tc.teardown(); err != nil {
			errs = append(errs, err)
		}
		l.tc = newShaper(l.nl, cfg, l.log)
		if err := l.tc.setup(l.ifindex); err != nil {
			errs = append(errs, fmt.Errorf("shaping setup: %w", err))
		}
	}
	if err := l.fw.setup(ctx, cfg, l.nl); err != nil {
		errs = append(errs, fmt.Errorf("firewall setup: %w", err))
	}
	if len(errs) == 0 {
		l.checked = time.Now()
	}
	return errors.Join(errs...)
}

// Close releases the Link. A kernel-mode or adopted interface stays up with
// its peers, shaping and firewall; the embedded userspace device stops,
// and its interface goes with it.
func (l *Link) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	if l.dev != nil {
		l.dev.stop()
		l.dev = nil
	}
	if l.wg != nil {
		if err := l.wg.Close(); err != nil {
			errs = append(errs, err)
		}
		l.wg = nil
	}
	if l.nl != nil {
		l.nl.Close()
		l.nl = nil
	}
	l.ns.close()
	l.ns = nil
	return errors.Join(errs...)
}

// Teardown removes what the Link made: firewall chains, tc qdiscs and the
// IFB device, and the interface itself. It does not Close the Link.
func (l *Link) Teardown(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	if l.fw != nil {
		if err := l.fw.teardown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("firewall teardown: %w", err))
		}
	}
	if l.tc != nil {
		if err := l.tc.teardown(); err != nil {
			errs = append(errs, fmt.Errorf("shaping teardown: %w", err))
		}
	}
	if l.dev != nil {
		l.dev.stop()
		l.dev = nil
	}
	if link, err := l.nl.LinkByName(l.cfg.Interface); err == nil {
		if err := l.nl.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete interface %s: %w", l.cfg.Interface, err))
		}
	}
	l.peers = map[wgtypes.Key]held{}
	return errors.Join(errs...)
}
