package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/node"
	"github.com/waylume/waylume-node/internal/testkit"
)

// The memory benchmarks' node: 10,000 peers in its /16.
const (
	memPeers      = 10_000
	nodeAddrBench = "10.8.0.1/16"
)

// seedLimitedPeers adds n peers the way a production row looks: a
// preshared key and both limits, so the node installs WireGuard peers and
// tc classes for each. persistent_keepalive stays NULL as usual: the
// client keeps the tunnel alive, the node sends none.
func (e *env) seedLimitedPeers(tb testing.TB, n int) {
	tb.Helper()
	dbfix.AddPeers(tb, e.db, e.nodeID, n)
	dbfix.Exec(tb, e.db, `UPDATE waylume.peers SET preshared_key = `+dbfix.RandomKeySQL+`,
		download_kbps = 20000, upload_kbps = 5000`)
}

// waitApplied waits until a usage flush has written every peer's status
// and the node's device holds want peers. It polls the database, not the
// device: a read of the device is garbage in the device process, which
// the memory benchmark would then count.
func (e *env) waitApplied(tb testing.TB, want int) {
	tb.Helper()
	testkit.Eventually(tb, 10*time.Minute, func() error {
		var rows int
		if err := e.queryRow(`SELECT count(*) FROM waylume.peer_status WHERE node_id = $1 AND state = 'active'`, []any{e.nodeID}, &rows); err != nil {
			return err
		}
		if rows != want {
			return fmt.Errorf("%d active status rows, want %d", rows, want)
		}
		return nil
	})
	p, err := e.nodePeers()
	if err != nil {
		tb.Fatal(err)
	}
	if len(p) != want {
		tb.Fatalf("%d peers on the device with %d active status rows", len(p), want)
	}
}

// memory is what a set of processes held over a steady window: the
// highest summed VmRSS (the worst moment, a read's garbage included), the
// median summed VmRSS and PSS (what they typically hold), and each
// process's median VmRSS, in kB.
type memory struct {
	maxRSS, rss, pss int
	each             []int
}

// steadyMemory samples the summed VmRSS and PSS of pids every 250 ms and
// returns the last window of samples once RSS has stopped moving: the
// medians of the window's first and second halves within 1% of each
// other. A threshold on the spread would never pass a window that holds a
// device read, whose garbage comes and goes; the medians only move while
// memory still settles. window spans the node's resync and usage
// intervals, so a steady window includes both.
func steadyMemory(tb testing.TB, pids []int, window time.Duration) memory {
	tb.Helper()
	const every = 250 * time.Millisecond
	keep := int(window / every)
	var rss, pss []int
	each := make([][]int, len(pids))
	tick := time.NewTicker(every)
	defer tick.Stop()
	deadline := time.Now().Add(5 * time.Minute)
	for ; ; <-tick.C {
		sum := 0
		for i, pid := range pids {
			kb := rssKB(tb, pid)
			each[i] = lastN(append(each[i], kb), keep)
			sum += kb
		}
		rss, pss = lastN(append(rss, sum), keep), lastN(append(pss, pssKB(tb, pids...)), keep)
		if len(rss) < keep {
			continue
		}
		a, b := median(rss[:keep/2]), median(rss[keep/2:])
		if abs(a-b) <= max(a, b)/100 {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("VmRSS not steady after 5 minutes: window medians %d and %d kB", a, b)
		}
	}
	m := memory{maxRSS: slices.Max(rss), rss: median(rss), pss: median(pss)}
	for _, e := range each {
		m.each = append(m.each, median(e))
	}
	return m
}

func lastN(s []int, n int) []int {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func median(s []int) int { return slices.Sorted(slices.Values(s))[len(s)/2] }

func abs(n int) int { return max(n, -n) }

// pssKB is the summed proportional set size of pids: each page shared
// by processes (the node and its device process run one executable)
// counted once across them, where summed VmRSS counts it in each.
func pssKB(tb testing.TB, pids ...int) int {
	tb.Helper()
	sum := 0
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			tb.Fatal(err)
		}
		found := false
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
				n, err := strconv.Atoi(f[1])
				if err != nil {
					tb.Fatalf("smaps_rollup of %d: %q", pid, l)
				}
				sum, found = sum+n, true
			}
		}
		if !found {
			tb.Fatalf("no Pss in smaps_rollup of %d", pid)
		}
	}
	return sum
}

