//go:build containertest

package main

// The shipped image run by a real engine the way compose.yaml runs the
// node service: `make container-test` (scripts/container-test.sh) builds
// the image and runs this with WAYLUME_CONTAINER_IMAGE set.
//
// The container joins a network namespace the test made (podman --network
// ns:PATH), joined by a veth pair to a client namespace: no engine network
// is created, nothing changes in the host's namespace, and a real
// WireGuard client reaches the node's UDP port. The database is the
// package's throwaway cluster, reached through its unix socket the way
// compose.yaml's node reaches its local database (the pgsocket volume).

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
)

const (
	ctrNodeAddr  = "10.8.0.1/24"
	ctrPool      = "10.8.0.0/24"
	ctrUnderNode = "10.99.0.1"
	ctrUnderCli  = "10.99.0.2"
	ctrSocketDir = "/run/postgresql" // compose.yaml: pgsocket
)

// podmanRunArgs maps compose.yaml's node service to `podman run` flags.
// Every key of the service must be known here, so a setting added to
// compose.yaml cannot silently go untested. vols maps named volumes to
// host directories; network is the container's network namespace.
func podmanRunArgs(t *testing.T, svc map[string]any, vols map[string]string, envFile, network string) (flags, command []string) {
	t.Helper()
	strs := func(k string) []string {
		var out []string
		for _, v := range svc[k].([]any) {
			out = append(out, v.(string))
		}
		return out
	}
	flags = []string{"--network", network, "--pull", "never"}
	keys := make([]string, 0, len(svc))
	for k := range svc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "build", "image", "depends_on":
			// The image under test is given; the database is ours.
		case "restart":
			// A restart would hide the exit this test checks.
		case "ports":
			// Not published: the client is in a namespace joined to the
			// node's, and reaches the port directly (checked below).
		case "command":
			command = strs(k)
		case "env_file":
			for _, f := range svc[k].([]any) {
				if f.(map[string]any)["path"] != "node.env" {
					t.Fatalf("compose.yaml env_file %v: the test writes node.env only", f)
				}
			}
			flags = append(flags, "--env-file", envFile)
		case "cap_drop", "cap_add", "devices", "tmpfs", "security_opt":
			flag := map[string]string{"cap_drop": "--cap-drop", "cap_add": "--cap-add", "devices": "--device",
				"tmpfs": "--tmpfs", "security_opt": "--security-opt"}[k]
			for _, v := range strs(k) {
				flags = append(flags, flag, v)
			}
		case "sysctls":
			for name, v := range svc[k].(map[string]any) {
				flags = append(flags, "--sysctl", name+"="+v.(string))
			}
		case "read_only":
			// podman adds tmpfs mounts of its own to a read-only root;
			// Docker does not, so neither does this run.
			flags = append(flags, "--read-only="+svc[k].(string), "--read-only-tmpfs=false")
		case "volumes":
			for _, v := range strs(k) {
				name, rest, _ := strings.Cut(v, ":")
				dir, ok := vols[name]
				if !ok {
					t.Fatalf("compose.yaml volume %s: no directory for it in this test", name)
				}
				flags = append(flags, "--volume", dir+":"+rest)
			}
		case "healthcheck":
			h := svc[k].(map[string]any)
			test := h["test"].([]any)
			if test[0] != "CMD" {
				t.Fatalf("healthcheck %v: want the exec form", test)
			}
			var words []string
			for _, w := range test[1:] {
				words = append(words, strconv.Quote(w.(string)))
			}
			flags = append(flags, "--health-cmd", "["+strings.Join(words, ",")+"]",
				"--health-interval", h["interval"].(string), "--health-timeout", h["timeout"].(string),
				"--health-start-period", h["start_period"].(string), "--health-retries", h["retries"].(string))
		case "stop_grace_period":
			d, err := time.ParseDuration(svc[k].(string))
			if err != nil {
				t.Fatal(err)
			}
			flags = append(flags, "--stop-timeout", strconv.Itoa(int(d.Seconds())))
		default:
			t.Fatalf("compose.yaml node service sets %s, which this test does not map to podman", k)
		}
	}
	return flags, command
}

