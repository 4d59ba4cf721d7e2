package netctl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/testkit"
)

// deviceHelper, as the test binary's first argument, makes it the device
// process, as `waylume-node device` is in production.
const deviceHelper = "netctl-test-device"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == deviceHelper {
		os.Exit(DeviceMain(os.Args[2:], os.Stderr))
	}
	os.Exit(m.Run())
}

func ownProcess(cfg *Config) { cfg.DeviceCommand = []string{os.Args[0], deviceHelper} }

// The device in its own process carries a limited client's traffic and
// counters; it lives in the Link's namespace; SIGTERM, which a stop sends
// to the whole cgroup, leaves it serving; Close removes it, its interface
// and its socket, without reporting it lost.
func TestDeviceProcess(t *testing.T) {
	b := newBed(t, ownProcess)
	pid := b.link.dev.pid
	if pid == 0 {
		t.Fatal("the device runs in this process, want its own")
	}
	if got, want := nsInode(t, fmt.Sprintf("/proc/%d/ns/net", pid)), nsInode(t, b.node.Path()); got != want {
		t.Fatalf("device process in namespace %d, want the Link's %d", got, want)
	}
	cli, p := b.client("10.8.0.2")
	p.DownloadKbps, p.UploadKbps = 8000, 4000
	b.sync(p)
	ping(t, cli.NS, "10.8.0.1")
	st := statsOf(t, b.link, p.PublicKey)
	if st.RxBytes == 0 || st.TxBytes == 0 || st.LastHandshake.IsZero() {
		t.Fatalf("stats after a ping: %+v", st)
	}
	if st.DownloadKbps != 8000 || st.UploadKbps != 4000 {
		t.Fatalf("limits %d/%d kbit/s, want 8000/4000", st.DownloadKbps, st.UploadKbps)
	}

	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ping(t, cli.NS, "10.8.0.1")
	if after := statsOf(t, b.link, p.PublicKey); after.RxBytes <= st.RxBytes {
		t.Fatalf("rx %d after SIGTERM and a ping, was %d", after.RxBytes, st.RxBytes)
	}

	lost := b.link.DeviceLost()
	if err := b.link.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("device process %d after Close: %v, want gone", pid, err)
	}
	if out, err := b.node.Run(context.Background(), "ip", "link", "show", b.cfg.Interface); err == nil {
		t.Fatalf("interface still there after Close: %s", out)
	}
	if _, err := os.Stat(filepath.Join(uapiDir, b.cfg.Interface+".sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("UAPI socket after Close: %v", err)
	}
	select {
	case err := <-lost:
		t.Fatalf("Close reported the device lost: %v", err)
	default:
	}
}

// A device process killed under the Link is reported lost, with its pid.
func TestDeviceProcessLost(t *testing.T) {
	b := newBed(t, ownProcess)
	pid := b.link.dev.pid
	// Killed, it leaves its socket file, which the next device's UAPIOpen
	// would find stale and replace.
	t.Cleanup(func() { os.Remove(filepath.Join(uapiDir, b.cfg.Interface+".sock")) })
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-b.link.DeviceLost():
		if !strings.Contains(err.Error(), fmt.Sprint(pid)) {
			t.Fatalf("lost error %q does not name pid %d", err, pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no DeviceLost within 10s of SIGKILL")
	}
}

// A device process that fails to start makes Open fail with its reason.
func TestDeviceProcessStartError(t *testing.T) {
	node := newNodeNS(t)
	cfg := Config{Interface: "wlbad", Mode: ModeUserspace, PrivateKey: mustKey(t), Address: netip.MustParsePrefix("10.8.0.1/16"),
		Netns: node.Path(), DeviceCommand: []string{os.Args[0], deviceHelper, "extra-argument"}}
	_, err := Open(context.Background(), cfg, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "usage: device") {
		t.Fatalf("Open with a failing device process: %v, want its usage line", err)
	}
	testkit.Eventually(t, 5*time.Second, func() error {
		if out, err := node.Run(context.Background(), "ip", "link", "show", "wlbad"); err == nil {
			return fmt.Errorf("interface left: %s", out)
		}
		return nil
	})
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}
