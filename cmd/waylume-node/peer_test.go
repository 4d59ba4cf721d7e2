package main

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	qr "github.com/piglig/go-qr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/migrations"
)

// readQR turns writeQR's half blocks back into an image and decodes it.
func readQR(t *testing.T, out string) string {
	t.Helper()
	var rows [][]bool
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		line = strings.TrimSuffix(strings.TrimPrefix(line, "\x1b[30;107m"), "\x1b[0m")
		var top, bottom []bool
		for _, r := range line {
			top = append(top, r == '█' || r == '▀')
			bottom = append(bottom, r == '█' || r == '▄')
		}
		rows = append(rows, top, bottom)
	}
	const scale = 4
	img := image.NewGray(image.Rect(0, 0, len(rows[0])*scale, len(rows)*scale))
	for y, row := range rows {
		for x, dark := range row {
			c := color.Gray{Y: 255}
			if dark {
				c = color.Gray{}
			}
			for dy := range scale {
				for dx := range scale {
					img.SetGray(x*scale+dx, y*scale+dy, c)
				}
			}
		}
	}
	text, err := qr.Decode(img)
	if err != nil {
		t.Fatalf("the QR code does not decode: %v\n%s", err, out)
	}
	return text
}

func writeFile(t *testing.T, path, s string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// peer config prints waylume.client_config; wg-quick accepts it, and with
// the client's private key filled in, wg setconf loads it into a real
// (userspace) WireGuard device with every field as the rows say. --qr
// encodes the same text.
func TestPeerConfig(t *testing.T) {
	netns.Require(t, "wg", "wg-quick", "wireguard-go")
	db := dbfix.Migrated(t)
	env := map[string]string{"WAYLUME_DATABASE_URL": db.URL}
	node := dbfix.CreateNode6(t, db, "edge", "10.66.0.1/16", "fd00:66::1/64")
	nodeKey, _ := wgtypes.GeneratePrivateKey()
	clientKey, _ := wgtypes.GeneratePrivateKey()
	psk, _ := wgtypes.GenerateKey()
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET public_key = $2, endpoint = '192.0.2.10:51820', dns = '{10.66.0.1}' WHERE id = $1`,
		node, nodeKey.PublicKey().String())
	var peer string
	dbfix.QueryRow(t, db, `INSERT INTO waylume.peers (node_id, public_key, preshared_key) VALUES ($1, $2, $3) RETURNING id::text`,
		[]any{node, clientKey.PublicKey().String(), psk.String()}, &peer)

	code, out, stderr := runCLI(t, env, "peer", "config", peer)
	if code != exitOK {
		t.Fatalf("peer config: code %d: %s", code, stderr)
	}
	var want string
	dbfix.QueryRow(t, db, `SELECT waylume.client_config($1)`, []any{peer}, &want)
	if out != want || !strings.Contains(out, "PrivateKey = "+migrations.PrivateKeyPlaceholder+"\n") {
		t.Fatalf("peer config printed\n%s\nwant client_config's\n%s", out, want)
	}

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	strip := func(conf string) string {
		t.Helper()
		path := writeFile(t, filepath.Join(dir, "wlpeer0.conf"), conf)
		b, err := exec.CommandContext(ctx, "wg-quick", "strip", path).CombinedOutput()
		if err != nil {
			t.Fatalf("wg-quick strip: %v\n%s\n%s", err, b, conf)
		}
		return string(b)
	}
	strip(out) // the placeholder form is a valid wg-quick file too

	keyFile := writeFile(t, filepath.Join(dir, "client.key"), clientKey.String()+"\n")
	code, filled, stderr := runCLI(t, env, "peer", "config", peer, "--private-key-file", keyFile)
	if code != exitOK || filled != strings.Replace(want, migrations.PrivateKeyPlaceholder, clientKey.String(), 1) {
		t.Fatalf("peer config --private-key-file: code %d %s\n%s", code, stderr, filled)
	}
	stripped := writeFile(t, filepath.Join(dir, "stripped.conf"), strip(filled))

	ns := netns.New(t, "wlpc")
	iface := netns.Name("wlpc")
	dev := ns.Start(t, "wireguard-go", "-f", iface)
	testkit.Eventually(t, 10*time.Second, func() error {
		if exited, err := dev.Exited(); exited {
			return fmt.Errorf("wireguard-go exited: %v: %s", err, dev.Output())
		}
		_, err := os.Stat(filepath.Join("/var/run/wireguard", iface+".sock"))
		return err
	})
	ns.MustRun(t, "wg", "setconf", iface, stripped)
	// wg show dump: the interface line, then one line per peer:
	// key, psk, endpoint, allowed ips, handshake, rx, tx, keepalive.
	lines := strings.Split(strings.TrimSpace(ns.MustRun(t, "wg", "show", iface, "dump")), "\n")
	if len(lines) != 2 {
		t.Fatalf("wg show dump:\n%s", strings.Join(lines, "\n"))
	}
	if f := strings.Split(lines[0], "\t"); f[0] != clientKey.String() {
		t.Errorf("device private key %s, want the client's", f[0])
	}
	p := strings.Split(lines[1], "\t")
	wantPeer := []string{nodeKey.PublicKey().String(), psk.String(), "192.0.2.10:51820", "0.0.0.0/0,::/0"}
	if strings.Join(p[:4], " ") != strings.Join(wantPeer, " ") || p[7] != "25" {
		t.Errorf("device peer %q, want %q and keepalive 25", p, wantPeer)
	}

	// --qr: the same text, filled in, as a code the apps scan.
	code, qrOut, stderr := runCLI(t, env, "peer", "config", "--qr", peer, "--private-key-file", keyFile)
	if code != exitOK {
		t.Fatalf("peer config --qr: code %d: %s", code, stderr)
	}
	if got := readQR(t, qrOut); got != filled {
		t.Errorf("the QR code holds\n%s\nwant\n%s", got, filled)
	}
}

func TestPeerConfigErrors(t *testing.T) {
	db := dbfix.Migrated(t)
	env := map[string]string{"WAYLUME_DATABASE_URL": db.URL}
	node := dbfix.CreateNode(t, db, "edge", "10.67.0.1/16")
	nodeKey, _ := wgtypes.GeneratePrivateKey()
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET public_key = $2 WHERE id = $1`, node, nodeKey.PublicKey().String())
	peer := dbfix.AddPeers(t, db, node, 1)[0]
	other, _ := wgtypes.GeneratePrivateKey()
	keyFile := writeFile(t, filepath.Join(t.TempDir(), "k"), other.String())
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"peer"}, exitConfig},
		{[]string{"peer", "config"}, exitConfig},
		{[]string{"peer", "config", "not-a-uuid"}, exitConfig},
		{[]string{"peer", "config", peer, "extra"}, exitConfig},
		{[]string{"peer", "config", peer, "--private-key-file", "/nonexistent"}, exitConfig},
		{[]string{"peer", "config", goodNode}, exitFail},                                             // no such peer
		{[]string{"peer", "config", peer, "--private-key-file", keyFile}, exitFail},                  // not the peer's key
		{[]string{"peer", "config", peer, "--database-url", dbfix.NodeLogin(t, db, node)}, exitFail}, // a node may not
	} {
		code, out, stderr := runCLI(t, env, tc.args...)
		if code != tc.code || out != "" || stderr == "" {
			t.Errorf("%v: code %d stdout %q stderr %q, want code %d and a message", tc.args, code, out, stderr, tc.code)
		}
	}
	if code, out, _ := runCLI(t, env, "peer", "--help"); code != exitOK || !strings.Contains(out, "peer config ID") {
		t.Errorf("peer --help: code %d %q", code, out)
	}
}
