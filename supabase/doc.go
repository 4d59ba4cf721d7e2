// Package supabase talks to the control plane: a Supabase project or any
// PostgreSQL database migrated with package migrations.
//
//   - Store (store*.go): pooled pgx access for the node's snapshot of its
//     desired state, single rows, usage and status write-back, heartbeat.
//   - Listen (listen*.go): LISTEN/NOTIFY event source on the node's
//     channel, for direct and session-pooler connections.
//
// Package supabase/realtime is the other event source, a Supabase Realtime
// postgres_changes client for when only a transaction pooler is reachable
// (LISTEN needs a session); supabase/realtime/realtimetest is its test
// server.
//
// Every source emits events.Resync after each (re)connect: events are
// hints, the store is the truth.
package supabase
