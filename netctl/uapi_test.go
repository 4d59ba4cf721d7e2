package netctl

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// otherWG stands for wgctrl: embeddedClient hands it every other name.
type otherWG struct{ asked []string }

func (o *otherWG) Device(name string) (*wgtypes.Device, error) {
	o.asked = append(o.asked, name)
	return &wgtypes.Device{Name: name}, nil
}
func (o *otherWG) ConfigureDevice(name string, _ wgtypes.Config) error {
	o.asked = append(o.asked, name)
	return nil
}
func (o *otherWG) Close() error { return nil }

func memDevice(t *testing.T) *device.Device {
	t.Helper()
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), bindtest.NewChannelBinds()[0], device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(dev.Close)
	return dev
}

func ipNetsOf(ps ...string) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = *prefixIPNet(netip.MustParsePrefix(p))
	}
	return out
}

// The in-process client configures and reads the device as wgctrl's
// socket client would, and leaves other interfaces to wgctrl.
func TestEmbeddedClientRoundTrip(t *testing.T) {
	other := &otherWG{}
	c := &embeddedClient{wgClient: other, name: "wgmem", dev: memDevice(t)}
	priv, psk := mustKey(t), mustKey(t)
	port, ka := 51820, 25*time.Second
	a, b := mustKey(t).PublicKey(), mustKey(t).PublicKey()
	cfg := wgtypes.Config{PrivateKey: &priv, ListenPort: &port, Peers: []wgtypes.PeerConfig{
		{PublicKey: a, PresharedKey: &psk, PersistentKeepaliveInterval: &ka, ReplaceAllowedIPs: true,
			Endpoint:   &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7},
			AllowedIPs: ipNetsOf("10.8.1.2/32", "fd00::2/128", "192.168.7.0/24")},
		{PublicKey: b, ReplaceAllowedIPs: true, AllowedIPs: ipNetsOf("10.8.1.3/32")},
	}}
	if err := c.ConfigureDevice("wgmem", cfg); err != nil {
		t.Fatal(err)
	}
	// The channel bind picks its own port: only that one is reported.
	d, err := c.Device("wgmem")
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "wgmem" || d.Type != wgtypes.Userspace || d.PrivateKey != priv || d.PublicKey != priv.PublicKey() || d.ListenPort == 0 {
		t.Errorf("device = %s %v key %v/%v port %d", d.Name, d.Type, d.PrivateKey, d.PublicKey, d.ListenPort)
	}
	got := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range d.Peers {
		got[p.PublicKey] = p
	}
	pa, pb := got[a], got[b]
	if len(got) != 2 || pa.PresharedKey != psk || pa.PersistentKeepaliveInterval != ka || pa.ProtocolVersion != 1 ||
		pa.Endpoint == nil || pa.Endpoint.AddrPort() != netip.MustParseAddrPort("127.0.0.1:7") {
		t.Errorf("peers = %+v", d.Peers)
	}
	if ips := prefixSet(pa.AllowedIPs); !slices.Equal(ips, []string{"10.8.1.2/32", "192.168.7.0/24", "fd00::2/128"}) {
		t.Errorf("peer a allowed IPs = %v", ips)
	}
	if pb.PresharedKey != (wgtypes.Key{}) || pb.Endpoint != nil || !pb.LastHandshakeTime.IsZero() || !slices.Equal(prefixSet(pb.AllowedIPs), []string{"10.8.1.3/32"}) {
		t.Errorf("peer b = %+v", pb)
	}

	rm := wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: b, Remove: true}}}
	if err := c.ConfigureDevice("wgmem", rm); err != nil {
		t.Fatal(err)
	}
	if d, err = c.Device("wgmem"); err != nil || len(d.Peers) != 1 || d.Peers[0].PublicKey != a {
		t.Fatalf("after removing b: %+v, %v", d, err)
	}

	if _, err := c.Device("other0"); err != nil {
		t.Fatal(err)
	}
	if err := c.ConfigureDevice("other0", wgtypes.Config{}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(other.asked, []string{"other0", "other0"}) {
		t.Errorf("wgctrl asked for %v, want other0 twice", other.asked)
	}
}

func prefixSet(ns []net.IPNet) []string {
	var out []string
	for i := range ns {
		out = append(out, ipNetPrefix(&ns[i]).String())
	}
	slices.Sort(out)
	return out
}

