package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/testkit"
)

// The node driven by rows, through LISTEN/NOTIFY and through the Realtime
// test server: insert -> handshake; limit -> iperf3 rate; a stolen address
// rejected while the owner keeps working; lost events repaired by the
// resync; delete -> handshake stops; SIGTERM -> offline, usage flushed.
func TestNodeLifecycle(t *testing.T) {
	for _, src := range []string{"listen", "realtime"} {
		t.Run(src, func(t *testing.T) {
			e := newEnv(t)
			// LISTEN: a resync far away, so everything below is applied
			// by events. Realtime: a short one repairs the lost events.
			resync := time.Minute
			if src == "realtime" {
				e.withRealtime()
				e.extraEnv = append(e.extraEnv, "WAYLUME_REALTIME_MODE=postgres_changes")
				resync = 3 * time.Second
			}
			n := e.startNode("userspace", resync, time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()

			testkit.Eventually(t, 30*time.Second, func() error {
				var st, pub string
				if err := e.admin.QueryRow(ctx, `SELECT coalesce(status,''), coalesce(public_key,'') FROM waylume.node_overview WHERE id = $1`, e.nodeID).Scan(&st, &pub); err != nil {
					return err
				}
				if st != "online" || pub != e.nodePub.String() {
					return fmt.Errorf("node row: status %q public_key %q", st, pub)
				}
				return nil
			})

			// Insert -> the client handshakes.
			ck := newKey(t)
			id, addr := e.addPeer(ck.PublicKey(), "")
			cli := e.client(ck, addr)
			testkit.Eventually(t, 20*time.Second, func() error { return e.cliNS.Ping(ctx, nodeTunnel, 1) })
			ps, err := cli.Peers(ctx)
			if err != nil || len(ps) != 1 || ps[0].LatestHandshake.IsZero() {
				t.Fatalf("client handshake: %+v %v", ps, err)
			}
			waitStatus(t, e, id, "active", "")

			// Limit -> iperf3 sees the new rate (download: node -> client).
			netns.StartIperfServer(t, e.nodeNS, nodeTunnel, 5201)
			free, err := netns.Iperf(ctx, e.cliNS, nodeTunnel, 5201, 3*time.Second, true)
			if err != nil {
				t.Fatal(err)
			}
			const kbps = 8000
			e.exec(`UPDATE waylume.peers SET download_kbps = $2 WHERE id = $1`, id, kbps)
			testkit.Eventually(t, 10*time.Second, func() error {
				out, err := e.nodeNS.Run(ctx, "tc", "class", "show", "dev", e.iface)
				if err != nil {
					return err
				}
				if !strings.Contains(out, "rate 8Mbit") {
					return fmt.Errorf("no 8Mbit class yet: %s", out)
				}
				return nil
			})
			shaped, err := netns.Iperf(ctx, e.cliNS, nodeTunnel, 5201, 4*time.Second, true)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("download unlimited %.1f Mbit/s, limited to %d kbit/s: %.1f Mbit/s", free.ReceivedBitsPerSecond/1e6, kbps, shaped.ReceivedBitsPerSecond/1e6)
			if r := shaped.ReceivedBitsPerSecond / (kbps * 1000); r < 0.6 || r > 1.15 {
				t.Errorf("shaped rate %.2f x the limit", r)
			}
			if free.ReceivedBitsPerSecond < 2*kbps*1000 {
				t.Errorf("unlimited rate %.1f Mbit/s is too low to tell the limit apart", free.ReceivedBitsPerSecond/1e6)
			}

			// A row stealing the owner's address: the database's unique
			// constraint is dropped to let the bad row in; the node still
			// refuses it and the owner keeps its traffic.
			e.exec(`ALTER TABLE waylume.peers DROP CONSTRAINT peers_node_address_key`)
			tk := newKey(t)
			thief, _ := e.addPeer(tk.PublicKey(), "address='"+addr+"/32'")
			waitStatus(t, e, thief, "rejected", "invalid: address "+addr+" already used by peer "+id)
			peers, err := e.nodePeers()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := peers[tk.PublicKey().String()]; ok {
				t.Fatal("the thief's key is on the device")
			}
			if got := peers[ck.PublicKey().String()]; got != addr+"/32" {
				t.Fatalf("owner's allowed IPs %q", got)
			}
			if err := e.cliNS.Ping(ctx, nodeTunnel, 2); err != nil {
				t.Fatalf("owner lost traffic: %v", err)
			}

			// A node config change is applied without dropping the peer:
			// its WireGuard session (last handshake) stays the same.
			ps, _ = cli.Peers(ctx)
			hs := ps[0].LatestHandshake
			e.exec(`UPDATE waylume.nodes SET mtu = 1380, dns = '{1.1.1.1}' WHERE id = $1`, e.nodeID)
			testkit.Eventually(t, 10*time.Second, func() error {
				out, err := e.nodeNS.Run(ctx, "ip", "link", "show", e.iface)
				if err != nil {
					return err
				}
				if !strings.Contains(out, "mtu 1380") {
					return fmt.Errorf("mtu not applied: %s", out)
				}
				return nil
			})
			if err := e.cliNS.Ping(ctx, nodeTunnel, 2); err != nil {
				t.Fatalf("peer lost traffic after a node config change: %v", err)
			}
			if p, ok := e.nodePeersMust(t)[ck.PublicKey().String()]; !ok || p != addr+"/32" {
				t.Fatalf("peer after node config change: %q %v", p, ok)
			}
			ps, _ = cli.Peers(ctx)
			if !ps[0].LatestHandshake.Equal(hs) {
				t.Logf("handshake moved %v -> %v (a rekey may fall in the window)", hs, ps[0].LatestHandshake)
			}

			if src == "realtime" {
				// Events lost on purpose are applied by the next resync.
				e.rt.SetLoseEvents(true)
				lk := newKey(t)
				e.addPeer(lk.PublicKey(), "")
				testkit.Eventually(t, 15*time.Second, func() error {
					p, err := e.nodePeers()
					if err != nil {
						return err
					}
					if _, ok := p[lk.PublicKey().String()]; !ok {
						return errors.New("lost insert not applied yet")
					}
					return nil
				})
				e.rt.SetLoseEvents(false)
				if e.rt.Delivered() == 0 {
					t.Fatal("the test server delivered no change: events did not come through Realtime")
				}
			}

			// Delete -> removed from the device; the handshake stops.
			e.exec(`DELETE FROM waylume.peers WHERE id = $1`, id)
			testkit.Eventually(t, 10*time.Second, func() error {
				p, err := e.nodePeers()
				if err != nil {
					return err
				}
				if _, ok := p[ck.PublicKey().String()]; ok {
					return errors.New("deleted peer still on the device")
				}
				return nil
			})
			ps, _ = cli.Peers(ctx)
			last := ps[0].LatestHandshake
			// Traffic for 7 s makes the client retry its handshake (rekey
			// timeout 5 s); none may complete.
			for end := time.Now().Add(7 * time.Second); time.Now().Before(end); {
				if err := e.cliNS.Ping(ctx, nodeTunnel, 1); err == nil {
					t.Fatal("deleted peer still reaches the node")
				}
			}
			ps, _ = cli.Peers(ctx)
			if !ps[0].LatestHandshake.Equal(last) {
				t.Fatalf("a handshake completed after the delete: %v -> %v", last, ps[0].LatestHandshake)
			}

			// The deleted peer's bytes were billed (iperf3 moved megabytes).
			var up, down int64
			if err := e.admin.QueryRow(ctx, `SELECT coalesce(sum(upload_bytes),0), coalesce(sum(download_bytes),0) FROM waylume.peer_usage WHERE peer_id = $1`, id).Scan(&up, &down); err != nil {
				t.Fatal(err)
			}
			if down < 1<<20 || up == 0 {
				t.Fatalf("usage of the deleted peer: up %d down %d", up, down)
			}

			if err := n.stop(t); err != nil {
				t.Fatalf("node exit: %v", err)
			}
			var st string
			if err := e.admin.QueryRow(ctx, `SELECT status FROM waylume.node_overview WHERE id = $1`, e.nodeID).Scan(&st); err != nil || st != "offline" {
				t.Fatalf("node status after SIGTERM %q %v", st, err)
			}
		})
	}
}

func waitStatus(t *testing.T, e *env, id, state, reasonPrefix string) {
	t.Helper()
	testkit.Eventually(t, 15*time.Second, func() error {
		s, err := e.status(id)
		if err != nil {
			return err
		}
		if s.State != state || !strings.HasPrefix(s.Reason, reasonPrefix) {
			return fmt.Errorf("status %q %q, want %q %q", s.State, s.Reason, state, reasonPrefix)
		}
		return nil
	})
}
