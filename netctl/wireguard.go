package netctl

// The WireGuard device: adopt an existing one, create a kernel one, or run
// wireguard-go inside this process. All configuration goes through wgctrl
// (netlink for the kernel, the UAPI socket for userspace devices), so an
// adopted external wireguard-go and the embedded device behave alike.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// wgClient is the seam to the device: *wgctrl.Client, or embeddedClient
// for the device this process runs; a counting wrapper in tests that prove
// an apply sent nothing.
type wgClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	Close() error
}

var _ wgClient = (*wgctrl.Client)(nil)

// openDevice finds or makes the interface and sets l.wg, l.dev, l.ifindex
// and l.epoch.
func (l *Link) openDevice(ctx context.Context) error {
	name := l.cfg.Interface
	if err := l.ns.do(func() error {
		// wgctrl's generic netlink socket must live in the namespace; the
		// UAPI sockets are files and work from anywhere.
		c, err := wgctrl.New()
		l.wg = c
		return err
	}); err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}

	_, linkErr := l.nl.LinkByName(name)
	_, devErr := l.wg.Device(name)
	switch {
	case linkErr == nil && devErr == nil:
		// A working device: adopt it, whatever the mode asks for. Its
		// sessions and counters outlive us; recreating would drop them.
		if l.cfg.Mode == ModeUserspace {
			l.log.Warn("adopting an existing WireGuard interface instead of starting the embedded device")
		}
		l.log.Info("adopted existing WireGuard interface")
	case linkErr == nil:
		return fmt.Errorf("interface %s exists but is not a WireGuard device reachable by wgctrl: %w", name, devErr)
	case l.cfg.Mode == ModeUserspace:
		if err := l.startUserspace(); err != nil {
			return err
		}
	default:
		err := l.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: l.cfg.MTU}})
		if err == nil {
			l.log.Info("created kernel WireGuard interface")
			break
		}
		if l.cfg.Mode == ModeKernel {
			return fmt.Errorf("create kernel WireGuard interface %s (mode kernel creates only through the kernel; use auto or userspace without the module): %w", name, err)
		}
		l.log.Info("kernel WireGuard unavailable, starting the embedded userspace device", "reason", err.Error())
		if err := l.startUserspace(); err != nil {
			return err
		}
	}
	link, err := l.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	l.ifindex = link.Attrs().Index
	l.epoch = bootID() + ":" + strconv.Itoa(l.ifindex)
	if l.dev != nil {
		l.epoch += ":" + l.dev.instance
	}
	return nil
}

// configureLink makes key, port, MTU, addresses and link state match
// l.cfg, changing only what differs. old is the previous config (zero on
// Open): addresses it set and the new one does not have are removed.
func (l *Link) configureLink(ctx context.Context, old Config) error {
	cfg := l.cfg
	dev, err := l.wg.Device(cfg.Interface)
	if err != nil {
		return fmt.Errorf("read device %s: %w", cfg.Interface, err)
	}
	var wc wgtypes.Config
	if dev.PrivateKey != cfg.PrivateKey {
		if dev.PrivateKey != (wgtypes.Key{}) {
			l.log.Warn("device private key differs from the configured key; replacing it")
		}
		k := cfg.PrivateKey
		wc.PrivateKey = &k
	}
	if cfg.ListenPort != 0 && dev.ListenPort != cfg.ListenPort {
		p := cfg.ListenPort
		wc.ListenPort = &p
	}
	if wc.PrivateKey != nil || wc.ListenPort != nil {
		if err := l.wg.ConfigureDevice(cfg.Interface, wc); err != nil {
			return fmt.Errorf("configure device %s: %w", cfg.Interface, err)
		}
	}

	link, err := l.nl.LinkByIndex(l.ifindex)
	if err != nil {
		return fmt.Errorf("interface %s: %w", cfg.Interface, err)
	}
	if link.Attrs().MTU != cfg.MTU {
		if err := l.nl.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("set mtu of %s: %w", cfg.Interface, err)
		}
	}
	for _, a := range []struct{ old, new netip.Prefix }{{old.Address, cfg.Address}, {old.Address6, cfg.Address6}} {
		if err := l.ensureAddr(link, a.old, a.new); err != nil {
			return err
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := l.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", cfg.Interface, err)
		}
	}
	return nil
}

