// Package netns is the test harness for everything that touches the
// network: throwaway network namespaces joined by veth pairs, commands run
// inside them, a Debian wireguard-go + wg client and iperf3 with parsed
// results. Every resource it makes is removed by t.Cleanup, also when the
// test fails, and nothing runs in the host's namespace except `ip netns`
// itself. Processes are accounted for: a process still inside a namespace
// when the namespace goes fails the test (and is killed).
//
// Names are unique on the host (interface names too: UAPI sockets in
// /var/run/wireguard are shared by all namespaces), derived from the pid and
// a counter, at most 15 characters.
package netns

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/testkit"
)

var counter atomic.Uint32

// Name returns a name unique on this host for this process: prefix + pid +
// counter, cut to the 15 characters interface names allow.
func Name(prefix string) string {
	n := counter.Add(1)
	s := fmt.Sprintf("%s%x%x", prefix, os.Getpid()&0xffff, n)
	if len(s) > 15 {
		s = s[len(s)-15:]
	}
	return s
}

// Require skips the test when it cannot run here: not root, or a tool is
// missing. CI runs as root with all tools, so a skip there is a setup bug.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s in PATH (scripts/deps.sh installs it)", tool)
		}
	}
}

// NS is a named network namespace created for one test.
type NS struct {
	Name string
}

// Path is the namespace's bind mount, usable with setns(2).
func (n *NS) Path() string { return filepath.Join("/var/run/netns", n.Name) }

// New creates a namespace with loopback up and removes it when the test ends.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	n := &NS{Name: Name(prefix)}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() {
		// The harness stops its own processes in earlier cleanups, so
		// anything still inside is a leak: a process the test started
		// without accounting for it, or one a child left behind. It
		// would keep the namespace alive after the name is gone.
		if left := n.leftovers(); len(left) > 0 {
			t.Errorf("processes left in namespace %s (killed now): %s", n.Name, strings.Join(left, "; "))
			n.killAll()
		}
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	n.MustRun(t, "ip", "link", "set", "lo", "up")
	return n
}

// pids lists the processes inside the namespace other than this one (a
// thread of this process may have entered it; the process has not).
func (n *NS) pids() []int {
	out, err := exec.Command("ip", "netns", "pids", n.Name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// leftovers describes each process still inside: pid and command line.
func (n *NS) leftovers() []string {
	var left []string
	for _, pid := range n.pids() {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		left = append(left, fmt.Sprintf("%d %s", pid, strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))))
	}
	return left
}

// killAll kills what is left inside and waits (up to 5s) until it is gone.
func (n *NS) killAll() {
	for _, pid := range n.pids() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(n.pids()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// Command returns a command that runs inside the namespace.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := n.Command(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := n.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Start starts a long-running command inside the namespace; it is killed
// and waited for when the test ends.
func (n *NS) Start(t testing.TB, name string, args ...string) *Process {
	t.Helper()
	cmd := n.Command(context.Background(), name, args...)
	p := &Process{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, n.Name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Stop)
	return p
}

// Process is a background command started by Start.
type Process struct {
	cmd  *exec.Cmd
	out  testkit.Buffer
	done chan struct{}
	err  error
}

// Stop kills the process (ip netns exec execs the command, so the pid is
// the command's) and waits for it. Safe to call twice.
func (p *Process) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Output is what the process wrote so far.
func (p *Process) Output() string { return p.out.String() }

// Exited reports whether the process ended, and its error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Veth joins two namespaces with a veth pair and gives each end an address
// (CIDR notation, e.g. "10.99.0.1/24"); both ends are up. The pair goes away
// with its namespaces.
func Veth(t testing.TB, a *NS, aName, aAddr string, b *NS, bName, bAddr string) {
	t.Helper()
	if out, err := exec.Command("ip", "link", "add", aName, "netns", a.Name, "type", "veth", "peer", "name", bName, "netns", b.Name).CombinedOutput(); err != nil {
		t.Fatalf("veth %s/%s: %v: %s", aName, bName, err, out)
	}
	for _, e := range []struct {
		ns         *NS
		name, addr string
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if e.addr != "" {
			e.ns.MustRun(t, "ip", "addr", "add", e.addr, "dev", e.name)
		}
		e.ns.MustRun(t, "ip", "link", "set", e.name, "up")
	}
}

// Ping sends count pings from the namespace to addr and returns an error
// unless a reply came back (each waits at most a second). It uses ping
// from iputils when installed, else busybox's.
func (n *NS) Ping(ctx context.Context, addr string, count int) error {
	args := []string{"-q", "-c", fmt.Sprint(count), "-W", "1", addr}
	name := "ping"
	if _, err := exec.LookPath("ping"); err != nil {
		name, args = "busybox", append([]string{"ping"}, args...)
	}
	_, err := n.Run(ctx, name, args...)
	return err
}
