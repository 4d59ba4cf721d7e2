package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/node"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/reconcile"
)

// watched is an in-process node whose events and applies the test sees.
type watched struct {
	n       *node.Node
	mu      sync.Mutex
	events  []events.Event
	waiting map[reconcile.Key]chan time.Time
}

func (e *env) watch(t *testing.T, src string, resync time.Duration) *watched {
	w := &watched{waiting: map[reconcile.Key]chan time.Time{}}
	w.n = e.inProcess(t, src, resync, node.Observer{
		Event: func(ev events.Event) {
			w.mu.Lock()
			w.events = append(w.events, ev)
			w.mu.Unlock()
		},
		Applied: func(k reconcile.Key, at time.Time) {
			w.mu.Lock()
			if c, ok := w.waiting[k]; ok {
				c <- at
				delete(w.waiting, k)
			}
			w.mu.Unlock()
		},
	})
	return w
}

// commitToKernel inserts n peers one at a time and returns, for each, the
// time from the INSERT returning to the peer configured on the device.
func (w *watched) commitToKernel(t *testing.T, e *env, n int) []time.Duration {
	t.Helper()
	var lat []time.Duration
	for i := range n + 5 {
		k := newKey(t).PublicKey()
		c := make(chan time.Time, 1)
		w.mu.Lock()
		w.waiting[reconcile.Key(k)] = c
		w.mu.Unlock()
		e.addPeer(k, "")
		committed := time.Now()
		select {
		case at := <-c:
			if i >= 5 { // the first rows warm up the path
				lat = append(lat, at.Sub(committed))
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("row %d not applied within 30s", i)
		}
	}
	return lat
}

// Broadcast mode end to end: commit to kernel next to LISTEN's, a peer
// moved to B leaves A within a second, and none of B's events reach A.
func TestBroadcastMode(t *testing.T) {
	const rows = 200
	listenEnv := newEnvPool(t, "10.8.0.1/16")
	lw := listenEnv.watch(t, "listen", time.Hour)
	listenLat := lw.commitToKernel(t, listenEnv, rows)

	e := newEnvPool(t, "10.8.0.1/16")
	// Broadcasts are streamed from a replication connection, as on the
	// real server: no poll interval is in the path.
	e.withRealtime()
	b := dbfix.CreateNode(t, e.db, netns.Name("nodeb"), "10.9.0.1/16")
	w := e.watch(t, "broadcast", time.Hour)
	bcastLat := w.commitToKernel(t, e, rows)
	lp99, bp99 := percentile(listenLat, 0.99), percentile(bcastLat, 0.99)
	t.Logf("commit to kernel, %d rows: listen p50 %v p99 %v; broadcast p50 %v p99 %v",
		rows, percentile(listenLat, 0.5), lp99, percentile(bcastLat, 0.5), bp99)
	// The goal for every source is p99 under 50 ms; the ratio to LISTEN,
	// which a loaded machine's scheduling moves run to run, is logged
	// (BenchmarkEventToKernel reports it as p99-x-listen).
	t.Logf("broadcast p99 is %.1fx LISTEN's", float64(bp99)/float64(lp99))
	if bp99 > 50*time.Millisecond {
		t.Errorf("broadcast p99 %v over the 50 ms goal", bp99)
	}
	if e.rt.Broadcasts() == 0 {
		t.Fatal("no broadcast delivered: the events did not come through Broadcast from Database")
	}

	// B's rows change while A listens.
	bPeers := dbfix.AddPeers(t, e.db, b, 20)
	for _, id := range bPeers[:10] {
		e.exec(`UPDATE waylume.peers SET download_kbps = 1000 WHERE id = $1`, id)
	}
	e.exec(`DELETE FROM waylume.peers WHERE id = ANY($1::uuid[])`, bPeers[10:])
	e.exec(`UPDATE waylume.nodes SET mtu = 1400 WHERE id = $1`, b)

	// Move one of A's peers to B: it leaves A's device within a second.
	k := newKey(t).PublicKey()
	c := make(chan time.Time, 1)
	w.mu.Lock()
	w.waiting[reconcile.Key(k)] = c
	w.mu.Unlock()
	moved, _ := e.addPeer(k, "")
	<-c
	ctx := context.Background()
	e.exec(`UPDATE waylume.peers SET node_id = $1 WHERE id = $2`, b, moved)
	start := time.Now()
	var gone time.Duration
	for gone == 0 {
		st, err := w.n.DataPlane().Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(st, func(s reconcile.PeerStats) bool { return s.PublicKey == reconcile.Key(k) }) {
			gone = time.Since(start)
		} else if time.Since(start) > 5*time.Second {
			t.Fatal("moved peer still on A after 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("moved peer left A's device %v after the UPDATE", gone)
	if gone > time.Second {
		t.Errorf("moved peer left A after %v, want within 1s", gone)
	}

	// A last row of A's proves everything before it was delivered.
	w.commitToKernel(t, e, 0)
	w.mu.Lock()
	defer w.mu.Unlock()
	leaked := 0
	for _, ev := range w.events {
		if slices.Contains(bPeers, ev.ID) || ev.ID == b {
			leaked++
		}
	}
	t.Logf("A saw %d events; %d of them B's", len(w.events), leaked)
	if leaked != 0 {
		t.Errorf("%d of B's events reached A", leaked)
	}
}

// A channel that goes deaf after subscribing: a row committed meanwhile
// reaches the kernel within 2 minutes although the full resync is 10
// minutes away, by the canary's verdict and the rejoin's resync.
func TestBroadcastDeafChannel(t *testing.T) {
	e := newEnv(t)
	e.withRealtime()
	n := e.startNode("userspace", 10*time.Minute, time.Minute)
	// The join's own resync would pick up a row committed before it, so
	// the channel goes deaf only once the node has joined and a row has
	// reached the kernel after that.
	testkit.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(n.out.String(), "subscription live") {
			return errors.New("channel not joined")
		}
		return nil
	})
	first := newKey(t).PublicKey()
	e.addPeer(first, "")
	testkit.Eventually(t, 30*time.Second, func() error {
		p, err := e.nodePeers()
		if err != nil {
			return err
		}
		if _, ok := p[first.String()]; !ok {
			return errors.New("first peer not applied")
		}
		return nil
	})
	e.rt.SetDeaf(true)
	k := newKey(t).PublicKey()
	e.addPeer(k, "")
	committed := time.Now()
	testkit.Eventually(t, 2*time.Minute, func() error {
		p, err := e.nodePeers()
		if err != nil {
			return err
		}
		if _, ok := p[k.String()]; !ok {
			return fmt.Errorf("not on the device %v after the commit", time.Since(committed).Round(time.Second))
		}
		return nil
	})
	took := time.Since(committed)
	t.Logf("row committed on a deaf channel reached the kernel after %v (resync interval 10m)", took.Round(100*time.Millisecond))
	if !strings.Contains(n.out.String(), "canary") {
		t.Errorf("no canary verdict in the node's log")
	}
}

// The node binary against a join error no retry can fix (the project has
// no key for the node's token): at most 3 joins in 90 s, and /readyz and
// waylume_realtime_refused say why; once the server accepts joins again,
// the next slow retry gets through.
func TestBroadcastPermanentJoinError(t *testing.T) {
	if testing.Short() {
		t.Skip("90 s")
	}
	netns.Require(t, "curl")
	e := newEnv(t)
	e.extraEnv = append(e.extraEnv, "WAYLUME_METRICS_ADDR=127.0.0.1:9586")
	e.withRealtime()
	e.rt.SetJoinError(`JwtSignerError: Failed to generate JWT signer for key ID (kid) "k1", check your JWT secret or JWKS configuration`)
	n := e.startNode("userspace", time.Hour, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	testkit.Eventually(t, 30*time.Second, func() error {
		if len(e.rt.JoinTimes()) == 0 {
			return errors.New("no join yet")
		}
		if body := e.readyz(ctx); !strings.Contains(body, "JwtSignerError") {
			return fmt.Errorf("/readyz: %q", body)
		}
		return nil
	})
	metrics, _ := e.nodeNS.Run(ctx, "curl", "-s", "--max-time", "3", "http://127.0.0.1:9586/metrics")
	if !strings.Contains(metrics, "\nwaylume_realtime_refused 1\n") {
		t.Errorf("waylume_realtime_refused is not 1:\n%s", grepLines(metrics, "waylume_realtime_refused"))
	}
	first := e.rt.JoinTimes()[0]
	time.Sleep(time.Until(first.Add(90 * time.Second)))
	joins := e.rt.JoinTimes()
	if len(joins) > 3 {
		t.Fatalf("%d joins in 90 s, want at most 3: %v", len(joins), joins)
	}
	t.Logf("%d joins in 90 s", len(joins))
	if !strings.Contains(n.out.String(), "JwtSignerError") {
		t.Errorf("the refusal's reason is not in the node's log")
	}

	e.rt.SetJoinError("")
	testkit.Eventually(t, 90*time.Second, func() error {
		if body := e.readyz(ctx); !strings.HasPrefix(body, "ready") {
			return fmt.Errorf("/readyz: %q", body)
		}
		return nil
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