func (l *Link) ensureAddr(link netlink.Link, old, want netip.Prefix) error {
	family := netlink.FAMILY_V4
	if want.Addr().Is6() || (!want.IsValid() && old.Addr().Is6()) {
		family = netlink.FAMILY_V6
	}
	have, err := l.nl.AddrList(link, family)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.cfg.Interface, err)
	}
	found := false
	for _, a := range have {
		p := ipNetPrefix(a.IPNet)
		switch {
		case want.IsValid() && p == want:
			found = true
		case old.IsValid() && p == old:
			if err := l.nl.AddrDel(link, &a); err != nil {
				return fmt.Errorf("remove old address %v from %s: %w", old, l.cfg.Interface, err)
			}
		}
	}
	if want.IsValid() && !found {
		if err := l.nl.AddrAdd(link, &netlink.Addr{IPNet: prefixIPNet(want)}); err != nil {
			return fmt.Errorf("add address %v to %s: %w", want, l.cfg.Interface, err)
		}
	}
	return nil
}

// loadPeers fills the peer mirror from the device: adopting its peers.
func (l *Link) loadPeers() error {
	dev, err := l.wg.Device(l.cfg.Interface)
	if err != nil {
		return fmt.Errorf("read device %s: %w", l.cfg.Interface, err)
	}
	l.mirror(dev)
	return nil
}

// held is what the mirror keeps of one device peer: the WireGuard state
// only (limits live in the shaper's mirror), without repeating the key
// that indexes it. At 10,000 peers the mirror is one of the node's largest
// structures, so it holds no more than the diff needs.
type held struct {
	psk        wgtypes.Key
	keepalive  time.Duration
	allowedIPs []netip.Prefix
}

func (h held) peer(k wgtypes.Key) Peer {
	return Peer{PublicKey: k, PresharedKey: h.psk, Keepalive: h.keepalive, AllowedIPs: h.allowedIPs}
}

// mirror makes the peer mirror equal to what the device reported. It runs
// on every Stats read, so it updates in place: an unchanged peer costs a
// lookup and a comparison, not an allocation.
func (l *Link) mirror(dev *wgtypes.Device) {
	if l.peers == nil {
		l.peers = make(map[wgtypes.Key]held, len(dev.Peers))
	}
	for i := range dev.Peers {
		p := &dev.Peers[i]
		h, ok := l.peers[p.PublicKey]
		if ok && h.psk == p.PresharedKey && h.keepalive == p.PersistentKeepaliveInterval && sameIPs(h.allowedIPs, p.AllowedIPs) {
			continue
		}
		l.peers[p.PublicKey] = held{psk: p.PresharedKey, keepalive: p.PersistentKeepaliveInterval, allowedIPs: prefixes(p.AllowedIPs)}
	}
	if len(l.peers) > len(dev.Peers) {
		// Peers removed behind our back: rare, so the set is built only then.
		on := make(map[wgtypes.Key]struct{}, len(dev.Peers))
		for i := range dev.Peers {
			on[dev.Peers[i].PublicKey] = struct{}{}
		}
		for k := range l.peers {
			if _, ok := on[k]; !ok {
				delete(l.peers, k)
			}
		}
	}
	l.peersLoaded = time.Now()
}

// sameIPs compares mirrored prefixes with the device's without allocating.
func sameIPs(have []netip.Prefix, dev []net.IPNet) bool {
	if len(have) != len(dev) {
		return false
	}
	for i := range dev {
		if have[i] != ipNetPrefix(&dev[i]) {
			return false
		}
	}
	return true
}