// A line cut between writes parses as if it came whole.
func TestUAPIParserSplitWrites(t *testing.T) {
	dev := memDevice(t)
	c := &embeddedClient{wgClient: &otherWG{}, name: "wgmem", dev: dev}
	priv := mustKey(t)
	var peers []wgtypes.PeerConfig
	for i := range 40 {
		peers = append(peers, wgtypes.PeerConfig{PublicKey: mustKey(t).PublicKey(), ReplaceAllowedIPs: true,
			AllowedIPs: ipNetsOf(netip.AddrFrom4([4]byte{10, 8, 1, byte(i)}).String() + "/32")})
	}
	if err := c.ConfigureDevice("wgmem", wgtypes.Config{PrivateKey: &priv, Peers: peers}); err != nil {
		t.Fatal(err)
	}
	text, err := dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	whole := uapiParser{}
	whole.Write([]byte(text))
	if err := whole.finish(); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1, 7, 64} {
		var p uapiParser
		for s := text; len(s) > 0; {
			n := min(size, len(s))
			p.Write([]byte(s[:n]))
			s = s[n:]
		}
		if err := p.finish(); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(p.d, whole.d) {
			t.Errorf("writes of %d bytes: %d peers, whole: %d", size, len(p.d.Peers), len(whole.d.Peers))
		}
	}
	if len(whole.d.Peers) != 40 {
		t.Errorf("%d peers parsed, want 40", len(whole.d.Peers))
	}
}

// A malformed line is an error, not a silently short device.
func TestUAPIParserMalformed(t *testing.T) {
	for _, in := range []string{"listen_port\n", "public_key=zz\n", "listen_port=x\n", "errno=22\n"} {
		var p uapiParser
		p.Write([]byte(in))
		if p.finish() == nil {
			t.Errorf("%q parsed without error", strings.TrimSpace(in))
		}
	}
}

// BenchmarkEmbeddedRead10k: one read of a 10,000-peer embedded device,
// in-process (what Stats does for a device in this process), over its
// UAPI socket with the same parse (what it does for the device process)
// and with wgctrl's socket client, in the same run: bytes and objects
// allocated, the device's side of a socket read included.
func BenchmarkEmbeddedRead10k(b *testing.B) {
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), bindtest.NewChannelBinds()[0], device.NewLogger(device.LogLevelSilent, ""))
	defer dev.Close()
	name := fmt.Sprintf("wlbench%d", os.Getpid()%100000)
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		b.Fatal(err)
	}
	uapi, err := ipc.UAPIListen(name, f)
	if err != nil {
		b.Fatal(err)
	}
	defer uapi.Close()
	go serveUAPI(uapi, dev, nil)
	wc, err := wgctrl.New()
	if err != nil {
		b.Fatal(err)
	}
	defer wc.Close()
	c := &embeddedClient{wgClient: wc, name: name, dev: dev}
	priv, psk := mustKey(b), mustKey(b)
	cfg := wgtypes.Config{PrivateKey: &priv}
	for _, p := range benchPeers(b, 10_000) {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, PresharedKey: &psk, ReplaceAllowedIPs: true, AllowedIPs: ipNets(p.AllowedIPs)})
	}
	if err := c.ConfigureDevice(name, cfg); err != nil {
		b.Fatal(err)
	}
	read := func(read func() (*wgtypes.Device, error)) (mb, objects float64) {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		const runs = 5
		for range runs {
			d, err := read()
			if err != nil {
				b.Fatal(err)
			}
			if len(d.Peers) != 10_000 {
				b.Fatalf("%d peers read", len(d.Peers))
			}
		}
		runtime.ReadMemStats(&m1)
		return float64(m1.TotalAlloc-m0.TotalAlloc) / runs / (1 << 20), float64(m1.Mallocs-m0.Mallocs) / runs
	}
	inMB, inObj := read(func() (*wgtypes.Device, error) { return c.Device(name) })
	sc := &embeddedClient{wgClient: wc, name: name, dev: uapiSocket{path: filepath.Join(uapiDir, name+".sock")}}
	ownMB, ownObj := read(func() (*wgtypes.Device, error) { return sc.Device(name) })
	sockMB, sockObj := read(func() (*wgtypes.Device, error) { return wc.Device(name) })
	b.ReportMetric(inMB, "inprocess-MB/read")
	b.ReportMetric(inObj, "inprocess-objects/read")
	b.ReportMetric(ownMB, "uapisocket-MB/read")
	b.ReportMetric(ownObj, "uapisocket-objects/read")
	b.ReportMetric(sockMB, "wgctrl-socket-MB/read")
	b.ReportMetric(sockObj, "wgctrl-socket-objects/read")
}
