package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

// fakePlane is an in-memory WireGuard device with counters: it keeps
// counters across updates, restarts them at zero when a peer is re-added,
// and counts what it was asked to do. It is stricter than the DataPlane
// contract in one way: removing a key it does not hold fails, since the
// reconciler only ever removes keys it believes the device holds.
type fakePlane struct {
	mu      sync.Mutex
	peers   map[Key]*fakePeer
	epoch   string
	node    NodeConfig
	fail    error         // every call fails with it when set
	panics  int           // the next this many peer calls panic (a bug tripped by a row)
	failKey map[Key]int   // the next this many applies of a key fail for that key alone
	keyErr  error         // what failKey's failures wrap (nil: a plain refusal)
	block   bool          // every call blocks until its ctx ends
	entered chan struct{} // when set, a call that blocks sends on it first
	adds    int           // peers created
	updates int           // existing peers reprogrammed
	removes int
	calls   int
	tries   map[Key][]time.Time // when set: when each key was sent (UpdatePeers, SyncPeers), by the wall clock
}

type fakePeer struct {
	cfg       PeerConfig
	rx, tx    int64
	handshake time.Time
}

var errFake = errors.New("fake: unavailable")

func newFakePlane() *fakePlane { return &fakePlane{peers: map[Key]*fakePeer{}, epoch: "boot1/7"} }

// wait blocks until ctx ends when f.block is set; f.mu is not held meanwhile.
func (f *fakePlane) wait(ctx context.Context) error {
	f.mu.Lock()
	block, entered := f.block, f.entered
	f.mu.Unlock()
	if !block {
		return nil
	}
	if entered != nil {
		select {
		case entered <- struct{}{}:
		default: // the test has been told already
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

func (f *fakePlane) Configure(ctx context.Context, c NodeConfig) error {
	if err := f.wait(ctx); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.node = c
	return nil
}

func (f *fakePlane) UpdatePeers(ctx context.Context, peers []PeerConfig) (map[Key]error, error) {
	return f.apply(ctx, peers, nil, false)
}

func (f *fakePlane) SyncPeers(ctx context.Context, all []PeerConfig) (map[Key]error, error) {
	return f.apply(ctx, all, nil, true)
}

func (f *fakePlane) RemovePeers(ctx context.Context, keys []Key) (map[Key]error, error) {
	return f.apply(ctx, nil, keys, false)
}

func (f *fakePlane) apply(ctx context.Context, set []PeerConfig, remove []Key, full bool) (map[Key]error, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.fail != nil {
		return nil, f.fail
	}
	if f.panics > 0 {
		f.panics--
		panic("fake: tripped")
	}
	failed := map[Key]error{}
	for _, c := range set {
		if f.tries != nil {
			f.tries[c.PublicKey] = append(f.tries[c.PublicKey], time.Now())
		}
		if f.failKey[c.PublicKey] > 0 {
			f.failKey[c.PublicKey]--
			failed[c.PublicKey] = fmt.Errorf("fake: peer %s refused", c.PublicKey)
			if f.keyErr != nil {
				failed[c.PublicKey] = fmt.Errorf("fake: peer %s: %w", c.PublicKey, f.keyErr)
			}
		}
	}
	if full {
		keep := map[Key]bool{}
		for _, c := range set {
			keep[c.PublicKey] = true
		}
		for k := range f.peers {
			if !keep[k] {
				delete(f.peers, k)
				f.removes++
			}
		}
	}
	for _, c := range set {
		if failed[c.PublicKey] != nil {
			continue
		}
		if p, ok := f.peers[c.PublicKey]; ok {
			if !p.cfg.Equal(c) {
				f.updates++
			}
			p.cfg = c
			continue
		}
		f.peers[c.PublicKey] = &fakePeer{cfg: c}
		f.adds++
	}
	for _, k := range remove {
		if _, ok := f.peers[k]; !ok {
			failed[k] = fmt.Errorf("fake: no peer %s", k)
			continue
		}
		delete(f.peers, k)
		f.removes++
	}
	return failed, nil
}

func (f *fakePlane) Stats(ctx context.Context) ([]PeerStats, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	var out []PeerStats
	for k, p := range f.peers {
		out = append(out, PeerStats{PublicKey: k, RxBytes: p.rx, TxBytes: p.tx, LastHandshake: p.handshake})
	}
	return out, nil
}

func (f *fakePlane) Epoch() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.epoch
}

// traffic moves bytes through a peer when it is present and not cut; it
// returns whether they went through.
func (f *fakePlane) traffic(k Key, rx, tx int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.peers[k]
	if !ok || len(p.cfg.AllowedIPs) == 0 {
		return false
	}
	p.rx += rx
	p.tx += tx
	p.handshake = time.Unix(1_700_000_000, 0)
	return true
}

// counters returns the counters of key k when the device holds it.
func (f *fakePlane) counters(k Key) (rx, tx int64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.peers[k]
	if !ok {
		return 0, 0, false
	}
	return p.rx, p.tx, true
}

// sent returns when key k was sent to the device so far.
func (f *fakePlane) sent(k Key) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.tries[k])
}

