package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/internal/status"
	"github.com/waylume/waylume-node/migrations"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/deps.sh installs it)", tool)
		}
	}
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// inNamespace runs f on a thread inside the named namespace. The thread is
// never unlocked, so it ends with the goroutine and the namespace cannot
// leak into the rest of the test binary.
func inNamespace(t *testing.T, name string, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromName(name)
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		f()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A WireGuard device (Debian wireguard-go) with two peers and per-peer tc
// shaping laid out like netctl's (hashed u32 on the interface for download,
// an IFB fed by an ingress mirred redirect for upload), plus the node's rows:
// status must join them.
func TestStatusReadsKernelAndRows(t *testing.T) {
	needTools(t, "wireguard-go", "wg", "tc", "ip")
	id := os.Getpid() % 100000
	nsName := fmt.Sprintf("wl-st-%d", id)
	ifname := fmt.Sprintf("wlst%d", id)
	ifb := fmt.Sprintf("wlsb%d", id)
	sh(t, "ip", "netns", "add", nsName)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsName).Run() })
	wg := exec.Command("ip", "netns", "exec", nsName, "wireguard-go", ifname)
	wg.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1")
	if err := wg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wg.Process.Kill(); wg.Wait(); os.Remove("/var/run/wireguard/" + ifname + ".sock") })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/var/run/wireguard/" + ifname + ".sock"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("wireguard-go did not open its UAPI socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	node, _ := wgtypes.GeneratePrivateKey()
	p1, _ := wgtypes.GeneratePrivateKey()
	p2, _ := wgtypes.GeneratePrivateKey()
	keyFile := t.TempDir() + "/k"
	os.WriteFile(keyFile, []byte(node.String()), 0o600)
	in := func(args ...string) { sh(t, append([]string{"ip", "netns", "exec", nsName}, args...)...) }
	in("wg", "set", ifname, "private-key", keyFile, "listen-port", "51999",
		"peer", p1.PublicKey().String(), "allowed-ips", "10.55.0.2/32",
		"peer", p2.PublicKey().String(), "allowed-ips", "10.55.0.3/32,192.168.77.0/24")
	in("ip", "addr", "add", "10.55.0.1/24", "dev", ifname)
	in("ip", "link", "set", ifname, "up")
	// netctl's sharded tree (docs/dataplane.md): the root HTB 2: sends a
	// limited address to its shard class 2:1<last octet> by hashed u32;
	// the shard's own HTB picks the peer's class 1<last octet>:1.
	shaped := func(dev, field, addr string, shard, rate string) {
		in("tc", "class", "add", "dev", dev, "parent", "2:", "classid", "2:"+shard, "htb", "rate", "10gbit", "quantum", "60000")
		in("tc", "qdisc", "add", "dev", dev, "parent", "2:"+shard, "handle", shard+":", "htb")
		in("tc", "class", "add", "dev", dev, "parent", shard+":", "classid", shard+":1", "htb", "rate", rate, "quantum", "1500")
		at := map[string]string{"dst": "16", "src": "12"}[field]
		for _, q := range []string{"2:", shard + ":"} {
			in("tc", "filter", "add", "dev", dev, "parent", q, "prio", "10", "handle", "1:", "protocol", "ip", "u32", "divisor", "256")
			in("tc", "filter", "add", "dev", dev, "parent", q, "prio", "10", "protocol", "ip", "u32", "ht", "800::",
				"match", "ip", field, "10.55.0.0/24", "hashkey", "mask", "0x0000ff00", "at", at, "link", "1:")
		}
		in("tc", "filter", "add", "dev", dev, "parent", "2:", "prio", "10", "handle", "100:", "protocol", "ip", "u32", "divisor", "256")
		in("tc", "filter", "add", "dev", dev, "parent", "2:", "prio", "10", "protocol", "ip", "u32", "ht", "1:0:",
			"match", "ip", field, "10.55.0.0/24", "hashkey", "mask", "0x000000ff", "at", at, "link", "100:")
		last := addr[strings.LastIndex(addr, ".")+1:]
		in("tc", "filter", "add", "dev", dev, "parent", "2:", "prio", "10", "protocol", "ip", "handle", "100:"+last+":1", "u32", "ht", "100:"+last+":",
			"match", "ip", field, addr+"/32", "flowid", "2:"+shard)
		in("tc", "filter", "add", "dev", dev, "parent", shard+":", "prio", "10", "protocol", "ip", "handle", "1:0:1", "u32", "ht", "1:0:",
			"match", "ip", field, addr+"/32", "flowid", shard+":1")
	}
	// Download on the interface, keyed on the destination.
	in("tc", "qdisc", "add", "dev", ifname, "root", "handle", "2:", "htb")
	shaped(ifname, "dst", "10.55.0.2", "102", "20mbit")
	// Upload: ingress redirect to an IFB, the same tree there keyed on the source.
	in("ip", "link", "add", ifb, "type", "ifb")
	in("ip", "link", "set", ifb, "up")
	in("tc", "qdisc", "add", "dev", ifname, "handle", "ffff:", "ingress")
	in("tc", "filter", "add", "dev", ifname, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0",
		"action", "mirred", "egress", "redirect", "dev", ifb)
	in("tc", "qdisc", "add", "dev", ifb, "root", "handle", "2:", "htb")
	shaped(ifb, "src", "10.55.0.3", "103", "5mbit")

	// The node's rows: both peers, one with a different wish, and a third
	// peer blocked (absent from the kernel).
	db := pgtest.New(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	var nodeID, peer1, peer3 string
	if err := conn.QueryRow(ctx, `SELECT waylume.create_node('st', 'x:1', '10.55.0.1/24')::text`).Scan(&nodeID); err != nil {
		t.Fatal(err)
	}
	p3, _ := wgtypes.GeneratePrivateKey()
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key, address, download_kbps) VALUES ($1, $2, '10.55.0.2', 20000) RETURNING id::text`,
		nodeID, p1.PublicKey().String()).Scan(&peer1); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key, address, upload_kbps) VALUES ($1, $2, '10.55.0.3', 8000)`,
		nodeID, p2.PublicKey().String()); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key, address, enabled) VALUES ($1, $2, '10.55.0.4', false) RETURNING id::text`,
		nodeID, p3.PublicKey().String()).Scan(&peer3); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO waylume.peer_status (peer_id, node_id, state, reason) VALUES ($1, $2, 'blocked', 'disabled')`, peer3, nodeID); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{"WAYLUME_INTERFACE": ifname, "WAYLUME_DATABASE_URL": db.URL, "WAYLUME_NODE_ID": nodeID}
	var code int
	var out, stderr, table string
	inNamespace(t, nsName, func() {
		code, out, stderr = runCLI(t, env, "status", "--json")
		_, table, _ = runCLI(t, env, "status")
	})
	if code != exitOK {
		t.Fatalf("status: code %d: %s", code, stderr)
	}
	var rep status.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.PublicKey != node.PublicKey().String() || rep.ListenPort != 51999 || rep.Node == nil || rep.Node.ID != nodeID || rep.DBErr != "" {
		t.Fatalf("header: %+v", rep)
	}
	if len(rep.Peers) != 3 {
		t.Fatalf("want 3 peers, got %+v", rep.Peers)
	}
	byKey := map[string]status.Peer{}
	for _, p := range rep.Peers {
		byKey[p.PublicKey] = p
	}
	a, b, c := byKey[p1.PublicKey().String()], byKey[p2.PublicKey().String()], byKey[p3.PublicKey().String()]
	if !a.InKernel || a.ID != peer1 || a.DownloadKbps != 20000 || a.UploadKbps != 0 || *a.WantDownloadKbps != 20000 {
		t.Errorf("peer 1: %+v", a)
	}
	if !b.InKernel || b.UploadKbps != 5000 || b.DownloadKbps != 0 || *b.WantUploadKbps != 8000 {
		t.Errorf("peer 2 (upload limit via the IFB): %+v", b)
	}
	if c.InKernel || c.State != "blocked" || c.Reason != "disabled" {
		t.Errorf("peer 3: %+v", c)
	}
	for _, want := range []string{"20Mbit/s", "5Mbit/s (want 8Mbit/s)", "blocked (disabled)", "not in kernel", "3 peers, 0 active"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}

	// No such interface: a clear error and exit 1, the rows still shown.
	inNamespace(t, nsName, func() {
		env["WAYLUME_INTERFACE"] = "wlnone0"
		code, out, _ = runCLI(t, env, "status")
	})
	if code != exitFail || !strings.Contains(out, "no WireGuard device") || !strings.Contains(out, "blocked (disabled)") {
		t.Errorf("missing interface: code %d\n%s", code, out)
	}
}
