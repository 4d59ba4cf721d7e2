// Package reconcile is the node's brain: it turns the rows of the control
// plane (events.Node, events.Peer) into WireGuard peers and shaping on the
// data plane, and the data plane's counters into usage rows.
//
// It is level-triggered. Events only say "look again sooner"; every batch
// of events, the periodic full resync and every Resync signal run the same
// function from (desired rows, what the data plane holds) to actions, so
// running it twice is a no-op and a missed event is repaired by the next
// resync. Rows are untrusted: each is validated against the node's pool and
// every other row before anything reaches the kernel (validate.go).
//
// Files: store.go and dataplane.go are the seams (small interfaces that
// *supabase.Store and an adapter around *netctl.Link satisfy); validate.go
// decides what each row should become; reconciler.go holds the state and
// its locking rules; rows.go keeps the desired rows and who claims what;
// sync.go reads everything (load, resync, adoption of the device);
// handle.go takes event batches; converge.go turns decisions into data
// plane calls and retries rows whose apply failed; loop.go runs it all on
// events and timers; usage.go accounts for every byte exactly once;
// heartbeat.go and metrics.go report.
package reconcile