func (f *fakePlane) has(k Key) (PeerConfig, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.peers[k]
	if !ok {
		return PeerConfig{}, false
	}
	return p.cfg, true
}

// recreate drops the device: new epoch, no peers.
func (f *fakePlane) recreate(epoch string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = map[Key]*fakePeer{}
	f.epoch = epoch
}

// fakeStore keeps rows, status and usage in memory. failReads/failWrites
// make calls fail; ambiguous makes WriteStatus commit and then report an
// error, as a connection lost during COMMIT does.
type fakeStore struct {
	mu         sync.Mutex
	node       events.Node
	peers      map[string]events.Peer
	status     map[string]events.PeerStatus
	usage      map[string]events.Usage // key: peer|period_end
	failReads  bool
	failWrites bool
	ambiguous  bool
	refuse     map[string]bool // usage for these peers is refused for good (RLS)
	writes     int
	peerReads  int // single-row reads (Peer)
	snapshots  int
	heartbeats []events.Heartbeat
}

var (
	errNotFound = fmt.Errorf("fake: %w", events.ErrNotFound)
	errRefused  = fmt.Errorf("fake: new row violates row-level security policy: %w", events.ErrRefused)
)

func newFakeStore(node events.Node) *fakeStore {
	return &fakeStore{node: node, peers: map[string]events.Peer{}, status: map[string]events.PeerStatus{}, usage: map[string]events.Usage{}}
}

func (s *fakeStore) Snapshot(ctx context.Context, nodeID string) (events.Node, []events.Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snapshots++
	if s.failReads {
		return events.Node{}, nil, errFake
	}
	var ps []events.Peer
	for _, p := range s.peers {
		if p.NodeID == nodeID {
			ps = append(ps, p)
		}
	}
	return s.node, ps, nil
}

func (s *fakeStore) Node(ctx context.Context, nodeID string) (events.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failReads {
		return events.Node{}, errFake
	}
	return s.node, nil
}

func (s *fakeStore) Peer(ctx context.Context, nodeID, id string) (events.Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peerReads++
	if s.failReads {
		return events.Peer{}, errFake
	}
	p, ok := s.peers[id]
	if !ok || p.NodeID != nodeID {
		return events.Peer{}, errNotFound
	}
	return p, nil
}

func (s *fakeStore) PeerStatuses(ctx context.Context, nodeID string) ([]events.PeerStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failReads {
		return nil, errFake
	}
	var out []events.PeerStatus
	for _, st := range s.status {
		out = append(out, st)
	}
	return out, nil
}

// QuotaUsage sums the usage rows ending after each peer's quota_reset_at.
func (s *fakeStore) QuotaUsage(ctx context.Context, nodeID string) (map[string]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failReads {
		return nil, errFake
	}
	out := map[string]int64{}
	for _, u := range s.usage {
		if p, ok := s.peers[u.PeerID]; ok && u.PeriodEnd.After(p.QuotaResetAt) {
			out[u.PeerID] += u.UploadBytes + u.DownloadBytes
		}
	}
	return out, nil
}

func (s *fakeStore) WriteStatus(ctx context.Context, nodeID string, usage []events.Usage, status []events.PeerStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failWrites {
		return errFake
	}
	for _, u := range usage {
		if s.refuse[u.PeerID] {
			return errRefused
		}
		if !u.PeriodEnd.After(u.PeriodStart) || u.UploadBytes < 0 || u.DownloadBytes < 0 {
			return fmt.Errorf("%w: peer_usage_period_check or bytes check: %+v", errRefused, u)
		}
	}
	s.writes++
	for _, u := range usage {
		k := u.PeerID + "|" + u.PeriodEnd.Format(time.RFC3339Nano)
		if _, dup := s.usage[k]; !dup {
			s.usage[k] = u
		}
	}
	for _, st := range status {
		if p, ok := s.peers[st.PeerID]; ok && p.NodeID == nodeID {
			s.status[st.PeerID] = st
		}
	}
	if s.ambiguous {
		return errors.New("fake: connection lost during commit")
	}
	return nil
}

