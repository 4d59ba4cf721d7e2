// Package realtimetest is a Supabase Realtime server for tests: the
// postgres_changes subset of the protocol with the real server's message
// shapes and error texts, fed by a real PostgreSQL through wal2json logical
// decoding of the supabase_realtime publication's tables, the way the real
// server reads changes. Filters and RLS are evaluated in the database like
// the real server does (filters on the new row, RLS by querying the row as
// the JWT's role with request.jwt.claims set; DELETE carries only the primary
// key when the table has RLS). Its behaviour is checked against the official
// @supabase/realtime-js client (see js/ and conformance_test.go).
//
// Fault injection (drop sockets, silence heartbeats, phx_error, token-error
// close, delayed subscription, lost events, errors payloads, raw frames,
// refused upgrades, stop/start) lets other packages' tests drive the
// client's recovery paths.
//
// Goroutines: one poller reads the postgres_changes slot and fans changes
// out, one stream pushes realtime.messages rows to broadcast channels (see
// stream.go); each socket has a reader (the HTTP handler) and a writer. Server.mu guards the socket set
// and the fault switches; socket.mu guards a socket's channels.
package realtimetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Config configures a Server.
type Config struct {
	// DatabaseURL connects as a superuser (or a role that may create
	// replication slots and SET ROLE to the tokens' roles).
	DatabaseURL string
	// JWTSecret verifies HS256 apikeys and access tokens (the legacy
	// secret); a 2026 project may have none.
	JWTSecret string
	// JWKS ({"keys":[...]}) and JWKSURL (Auth's
	// /auth/v1/.well-known/jwks.json, refetched for an unknown kid) hold
	// the public keys ES256 and RS256 tokens are verified with by kid. At
	// least one of JWTSecret, JWKS and JWKSURL is required.
	JWKS    json.RawMessage
	JWKSURL string
	// APIKeys are the project's opaque keys accepted as apikey:
	// sb_publishable_... (acts as anon) and sb_secret_... (service_role).
	APIKeys []string
	// Publication is read for the tables to stream; default supabase_realtime.
	Publication string
	// PollInterval between reads of the postgres_changes slot; default 10
	// ms (the real server: 100 ms). Broadcast from Database is streamed,
	// not polled.
	PollInterval time.Duration
	// ErrorReplyDelay delays join error replies like the real server does;
	// default 50 ms.
	ErrorReplyDelay time.Duration
	// MaxRecordBytes above which a change carries "Error 413: Payload Too
	// Large" and only values up to 64 bytes; default 1 MiB.
	MaxRecordBytes int
	// IdleTimeout closes sockets silent that long (no heartbeat); default 60 s.
	IdleTimeout time.Duration
	// PrivateOnly refuses public joins, as a project set to private
	// channels only does.
	PrivateOnly bool
	// Addr to listen on; default 127.0.0.1:0.
	Addr   string
	Logger *slog.Logger
}

// Server is a running test server.
type Server struct {
	cfg  Config
	log  *slog.Logger
	pool *pgxpool.Pool
	slot string
	keys *keyring

	cancel context.CancelFunc
	wg     sync.WaitGroup // poller and message stream

	joins       atomic.Int64
	connections atomic.Int64
	delivered   atomic.Int64
	polled      atomic.Int64
	broadcasts  atomic.Int64 // broadcast messages sent to channels
	dropped     atomic.Int64 // messages the silent modes swallowed

	mu struct {
		sync.Mutex
		addr        string
		ln          net.Listener
		http        *http.Server
		sockets     map[*socket]struct{}
		noHeartbeat bool
		noJoinReply bool
		loseEvents  bool
		subDelay    time.Duration
		forceErrors []string
		strings     bool
		refuse      int
		refuseMsg   string
		tables      map[string]*tableInfo // "schema.table" in the publication
		rate        int                   // messages per second delivered at most; 0: no limit
		window      time.Time             // start of the current rate window
		inWindow    int
		joinErr     string      // every join refused with this reason
		joinTimes   []time.Time // every phx_join received
	}
}

