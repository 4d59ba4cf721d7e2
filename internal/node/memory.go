package node

import (
	"runtime/debug"
	"time"

	"github.com/waylume/waylume-node/internal/trim"
)

// defaultGCPercent is the node's garbage collector target when GOGC is not
// set: the heap may grow 25% past the live data between collections, not
// Go's default 100%.
//
// Why (e2e BenchmarkNodeRSS, README "Benchmarks"): at 10,000 peers
// the node keeps ~21 MB live (rows, peer state, the device mirror). With
// GOGC=100 the heap grows to twice that before each collection, and what
// a resync or a usage flush holds while a collection runs counts as live
// too: the highest RSS over a resync and a flush was 73 MB, with 25
// 53-63 MB. The price is more collections of a small heap: over that
// benchmark (10,000 peers applied, a resync every 5 s, a flush every
// 10 s) GC CPU went from 0.4 s to 1.3-1.6 s, ~13 ms per extra cycle; at
// the default 60 s intervals that is about 0.1 s a minute, under 0.2% of
// one core. Between the bursts the trimmer below returns what they freed.
//
// GOGC, which the Go runtime reads itself, overrides it (GOGC=100 restores
// Go's default); GOMEMLIMIT applies as usual alongside either.
const defaultGCPercent = 25

// TuneMemory applies defaultGCPercent unless the operator set GOGC (getenv
// is os.LookupEnv in production). It is process-wide, for the run command
// only: the other commands hold no per-peer state worth tuning for.
func TuneMemory(getenv func(string) (string, bool)) {
	if v, ok := getenv("GOGC"); ok && v != "" {
		return
	}
	debug.SetGCPercent(defaultGCPercent)
}

// newTrimmer is Config.ReturnMemory's trimmer. The garbage GOGC cannot
// keep small is the bulk work's own: a resync, a flush or a save of
// 10,000 peers allocates 10-25 MB (reconcile's benchmarks, -benchmem),
// and a collection running meanwhile counts what it holds as live, so
// the heap goal, and what stays resident, rose to ~38 MB over ~21 MB of
// live data. One collection after the work, ~20 ms of CPU at 10,000
// peers, brings the process back to its live data until the next run
// (e2e BenchmarkUserspaceRSS, README "Benchmarks"). At most one a second,
// so a node whose peers keep changing (flushes are asked for up to five
// times a second) spends at most ~2% of a core on it at 10,000 peers; at
// the default intervals it trims a few times a minute. Spaced 5 s apart,
// the benchmark's 5 s resyncs and 10 s flushes left the node untrimmed
// for more of its window: 43-51 MB instead of 44-45 MB.
func newTrimmer() *trim.Trimmer {
	return trim.New(100*time.Millisecond, 5*time.Second, time.Second)
}