func podman(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "podman", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func mustPodman(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := podman(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ctrNode is the database side of the test: the node row, its login and
// what compose's node.env would hold.
type ctrNode struct {
	id, envFile string
	socket      string // the cluster's socket directory
	queryRow    func(t *testing.T, sql string, args []any, dest ...any)
}

func newCtrNode(t *testing.T) ctrNode {
	dbfix.SupabaseRoles(t)
	db := dbfix.Migrated(t)
	id := dbfix.CreateNode(t, db, netns.Name("ctr"), ctrNodeAddr)
	login, err := url.Parse(dbfix.NodeLogin(t, db, id))
	if err != nil {
		t.Fatal(err)
	}
	// The socket directory is private to the cluster's user; the node has
	// no CAP_DAC_OVERRIDE, so it may only pass through to the socket.
	if err := os.Chmod(db.Cluster.Socket, 0o711); err != nil {
		t.Fatal(err)
	}
	q := login.Query()
	q.Set("host", ctrSocketDir)
	login.RawQuery = q.Encode()
	envFile := filepath.Join(t.TempDir(), "node.env")
	env := "WAYLUME_NODE_ID=" + id + "\nWAYLUME_DATABASE_URL=" + login.String() + "\nWAYLUME_LOG_FORMAT=text\n"
	if err := os.WriteFile(envFile, []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	return ctrNode{id: id, envFile: envFile, socket: db.Cluster.Socket, queryRow: func(t *testing.T, sql string, args []any, dest ...any) {
		t.Helper()
		dbfix.QueryRow(t, db, sql, args, dest...)
	}}
}

func TestContainer(t *testing.T) {
	image := os.Getenv("WAYLUME_CONTAINER_IMAGE")
	if image == "" {
		t.Fatal("WAYLUME_CONTAINER_IMAGE not set: run make container-test")
	}
	netns.Require(t, "podman", "wireguard-go", "wg", "ss")
	node := newCtrNode(t)

	nodeNS, cliNS := netns.New(t, "ctn"), netns.New(t, "ctc")
	uplink := netns.Name("vn")
	netns.Veth(t, nodeNS, uplink, ctrUnderNode+"/24", cliNS, netns.Name("vc"), ctrUnderCli+"/24")
	// A container's uplink is its default route; NAT goes out there.
	nodeNS.MustRun(t, "ip", "route", "add", "default", "via", ctrUnderCli)

	stateDir := t.TempDir() // the nodekey volume
	flags, command := podmanRunArgs(t, composeService(t, "node"),
		map[string]string{"nodekey": stateDir, "pgsocket": node.socket},
		node.envFile, "ns:"+nodeNS.Path())
	name := "waylume-ct-" + netns.Name("")
	args := append([]string{"run", "-d", "--name", name, "--label", "waylume.container-test"}, flags...)
	args = append(append(args, image), command...)
	t.Logf("podman %s", strings.Join(args, " "))
	mustPodman(t, args...)
	// Registered after the namespaces: removed before they are checked
	// for leftover processes.
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := podman(context.Background(), "logs", name)
			t.Logf("container log:\n%s", tail(out, 6000))
		}
		if out, err := podman(context.Background(), "rm", "-f", "-t", "0", name); err != nil {
			t.Errorf("remove container: %v: %s", err, out)
		}
	})

	t.Run("healthcheck", func(t *testing.T) { ctrHealthy(t, name) })
	t.Run("check", func(t *testing.T) { ctrCheck(t, name) })
	t.Run("peer", func(t *testing.T) { ctrPeer(t, name, node, nodeNS, cliNS) })
	t.Run("sigterm", func(t *testing.T) { ctrStop(t, name, node) })
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// ctrHealthy waits for the image's healthcheck, run by the engine, to
// pass. podman schedules it on a systemd timer, and a CI machine may have
// no systemd: the test runs it the way the timer would.
func ctrHealthy(t *testing.T, name string) {
	testkit.Eventually(t, 90*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if state, _ := podman(ctx, "inspect", "--format", "{{.State.Status}}", name); strings.TrimSpace(state) != "running" {
			return fmt.Errorf("%w: container %s", errStopped, strings.TrimSpace(state))
		}
		_, err := podman(ctx, "healthcheck", "run", name)
		return err
	})
	if got := strings.TrimSpace(mustPodman(t, "inspect", "--format", "{{.State.Health.Status}}", name)); got != "healthy" {
		t.Errorf("health status %q, want healthy", got)
	}
}

var errStopped = errors.New("not running")

// ctrCheck runs the preflight inside the container, with the container's
// capabilities (NET_ADMIN only): every line must be ok.
func ctrCheck(t *testing.T, name string) {
	out, err := podman(context.Background(), "exec", name, "waylume-node", "check")
	t.Logf("waylume-node check in the container:\n%s", out)
	if err != nil {
		t.Fatalf("check failed: %v", err)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, "ok ") && l != "all checks passed" {
			t.Errorf("check line not ok: %s", l)
		}
	}
	// The capabilities really are compose's: NET_ADMIN alone.
	status := mustPodman(t, "exec", name, "grep", "^CapEff:", "/proc/self/status")
	if f := strings.Fields(status); len(f) != 2 || f[1] != fmt.Sprintf("%016x", 1<<12) {
		t.Errorf("effective capabilities %q, want NET_ADMIN (bit 12) only", strings.TrimSpace(status))
	}
}