// bare is wgbare (e2e/testdata/wgbare) running in its own namespace.
type bare struct {
	cmd   *exec.Cmd
	ns    *netns.NS
	iface string
}

// startBare builds wgbare from this module, so it links the same
// wireguard-go version as the node, and runs it in a new namespace with
// Go's default GC settings.
func startBare(tb testing.TB) *bare {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "wgbare")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/waylume/waylume-node/e2e/testdata/wgbare").CombinedOutput(); err != nil {
		tb.Fatalf("build wgbare: %v\n%s", err, out)
	}
	ns := netns.New(tb, "wb")
	b := &bare{ns: ns, iface: netns.Name("wgb")}
	b.cmd = ns.Command(context.Background(), bin, b.iface)
	b.cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "GOGC=") || strings.HasPrefix(kv, "GOMEMLIMIT=")
	})
	out := &testkit.Buffer{}
	b.cmd.Stdout, b.cmd.Stderr = out, out
	if err := b.cmd.Start(); err != nil {
		tb.Fatalf("start wgbare: %v", err)
	}
	done := make(chan struct{})
	go func() { b.cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		b.cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			b.cmd.Process.Kill()
			<-done
		}
		os.Remove(filepath.Join("/var/run/wireguard", b.iface+".sock"))
		if tb.Failed() {
			tb.Logf("wgbare output:\n%s", tail(out.String(), 4000))
		}
	})
	testkit.Eventually(tb, 10*time.Second, func() error {
		select {
		case <-done:
			return fmt.Errorf("wgbare exited: %s", out.String())
		default:
		}
		_, err := os.Stat("/var/run/wireguard/" + b.iface + ".sock")
		return err
	})
	return b
}

// copyDevice gives the bare device what the node's holds: its key, port
// and every peer with its preshared key, keepalive and allowed IPs, over
// the UAPI socket, and sets the interface up so the peers start as the
// node's did.
func (b *bare) copyDevice(tb testing.TB, from string) {
	tb.Helper()
	c, err := wgctrl.New()
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	dev, err := c.Device(from)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := wgtypes.Config{PrivateKey: &dev.PrivateKey, ListenPort: &dev.ListenPort, Peers: make([]wgtypes.PeerConfig, len(dev.Peers))}
	for i, p := range dev.Peers {
		cfg.Peers[i] = wgtypes.PeerConfig{PublicKey: p.PublicKey, PresharedKey: &p.PresharedKey,
			PersistentKeepaliveInterval: &p.PersistentKeepaliveInterval, ReplaceAllowedIPs: true, AllowedIPs: p.AllowedIPs}
	}
	if err := c.ConfigureDevice(b.iface, cfg); err != nil {
		tb.Fatal(err)
	}
	b.ns.MustRun(tb, "ip", "addr", "add", nodeAddrBench, "dev", b.iface)
	b.ns.MustRun(tb, "ip", "link", "set", b.iface, "up")
	got, err := c.Device(b.iface)
	if err != nil {
		tb.Fatal(err)
	}
	if len(got.Peers) != len(dev.Peers) {
		tb.Fatalf("bare device holds %d peers, want %d", len(got.Peers), len(dev.Peers))
	}
}

