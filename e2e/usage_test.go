package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
)

// The device outlives the node (an external wireguard-go adopted in kernel
// mode, as the kernel module would be). iperf3 traffic flows the whole
// time; the node is SIGKILLed at random points across more than 20 usage
// flushes and restarted, and the database is stopped for a while in
// between. At the end the bytes in peer_usage equal the device's counters
// exactly.
func TestUsageExactlyOnceAcrossKills(t *testing.T) {
	e := newEnv(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	e.externalDevice()
	start := func() *process { return e.startNode("kernel", 2*time.Second, time.Second) }
	n := start()
	ck := newKey(t)
	id, addr := e.addPeer(ck.PublicKey(), "")
	cli := e.client(ck, addr)
	testkit.Eventually(t, 30*time.Second, func() error { return e.cliNS.Ping(ctx, nodeTunnel, 1) })
	netns.StartIperfServer(t, e.nodeNS, nodeTunnel, 5202)

	// Traffic both ways, rate-limited by iperf3 itself, until stopped.
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; trafficCtx.Err() == nil; i++ {
			args := []string{"-c", nodeTunnel, "-p", "5202", "-t", "2", "-b", "30M"}
			if i%2 == 1 {
				args = append(args, "-R")
			}
			e.cliNS.Run(trafficCtx, "iperf3", args...) // a run cut by a kill is fine: bytes are bytes
		}
	}()

	// Committed flushes so far: traffic never stops, so each flush adds
	// to a bucket row.
	flushes := func() int {
		var c int
		if err := e.queryRow(`SELECT coalesce(sum(flushes), 0)::int FROM waylume.peer_usage WHERE peer_id = $1`, []any{id}, &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	kills := 0
	for cycle := 0; cycle < 8 || flushes() < 20; cycle++ {
		if cycle > 60 {
			t.Fatalf("only %d flushes committed in %d cycles", flushes(), cycle)
		}
		up := time.Duration(300+rng.IntN(2700)) * time.Millisecond
		if cycle == 4 {
			// The database goes away under a running node, for a while.
			time.Sleep(time.Second) // let the node get going before the outage (no synchronisation implied)
			if err := e.db.Cluster.StopServer(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(4 * time.Second) // the outage itself
			if err := e.db.Cluster.StartServer(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(up) // a random point in the flush cycle to kill at
		n.kill()
		kills++
		if cycle == 6 {
			// A restart while the database is down: the node waits for it.
			if err := e.db.Cluster.StopServer(); err != nil {
				t.Fatal(err)
			}
			n = start()
			time.Sleep(2 * time.Second)
			n.kill()
			kills++
			if err := e.db.Cluster.StartServer(); err != nil {
				t.Fatal(err)
			}
		}
		n = start()
	}
	stopTraffic()
	wg.Wait()
	// Freeze the counters: no client, no traffic. Then a clean stop.
	cli.Stop()
	rx, tx := e.frozenCounters(ck.PublicKey().String())
	e.waitOnline()
	if err := n.stop(t); err != nil {
		t.Fatalf("node exit: %v", err)
	}
	var up, down, rows int64
	if err := e.queryRow(`SELECT coalesce(sum(upload_bytes),0), coalesce(sum(download_bytes),0), count(*)
		FROM waylume.peer_usage WHERE peer_id = $1`, []any{id}, &up, &down, &rows); err != nil {
		t.Fatal(err)
	}
	var stUp, stDown int64
	if err := e.queryRow(`SELECT upload_bytes, download_bytes FROM waylume.peer_status WHERE peer_id = $1`, []any{id}, &stUp, &stDown); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d SIGKILLs; device rx %d tx %d; peer_usage up %d down %d in %d rows; status totals %d/%d", kills, rx, tx, up, down, rows, stUp, stDown)
	if rx < 10<<20 || tx < 10<<20 {
		t.Fatalf("too little traffic to mean anything: rx %d tx %d", rx, tx)
	}
	if up != rx || down != tx {
		t.Fatalf("usage %d/%d != device counters %d/%d (diff %d/%d)", up, down, rx, tx, up-rx, down-tx)
	}
	if stUp != up || stDown != down {
		t.Fatalf("status totals %d/%d != usage %d/%d", stUp, stDown, up, down)
	}
}

// With a 5 s flush interval and steady traffic for a minute, the peer
// owns one usage row (two across an hour boundary), incremented in place,
// and its bytes equal the device's counters exactly.
func TestUsageOneRowPerBucket(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.externalDevice()
	n := e.startNode("kernel", 30*time.Second, 5*time.Second)
	ck := newKey(t)
	id, addr := e.addPeer(ck.PublicKey(), "")
	cli := e.client(ck, addr)
	testkit.Eventually(t, 30*time.Second, func() error { return e.cliNS.Ping(ctx, nodeTunnel, 1) })
	netns.StartIperfServer(t, e.nodeNS, nodeTunnel, 5203)
	began := time.Now()
	if _, err := e.cliNS.Run(ctx, "iperf3", "-c", nodeTunnel, "-p", "5203", "-t", "62", "-b", "2M", "--bidir"); err != nil {
		t.Fatalf("iperf3: %v", err)
	}
	var rows, flushes int
	if err := e.queryRow(`SELECT count(*), coalesce(sum(flushes), 0)::int FROM waylume.peer_usage WHERE peer_id = $1`, []any{id}, &rows, &flushes); err != nil {
		t.Fatal(err)
	}
	hours := 1
	if began.Truncate(time.Hour) != time.Now().Truncate(time.Hour) {
		hours = 2
	}
	t.Logf("after %s of traffic: %d rows, %d flushes in them", time.Since(began).Round(time.Second), rows, flushes)
	if rows > hours || flushes < 10 {
		t.Fatalf("%d usage rows from %d flushes, want at most %d row(s) from at least 10 flushes", rows, flushes, hours)
	}
	cli.Stop()
	rx, tx := e.frozenCounters(ck.PublicKey().String())
	e.waitOnline()
	if err := n.stop(t); err != nil {
		t.Fatalf("node exit: %v", err)
	}
	var up, down int64
	if err := e.queryRow(`SELECT sum(upload_bytes)::bigint, sum(download_bytes)::bigint, count(*) FROM waylume.peer_usage WHERE peer_id = $1`,
		[]any{id}, &up, &down, &rows); err != nil {
		t.Fatal(err)
	}
	if up != rx || down != tx || rows > hours {
		t.Fatalf("usage %d/%d in %d rows, device counters %d/%d", up, down, rows, rx, tx)
	}
}

// Kernel mode: the node is stopped, the peer's row deleted and re-created
// with the same key, the node started. The device still holds the peer
// with its counters, already billed under the old id: the new row is
// billed only the bytes that follow.
func TestUsageRecreatedRowNotBilledTwice(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.externalDevice()
	n := e.startNode("kernel", 30*time.Second, time.Second)
	ck := newKey(t)
	oldID, addr := e.addPeer(ck.PublicKey(), "")
	cli := e.client(ck, addr)
	testkit.Eventually(t, 30*time.Second, func() error { return e.cliNS.Ping(ctx, nodeTunnel, 1) })
	netns.StartIperfServer(t, e.nodeNS, nodeTunnel, 5204)
	if _, err := e.cliNS.Run(ctx, "iperf3", "-c", nodeTunnel, "-p", "5204", "-t", "2", "-b", "20M"); err != nil {
		t.Fatalf("iperf3: %v", err)
	}
	cli.Stop()
	rx0, tx0 := e.frozenCounters(ck.PublicKey().String())
	e.waitOnline()
	if err := n.stop(t); err != nil {
		t.Fatalf("node exit: %v", err)
	}
	e.exec(`DELETE FROM waylume.peers WHERE id = $1`, oldID)
	newID, _ := e.addPeer(ck.PublicKey(), "address="+"'"+addr+"'")
	n = e.startNode("kernel", 30*time.Second, time.Second)
	// Bytes that pass before the node has adopted the device are not the
	// new row's to bill either: traffic starts once its status is written.
	testkit.Eventually(t, 30*time.Second, func() error {
		_, err := e.status(newID)
		return err
	})
	cli = e.client(ck, addr)
	testkit.Eventually(t, 30*time.Second, func() error { return e.cliNS.Ping(ctx, nodeTunnel, 1) })
	if _, err := e.cliNS.Run(ctx, "iperf3", "-c", nodeTunnel, "-p", "5204", "-t", "1", "-b", "5M"); err != nil {
		t.Fatalf("iperf3: %v", err)
	}
	cli.Stop()
	rx, tx := e.frozenCounters(ck.PublicKey().String())
	e.waitOnline()
	if err := n.stop(t); err != nil {
		t.Fatalf("node exit: %v", err)
	}
	sum := func(id string) (up, down int64) {
		t.Helper()
		if err := e.queryRow(`SELECT coalesce(sum(upload_bytes), 0)::bigint, coalesce(sum(download_bytes), 0)::bigint
			FROM waylume.peer_usage WHERE peer_id = $1`, []any{id}, &up, &down); err != nil {
			t.Fatal(err)
		}
		return up, down
	}
	oldUp, oldDown := sum(oldID)
	newUp, newDown := sum(newID)
	t.Logf("device %d/%d at the re-creation, %d/%d at the end; old row billed %d/%d, new row %d/%d", rx0, tx0, rx, tx, oldUp, oldDown, newUp, newDown)
	if oldUp != rx0 || oldDown != tx0 {
		t.Fatalf("old row billed %d/%d, want the counters at its deletion %d/%d", oldUp, oldDown, rx0, tx0)
	}
	if newUp != rx-rx0 || newDown != tx-tx0 {
		t.Fatalf("new row billed %d/%d, want only the bytes since %d/%d", newUp, newDown, rx-rx0, tx-tx0)
	}
}

// externalDevice starts a wireguard-go for the node's interface that
// outlives the node, as the kernel module's device would.
func (e *env) externalDevice() {
	t := e.t
	dev := e.nodeNS.Start(t, "wireguard-go", "-f", e.iface)
	testkit.Eventually(t, 10*time.Second, func() error {
		if exited, err := dev.Exited(); exited {
			return fmt.Errorf("wireguard-go exited: %v: %s", err, dev.Output())
		}
		_, err := os.Stat(filepath.Join("/var/run/wireguard", e.iface+".sock"))
		return err
	})
}

// frozenCounters waits until a peer's counters stop moving and returns them.
func (e *env) frozenCounters(pub string) (rx, tx int64) {
	testkit.Eventually(e.t, 20*time.Second, func() error {
		r1, t1, err := e.deviceCounters(pub)
		if err != nil {
			return err
		}
		time.Sleep(1500 * time.Millisecond) // counters must stay still this long to count as frozen
		r2, t2, err := e.deviceCounters(pub)
		if err != nil {
			return err
		}
		if r1 != r2 || t1 != t2 {
			return errors.New("counters still moving")
		}
		rx, tx = r2, t2
		return nil
	})
	return rx, tx
}

// waitOnline waits until the running node is past its startup (its first
// heartbeat), so that a stop then is a clean one.
func (e *env) waitOnline() {
	testkit.Eventually(e.t, 30*time.Second, func() error {
		var st string
		if err := e.queryRow(`SELECT coalesce(status,'') FROM waylume.node_overview WHERE id = $1`, []any{e.nodeID}, &st); err != nil {
			return err
		}
		if st != "online" {
			return fmt.Errorf("node status %q", st)
		}
		return nil
	})
}

// deviceCounters reads the node-side counters of one peer.
func (e *env) deviceCounters(pub string) (rx, tx int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps, err := netns.WGDump(ctx, e.nodeNS, e.iface)
	if err != nil {
		return 0, 0, err
	}
	for _, p := range ps {
		if p.PublicKey == pub {
			return p.RxBytes, p.TxBytes, nil
		}
	}
	return 0, 0, fmt.Errorf("peer %s not on the device", pub)
}
