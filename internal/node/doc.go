// Package node is the production wiring of a Waylume node: it opens the
// store, the WireGuard link and an event source, builds the reconciler on
// them and runs them until its context ends. The run command and the
// end-to-end tests use this same code; cmd/waylume-node only turns flags
// into a Config and formats output.
//
// Lifecycle: Open reads the node's row (waiting while the database is
// unreachable), opens the link with the row's address and builds the
// reconciler. Run starts the event source and the reconciler. Shutdown
// order: the source stops first (no event is taken after shutdown starts),
// the reconciler flushes usage and marks the node offline, then Close
// closes the link, leaving a kernel interface and its peers up unless
// Config.TeardownOnExit.
package node
