package netctl

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The benchmarks compare netctl with the two ways an operator would do
// the same kernel work by hand, in the same run on the same host:
//
//   - shell: one process per step per peer (wg set, then tc class add and
//     tc filter add for download and for upload);
//   - bulk: one wg addconf for all peers and one tc -batch per device,
//     classes before filters (the order that is fastest for the kernel).
//
// Both baselines install exactly what netctl installs (hashed leaf filters
// in the same tables, same classes), so the ratios compare like with like.
// Run with: make bench, or
//
//	go test ./netctl -run '^$' -bench . -benchtime 1x
//
// Results are per peer (ms/peer); BenchmarkApply/ratios reports the
// ratios of the figures measured before it in the same run.

func benchPeers(b *testing.B, n int) []Peer {
	return manyPeers(b, n)
}

// inNode runs a command inside the bed's node namespace without the cost
// of `ip netns exec` (the thread is already in the namespace).
func (bd *bed) inNode(stdin []byte, name string, args ...string) error {
	return bd.link.ns.do(func() error {
		cmd := exec.Command(name, args...)
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
		}
		return nil
	})
}

// tcCommands are the tc lines (without "tc") that install p's limits the
// way netctl does: classes, then leaf filters.
func (bd *bed) tcCommands(p Peer) (classes, filters []string) {
	a, _ := p.ShapingAddr()
	v := addrU32(a)
	ht := bd.link.tc.layout.leafHT(v)
	devs := []string{bd.cfg.Interface, ifbName(bd.cfg.Interface)}
	fields := []string{"dst", "src"}
	rates := []int64{p.DownloadKbps, p.UploadKbps}
	for i, dev := range devs {
		classes = append(classes, fmt.Sprintf("class add dev %s parent 1: classid 1:%x htb rate %dkbit ceil %dkbit quantum %d",
			dev, classMinor(a), rates[i], rates[i], min(max(uint64(rates[i])*1000/8/10, minQuantum), maxQuantum)))
		filters = append(filters, fmt.Sprintf("filter add dev %s parent 1: prio %d protocol ip handle %x:%x:1 u32 ht %x:%x: match ip %s %v/32 flowid 1:%x",
			dev, filterPrio, ht, v&0xff, ht, v&0xff, fields[i], a, classMinor(a)))
	}
	return classes, filters
}

type benchResults map[string]float64 // ms per peer

func (r benchResults) report(b *testing.B, name string, d time.Duration, peers int) {
	ms := float64(d.Microseconds()) / 1000 / float64(peers)
	r[name] = ms
	b.ReportMetric(ms, "ms/peer")
	b.ReportMetric(float64(d.Milliseconds()), "ms/total")
}

func BenchmarkApply(b *testing.B) {
	res := benchResults{}
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("netctl-cold/peers=%d", n), func(b *testing.B) {
			var total time.Duration
			for range b.N {
				bd := newBed(b, nil)
				peers := benchPeers(b, n)
				start := time.Now()
				bd.sync(peers...)
				total += time.Since(start)
			}
			res.report(b, b.Name(), total/time.Duration(b.N), n)
		})
	}
	b.Run("netctl-nochange/peers=10000", func(b *testing.B) {
		bd := newBed(b, nil)
		peers := benchPeers(b, 10000)
		bd.sync(peers...)
		// The reconciler polls Stats every few seconds; that read keeps
		// the peer mirror fresh, which is the steady state measured here.
		// netctl-nochange-reread below measures a stale mirror.
		if _, err := bd.link.Stats(context.Background()); err != nil {
			b.Fatal(err)
		}
		calls, ops := bd.wg.configures.Load(), bd.link.tc.ops
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			bd.sync(peers...)
		}
		d := time.Since(start) / time.Duration(b.N)
		b.StopTimer()
		if bd.wg.configures.Load() != calls || bd.link.tc.ops != ops {
			b.Fatal("a no-change re-apply changed something")
		}
		res.report(b, b.Name(), d, 10000)
		b.ReportMetric(float64(d.Microseconds())/1000, "ms/apply")
	})
	b.Run("netctl-nochange-reread/peers=10000", func(b *testing.B) {
		// The same, forcing SyncPeers to read the whole device and the
		// installed classes and filters first (what it does when its
		// mirrors are stale).
		bd := newBed(b, nil)
		peers := benchPeers(b, 10000)
		bd.sync(peers...)
		var d time.Duration
		for range b.N {
			bd.link.peersLoaded, bd.link.tc.loaded = time.Time{}, time.Time{}
			start := time.Now()
			bd.sync(peers...)
			d += time.Since(start)
		}
		d /= time.Duration(b.N)
		res.report(b, b.Name(), d, 10000)
		b.ReportMetric(float64(d.Microseconds())/1000, "ms/apply")
	})
	b.Run("shell/peers=1000", func(b *testing.B) {
		var total time.Duration
		for range b.N {
			bd := newBed(b, nil)
			peers := benchPeers(b, 1000)
			start := time.Now()
			for _, p := range peers {
				if err := bd.inNode(nil, "wg", "set", bd.cfg.Interface, "peer", p.PublicKey.String(), "allowed-ips", p.AllowedIPs[0].String()); err != nil {
					b.Fatal(err)
				}
				classes, filters := bd.tcCommands(p)
				for _, c := range append(classes, filters...) {
					if err := bd.inNode(nil, "tc", strings.Fields(c)...); err != nil {
						b.Fatal(err)
					}
				}
			}
			total += time.Since(start)
		}
		res.report(b, b.Name(), total/time.Duration(b.N), 1000)
	})
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("bulk/peers=%d", n), func(b *testing.B) {
			var total time.Duration
			for range b.N {
				bd := newBed(b, nil)
				peers := benchPeers(b, n)
				var conf, batch bytes.Buffer
				var filters []string
				for _, p := range peers {
					fmt.Fprintf(&conf, "[Peer]\nPublicKey = %s\nAllowedIPs = %s\n\n", p.PublicKey, p.AllowedIPs[0])
					cs, fs := bd.tcCommands(p)
					for _, c := range cs {
						batch.WriteString(c + "\n")
					}
					filters = append(filters, fs...)
				}
				for _, f := range filters {
					batch.WriteString(f + "\n")
				}
				start := time.Now()
				if err := bd.inNode(conf.Bytes(), "wg", "addconf", bd.cfg.Interface, "/dev/stdin"); err != nil {
					b.Fatal(err)
				}
				if err := bd.inNode(batch.Bytes(), "tc", "-batch", "-"); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			res.report(b, b.Name(), total/time.Duration(b.N), n)
		})
	}
	b.Run("ratios", func(b *testing.B) {
		get := func(name string) float64 { return res["BenchmarkApply/"+name] }
		if v := get("shell/peers=1000"); v > 0 {
			b.ReportMetric(v/get("netctl-cold/peers=1000"), "shell/netctl@1k")
		}
		for _, n := range []string{"1000", "10000"} {
			if v := get("bulk/peers=" + n); v > 0 {
				b.ReportMetric(get("netctl-cold/peers="+n)/v, "netctl/bulk@"+n)
			}
		}
	})
}
