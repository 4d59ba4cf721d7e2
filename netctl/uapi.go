package netctl

// The embedded device is read and configured in-process, in the UAPI text
// protocol wgctrl would send over its socket, without the socket. A Stats
// read of 10,000 peers over wgctrl's socket client costs a connection, a
// goroutine in the device and ~14 MB of short-lived objects (a split and a
// net.IPNet per line); here the device's one buffer is parsed as it is
// handed over, into a few slabs. The socket stays open for `wg show`.

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// embeddedClient serves the interface of the device the Link started and
// passes any other name to wgctrl.
type embeddedClient struct {
	wgClient
	name  string
	dev   uapiDevice
	peers int // peers in the last read: the next one's capacity
}

// uapiDevice is the UAPI get and set operations: *device.Device in this
// process, uapiSocket for the device process.
type uapiDevice interface {
	IpcGetOperation(w io.Writer) error
	IpcSetOperation(r io.Reader) error
}

var _ uapiDevice = (*device.Device)(nil)

var _ wgClient = (*embeddedClient)(nil)

func (c *embeddedClient) Device(name string) (*wgtypes.Device, error) {
	if name != c.name {
		return c.wgClient.Device(name)
	}
	p := uapiParser{d: wgtypes.Device{Name: name, Type: wgtypes.Userspace, Peers: make([]wgtypes.Peer, 0, c.peers)}}
	if err := c.dev.IpcGetOperation(&p); err != nil {
		return nil, fmt.Errorf("read device %s: %w", name, err)
	}
	if err := p.finish(); err != nil {
		return nil, fmt.Errorf("parse device %s: %w", name, err)
	}
	c.peers = len(p.d.Peers)
	p.d.PublicKey = p.d.PrivateKey.PublicKey()
	return &p.d, nil
}

func (c *embeddedClient) ConfigureDevice(name string, cfg wgtypes.Config) error {
	if name != c.name {
		return c.wgClient.ConfigureDevice(name, cfg)
	}
	var b bytes.Buffer
	writeUAPI(&b, cfg)
	if err := c.dev.IpcSetOperation(&b); err != nil {
		return fmt.Errorf("configure device %s: %w", name, err)
	}
	return nil
}

// writeUAPI is cfg as a UAPI set operation's body, as wgctrl writes it.
func writeUAPI(b *bytes.Buffer, cfg wgtypes.Config) {
	key := func(name string, k wgtypes.Key) {
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(hex.EncodeToString(k[:]))
		b.WriteByte('\n')
	}
	if cfg.PrivateKey != nil {
		key("private_key", *cfg.PrivateKey)
	}
	if cfg.ListenPort != nil {
		fmt.Fprintf(b, "listen_port=%d\n", *cfg.ListenPort)
	}
	if cfg.FirewallMark != nil {
		fmt.Fprintf(b, "fwmark=%d\n", *cfg.FirewallMark)
	}
	if cfg.ReplacePeers {
		b.WriteString("replace_peers=true\n")
	}
	for _, p := range cfg.Peers {
		key("public_key", p.PublicKey)
		if p.Remove {
			b.WriteString("remove=true\n")
		}
		if p.UpdateOnly {
			b.WriteString("update_only=true\n")
		}
		if p.PresharedKey != nil {
			key("preshared_key", *p.PresharedKey)
		}
		if p.Endpoint != nil {
			fmt.Fprintf(b, "endpoint=%s\n", p.Endpoint)
		}
		if p.PersistentKeepaliveInterval != nil {
			fmt.Fprintf(b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepaliveInterval.Seconds()))
		}
		if p.ReplaceAllowedIPs {
			b.WriteString("replace_allowed_ips=true\n")
		}
		for _, ip := range p.AllowedIPs {
			fmt.Fprintf(b, "allowed_ip=%s\n", ip.String())
		}
	}
}

var errUAPILine = errors.New("malformed UAPI line")

// uapiParser is an io.Writer that parses a UAPI get operation's output
// into d as it arrives. Allowed IPs' addresses and masks are cut from
// shared slabs rather than allocated one by one.
type uapiParser struct {
	d       wgtypes.Device
	partial []byte // a line split across writes
	slab    []byte
	sec     int64
	err     error
}

