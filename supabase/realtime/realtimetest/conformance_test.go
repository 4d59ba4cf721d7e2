package realtimetest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

// jsLine is one line conformance.js prints.
type jsLine struct {
	Kind    string          `json:"kind"`
	Status  string          `json:"status"`
	Error   *string         `json:"error"`
	Payload json.RawMessage `json:"payload"`
}

// jsChange is realtime-js's postgres_changes callback payload.
type jsChange struct {
	Schema          string         `json:"schema"`
	Table           string         `json:"table"`
	CommitTimestamp string         `json:"commit_timestamp"`
	EventType       string         `json:"eventType"`
	New             map[string]any `json:"new"`
	Old             map[string]any `json:"old"`
	Errors          any            `json:"errors"`
}

// jsClient runs the official client; without node or its node_modules the
// test skips locally and fails in CI.
func startJS(t *testing.T, env []string) <-chan jsLine {
	t.Helper()
	dir, err := filepath.Abs("js")
	if err != nil {
		t.Fatal(err)
	}
	testkit.RequireNodeModule(t, dir, "@supabase/realtime-js")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "node", "conformance.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = &testWriter{t: t}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan jsLine, 100)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l jsLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Errorf("realtime-js printed %q: %v", sc.Text(), err)
				continue
			}
			lines <- l
		}
	}()
	t.Cleanup(func() {
		stdin.Close() // asks the script to leave and exit
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cancel()
			<-done
		}
		cancel()
		wg.Wait()
	})
	return lines
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("node: %s", p)
	return len(p), nil
}

func nextJS(t *testing.T, lines <-chan jsLine, what string, pred func(jsLine) bool) jsLine {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("realtime-js exited while waiting for %s", what)
			}
			if l.Kind == "status" && l.Status != "SUBSCRIBED" {
				t.Fatalf("realtime-js channel status %s: %v", l.Status, deref(l.Error))
			}
			if pred(l) {
				return l
			}
		case <-deadline:
			t.Fatalf("timed out waiting for realtime-js: %s", what)
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// TestRealtimeJSConformance runs the official realtime-js client and our
// Go client side by side against the test server: both join and go live,
// and the INSERT, UPDATE and DELETE realtime-js receives are the rows our
// client decodes.
func TestRealtimeJSConformance(t *testing.T) {
	for _, vsn := range []string{"2.0.0", "1.0.0"} {
		t.Run("js-vsn-"+vsn, func(t *testing.T) {
			f := newFixture(t, nil)
			token := realtimetest.NodeToken(secret, f.nodeA, time.Hour)
			lines := startJS(t, []string{"RT_URL=" + f.srv.URL(), "RT_APIKEY=" + realtimetest.AnonKey(secret),
				"RT_TOKEN=" + token, "RT_NODE_ID=" + f.nodeA, "RT_VSN=" + vsn})
			c := f.startClient(t, nil)
			at := 0
			c.rec.next(t, &at, wait, "Go client live", isResync)
			nextJS(t, lines, "SUBSCRIBED", func(l jsLine) bool { return l.Kind == "status" && l.Status == "SUBSCRIBED" })
			sys := nextJS(t, lines, "Subscribed to PostgreSQL", func(l jsLine) bool { return l.Kind == "system" })
			var sp map[string]any
			json.Unmarshal(sys.Payload, &sp)
			if sp["message"] != "Subscribed to PostgreSQL" || sp["status"] != "ok" || sp["extension"] != "postgres_changes" {
				t.Fatalf("realtime-js got system %s", sys.Payload)
			}

			// One change at a time: like the real server, the test server
			// checks RLS by reading the row when it polls, so a row already
			// deleted by then is not sent as INSERT/UPDATE.
			var id string
			steps := []func(){
				func() { id = f.addPeer(t, f.nodeA) },
				func() {
					f.exec(t, `UPDATE waylume.peers SET download_kbps = 20000, quota_bytes = 9007199254740993,
						allowed_ips = '{192.168.7.0/24,fd00:1::/64}', expires_at = '2031-02-03 04:05:06.789+02' WHERE id = $1`, id)
				},
				func() { f.exec(t, `DELETE FROM waylume.peers WHERE id = $1`, id) },
				func() { f.exec(t, `UPDATE waylume.nodes SET mtu = 1380 WHERE id = $1`, f.nodeA) },
			}
			want := []struct {
				typ  string
				kind events.Kind
			}{{"INSERT", events.PeerChanged}, {"UPDATE", events.PeerChanged}, {"DELETE", events.PeerDeleted}, {"UPDATE", events.NodeChanged}}
			for i, w := range want {
				steps[i]()
				l := nextJS(t, lines, "change "+w.typ, func(l jsLine) bool { return l.Kind == "change" })
				var js jsChange
				if err := json.Unmarshal(l.Payload, &js); err != nil {
					t.Fatal(err)
				}
				ev := c.rec.next(t, &at, wait, "Go event "+w.typ, func(e events.Event) bool { return e.Kind != events.Resync })
				if js.EventType != w.typ || ev.Kind != w.kind {
					t.Fatalf("change %d: realtime-js %s, Go %v; want %s/%v", i, js.EventType, ev.Kind, w.typ, w.kind)
				}
				if js.Errors != nil {
					t.Errorf("realtime-js got errors %v", js.Errors)
				}
				commit, err := time.Parse(time.RFC3339Nano, js.CommitTimestamp)
				if err != nil || !commit.Equal(ev.Commit) {
					t.Errorf("commit: realtime-js %q, Go %v", js.CommitTimestamp, ev.Commit)
				}
				switch {
				case w.kind == events.PeerDeleted:
					// RLS on: the old record is the primary key only.
					if len(js.Old) != 1 || js.Old["id"] != id || ev.ID != id {
						t.Errorf("delete: realtime-js old %v, Go id %s", js.Old, ev.ID)
					}
				case w.kind == events.NodeChanged:
					if ev.Node == nil || js.New["id"] != ev.Node.ID || js.New["mtu"] != float64(ev.Node.MTU) || js.New["address"] != ev.Node.Address.String() {
						t.Errorf("node: realtime-js new %v, Go %+v", js.New, ev.Node)
					}
				default:
					comparePeer(t, js.New, ev)
					if w.typ == "UPDATE" && js.Old["id"] != id {
						t.Errorf("update: realtime-js old %v", js.Old)
					}
				}
			}
		})
	}
}

