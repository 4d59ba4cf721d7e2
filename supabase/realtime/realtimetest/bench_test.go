package realtimetest_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/supabase/realtime"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

// BenchmarkCommitToEvent measures, over 1,000 committed updates of one of
// the node's peers, the time from the commit returning to the typed event
// reaching the sink: wal2json slot poll (10 ms interval, the test server's
// default; the real server polls every 100 ms), payload build, RLS check as
// the node's role, websocket, client decode. Updates go one at a time.
func BenchmarkCommitToEvent(b *testing.B) {
	f := newFixtureTB(b, func(c *realtimetest.Config) { c.PollInterval = 10 * time.Millisecond })
	got := make(chan events.Event, 16)
	rt, err := realtime.New(realtime.Config{
		URL: f.srv.URL(), APIKey: realtimetest.AnonKey(secret),
		AccessToken: realtimetest.NodeToken(secret, f.nodeA, time.Hour), NodeID: f.nodeA,
		Mode: realtime.ModePostgresChanges,
	}, events.SinkFunc(func(e events.Event) { got <- e }))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go rt.Run(ctx)
	if e := <-got; e.Kind != events.Resync {
		b.Fatalf("first event %v", e.Kind)
	}
	var id string
	if err := f.admin.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, encode(decode(md5('k')||md5('k'), 'hex'), 'base64')) RETURNING id::text`, f.nodeA).Scan(&id); err != nil {
		b.Fatal(err)
	}
	<-got
	const changes = 1000
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		lat = lat[:0]
		for i := 1; i <= changes; i++ {
			if _, err := f.admin.Exec(ctx, `UPDATE waylume.peers SET download_kbps = $2 WHERE id = $1`, id, i); err != nil {
				b.Fatal(err)
			}
			committed := time.Now()
			for {
				select {
				case e := <-got:
					if e.Peer != nil && e.Peer.DownloadKbps == int64(i) {
						lat = append(lat, time.Since(committed))
						goto next
					}
				case <-time.After(10 * time.Second):
					b.Fatalf("change %d not received", i)
				}
			}
		next:
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
}
