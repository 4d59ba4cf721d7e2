// Package e2e runs the waylume-node binary for real: inside a network
// namespace, against a throwaway PostgreSQL, with a Debian wireguard-go +
// wg client in another namespace, iperf3 traffic, and either the LISTEN
// source or the Realtime test server.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	vnetns "github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

var binPath string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "waylume-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "waylume-node")
	out, err := exec.Command("go", "build", "-o", binPath, "github.com/waylume/waylume-node/cmd/waylume-node").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build waylume-node: %v\n%s", err, out)
		return 1
	}
	code := pgtest.Main(m)
	// Every node a test starts runs in a namespace the harness checks for
	// leftovers; this catches one started anywhere else.
	if left := running(binPath); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "waylume-node processes left running (killed now): %v\n", left)
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		return 1
	}
	return code
}

// running lists the processes executing the binary at path.
func running(path string) []int {
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", d.Name(), "exe")); err == nil && exe == path {
			pids = append(pids, pid)
		}
	}
	return pids
}

const (
	jwtSecret  = "e2e-secret-jwt-token-with-at-least-32-characters-long"
	nodeAddr   = "10.8.0.1/24"
	nodeTunnel = "10.8.0.1"
	pool       = "10.8.0.0/24"
	underNode  = "10.99.0.1"
	underCli   = "10.99.0.2"
	listenPort = 51820
)

// env is one node: its database, namespaces, key, and the running binary.
type env struct {
	t        testing.TB
	db       *pgtest.DB
	admin    *pgx.Conn
	nodeID   string
	nodeURL  string // the node's own login: RLS applies
	nodeNS   *netns.NS
	cliNS    *netns.NS
	iface    string
	uplink   string // the node namespace's end of the veth: NAT egress
	keyFile  string
	nodePub  wgtypes.Key
	extraEnv []string
	rt       *realtimetest.Server
	rtURL    string               // as seen from inside the node's namespace
	rtPoll   time.Duration        // the test server's slot poll; 0: 5 ms
	authRT   *realtimetest.Server // Realtime of withAuthProject
}

func newEnv(t testing.TB) *env { return newEnvPool(t, nodeAddr) }

