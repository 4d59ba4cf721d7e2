// Package realtime is the node's Supabase Realtime client: a Phoenix
// channels websocket that subscribes to postgres_changes of the node's
// peers and its own nodes row, the event source when only a transaction
// pooler is reachable. docs/realtime.md describes the protocol as the
// server speaks it.
//
// One goroutine (Client.Run) owns everything: it dials, joins one channel
// with two bindings, and runs a session loop that selects over decoded
// frames from a reader goroutine, the heartbeat ticker, the join and
// subscribe timers and token updates. A session ends on any error; Run
// then waits a jittered, capped backoff (or the slow permanent-error delay)
// and starts a new one. Every session that reaches "Subscribed to
// PostgreSQL" emits events.Resync, because Realtime replays nothing:
// events are hints, the store is the truth.
//
// Package realtimetest is a server for tests with the real server's
// message shapes, fed by a real PostgreSQL.
package realtime
