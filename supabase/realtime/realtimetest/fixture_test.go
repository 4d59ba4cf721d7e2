package realtimetest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/supabase/realtime"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const secret = "super-secret-jwt-token-with-at-least-32-characters-long"

// fixture is a migrated database (the real schema, RLS and publication), two
// nodes and a test server reading it.
type fixture struct {
	db           *pgtest.DB
	srv          *realtimetest.Server
	admin        *pgx.Conn
	nodeA, nodeB string
}

func newFixture(t *testing.T, mod func(*realtimetest.Config)) *fixture {
	t.Helper()
	return newFixtureTB(t, mod)
}

func newFixtureTB(t testing.TB, mod func(*realtimetest.Config)) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := dbfix.MigratedSupabase(t)
	// The server connects as a non-superuser that may switch to the tokens'
	// roles (REPLICATION for the slot); TestSuperuserServer covers the
	// superuser connection self-hosted Supabase uses.
	dbfix.Exec(t, db, `GRANT waylume_node, service_role TO realtime_admin`)
	// pgtest runs with synchronous_commit off; logical decoding sees only
	// flushed WAL, so writers would wait for the WAL writer (200 ms).
	// Supabase commits synchronously: so do the writers here.
	dbfix.Exec(t, db, `ALTER DATABASE `+db.Name+` SET synchronous_commit = on`)
	f := &fixture{db: db}
	f.nodeA = dbfix.CreateNode(t, db, fmt.Sprintf("a%d", time.Now().UnixNano()%1e9), "10.8.0.1/16")
	f.nodeB = dbfix.CreateNode(t, db, fmt.Sprintf("b%d", time.Now().UnixNano()%1e9), "10.9.0.1/16")
	cfg := realtimetest.Config{DatabaseURL: db.URLAs("realtime_admin"), JWTSecret: secret, PollInterval: 5 * time.Millisecond,
		Logger: testLogger()}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := realtimetest.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	f.srv = srv
	admin, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	f.admin = admin
	return f
}

func testLogger() *slog.Logger {
	if os.Getenv("REALTIME_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (f *fixture) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := f.admin.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// addPeer inserts a peer (address allocated) and returns its id.
func (f *fixture) addPeer(t *testing.T, node string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var id string
	if err := f.admin.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+dbfix.RandomKeySQL+`) RETURNING id::text`, node).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// peerIDs reads a node's peers as the consumer's resync would.
func (f *fixture) peerIDs(t *testing.T, node string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := f.admin.Query(ctx, `SELECT id::text FROM waylume.peers WHERE node_id = $1`, node)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, id := range ids {
		out[id] = true
	}
	return out
}

// waitPolled waits until the server has read n more changes from the slot.
func (f *fixture) waitPolled(t *testing.T, from int64, n int64) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, func() error {
		if got := f.srv.Polled(); got < from+n {
			return fmt.Errorf("%d changes read from the slot, want %d", got-from, n)
		}
		return nil
	})
}

// recorder is the test's sink and state observer.
type recorder struct {
	mu     sync.Mutex
	evs    []events.Event
	states []realtime.State
	notify chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) Add(e events.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) state(s realtime.State) {
	r.mu.Lock()
	r.states = append(r.states, s)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.evs)
}

func (r *recorder) markStates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}

func (r *recorder) statesSince(i int) []realtime.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]realtime.State(nil), r.states[i:]...)
}

func (r *recorder) since(i int) []events.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]events.Event(nil), r.evs[i:]...)
}

// next waits for the first event at or after index *from matching pred and
// moves *from past it.
func (r *recorder) next(t *testing.T, from *int, d time.Duration, what string, pred func(events.Event) bool) events.Event {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for i := *from; i < len(r.evs); i++ {
			if pred(r.evs[i]) {
				e := r.evs[i]
				*from = i + 1
				r.mu.Unlock()
				return e
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-time.After(20 * time.Millisecond):
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; events: %v", d, what, r.since(*from))
		}
	}
}

// nextState waits for a state at or after index *from matching pred.
func (r *recorder) nextState(t *testing.T, from *int, d time.Duration, what string, pred func(realtime.State) bool) realtime.State {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		r.mu.Lock()
		for i := *from; i < len(r.states); i++ {
			if pred(r.states[i]) {
				s := r.states[i]
				*from = i + 1
				r.mu.Unlock()
				return s
			}
		}
		n := len(r.states)
		var last realtime.State
		if n > 0 {
			last = r.states[n-1]
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last state %v err %v", d, what, last.Phase, last.Err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isResync(e events.Event) bool { return e.Kind == events.Resync }

func kindID(k events.Kind, id string) func(events.Event) bool {
	return func(e events.Event) bool { return e.Kind == k && e.ID == id }
}

// client runs a Realtime client until the test ends.
type client struct {
	rt   *realtime.Client
	rec  *recorder
	stop func()
}

func (f *fixture) startClient(t *testing.T, mod func(*realtime.Config)) *client {
	t.Helper()
	rec := newRecorder()
	cfg := realtime.Config{
		URL:          f.srv.URL(),
		APIKey:       realtimetest.AnonKey(secret),
		AccessToken:  realtimetest.NodeToken(secret, f.nodeA, time.Hour),
		NodeID:       f.nodeA,
		Mode:         realtime.ModePostgresChanges,
		MinBackoff:   10 * time.Millisecond,
		MaxBackoff:   50 * time.Millisecond,
		RejoinSpread: 50 * time.Millisecond,
		Logger:       testLogger(),
		OnState:      rec.state,
	}
	if mod != nil {
		mod(&cfg)
	}
	rt, err := realtime.New(cfg, rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run returned %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return &client{rt: rt, rec: rec, stop: stop}
}