// jsBroadcast is realtime-js's broadcast callback payload.
type jsBroadcast struct {
	Type    string         `json:"type"`
	Event   string         `json:"event"`
	Payload map[string]any `json:"payload"`
}

// The official client on a private channel (config.private): with the
// node's token it joins the node's topic and receives what the database
// inserts into realtime.messages, the triggers' changes (as our client
// does) and a row written directly; with another node's token it is
// refused.
func TestRealtimeJSPrivateBroadcast(t *testing.T) {
	for _, vsn := range []string{"2.0.0", "1.0.0"} {
		t.Run("js-vsn-"+vsn, func(t *testing.T) {
			f := newFixture(t, nil)
			env := func(token string) []string {
				return []string{"RT_URL=" + f.srv.URL(), "RT_APIKEY=" + realtimetest.AnonKey(secret), "RT_TOKEN=" + token,
					"RT_NODE_ID=" + f.nodeA, "RT_VSN=" + vsn, "RT_MODE=broadcast"}
			}
			lines := startJS(t, env(realtimetest.NodeToken(secret, f.nodeA, time.Hour)))
			c := f.startClient(t, broadcastMode(vsn))
			at := 0
			c.rec.next(t, &at, wait, "Go client live", isResync)
			nextJS(t, lines, "SUBSCRIBED", func(l jsLine) bool { return l.Kind == "status" && l.Status == "SUBSCRIBED" })

			id := f.addPeer(t, f.nodeA)
			var b jsBroadcast
			l := nextJS(t, lines, "the insert's broadcast", func(l jsLine) bool { return l.Kind == "broadcast" })
			if err := json.Unmarshal(l.Payload, &b); err != nil {
				t.Fatal(err)
			}
			if b.Type != "broadcast" || b.Event != "change" || b.Payload["table"] != "peers" || b.Payload["op"] != "INSERT" ||
				b.Payload["id"] != id || b.Payload["node_id"] != f.nodeA {
				t.Fatalf("realtime-js got %s", l.Payload)
			}
			c.rec.next(t, &at, wait, "Go event for the insert", kindID(events.PeerChanged, id))

			f.exec(t, `INSERT INTO realtime.messages (topic, extension, event, payload, private)
				VALUES ($1, 'broadcast', 'hello', '{"n": 1}', true)`, "waylume:node:"+f.nodeA)
			l = nextJS(t, lines, "the direct message", func(l jsLine) bool { return l.Kind == "broadcast" })
			b = jsBroadcast{}
			if err := json.Unmarshal(l.Payload, &b); err != nil {
				t.Fatal(err)
			}
			if b.Event != "hello" || b.Payload["n"] != float64(1) {
				t.Fatalf("realtime-js got %s", l.Payload)
			}

			other := startJS(t, env(realtimetest.NodeToken(secret, f.nodeB, time.Hour)))
			select {
			case l, ok := <-other:
				if !ok || l.Kind != "status" || l.Status != "CHANNEL_ERROR" || !strings.HasPrefix(deref(l.Error), "Unauthorized:") {
					t.Fatalf("realtime-js with node B's token on A's topic: %+v (error %q)", l, deref(l.Error))
				}
			case <-time.After(20 * time.Second):
				t.Fatal("realtime-js with node B's token: no status")
			}
		})
	}
}

