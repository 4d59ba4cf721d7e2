package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/statefile"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/reconcile"
)

// A userspace node (its device dies with the process) is SIGKILLed and
// started again with the database stopped: it serves the peers it saved,
// the client reaches it again within 20 s with its limit in force, and
// /readyz says so. When the database returns, usage resumes: the bytes the
// client moved meanwhile are in peer_usage, and every byte is there once
// (the sum equals what the two devices counted).
func TestStartWithoutDatabase(t *testing.T) {
	netns.Require(t, "curl")
	e := newEnv(t)
	e.extraEnv = append(e.extraEnv, "WAYLUME_METRICS_ADDR=127.0.0.1:9586")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := func() *process { return e.startNode("userspace", 2*time.Second, time.Second) }
	n := start()

	const kbps = 8000
	ck := newKey(t)
	id, addr := e.addPeer(ck.PublicKey(), fmt.Sprintf("download_kbps=%d", kbps))
	cli := e.client(ck, addr)
	testkit.Eventually(t, 30*time.Second, func() error { return e.cliNS.Ping(ctx, nodeTunnel, 1) })
	netns.StartIperfServer(t, e.nodeNS, nodeTunnel, 5203)
	before := shapedDownload(ctx, t, e, 5203, kbps)
	t.Logf("before the kill: %.1f Mbit/s against a %d kbit/s limit", before/1e6, kbps)

	// The saved state holds the peer with its limit; the usage so far is
	// committed (no traffic, counters still, peer_usage equal to them).
	file := statefile.New(filepath.Dir(e.keyFile), "state.json")
	testkit.Eventually(t, 20*time.Second, func() error {
		var s reconcile.LocalState
		if _, err := file.Read(e.nodeID, reconcile.LocalStateVersion, &s); err != nil {
			return err
		}
		if len(s.Peers) != 1 || s.Peers[0].ID != id || s.Peers[0].DownloadKbps != kbps {
			return fmt.Errorf("saved peers %+v", s.Peers)
		}
		return nil
	})
	rx1, tx1 := e.frozenCounters(ck.PublicKey().String())
	testkit.Eventually(t, 20*time.Second, func() error {
		up, down, err := e.usage(id)
		if err != nil {
			return err
		}
		if up != rx1 || down != tx1 {
			return fmt.Errorf("usage %d/%d, device %d/%d", up, down, rx1, tx1)
		}
		return nil
	})

	n.kill()
	// The client keeps trying, as a real one does: its handshake retries
	// run from its first packet after the kill.
	reached := make(chan time.Time, 1)
	pingCtx, stopPing := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for pingCtx.Err() == nil {
			if e.cliNS.Ping(pingCtx, nodeTunnel, 1) == nil {
				reached <- time.Now()
				return
			}
		}
	})
	defer func() { stopPing(); wg.Wait() }()
	if err := e.db.Cluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	dbDown := true
	defer func() {
		if dbDown {
			e.db.Cluster.StartServer()
		}
	}()
	started := time.Now()
	n = start()
	testkit.Eventually(t, 20*time.Second, func() error {
		peers, err := e.nodePeers()
		if err != nil {
			return err
		}
		if got := peers[ck.PublicKey().String()]; got != addr+"/32" {
			return fmt.Errorf("the peer is not back on the device: %q", got)
		}
		return nil
	})
	t.Logf("the node put the peer back %v after its start", time.Since(started).Round(100*time.Millisecond))
	select {
	case at := <-reached:
		// Mostly the client's own retry timer: WireGuard starts a new
		// handshake 15 s after its first packet left unanswered.
		t.Logf("the client reached the node %v after its start", at.Sub(started).Round(100*time.Millisecond))
	case <-time.After(20*time.Second - time.Since(started)):
		t.Fatal("the client did not reach the node within 20 s of its start with the database down")
	}
	if body := e.readyz(ctx); !strings.Contains(body, reconcile.ErrServingLocalState.Error()) {
		t.Errorf("/readyz while the database is down: %q", body)
	}
	if !strings.Contains(n.out.String(), "serving from local state") {
		t.Error("no log line says the node serves from local state")
	}
	netns.StartIperfServer(t, e.nodeNS, nodeTunnel, 5204)
	offline := shapedDownload(ctx, t, e, 5204, kbps)
	t.Logf("database down: %.1f Mbit/s against a %d kbit/s limit", offline/1e6, kbps)

	if err := e.db.Cluster.StartServer(); err != nil {
		t.Fatal(err)
	}
	dbDown = false
	testkit.Eventually(t, 90*time.Second, func() error {
		if body := e.readyz(ctx); !strings.HasPrefix(body, "ready") {
			return fmt.Errorf("/readyz: %q", body)
		}
		return nil
	})
	stopPing()
	wg.Wait()
	cli.Stop()
	rx2, tx2 := e.frozenCounters(ck.PublicKey().String())
	if rx2 == 0 || tx2 < 1<<20 {
		t.Fatalf("the new device counted %d/%d: too little to mean anything", rx2, tx2)
	}
	var up, down int64
	testkit.Eventually(t, 30*time.Second, func() error {
		var err error
		if up, down, err = e.usage(id); err != nil {
			return err
		}
		if up != rx1+rx2 || down != tx1+tx2 {
			return fmt.Errorf("usage %d/%d, devices %d+%d/%d+%d", up, down, rx1, rx2, tx1, tx2)
		}
		return nil
	})
	var stUp, stDown int64
	if err := e.queryRow(`SELECT upload_bytes, download_bytes FROM waylume.peer_status WHERE peer_id = $1`, []any{id}, &stUp, &stDown); err != nil {
		t.Fatal(err)
	}
	if stUp != up || stDown != down {
		t.Fatalf("status totals %d/%d != usage %d/%d", stUp, stDown, up, down)
	}
	t.Logf("peer_usage %d/%d = before the kill %d/%d + while and after the outage %d/%d", up, down, rx1, tx1, rx2, tx2)
	if err := n.stop(t); err != nil {
		t.Fatalf("node exit: %v", err)
	}
}