// New creates the logical slot, starts the poller and listens.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DatabaseURL == "" {
		return nil, errors.New("realtimetest: DatabaseURL is required")
	}
	keys, err := newKeyring(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Publication == "" {
		cfg.Publication = "supabase_realtime"
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 10 * time.Millisecond
	}
	if cfg.ErrorReplyDelay == 0 {
		cfg.ErrorReplyDelay = 50 * time.Millisecond
	}
	if cfg.MaxRecordBytes <= 0 {
		cfg.MaxRecordBytes = 1 << 20
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("realtimetest: pool: %w", err)
	}
	s := &Server{cfg: cfg, log: log, pool: pool, keys: keys}
	s.mu.sockets = map[*socket]struct{}{}

	s.slot = fmt.Sprintf("realtimetest_%d", time.Now().UnixNano())
	// Temporary: the slot dies with the poller's connection, like the
	// real server's.
	slotConn, err := s.openSlot(ctx)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("realtimetest: create slot: %w", err)
	}
	if err := s.refreshTables(ctx); err != nil {
		slotConn.Close(ctx)
		pool.Close()
		return nil, err
	}
	streamConn, err := s.openStream(ctx)
	if err != nil {
		slotConn.Close(ctx)
		pool.Close()
		return nil, fmt.Errorf("realtimetest: %w", err)
	}
	if err := s.Start(); err != nil {
		streamConn.Close(ctx)
		slotConn.Close(ctx)
		pool.Close()
		return nil, err
	}
	pctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.poll(pctx, slotConn)
	}()
	go func() {
		defer s.wg.Done()
		s.stream(pctx, streamConn)
	}()
	return s, nil
}

// URL is the websocket endpoint, without apikey and vsn.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "ws://" + s.mu.addr + "/realtime/v1/websocket"
}

// Start listens again after Stop, on the same address.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.ln != nil {
		return nil
	}
	addr := s.cfg.Addr
	if s.mu.addr != "" {
		addr = s.mu.addr
	}
	var ln net.Listener
	var err error
	// The old listener's port may take a moment to be free again.
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("realtimetest: listen: %w", err)
	}
	s.mu.addr = ln.Addr().String()
	s.mu.ln = ln
	hs := &http.Server{Handler: http.HandlerFunc(s.serveHTTP), ReadHeaderTimeout: 5 * time.Second}
	s.mu.http = hs
	go hs.Serve(ln)
	return nil
}

// Stop closes the listener and every socket abruptly, like a server
// restart; Start brings it back.
func (s *Server) Stop() {
	s.mu.Lock()
	hs := s.mu.http
	s.mu.http, s.mu.ln = nil, nil
	s.mu.Unlock()
	if hs != nil {
		hs.Close()
	}
	s.DropConnections()
	s.waitSockets()
}

// Close stops everything and drops the slots.
func (s *Server) Close() {
	s.Stop()
	s.cancel()
	s.wg.Wait()
	// The temporary slots go when their backends exit, a moment after the
	// connections close; wait so the database can be dropped right away.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		var n int
		if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ($1, $2)",
			s.slot, s.streamSlot()).Scan(&n); err != nil || n == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.pool.Close()
}

func (s *Server) waitSockets() {
	for i := 0; i < 500; i++ {
		if s.Sockets() == 0 {
			return
		}
		s.DropConnections()
		time.Sleep(10 * time.Millisecond)
	}
}

// Sockets is the number of open websocket connections.
func (s *Server) Sockets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.sockets)
}

// Joins counts successful joins since New.
func (s *Server) Joins() int64 { return s.joins.Load() }

// Connections counts accepted websocket connections since New.
func (s *Server) Connections() int64 { return s.connections.Load() }

// Polled counts changes read from the slot since New (delivered, lost or
// filtered); tests wait on it to know a change went through the pipeline.
func (s *Server) Polled() int64 { return s.polled.Load() }

// Delivered counts postgres_changes messages sent since New.
func (s *Server) Delivered() int64 { return s.delivered.Load() }

// ---- fault injection ----

// DropConnections closes every socket without a close frame.
func (s *Server) DropConnections() {
	for _, so := range s.socketList() {
		so.conn.CloseNow()
	}
}

// Disconnect closes every socket cleanly with 1012 (service restart), as
// the real server does when it sheds connections ("Server requested
// disconnect").
func (s *Server) Disconnect() {
	var wg sync.WaitGroup
	for _, so := range s.socketList() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			so.conn.Close(websocket.StatusServiceRestart, "Server requested disconnect")
		}()
	}
	wg.Wait()
}

// SetHeartbeatReplies turns heartbeat replies on or off.
func (s *Server) SetHeartbeatReplies(on bool) {
	s.mu.Lock()
	s.mu.noHeartbeat = !on
	s.mu.Unlock()
}

