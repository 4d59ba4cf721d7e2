package netns

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/testkit"
)

// WGClient is a WireGuard client made of Debian's wireguard-go and wg,
// running inside a namespace: the "app user" side of the tunnel.
type WGClient struct {
	NS      *NS
	Iface   string
	Key     wgtypes.Key
	Address string // CIDR, e.g. "10.8.0.2/32"
	proc    *Process
}

// WGClientConfig says how the client reaches the node.
type WGClientConfig struct {
	Address    string      // tunnel address in CIDR notation, e.g. "10.8.0.2/32"
	Route      string      // routed through the tunnel, e.g. "10.8.0.0/16"
	ServerKey  wgtypes.Key // node's public key
	Endpoint   string      // node's host:port
	Keepalive  int         // seconds, 0 = off
	PrivateKey *wgtypes.Key
	MTU        int
}

// StartWGClient starts wireguard-go in the namespace and configures it with
// wg. It is stopped when the test ends.
func StartWGClient(t testing.TB, ns *NS, cfg WGClientConfig) *WGClient {
	t.Helper()
	var key wgtypes.Key
	if cfg.PrivateKey != nil {
		key = *cfg.PrivateKey
	} else {
		var err error
		if key, err = wgtypes.GeneratePrivateKey(); err != nil {
			t.Fatal(err)
		}
	}
	c := &WGClient{NS: ns, Iface: Name("wgc"), Key: key, Address: cfg.Address}
	c.proc = ns.Start(t, "wireguard-go", "-f", c.Iface)
	sock := filepath.Join("/var/run/wireguard", c.Iface+".sock")
	testkit.Eventually(t, 10*time.Second, func() error {
		if exited, err := c.proc.Exited(); exited {
			return fmt.Errorf("wireguard-go exited: %v: %s", err, c.proc.Output())
		}
		_, err := os.Stat(sock)
		return err
	})
	keyFile := filepath.Join(t.TempDir(), "client.key")
	if err := os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"set", c.Iface, "private-key", keyFile, "peer", cfg.ServerKey.String(), "endpoint", cfg.Endpoint, "allowed-ips", cfg.Route}
	if cfg.Keepalive > 0 {
		args = append(args, "persistent-keepalive", strconv.Itoa(cfg.Keepalive))
	}
	ns.MustRun(t, "wg", args...)
	ns.MustRun(t, "ip", "addr", "add", cfg.Address, "dev", c.Iface)
	if cfg.MTU > 0 {
		ns.MustRun(t, "ip", "link", "set", c.Iface, "mtu", strconv.Itoa(cfg.MTU))
	}
	ns.MustRun(t, "ip", "link", "set", c.Iface, "up")
	ns.MustRun(t, "ip", "route", "replace", cfg.Route, "dev", c.Iface)
	return c
}

// Stop stops the client's wireguard-go.
func (c *WGClient) Stop() { c.proc.Stop() }

// IP is the client's tunnel address without the prefix length.
func (c *WGClient) IP() string { return strings.Split(c.Address, "/")[0] }

// PeerState is one line of `wg show <iface> dump` for a peer.
type PeerState struct {
	PublicKey        string
	Endpoint         string
	LatestHandshake  time.Time
	RxBytes, TxBytes int64
}

// Peers parses `wg show <iface> dump` in the client's namespace.
func (c *WGClient) Peers(ctx context.Context) ([]PeerState, error) {
	return WGDump(ctx, c.NS, c.Iface)
}

// WGDump parses `wg show <iface> dump` run in ns.
func WGDump(ctx context.Context, ns *NS, iface string) ([]PeerState, error) {
	out, err := ns.Run(ctx, "wg", "show", iface, "dump")
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var peers []PeerState
	for _, l := range lines[1:] { // the first line is the interface
		f := strings.Split(l, "\t")
		if len(f) < 8 {
			return nil, fmt.Errorf("wg dump line %q: want 8 fields", l)
		}
		hs, _ := strconv.ParseInt(f[4], 10, 64)
		rx, _ := strconv.ParseInt(f[5], 10, 64)
		tx, _ := strconv.ParseInt(f[6], 10, 64)
		p := PeerState{PublicKey: f[0], Endpoint: f[2], RxBytes: rx, TxBytes: tx}
		if hs > 0 {
			p.LatestHandshake = time.Unix(hs, 0)
		}
		peers = append(peers, p)
	}
	return peers, nil
}