// shapedDownload measures the client's download and checks it against the
// limit with the tolerance of the other shaping tests.
func shapedDownload(ctx context.Context, t *testing.T, e *env, port, kbps int) float64 {
	t.Helper()
	r, err := netns.Iperf(ctx, e.cliNS, nodeTunnel, port, 4*time.Second, true)
	if err != nil {
		t.Fatal(err)
	}
	if x := r.ReceivedBitsPerSecond / float64(kbps*1000); x < 0.6 || x > 1.15 {
		t.Errorf("shaped rate %.2f x the limit", x)
	}
	return r.ReceivedBitsPerSecond
}

// usage sums a peer's peer_usage rows.
func (e *env) usage(peerID string) (up, down int64, err error) {
	err = e.queryRow(`SELECT coalesce(sum(upload_bytes),0), coalesce(sum(download_bytes),0) FROM waylume.peer_usage WHERE peer_id = $1`,
		[]any{peerID}, &up, &down)
	return up, down, err
}

// readyz is the body of the node's /readyz, from inside its namespace.
func (e *env) readyz(ctx context.Context) string {
	out, _ := e.nodeNS.Run(ctx, "curl", "-s", "--max-time", "3", "http://127.0.0.1:9586/readyz")
	return strings.TrimSpace(out)
}

// A userspace node whose device process dies (the OOM killer, a stray
// kill) has lost its interface and every session: it says so and exits
// with an error, for its supervisor to restart it, rather than serving
// nothing while reporting ready.
func TestDeviceProcessKilled(t *testing.T) {
	e := newEnv(t)
	n := e.startNode("userspace", time.Minute, time.Minute)
	testkit.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(n.out.String(), "node running") {
			return fmt.Errorf("node not running yet")
		}
		return nil
	})
	pids := withChildren(t, n.cmd.Process.Pid)
	if len(pids) != 2 {
		t.Fatalf("node processes %v, want the node and its device process", pids)
	}
	if err := syscall.Kill(pids[1], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		t.Fatal("node still running 30s after its device process was killed")
	}
	var exit *exec.ExitError
	if !errors.As(n.err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("node exit: %v, want exit status 1", n.err)
	}
	if out := n.out.String(); !strings.Contains(out, "device lost") || !strings.Contains(out, fmt.Sprintf("pid %d", pids[1])) {
		t.Fatalf("node output does not report the lost device process %d:\n%s", pids[1], tail(out, 4000))
	}
}