// comparePeer checks realtime-js's converted record against the Go event.
func comparePeer(t *testing.T, js map[string]any, ev events.Event) {
	t.Helper()
	p := ev.Peer
	if p == nil {
		t.Fatalf("Go event without a peer: %+v", ev)
	}
	num := func(k string) int64 {
		switch v := js[k].(type) {
		case nil:
			return 0
		case float64:
			return int64(v)
		}
		t.Errorf("realtime-js %s = %T %v", k, js[k], js[k])
		return -1
	}
	tm := func(k string) time.Time {
		s, _ := js[k].(string)
		if s == "" {
			return time.Time{}
		}
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Errorf("realtime-js %s = %q: %v", k, s, err)
		}
		return v
	}
	var allowed []netip.Prefix
	for _, a := range js["allowed_ips"].([]any) {
		allowed = append(allowed, netip.MustParsePrefix(a.(string)))
	}
	addr, _ := js["address"].(string)
	checks := []struct {
		name string
		ok   bool
	}{
		{"id", js["id"] == p.ID && ev.ID == p.ID},
		{"node_id", js["node_id"] == p.NodeID},
		{"public_key", js["public_key"] == p.PublicKey},
		{"address", addr == p.Address.Addr().String()},
		{"allowed_ips", len(allowed) == len(p.AllowedIPs) && func() bool {
			for i := range allowed {
				if allowed[i] != p.AllowedIPs[i] {
					return false
				}
			}
			return true
		}()},
		{"download_kbps", num("download_kbps") == p.DownloadKbps},
		{"upload_kbps", num("upload_kbps") == p.UploadKbps},
		{"persistent_keepalive", num("persistent_keepalive") == int64(p.PersistentKeepalive)},
		{"enabled", js["enabled"] == p.Enabled},
		{"expires_at", tm("expires_at").Equal(p.ExpiresAt)},
		{"updated_at", tm("updated_at").Equal(p.UpdatedAt)},
		{"created_at", tm("created_at").Equal(p.CreatedAt)},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: realtime-js %v, Go %+v", c.name, js[c.name], p)
		}
	}
	// int8 beyond 2^53: JavaScript rounds it, we keep it exact.
	if q := num("quota_bytes"); q != 0 && p.QuotaBytes != 9007199254740993 {
		t.Errorf("quota_bytes: Go %d, want exact 9007199254740993 (realtime-js %d)", p.QuotaBytes, q)
	}
}
