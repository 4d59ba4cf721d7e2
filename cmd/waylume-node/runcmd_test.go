package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/internal/pgtest"
)

var built struct {
	once sync.Once
	path string
	err  error
}

// binary builds the command once per test run.
func binary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "waylume-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.path = filepath.Join(dir, "waylume-node")
		// The flags of `make build`, so the build cache is shared with it.
		cmd := exec.Command("go", "build", "-trimpath", "-o", built.path, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// The real process: a bad setting exits 2 with one line, through main's
// os.Exit path.
func TestProcessExitCodeOnBadConfig(t *testing.T) {
	cmd := exec.Command(binary(t), "run")
	cmd.Env = []string{"WAYLUME_DATABASE_URL=postgres://n@db.example/x?sslmode=require", "WAYLUME_NODE_ID=" + goodNode, "WAYLUME_WG_MODE=turbo"}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitConfig {
		t.Fatalf("exit: %v", err)
	}
	if string(out) != "waylume-node: invalid --wg-mode (WAYLUME_WG_MODE): unknown mode \"turbo\": want auto, kernel or userspace\n" {
		t.Errorf("output %q", out)
	}
}

// nsGet makes an HTTP GET from inside namespace ns: the socket is created
// on a thread in ns and keeps that namespace.
func nsGet(t *testing.T, ns, url string) (int, string) {
	t.Helper()
	addr := strings.TrimPrefix(url, "http://")
	addr, path, _ := strings.Cut(addr, "/")
	var conn net.Conn
	var err error
	inNamespace(t, ns, func() { conn, err = net.DialTimeout("tcp", addr, 5*time.Second) })
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, ns, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	bufio.NewReader(resp.Body).WriteTo(&b)
	return resp.StatusCode, b.String()
}

// `waylume-node run` as a process in a namespace (embedded userspace
// WireGuard, LISTEN/NOTIFY, the node's own login role): ready, metrics
// served on loopback only with the documented series, SIGTERM exits 0 and
// marks the node offline.
func TestRunProcessServesMetricsAndStopsOnSIGTERM(t *testing.T) {
	needTools(t, "ip", "iptables-restore", "tc", "ss")
	bin := binary(t)
	db := pgtest.New(t)
	admin := map[string]string{"WAYLUME_DATABASE_URL": db.URL}
	if code, _, stderr := runCLI(t, admin, "migrate"); code != exitOK {
		t.Fatal(stderr)
	}
	code, out, stderr := runCLI(t, admin, "node", "create", "--name", "rc", "--endpoint", "x:51820", "--address", "10.61.0.1/24",
		"--login-password-file", filepath.Join(t.TempDir(), "pw"))
	if code != exitOK {
		t.Fatal(stderr)
	}
	nodeID := strings.TrimSpace(out)
	role := "waylume_node_" + strings.ReplaceAll(nodeID, "-", "")
	sqlExec(t, db.URL, `INSERT INTO waylume.peers (node_id, public_key, download_kbps) VALUES ($1, $2, 10000)`,
		nodeID, "hXzCMdqbAl8W3FA6bAGSuUyg8Nq2xr+fp9UJ7M5Bg1c=")

	id := os.Getpid() % 100000
	ns := fmt.Sprintf("wl-rc-%d", id)
	ifname := fmt.Sprintf("wlrc%d", id)
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", ns).Run()
		os.Remove("/var/run/wireguard/" + ifname + ".sock")
	})
	sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	sh(t, "ip", "-n", ns, "link", "add", "wlrcu", "type", "veth", "peer", "name", "wlrcv")
	sh(t, "ip", "-n", ns, "link", "set", "wlrcu", "up")

	keyFile := filepath.Join(t.TempDir(), "key")
	cmd := exec.Command("ip", "netns", "exec", ns, bin, "run")
	cmd.Env = append(os.Environ(),
		"WAYLUME_DATABASE_URL="+db.URLAs(role), "WAYLUME_NODE_ID="+nodeID, "WAYLUME_INTERFACE="+ifname,
		"WAYLUME_WG_MODE=userspace", "WAYLUME_PRIVATE_KEY_FILE="+keyFile,
		"WAYLUME_EGRESS_INTERFACE=wlrcu", "WAYLUME_USAGE_INTERVAL=1s", "WAYLUME_LOG_LEVEL=debug")
	var logs strings.Builder
	var logMu sync.Mutex
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { logMu.Lock(); defer logMu.Unlock(); return logs.Write(p) })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			logMu.Lock()
			t.Logf("node log:\n%s", logs.String())
			logMu.Unlock()
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		c := exec.Command("ip", "netns", "exec", ns, bin, "healthcheck", "--ready")
		if c.Run() == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("the node exited before it was ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready within 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Loopback only, by default.
	ss, err := exec.Command("ip", "netns", "exec", ns, "ss", "-Htln").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ss), "127.0.0.1:9586") || strings.Contains(string(ss), "*:9586") || strings.Contains(string(ss), "0.0.0.0:9586") {
		t.Errorf("listening sockets:\n%s", ss)
	}

	code, body := nsGet(t, ns, "http://127.0.0.1:9586/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, series := range []string{
		"waylume_build_info", "waylume_peers", "waylume_active_sessions",
		"waylume_reconcile_duration_seconds", "waylume_reconcile_errors_total",
		"waylume_events_received_total", "waylume_events_applied_total", "waylume_events_coalesced_total",
		"waylume_usage_flush_duration_seconds", "waylume_usage_flush_errors_total", "waylume_usage_backlog_bytes",
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(body, "\n"+series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if !strings.Contains(body, `waylume_peers{state="active"} 1`) {
		t.Errorf("waylume_peers does not count the one peer:\n%s", grepLines(body, "waylume_peers"))
	}
	if code, _ := nsGet(t, ns, "http://127.0.0.1:9586/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit within 30s of SIGTERM")
	}
	var status string
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SELECT status FROM waylume.node_overview WHERE id = $1", nodeID).Scan(&status); err != nil || status != "offline" {
		t.Errorf("node status after SIGTERM: %q %v", status, err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	key, err := os.ReadFile(keyFile)
	if err != nil || len(strings.TrimSpace(string(key))) != 44 {
		t.Fatalf("the node did not create its key file: %v", err)
	}
	if strings.Contains(logs.String(), strings.TrimSpace(string(key))) {
		t.Error("the log contains the private key")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
