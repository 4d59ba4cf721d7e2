package realtime

import (
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

// benchFrame is a postgres_changes UPDATE of a peer as the test server (and
// the real server) sends it in vsn 1.0.0.
func benchFrame(i int) []byte {
	return []byte(fmt.Sprintf(`{"topic":"realtime:waylume-node-%[1]s","event":"postgres_changes","payload":{"ids":[1234567],"data":{"schema":"waylume","table":"peers","type":"UPDATE","commit_timestamp":"2026-08-21T10:15:30.123Z",`+
		`"columns":[{"name":"id","type":"uuid"},{"name":"node_id","type":"uuid"},{"name":"public_key","type":"text"},{"name":"preshared_key","type":"text"},{"name":"address","type":"inet"},{"name":"address6","type":"inet"},{"name":"allowed_ips","type":"_cidr"},{"name":"persistent_keepalive","type":"int4"},{"name":"download_kbps","type":"int4"},{"name":"upload_kbps","type":"int4"},{"name":"quota_bytes","type":"int8"},{"name":"quota_reset_at","type":"timestamptz"},{"name":"expires_at","type":"timestamptz"},{"name":"enabled","type":"bool"},{"name":"metadata","type":"jsonb"},{"name":"created_at","type":"timestamptz"},{"name":"updated_at","type":"timestamptz"}],`+
		`"record":{"id":"6f1c7a52-4c8e-4b0e-9d1e-0c3a3f1b2a%02[2]d","node_id":"%[1]s","public_key":"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=","preshared_key":null,"address":"10.8.0.2","address6":null,"allowed_ips":["192.168.7.0/24"],"persistent_keepalive":25,"download_kbps":%[2]d,"upload_kbps":5000,"quota_bytes":1000000000,"quota_reset_at":"2026-08-21T10:15:30.123+00:00","expires_at":null,"enabled":true,"metadata":{},"created_at":"2026-08-21T10:15:30.123+00:00","updated_at":"2026-08-21T10:15:30.123+00:00"},`+
		`"old_record":{"id":"6f1c7a52-4c8e-4b0e-9d1e-0c3a3f1b2a%02[2]d","node_id":"%[1]s","download_kbps":1},"errors":null}},"ref":null}`, nodeID, i%100))
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDecode measures the client's decode path per 1,000
// change frames: framing, payload, row mapping and the sink call, as the
// session loop runs them.
func BenchmarkDecode(b *testing.B) {
	n := 0
	c, err := New(Config{URL: "ws://127.0.0.1:1/x", APIKey: "k", NodeID: nodeID, Mode: ModePostgresChanges, Logger: slog.New(slog.DiscardHandler)},
		events.SinkFunc(func(e events.Event) {
			if e.Peer != nil {
				n++
			}
		}))
	if err != nil {
		b.Fatal(err)
	}
	s := &session{c: c, ids: map[string]int{"1234567": 0}}
	frames := make([][]byte, 1000)
	for i := range frames {
		frames[i] = benchFrame(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for b.Loop() {
		for _, data := range frames {
			f, err := decodeFrame(data)
			if err != nil {
				b.Fatal(err)
			}
			s.changes(f.Payload)
		}
	}
	cpu := cpuTime() - cpu0
	if n != b.N*len(frames) {
		b.Fatalf("%d peers decoded, want %d", n, b.N*len(frames))
	}
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/1000events")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(frames)), "µs/event")
}