// SendPhxError crashes every channel: phx_error with its join ref, channel
// gone (the client must rejoin).
func (s *Server) SendPhxError() {
	for _, so := range s.socketList() {
		for _, ch := range so.channelList() {
			so.closeChannel(ch, "phx_error", "")
		}
	}
}

// KickWithTokenError closes every channel the way the server does when a
// token expires: a system error, then phx_close.
func (s *Server) KickWithTokenError() { s.CloseChannels("Token has expired 0 seconds ago") }

// CloseChannels closes every channel the way the server shuts a channel
// down: a system error with msg (e.g. ":error_generating_signer"), then
// phx_close.
func (s *Server) CloseChannels(msg string) {
	for _, so := range s.socketList() {
		for _, ch := range so.channelList() {
			so.closeChannel(ch, "phx_close", msg)
		}
	}
}

// SetJoinReplies turns replies to phx_join on or off (off: joins are
// ignored, as by an overloaded server).
func (s *Server) SetJoinReplies(on bool) {
	s.mu.Lock()
	s.mu.noJoinReply = !on
	s.mu.Unlock()
}

// SetSubscribeDelay delays "Subscribed to PostgreSQL" after join replies.
func (s *Server) SetSubscribeDelay(d time.Duration) {
	s.mu.Lock()
	s.mu.subDelay = d
	s.mu.Unlock()
}

// SetLoseEvents drops every change while on (the slot still advances).
func (s *Server) SetLoseEvents(on bool) {
	s.mu.Lock()
	s.mu.loseEvents = on
	s.mu.Unlock()
}

// SetForceErrors makes every change carry errors (e.g. "Error 413: Payload
// Too Large") with values over 64 bytes removed; nil restores normal.
func (s *Server) SetForceErrors(errs []string) {
	s.mu.Lock()
	s.mu.forceErrors = errs
	s.mu.Unlock()
}

// SetStringValues makes records carry PostgreSQL text for every value, as
// older servers did.
func (s *Server) SetStringValues(on bool) {
	s.mu.Lock()
	s.mu.strings = on
	s.mu.Unlock()
}

// RefuseUpgrades answers websocket upgrades with status and {"error": msg};
// status 0 stops refusing.
func (s *Server) RefuseUpgrades(status int, msg string) {
	s.mu.Lock()
	s.mu.refuse, s.mu.refuseMsg = status, msg
	s.mu.Unlock()
}

// SendRaw writes a text frame as is to every socket.
func (s *Server) SendRaw(frame string) {
	for _, so := range s.socketList() {
		so.enqueue([]byte(frame))
	}
}

// SendBinary writes a binary frame to every socket.
func (s *Server) SendBinary(b []byte) {
	for _, so := range s.socketList() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		so.conn.Write(ctx, websocket.MessageBinary, b)
		cancel()
	}
}

func (s *Server) socketList() []*socket {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*socket, 0, len(s.mu.sockets))
	for so := range s.mu.sockets {
		out = append(out, so)
	}
	return out
}

// ---- upgrade ----

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/websocket") {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	refuse, refuseMsg := s.mu.refuse, s.mu.refuseMsg
	s.mu.Unlock()
	if refuse != 0 {
		writeJSONError(w, refuse, refuseMsg)
		return
	}
	key := r.URL.Query().Get("apikey")
	if key == "" {
		key = r.Header.Get("apikey")
	}
	if key == "" {
		writeJSONError(w, http.StatusUnauthorized, "You must provide an apikey")
		return
	}
	if err := s.checkAPIKey(key, time.Now()); err != nil {
		writeJSONError(w, http.StatusForbidden, err.Error())
		return
	}
	vsn := r.URL.Query().Get("vsn")
	if vsn == "" {
		vsn = "1.0.0"
	}
	if vsn != "1.0.0" && vsn != "2.0.0" {
		writeJSONError(w, http.StatusBadRequest, "unsupported vsn "+vsn)
		return
	}
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	conn.SetReadLimit(1 << 20)
	s.connections.Add(1)
	so := &socket{srv: s, conn: conn, vsn: vsn, apikey: key, out: make(chan outFrame, 4096), done: make(chan struct{})}
	so.mu.channels = map[string]*channel{}
	s.mu.Lock()
	s.mu.sockets[so] = struct{}{}
	s.mu.Unlock()
	so.run(r.Context())
	s.mu.Lock()
	delete(s.mu.sockets, so)
	s.mu.Unlock()
}