func prefixes(ns []net.IPNet) []netip.Prefix {
	if len(ns) == 0 {
		return nil
	}
	out := make([]netip.Prefix, len(ns))
	for i := range ns {
		out[i] = ipNetPrefix(&ns[i])
	}
	return out
}

// shapingAddr is Peer.ShapingAddr for a device peer, without converting it.
func shapingAddr(ns []net.IPNet) (netip.Addr, bool) {
	for i := range ns {
		if p := ipNetPrefix(&ns[i]); p.Addr().Is4() && p.Bits() == 32 {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

func ipNetPrefix(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// ownedDevice is a userspace device the Link started, in this process or
// in its own (devproc.go). Its interface lives as long as it runs.
type ownedDevice struct {
	instance string // random per start: counters restart with it
	pid      int    // the device process; 0 in this one
	stop     func()
	lost     <-chan error // the device ended on its own; nil in-process
}

// startUserspace starts the device the Link owns: in its own process with
// Config.DeviceCommand, else in this one.
func (l *Link) startUserspace() error {
	if len(l.cfg.DeviceCommand) > 0 {
		return l.startProcess()
	}
	return l.startEmbedded()
}

func (l *Link) startEmbedded() error {
	name := l.cfg.Interface
	var (
		tdev     tun.Device
		uapiFile *os.File
	)
	err := l.ns.do(func() error {
		var err error
		if tdev, err = tun.CreateTUN(name, l.cfg.MTU); err != nil {
			return fmt.Errorf("create TUN %s: %w", name, err)
		}
		if uapiFile, err = ipc.UAPIOpen(name); err != nil {
			tdev.Close()
			return fmt.Errorf("open UAPI socket for %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	bind := conn.NewDefaultBind()
	if l.ns != nil {
		tdev = &nsTUN{Device: tdev, ns: l.ns}
		bind = &nsBind{Bind: bind, ns: l.ns}
	}
	dev := device.NewDevice(tdev, bind, wgLogger(l.log))
	uapi, err := ipc.UAPIListen(name, uapiFile)
	if err != nil {
		dev.Close()
		return fmt.Errorf("listen on UAPI socket for %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveUAPI(uapi, dev, nil)
	}()
	l.dev = &ownedDevice{instance: newInstance(), stop: func() {
		uapi.Close()
		<-done
		dev.Close()
	}}
	l.wg = &embeddedClient{wgClient: l.wg, name: name, dev: dev}
	l.log.Info("started embedded userspace WireGuard device")
	return nil
}

// serveUAPI answers connections to the device's UAPI socket until ln
// closes; handled, if set, runs after each.
func serveUAPI(ln net.Listener, dev *device.Device, handled func()) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			dev.IpcHandle(c)
			if handled != nil {
				handled()
			}
		}()
	}
}

// newInstance is a device start's random id, part of the counter epoch.
func newInstance() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func wgLogger(log *slog.Logger) *device.Logger {
	log = log.With("component", "wireguard-go")
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...)) },
	}
}

// nsBind opens the device's UDP sockets inside the namespace. wireguard-go
// rebinds whenever the interface goes up or the port changes, from
// whichever goroutine noticed, so the namespace must travel with the Bind.
type nsBind struct {
	conn.Bind
	ns *namespace
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	derr := b.ns.do(func() error {
		fns, actual, err = b.Bind.Open(port)
		return nil
	})
	return fns, actual, errors.Join(err, derr)
}

// nsTUN reads the MTU inside the namespace: wireguard-go asks for it by
// interface name whenever the link changes.
type nsTUN struct {
	tun.Device
	ns *namespace
}

func (t *nsTUN) MTU() (mtu int, err error) {
	derr := t.ns.do(func() error {
		mtu, err = t.Device.MTU()
		return nil
	})
	return mtu, errors.Join(err, derr)
}