// ctrPeer is the app backend's part and a real client: a peer row, the
// node applying it, a handshake and a ping through the tunnel, the row's
// status and `waylume-node status` in the container.
func ctrPeer(t *testing.T, name string, node ctrNode, nodeNS, cliNS *netns.NS) {
	var pubText string
	testkit.Eventually(t, 30*time.Second, func() error {
		node.queryRow(t, `SELECT coalesce(public_key, '') FROM waylume.nodes WHERE id = $1`, []any{node.id}, &pubText)
		if pubText == "" {
			return errors.New("the node has not published its public key")
		}
		return nil
	})
	nodePub, err := wgtypes.ParseKey(pubText)
	if err != nil {
		t.Fatal(err)
	}
	if out := nodeNS.MustRun(t, "ss", "-Hlun", "sport = :51820"); strings.TrimSpace(out) == "" {
		t.Fatal("nothing listens on UDP 51820 in the container's namespace (compose publishes that port)")
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	var peerID, addr string
	node.queryRow(t, `INSERT INTO waylume.peers (node_id, public_key, download_kbps, persistent_keepalive)
		VALUES ($1, $2, 20000, 5) RETURNING id::text, host(address)`, []any{node.id, key.PublicKey().String()}, &peerID, &addr)
	c := netns.StartWGClient(t, cliNS, netns.WGClientConfig{
		Address: addr + "/32", Route: ctrPool, ServerKey: nodePub, PrivateKey: &key,
		Endpoint: ctrUnderNode + ":51820", Keepalive: 5,
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	testkit.Eventually(t, 30*time.Second, func() error {
		return cliNS.Ping(ctx, "10.8.0.1", 1)
	})
	peers, err := c.Peers(ctx)
	if err != nil || len(peers) != 1 || peers[0].LatestHandshake.IsZero() {
		t.Fatalf("client peers %+v (%v): want one with a handshake", peers, err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		var state string
		node.queryRow(t, `SELECT state FROM waylume.peer_status WHERE peer_id = $1`, []any{peerID}, &state)
		if state != "active" {
			return fmt.Errorf("peer_status state %q, want active", state)
		}
		return nil
	})
	out := mustPodman(t, "exec", name, "waylume-node", "status")
	t.Logf("waylume-node status in the container:\n%s", out)
	if !strings.Contains(out, key.PublicKey().String()[:8]) && !strings.Contains(out, peerID) {
		t.Errorf("waylume-node status does not show the peer %s", peerID)
	}
}

// ctrStop stops the container the way `docker compose stop` does: SIGTERM
// (the image's STOPSIGNAL), a clean exit within the grace period, the node
// marked offline.
func ctrStop(t *testing.T, name string, node ctrNode) {
	start := time.Now()
	mustPodman(t, "stop", "-t", "30", name)
	took := time.Since(start)
	code := strings.TrimSpace(mustPodman(t, "inspect", "--format", "{{.State.ExitCode}}", name))
	if code != "0" {
		t.Errorf("exit code %s after SIGTERM, want 0", code)
	}
	if took > 25*time.Second {
		t.Errorf("stop took %v: SIGTERM did not end the node (the engine killed it)", took)
	}
	var status string
	node.queryRow(t, `SELECT status FROM waylume.node_overview WHERE id = $1`, []any{node.id}, &status)
	if status != "offline" {
		t.Errorf("node status %q after SIGTERM, want offline", status)
	}
	t.Logf("stopped in %v, exit code %s, node %s", took.Round(time.Millisecond), code, status)
}
