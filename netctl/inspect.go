package netctl

// Read-only views of the live namespace for commands that must not open a
// Link: opening one creates, adopts and repairs.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var (
	// ErrNoDevice: the namespace has no WireGuard device of that name.
	ErrNoDevice = errors.New("no WireGuard device of that name in this network namespace")
	// ErrNoDefaultRoute: there is no IPv4 default route to masquerade through.
	ErrNoDefaultRoute = errors.New("no IPv4 default route")
)

// Inspection is the live state of one WireGuard interface.
type Inspection struct {
	Name       string
	PublicKey  wgtypes.Key
	ListenPort int
	// Peers carry the limits installed in tc (0: none).
	Peers []PeerStats
	// Configs are the same peers as the config that would program them
	// (preshared key and keepalive included): what a plan diffs against.
	Configs []Peer
	// ShapingErr is why the installed limits could not be read; Peers
	// are then the device's, without limits.
	ShapingErr error
}

// Inspect reads interface name in the network namespace at netnsPath (""
// is the calling thread's) and changes nothing: the device and its peers
// through wgctrl, and each peer's installed limits as the shaper reads its
// own back after a restart. The pool is the interface's IPv4 prefix (the
// node puts its address there with the pool prefix), the upload device
// the one its ingress redirects to, a peer's class the one its shaping
// address names. The error wraps ErrNoDevice when there is no such device.
func Inspect(ctx context.Context, name, netnsPath string) (Inspection, error) {
	ns, err := openNamespace(netnsPath)
	if err != nil {
		return Inspection{}, err
	}
	defer ns.close()
	var dev *wgtypes.Device
	if err := ns.do(func() (err error) { dev, err = readDevice(name); return err }); err != nil {
		return Inspection{}, err
	}
	classes, err := readShaping(ns, name)
	return Inspection{
		Name: name, PublicKey: dev.PublicKey, ListenPort: dev.ListenPort,
		Peers: peerStats(dev, classes), Configs: peerConfigs(dev, classes), ShapingErr: err,
	}, nil
}

func readDevice(name string) (*wgtypes.Device, error) {
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("wireguard control: %w", err)
	}
	defer c.Close()
	dev, err := c.Device(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("interface %s: %w", name, ErrNoDevice)
	}
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", name, err)
	}
	return dev, nil
}

// readShaping returns the installed limits by shaping address. A device
// without our HTB root has none in that direction.
func readShaping(ns *namespace, name string) (map[netip.Addr]limits, error) {
	h, err := ns.openNetlink()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", name, err)
	}
	pool, ok, err := linkPool(h, link)
	if err != nil || !ok {
		return nil, err // no IPv4 pool, nothing shaped
	}
	s := newShaper(h, Config{Interface: name, Address: pool}, slog.New(slog.DiscardHandler))
	wg := link.Attrs().Index
	down, up := 0, 0
	if ours, _, err := s.rootHTB(wg); err != nil {
		return nil, fmt.Errorf("list qdiscs of %s: %w", name, err)
	} else if ours {
		down = wg
	}
	if up, err = s.uploadDevice(wg); err != nil {
		return nil, err
	}
	s.attach(down, up)
	if err := s.load(); err != nil {
		return nil, err
	}
	return s.classes, nil
}

// uploadDevice is the device the interface's ingress redirects to when it
// carries our HTB root, else 0.
func (s *shaper) uploadDevice(wg int) (int, error) {
	ingress, err := s.hasIngress(wg)
	if err != nil || !ingress {
		return 0, err
	}
	targets, err := s.redirects(wg)
	if err != nil {
		return 0, err
	}
	for _, t := range targets {
		if ours, _, err := s.rootHTB(t); err == nil && ours {
			return t, nil
		}
	}
	return 0, nil
}

// linkPool is the link's first IPv4 address with its prefix.
func linkPool(h *netlink.Handle, link netlink.Link) (netip.Prefix, bool, error) {
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, false, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if p := ipNetPrefix(a.IPNet); p.Addr().Is4() {
			return p, true, nil
		}
	}
	return netip.Prefix{}, false, nil
}

// ResolveEgress names the interface the firewall masquerades the pool on,
// in the calling thread's namespace: name when given (it must exist), else
// the IPv4 default route's, else an error wrapping ErrNoDefaultRoute.
func ResolveEgress(name string) (string, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return "", fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if name != "" {
		if _, err := h.LinkByName(name); err != nil {
			return "", fmt.Errorf("interface %s: %w", name, err)
		}
		return name, nil
	}
	if l := defaultRouteLink(h); l != "" {
		return l, nil
	}
	return "", ErrNoDefaultRoute
}

// peerConfigs is the device's peers as configs, with the limits classes
// holds for their shaping addresses.
func peerConfigs(dev *wgtypes.Device, classes map[netip.Addr]limits) []Peer {
	out := make([]Peer, 0, len(dev.Peers))
	for i := range dev.Peers {
		p := &dev.Peers[i]
		c := Peer{PublicKey: p.PublicKey, PresharedKey: p.PresharedKey, Keepalive: p.PersistentKeepaliveInterval}
		for j := range p.AllowedIPs {
			c.AllowedIPs = append(c.AllowedIPs, ipNetPrefix(&p.AllowedIPs[j]))
		}
		if a, ok := shapingAddr(p.AllowedIPs); ok {
			lim := classes[a]
			c.DownloadKbps, c.UploadKbps = lim.down, lim.up
		}
		out = append(out, c)
	}
	return out
}