// newEnvPool is newEnv with the node address (and pool) given.
func newEnvPool(t testing.TB, address string) *env {
	t.Helper()
	netns.Require(t, "wireguard-go", "wg", "iperf3", "tc", "iptables", "ss")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Shaped like a Supabase project (realtime schema included), so
	// Broadcast from Database is set up by the migrations as there.
	e := &env{t: t, db: dbfix.MigratedSupabase(t)}
	e.nodeID = dbfix.CreateNode(t, e.db, netns.Name("node"), address)
	e.nodeURL = dbfix.NodeLogin(t, e.db, e.nodeID)
	admin, err := pgx.Connect(ctx, e.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	e.admin = admin

	e.nodeNS = netns.New(t, "wn")
	e.cliNS = netns.New(t, "wc")
	e.uplink = netns.Name("vn")
	netns.Veth(t, e.nodeNS, e.uplink, underNode+"/24", e.cliNS, netns.Name("vc"), underCli+"/24")
	e.iface = netns.Name("wgn")
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	e.nodePub = key.PublicKey()
	e.keyFile = filepath.Join(t.TempDir(), "private.key")
	if err := os.WriteFile(e.keyFile, []byte(key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A kernel-mode device outlives the node; its UAPI socket is the
		// host's. The namespace going away removes the interface.
		os.Remove(filepath.Join("/var/run/wireguard", e.iface+".sock"))
	})
	return e
}

// withRealtime starts the Realtime test server on the host's loopback and
// a forwarder to it on the node namespace's loopback.
func (e *env) withRealtime() {
	t := e.t
	dbfix.Exec(t, e.db, `GRANT waylume_node, service_role TO realtime_admin`)
	// pgtest runs with synchronous_commit off: logical decoding sees only
	// flushed WAL, so a commit would reach the slot up to wal_writer_delay
	// (200 ms) late. A real server commits synchronously.
	dbfix.Exec(t, e.db, `ALTER DATABASE `+e.db.Name+` SET synchronous_commit = on`)
	e.admin.Close(context.Background())
	admin, err := pgx.Connect(context.Background(), e.db.URL) // picks up the setting
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	e.admin = admin
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	poll := e.rtPoll
	if poll == 0 {
		poll = 5 * time.Millisecond
	}
	srv, err := realtimetest.New(ctx, realtimetest.Config{DatabaseURL: e.db.URLAs("realtime_admin"), JWTSecret: jwtSecret, PollInterval: poll})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	e.rt = srv
	target := strings.TrimPrefix(strings.TrimSuffix(srv.URL(), "/realtime/v1/websocket"), "ws://")
	addr := forwardInto(t, e.nodeNS, target)
	e.rtURL = "ws://" + addr + "/realtime/v1/websocket"
}

// forwardInto listens on the loopback of ns and forwards each connection
// to target on the host's loopback. The listening socket is made inside ns
// by a thread that enters it; sockets keep their namespace afterwards.
func forwardInto(t testing.TB, ns *netns.NS, target string) string {
	t.Helper()
	ln, err := func() (net.Listener, error) {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		defer orig.Close()
		h, err := vnetns.GetFromName(ns.Name)
		if err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		defer h.Close()
		if err := vnetns.Set(h); err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		ln, lerr := net.Listen("tcp", "127.0.0.1:0")
		if err := vnetns.Set(orig); err != nil {
			return nil, fmt.Errorf("return to the host namespace: %w", err) // thread stays locked: it dies with the goroutine
		}
		runtime.UnlockOSThread()
		return ln, lerr
	}()
	if err != nil {
		t.Fatalf("listen in %s: %v", ns.Name, err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// process is one run of the binary.
type process struct {
	t    testing.TB
	cmd  *exec.Cmd
	out  *testkit.Buffer
	done chan struct{}
	err  error
}

// startNode runs `waylume-node run` in the node namespace.
func (e *env) startNode(mode string, resync, usage time.Duration) *process {
	t := e.t
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", e.nodeNS.Name, binPath, "run")
	cmd.Env = append(os.Environ(),
		"WAYLUME_DATABASE_URL="+e.nodeURL,
		"WAYLUME_NODE_ID="+e.nodeID,
		"WAYLUME_INTERFACE="+e.iface,
		"WAYLUME_WG_MODE="+mode,
		"WAYLUME_PRIVATE_KEY_FILE="+e.keyFile,
		"WAYLUME_EGRESS_INTERFACE="+e.uplink,
		"WAYLUME_ALLOW_LOCAL=tcp/5201-5210", // the tests' iperf3 servers on the node
		"WAYLUME_RESYNC_INTERVAL="+resync.String(),
		"WAYLUME_USAGE_INTERVAL="+usage.String(),
		"WAYLUME_METRICS_ADDR=",
		"WAYLUME_LOG_LEVEL=debug",
		"WAYLUME_LOG_FORMAT=text",
	)
	if e.rt != nil {
		cmd.Env = append(cmd.Env,
			"WAYLUME_REALTIME_URL="+e.rtURL,
			"WAYLUME_SUPABASE_KEY="+realtimetest.AnonKey(jwtSecret),
			"WAYLUME_ACCESS_TOKEN="+realtimetest.NodeToken(jwtSecret, e.nodeID, time.Hour))
	}
	cmd.Env = append(cmd.Env, e.extraEnv...)
	n := &process{t: t, cmd: cmd, out: &testkit.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = n.out, n.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	go func() { n.err = cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("node output:\n%s", tail(n.out.String(), 8000))
		}
	})
	return n
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// stop sends SIGTERM and waits for the clean shutdown.
func (n *process) stop(t testing.TB) error {
	select {
	case <-n.done:
		return n.err
	default:
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
		t.Errorf("node did not stop within 30s of SIGTERM")
	}
	return n.err
}

// kill is SIGKILL: no flush, no goodbye. A userspace node's device
// process goes with it: kill waits until it has, and fails the test if it
// does not, since a node started next would find the old device closing.
func (n *process) kill() {
	n.t.Helper()
	children := withChildren(n.t, n.cmd.Process.Pid)[1:]
	n.cmd.Process.Kill()
	<-n.done
	testkit.Eventually(n.t, 5*time.Second, func() error {
		for _, pid := range children {
			if alive(pid) {
				return fmt.Errorf("the killed node's child %d is still running", pid)
			}
		}
		return nil
	})
}

// alive reports whether pid runs: it exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// withChildren is pid and the processes it started: the node and its
// userspace device process.
func withChildren(tb testing.TB, pid int) []int {
	tb.Helper()
	pids := []int{pid}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	for _, d := range dirs {
		child, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// The parent pid is the second field after the command name.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			pids = append(pids, child)
		}
	}
	return pids
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.admin.Exec(ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// addPeer inserts a peer for key (address allocated) and returns its id and address.
func (e *env) addPeer(pub wgtypes.Key, extra string) (id, addr string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cols, vals := "", ""
	if extra != "" {
		kv := strings.SplitN(extra, "=", 2)
		cols, vals = ", "+kv[0], ", "+kv[1]
	}
	if err := e.admin.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key`+cols+`) VALUES ($1, $2`+vals+`)
		RETURNING id::text, host(address)`, e.nodeID, pub.String()).Scan(&id, &addr); err != nil {
		e.t.Fatalf("insert peer: %v", err)
	}
	return id, addr
}

// queryRow runs one query on a fresh connection: the admin connection
// does not survive a database restart.
func (e *env) queryRow(sql string, args []any, dest ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, e.db.URL)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	return c.QueryRow(ctx, sql, args...).Scan(dest...)
}

type status struct {
	State, Reason string
}

func (e *env) status(peerID string) (status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s status
	err := e.admin.QueryRow(ctx, `SELECT state, reason FROM waylume.peer_status WHERE peer_id = $1`, peerID).Scan(&s.State, &s.Reason)
	return s, err
}

// nodePeers lists the public keys the node's device holds, with their allowed IPs.
func (e *env) nodePeers() (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := e.nodeNS.Run(ctx, "wg", "show", e.iface, "allowed-ips")
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			m[f[0]] = strings.Join(f[1:], " ")
		}
	}
	return m, nil
}

func (e *env) nodePeersMust(t testing.TB) map[string]string {
	t.Helper()
	p, err := e.nodePeers()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// client starts a wireguard-go client for a fresh key (returned) at addr.
func (e *env) client(key wgtypes.Key, addr string) *netns.WGClient {
	return netns.StartWGClient(e.t, e.cliNS, netns.WGClientConfig{
		Address: addr + "/32", Route: pool, ServerKey: e.nodePub, PrivateKey: &key,
		Endpoint: underNode + ":" + strconv.Itoa(listenPort),
	})
}

func newKey(t testing.TB) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
