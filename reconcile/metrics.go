package reconcile

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/waylume/waylume-node/events"
)

// metrics are the reconciler's Prometheus series. Their names are part of
// the node's interface (dashboards and alerts use them): renaming one is a
// breaking change.
type metrics struct {
	peers     *prometheus.GaugeVec
	sessions  prometheus.Gauge
	duration  *prometheus.HistogramVec
	errors    prometheus.Counter
	received  *prometheus.CounterVec
	applied   prometheus.Counter
	coalesced prometheus.Counter
	// Snapshots events asked for, and how often one was held back to keep
	// them Config.EventResyncInterval apart.
	eventResyncs        prometheus.Counter
	eventResyncsDelayed prometheus.Counter
	latency             prometheus.Histogram
	flushDuration       prometheus.Histogram
	flushErrors         prometheus.Counter
	backlog             prometheus.Gauge

	// Per-peer series come from a copy taken after each flush, so a scrape
	// never waits for the reconciler's lock. The copy is refilled in place:
	// a new 10,000-entry map per flush and heartbeat was garbage the heap
	// had to make room for.
	mu        sync.Mutex
	perPeer   map[string]peerMetric
	upDesc    *prometheus.Desc
	downDesc  *prometheus.Desc
	hsAgeDesc *prometheus.Desc
}

type peerMetric struct {
	up, down  int64
	handshake time.Time
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		peers:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "waylume_peers", Help: "Peers by state (active, blocked, rejected)."}, []string{"state"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "waylume_active_sessions", Help: "Peers with a handshake in the last 3 minutes."}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "waylume_reconcile_duration_seconds", Help: "Time to converge the data plane.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"kind"}),
		errors:    prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_reconcile_errors_total", Help: "Converge runs that ended with an error."}),
		received:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "waylume_events_received_total", Help: "Events from the sources."}, []string{"source"}),
		applied:   prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_events_applied_total", Help: "Events applied to the data plane."}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_events_coalesced_total", Help: "Events merged into a later one for the same row."}),
		eventResyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_event_resyncs_total",
			Help: "Snapshots of every row that events asked for (a source's resync, a batch too large to read row by row)."}),
		eventResyncsDelayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_event_resyncs_delayed_total",
			Help: "Event batches held back so that event-asked snapshots run at most once per interval (a flood on the node's channel)."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "waylume_event_apply_latency_seconds", Help: "Row commit to data plane applied, for events carrying a commit time.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		flushDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "waylume_usage_flush_duration_seconds", Help: "Time of one usage flush.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		flushErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_usage_flush_errors_total", Help: "Usage flushes that failed (bytes stay in the counters)."}),
		backlog:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "waylume_usage_backlog_bytes", Help: "Bytes read from the counters but not yet committed."}),
		perPeer:     map[string]peerMetric{},
		upDesc:      prometheus.NewDesc("waylume_peer_upload_bytes_total", "Client upload (WireGuard receive) bytes, lifetime.", []string{"peer_id"}, nil),
		downDesc:    prometheus.NewDesc("waylume_peer_download_bytes_total", "Client download (WireGuard transmit) bytes, lifetime.", []string{"peer_id"}, nil),
		hsAgeDesc:   prometheus.NewDesc("waylume_peer_handshake_age_seconds", "Seconds since the peer's last handshake.", []string{"peer_id"}, nil),
	}
	// Known sources start at zero so the series exist before the first
	// event: absent series break rate() and alerting on them.
	for _, src := range []string{"listen", "realtime"} {
		m.received.WithLabelValues(src)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.peers, m.sessions, m.duration, m.errors, m.received, m.applied, m.coalesced,
		m.eventResyncs, m.eventResyncsDelayed, m.latency, m.flushDuration, m.flushErrors, m.backlog, m} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Describe and Collect make the per-peer series a collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.upDesc
	ch <- m.downDesc
	ch <- m.hsAgeDesc
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for id, p := range m.perPeer {
		ch <- prometheus.MustNewConstMetric(m.upDesc, prometheus.CounterValue, float64(p.up), id)
		ch <- prometheus.MustNewConstMetric(m.downDesc, prometheus.CounterValue, float64(p.down), id)
		if !p.handshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(m.hsAgeDesc, prometheus.GaugeValue, now.Sub(p.handshake).Seconds(), id)
		}
	}
}

func (m *metrics) forget(id string) {
	m.mu.Lock()
	delete(m.perPeer, id)
	m.mu.Unlock()
}

// activeWindow: a session is active when its last handshake is this recent
// (WireGuard rekeys every 2 minutes while traffic flows).
const activeWindow = 3 * time.Minute

// updatePeerMetrics copies the per-peer figures; the caller holds r.mu.
func (r *Reconciler) updatePeerMetrics() {
	var backlog int64
	sessions := 0
	now := r.now()
	r.m.mu.Lock()
	snap := r.m.perPeer
	if len(snap) > 2*len(r.peers)+64 {
		snap = make(map[string]peerMetric, len(r.peers)) // maps never shrink: let a much larger one go
		r.m.perPeer = snap
	} else {
		clear(snap)
	}
	for id, ps := range r.peers {
		drx, dtx := r.unflushed(ps)
		backlog += drx + dtx
		snap[id] = peerMetric{up: ps.com.UploadBytes + drx, down: ps.com.DownloadBytes + dtx, handshake: ps.handshake}
		if ps.inPlane && !ps.leaving && !ps.handshake.IsZero() && now.Sub(ps.handshake) < activeWindow {
			sessions++
		}
	}
	r.m.mu.Unlock()
	r.m.backlog.Set(float64(backlog))
	r.m.sessions.Set(float64(sessions))
}

// updatePeerGauges counts peers by state; the caller holds r.mu.
func (r *Reconciler) updatePeerGauges() {
	n := map[string]int{events.StateActive: 0, events.StateBlocked: 0, events.StateRejected: 0}
	for id, ps := range r.peers {
		if _, ok := r.rows[id]; ok && ps.state != "" {
			n[ps.state]++
		}
	}
	for s, c := range n {
		r.m.peers.WithLabelValues(s).Set(float64(c))
	}
}