func (p *uapiParser) Write(b []byte) (int, error) {
	n := len(b)
	if len(p.partial) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.partial = append(p.partial, b...)
			return n, nil
		}
		p.partial = append(p.partial, b[:i]...)
		p.line(p.partial)
		p.partial, b = p.partial[:0], b[i+1:]
	}
	for len(b) > 0 && p.err == nil {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.partial = append(p.partial, b...)
			break
		}
		p.line(b[:i])
		b = b[i+1:]
	}
	return n, nil
}

func (p *uapiParser) finish() error {
	if p.err == nil && len(p.partial) > 0 {
		p.line(p.partial)
	}
	return p.err
}

func (p *uapiParser) line(l []byte) {
	if len(l) == 0 || p.err != nil {
		return
	}
	k, v, ok := bytes.Cut(l, []byte("="))
	if !ok {
		p.err = fmt.Errorf("%w: %q", errUAPILine, l)
		return
	}
	if string(k) == "errno" {
		if string(v) != "0" {
			p.err = fmt.Errorf("device returned errno=%s", v)
		}
		return
	}
	if string(k) == "public_key" {
		p.d.Peers = append(p.d.Peers, wgtypes.Peer{PublicKey: p.key(v)})
		return
	}
	if len(p.d.Peers) == 0 {
		switch string(k) {
		case "private_key":
			p.d.PrivateKey = p.key(v)
		case "listen_port":
			p.d.ListenPort = int(p.int(v))
		case "fwmark":
			p.d.FirewallMark = int(p.int(v))
		}
		return
	}
	p.peer(&p.d.Peers[len(p.d.Peers)-1], string(k), v)
}

func (p *uapiParser) peer(peer *wgtypes.Peer, k string, v []byte) {
	switch k {
	case "preshared_key":
		peer.PresharedKey = p.key(v)
	case "endpoint":
		ap, err := netip.ParseAddrPort(string(v))
		if err != nil {
			p.err = fmt.Errorf("endpoint %q: %w", v, err)
			return
		}
		peer.Endpoint = net.UDPAddrFromAddrPort(ap)
	case "last_handshake_time_sec":
		p.sec = p.int(v)
	case "last_handshake_time_nsec":
		if nsec := p.int(v); p.sec != 0 || nsec != 0 {
			peer.LastHandshakeTime = time.Unix(p.sec, nsec)
		}
	case "tx_bytes":
		peer.TransmitBytes = p.int(v)
	case "rx_bytes":
		peer.ReceiveBytes = p.int(v)
	case "persistent_keepalive_interval":
		peer.PersistentKeepaliveInterval = time.Duration(p.int(v)) * time.Second
	case "protocol_version":
		peer.ProtocolVersion = int(p.int(v))
	case "allowed_ip":
		pfx, err := netip.ParsePrefix(string(v))
		if err != nil {
			p.err = fmt.Errorf("allowed_ip %q: %w", v, err)
			return
		}
		peer.AllowedIPs = append(peer.AllowedIPs, p.ipNet(pfx))
	}
}

// ipNet is pfx as a net.IPNet whose address and mask live in p.slab.
func (p *uapiParser) ipNet(pfx netip.Prefix) net.IPNet {
	n := pfx.Addr().BitLen() / 8
	if len(p.slab) < 2*n {
		p.slab = make([]byte, 8192)
	}
	ip, mask := p.slab[:n:n], p.slab[n:2*n:2*n]
	p.slab = p.slab[2*n:]
	copy(ip, pfx.Addr().AsSlice())
	for i := range mask {
		bits := min(max(pfx.Bits()-8*i, 0), 8)
		mask[i] = byte(0xff << (8 - bits))
	}
	return net.IPNet{IP: ip, Mask: mask}
}

func (p *uapiParser) key(v []byte) wgtypes.Key {
	var k wgtypes.Key
	if hex.DecodedLen(len(v)) != len(k) {
		p.err = fmt.Errorf("%w: key of %d hex digits", errUAPILine, len(v))
		return k
	}
	if _, err := hex.Decode(k[:], v); err != nil {
		p.err = fmt.Errorf("key: %w", err)
	}
	return k
}

func (p *uapiParser) int(v []byte) int64 {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		p.err = fmt.Errorf("number %q: %w", v, err)
	}
	return n
}