// BenchmarkUserspaceRSS: resident memory of the node binary in userspace
// mode holding 10,000 limited peers (the node and its device process
// together), beside a bare wireguard-go of the same module version holding
// the same peers, both sampled over the same steady window in the same run
// (the node's spans a resync and a flush; the bare device is never read).
// The node runs with its own GC default (GOGC 25), its device process and
// the bare device with Go's (100). node-MB is the median summed VmRSS over
// the window, node-max-MB the highest, a read's garbage included; both
// count the executable's pages the two processes share twice. The PSS
// figures count shared pages once.
func BenchmarkUserspaceRSS(b *testing.B) {
	e := newEnvPool(b, nodeAddrBench)
	// As in production: the harness's debug level would have the device
	// format a line per peer event.
	e.extraEnv = append(e.extraEnv, "WAYLUME_LOG_LEVEL=info")
	e.seedLimitedPeers(b, memPeers)
	const resync, usage = 5 * time.Second, 10 * time.Second
	n := e.startNode("userspace", resync, usage)
	e.waitApplied(b, memPeers)
	pids := withChildren(b, n.cmd.Process.Pid)
	if len(pids) != 2 {
		b.Fatalf("node processes %v, want the node and its device process", pids)
	}
	cpu0, t0 := cpuTicks(b, pids), time.Now()
	node := steadyMemory(b, pids, usage+resync)
	cpu := float64(cpuTicks(b, pids)-cpu0) / clockTicks / time.Since(t0).Seconds()

	w := startBare(b)
	w.copyDevice(b, e.iface)
	base := steadyMemory(b, []int{w.cmd.Process.Pid}, usage+resync)

	mb := func(kb int) float64 { return float64(kb) / 1024 }
	perPeer := func(kb int) float64 { return float64(kb) / memPeers }
	b.ReportMetric(mb(node.rss), "node-MB")
	b.ReportMetric(mb(node.maxRSS), "node-max-MB")
	b.ReportMetric(mb(node.each[0]), "node-process-MB")
	b.ReportMetric(mb(node.each[1]), "device-process-MB")
	b.ReportMetric(mb(base.rss), "bare-MB")
	b.ReportMetric(perPeer(node.rss-base.rss), "node-minus-bare-KB/peer")
	b.ReportMetric(perPeer(node.maxRSS-base.maxRSS), "node-minus-bare-max-KB/peer")
	b.ReportMetric(mb(node.pss), "node-pss-MB")
	b.ReportMetric(mb(base.pss), "bare-pss-MB")
	b.ReportMetric(perPeer(node.pss-base.pss), "node-minus-bare-pss-KB/peer")
	b.ReportMetric(100*cpu, "node-steady-cpu-%")
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// cpuTicks is the user plus system time pids have used, in clock ticks.
func cpuTicks(tb testing.TB, pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		sum += cpuTicksOf(tb, pid)
	}
	return sum
}

func cpuTicksOf(tb testing.TB, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which may hold spaces: utime and
	// stime are the 12th and 13th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		tb.Fatalf("/proc/%d/stat: %v %v", pid, err1, err2)
	}
	return u + s
}

// BenchmarkUserspaceHeap: the same node, its production wiring run in this
// process (package node) with its device in its own as in production, for
// what RSS cannot tell: the node's live heap after a collection and its
// goroutines, with the test binary's own subtracted. With
// WAYLUME_HEAP_PROFILE=path it writes the heap profile there (go tool
// pprof -sample_index=inuse_space path).
func BenchmarkUserspaceHeap(b *testing.B) {
	e := newEnvPool(b, nodeAddrBench)
	e.seedLimitedPeers(b, memPeers)
	heap0, g0 := liveHeap()
	n := e.inProcess(b, "listen", time.Hour, node.Observer{})
	ctx := context.Background()
	testkit.Eventually(b, 10*time.Minute, func() error {
		st, err := n.DataPlane().Stats(ctx)
		if err != nil {
			return err
		}
		if len(st) != memPeers {
			return fmt.Errorf("%d peers on the device, want %d", len(st), memPeers)
		}
		return nil
	})
	if err := n.Reconciler().Resync(ctx); err != nil {
		b.Fatal(err)
	}
	if err := n.Reconciler().Flush(ctx); err != nil {
		b.Fatal(err)
	}
	heap, g := liveHeap()
	if path := os.Getenv("WAYLUME_HEAP_PROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(heap-heap0)/(1<<20), "heap-live-MB")
	b.ReportMetric(float64(g-g0), "goroutines")
}

func liveHeap() (bytes uint64, goroutines int) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, runtime.NumGoroutine()
}