func (s *fakeStore) Heartbeat(ctx context.Context, nodeID string, hb events.Heartbeat) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failWrites {
		return errFake
	}
	s.heartbeats = append(s.heartbeats, hb)
	return nil
}

func (s *fakeStore) put(p events.Peer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peers[p.ID] = p
}

func (s *fakeStore) del(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.peers, id)
}

func (s *fakeStore) get(id string) events.Peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers[id]
}

func (s *fakeStore) statusOf(id string) events.PeerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status[id]
}

// usageSum is the bytes (up, down) in usage rows for a peer.
func (s *fakeStore) usageSum(id string) (up, down int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.usage {
		if u.PeerID == id {
			up += u.UploadBytes
			down += u.DownloadBytes
		}
	}
	return up, down
}

func (s *fakeStore) set(f func(s *fakeStore)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

const testNode = "00000000-0000-0000-0000-00000000000a"

func testNodeRow() events.Node {
	return events.Node{ID: testNode, ListenPort: 51820, Address: netip.MustParsePrefix("10.8.0.1/24"), MTU: 1420}
}

// key returns a deterministic public key for n.
func key(n int) Key {
	var k Key
	k[0], k[1], k[31] = byte(n>>8), byte(n), 1
	return k
}

func peerRow(n int) events.Peer {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return events.Peer{
		ID:        fmt.Sprintf("00000000-0000-0000-0000-%012d", n),
		NodeID:    testNode,
		PublicKey: key(n).String(),
		Address:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 8, 0, byte(n + 1)}), 32),
		Enabled:   true,
		CreatedAt: base.Add(time.Duration(n) * time.Second),
		UpdatedAt: base.Add(time.Duration(n) * time.Second),
	}
}

type harness struct {
	t     *testing.T
	ctx   context.Context
	store *fakeStore
	plane *fakePlane
	clk   *clock
	r     *Reconciler
}

func newHarness(t *testing.T, rows ...events.Peer) *harness {
	t.Helper()
	h := &harness{t: t, ctx: context.Background(), store: newFakeStore(testNodeRow()), plane: newFakePlane(),
		clk: &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}}
	for _, p := range rows {
		h.store.put(p)
	}
	h.restart()
	return h
}

// restart replaces the reconciler, as a new process would, keeping the
// store and the data plane.
func (h *harness) restart() {
	h.t.Helper()
	// IdleBytes 1: every peer with traffic is written at every flush, so
	// tests can check sums after any flush.
	r, err := New(Config{NodeID: testNode, Store: h.store, DataPlane: h.plane, Now: h.clk.Now, IdleBytes: 1})
	if err != nil {
		h.t.Fatal(err)
	}
	h.r = r
}

func (h *harness) resync() {
	h.t.Helper()
	if err := h.r.Resync(h.ctx); err != nil {
		h.t.Fatalf("resync: %v", err)
	}
}

func (h *harness) flush() {
	h.t.Helper()
	h.clk.add(time.Second)
	if err := h.r.Flush(h.ctx); err != nil {
		h.t.Fatalf("flush: %v", err)
	}
}

func (h *harness) event(e events.Event) {
	h.t.Helper()
	if err := h.r.Handle(h.ctx, []events.Event{e}); err != nil {
		h.t.Fatalf("handle %v: %v", e.Kind, err)
	}
}

// change updates a row in the store and delivers it as an event carrying the row.
func (h *harness) change(p events.Peer) {
	h.t.Helper()
	h.clk.add(time.Millisecond)
	p.UpdatedAt = h.clk.Now()
	h.store.put(p)
	h.event(events.Event{Kind: events.PeerChanged, ID: p.ID, Peer: &p})
}

func (h *harness) wantInPlane(n int, want bool) {
	h.t.Helper()
	cfg, ok := h.plane.has(key(n))
	if ok != want {
		h.t.Fatalf("peer %d in data plane: %v, want %v", n, ok, want)
	}
	if ok && want && len(cfg.AllowedIPs) == 0 {
		h.t.Fatalf("peer %d is cut, want it serving", n)
	}
}

func (h *harness) wantStatus(n int, state, reasonPrefix string) {
	h.t.Helper()
	st := h.store.statusOf(peerRow(n).ID)
	if st.State != state || len(st.Reason) < len(reasonPrefix) || st.Reason[:len(reasonPrefix)] != reasonPrefix {
		h.t.Fatalf("peer %d status %q %q, want %q %q...", n, st.State, st.Reason, state, reasonPrefix)
	}
}

func sortedIDs(m map[string]events.Peer) []string {
	var ids []string
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
