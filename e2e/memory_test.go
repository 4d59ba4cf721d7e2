package e2e

import (
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/testkit"
)

// The node and its device process return their bursts' garbage to the
// OS: with the runtime's GC trace on, both log forced collections (the
// trimmers'; nothing else in either process forces one) once resyncs,
// flushes and device reads have run. The node's trace goes to its stderr
// as is; the device process's comes relayed, as log lines of
// component=wireguard-go.
func TestNodeReturnsMemory(t *testing.T) {
	e := newEnv(t)
	e.extraEnv = append(e.extraEnv, "GODEBUG=gctrace=1")
	dbfix.AddPeers(t, e.db, e.nodeID, 100)
	n := e.startNode("userspace", time.Second, time.Second)
	node := regexp.MustCompile(`(?m)^gc \d+ @.*\(forced\)$`)
	device := regexp.MustCompile(`(?m)^time=.*msg="gc \d+ @.*\(forced\)".*component=wireguard-go`)
	testkit.Eventually(t, time.Minute, func() error {
		out := n.out.String()
		var errs []error
		if !node.MatchString(out) {
			errs = append(errs, errors.New("no forced collection in the node's own trace"))
		}
		if !device.MatchString(out) {
			errs = append(errs, errors.New("no forced collection in the device process's relayed trace"))
		}
		return errors.Join(errs...)
	})
}
