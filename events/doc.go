// Package events is the vocabulary shared by the node's event sources
// (Supabase Realtime, LISTEN/NOTIFY) and the reconciler: the rows the node
// reads, the rows it writes back, the typed changes that hint at new desired
// state, the queue that coalesces them, and the errors a store classifies
// its failures into (ErrNotFound, ErrRefused).
//
// Events are hints. The database is the truth; a source that may have missed
// changes says so with a Resync event and the reconciler rereads everything.
package events
