package netctl

// The userspace device in a process of its own. Inside the node, the
// device's heap (~30 KB a peer) sits beside the node's own churn: the
// collector's headroom grows with both, and pages the node freed are
// reused, zeroed and so made resident for the device's per-peer queues,
// which a device alone allocates fresh and never touches. Alone, the
// device costs what a bare wireguard-go does (e2e BenchmarkUserspaceRSS).
//
// The child is tied to the node by a lifeline: a socket pair whose other
// end only the node holds. The child writes "ready" on it once its UAPI
// socket listens, and stops its device when it reads EOF, which happens
// however the node ends: Close, exit, crash or SIGKILL. A node that dies
// also takes the child along at once (its parent-death signal), so a node
// restarted straight away does not find the old device still closing. So
// the interface lives exactly as long as the node, as it does in-process.
// The child ignores SIGINT and SIGTERM: a terminal's Ctrl-C and systemd's stop
// reach the whole process group or cgroup, and the node still reads the
// device for its final usage flush after it was signalled.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/waylume/waylume-node/internal/trim"
)

// lifelineFD is the lifeline's descriptor in the child: the first of
// exec.Cmd.ExtraFiles.
const lifelineFD = 3

const (
	deviceStartTimeout = 30 * time.Second
	deviceStopTimeout  = 10 * time.Second
)

// DeviceMain is the device process: DeviceCommand's program, called with
// the interface name and MTU (and -v for wireguard-go's debug log), the
// lifeline on descriptor 3. wireguard-go's log goes to stderr, one line a
// message, which the node relays into its own log. It returns the exit
// code.
func DeviceMain(args []string, stderr io.Writer) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	verbose := len(args) == 3 && args[2] == "-v"
	if len(args) != 2 && !verbose {
		fmt.Fprintln(stderr, "usage: device INTERFACE MTU [-v] (started by the node, lifeline on descriptor 3)")
		return 2
	}
	mtu, err := strconv.Atoi(args[1])
	if err != nil {
		fmt.Fprintf(stderr, "device: mtu %q: %v\n", args[1], err)
		return 2
	}
	life := os.NewFile(lifelineFD, "lifeline")
	if life == nil {
		fmt.Fprintln(stderr, "device: no lifeline on descriptor 3")
		return 2
	}
	if err := serveDevice(args[0], mtu, verbose, life, stderr); err != nil {
		// The node reads this as the reason the start failed.
		fmt.Fprintf(life, "error %s\n", oneLine(err.Error()))
		return 1
	}
	return 0
}

func serveDevice(name string, mtu int, verbose bool, life *os.File, stderr io.Writer) error {
	tdev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", name, err)
	}
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		tdev.Close()
		return fmt.Errorf("open UAPI socket for %s: %w", name, err)
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), lineLogger(stderr, verbose))
	defer dev.Close()
	uapi, err := ipc.UAPIListen(name, f)
	if err != nil {
		return fmt.Errorf("listen on UAPI socket for %s: %w", name, err)
	}
	defer uapi.Close()
	trimmer := trim.New(trimQuiet, trimEvery, trimSpacing)
	go trimmer.Run(context.Background())
	go serveUAPI(uapi, dev, trimmer.Poke)
	if _, err := io.WriteString(life, "ready\n"); err != nil {
		return fmt.Errorf("lifeline: %w", err)
	}
	lost := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, life)
		close(lost)
	}()
	select {
	case <-lost:
		return nil
	case <-dev.Wait():
		return errors.New("device closed")
	}
}

// Trimming after UAPI operations. A read of the device formats every peer
// afresh (megabytes of short-lived objects at 10,000 peers), and the
// collector lets garbage grow to GOGC percent of a heap that is mostly the
// peers' queues, allocated once and never touched: pages the node's reads
// make resident and that stay so, since the runtime keeps freed memory up
// to its heap goal. Returning it once the operations pause, and every few
// seconds while they continue (a cold apply of thousands of peers), keeps
// the process near the device's own size. The cost is one collection of
// the device's heap, a few hundred ms of CPU at 10,000 peers (gctrace), so
// at most one every trimSpacing: the node reads twice a minute by default.
const (
	trimQuiet   = 100 * time.Millisecond // after the last operation
	trimEvery   = 5 * time.Second        // at most this late while operations continue
	trimSpacing = 5 * time.Second        // at least this long between two
)

// lineLogger writes wireguard-go's messages one a line, as
// relayDeviceLog reads them: "debug: " or "error: " and the message.
func lineLogger(w io.Writer, verbose bool) *device.Logger {
	logf := func(prefix string) func(string, ...any) {
		return func(format string, args ...any) {
			fmt.Fprintln(w, prefix+oneLine(fmt.Sprintf(format, args...)))
		}
	}
	l := &device.Logger{Verbosef: device.DiscardLogf, Errorf: logf("error: ")}
	if verbose {
		l.Verbosef = logf("debug: ")
	}
	return l
}

// deviceProcess is the running child as the node sees it.
type deviceProcess struct {
	cmd      *exec.Cmd
	life     net.Conn
	exited   chan struct{} // closed once the child is reaped
	waitErr  error         // why it exited; set before exited closes
	stopping atomic.Bool
}

// startProcess runs the device as l.cfg.DeviceCommand in the Link's
// namespace and waits until its UAPI socket is ready.
func (l *Link) startProcess() error {
	name := l.cfg.Interface
	ours, theirs, err := lifeline()
	if err != nil {
		return err
	}
	args := append(slices.Clone(l.cfg.DeviceCommand[1:]), name, strconv.Itoa(l.cfg.MTU))
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		args = append(args, "-v")
	}
	logR, logW, err := os.Pipe()
	if err != nil {
		ours.Close()
		theirs.Close()
		return fmt.Errorf("device process log pipe: %w", err)
	}
	cmd := exec.Command(l.cfg.DeviceCommand[0], args...)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stdout, cmd.Stderr = logW, logW
	// Its own process group: a terminal's Ctrl-C is the node's to handle.
	// The parent-death signal is sent when the thread that started it
	// ends: the namespace threads of ns.do outlive the call, and Go ends a
	// thread only under a goroutine that exits locked to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = l.ns.do(cmd.Start)
	theirs.Close()
	logW.Close()
	if err != nil {
		ours.Close()
		logR.Close()
		return fmt.Errorf("start userspace device process %s: %w", l.cfg.DeviceCommand[0], err)
	}
	p := &deviceProcess{cmd: cmd, life: ours, exited: make(chan struct{})}
	last := &lastLine{}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		l.relayDeviceLog(logR, cmd.Process.Pid, last)
	}()
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := p.ready(); err != nil {
		p.stop()
		<-logged
		if s := last.get(); s != "" {
			err = fmt.Errorf("%w (its log: %s)", err, s)
		}
		return fmt.Errorf("userspace device process for %s: %w", name, err)
	}
	l.log.Info("started userspace WireGuard device process", "pid", cmd.Process.Pid)
	l.dev = &ownedDevice{instance: newInstance(), pid: cmd.Process.Pid, stop: p.stop, lost: p.watch(l)}
	l.wg = &embeddedClient{wgClient: l.wg, name: name, dev: uapiSocket{path: filepath.Join(uapiDir, name+".sock")}}
	return nil
}

// lifeline makes the socket pair: ours as a net.Conn, so reads take a
// deadline, and theirs for the child, without close-on-exec.
func lifeline() (ours net.Conn, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("lifeline socket pair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "lifeline")
	ours, err = net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("lifeline: %w", err)
	}
	// exec.Cmd.ExtraFiles are inherited whatever their close-on-exec flag.
	return ours, os.NewFile(uintptr(fds[1]), "lifeline"), nil
}

// ready waits for the child's first line on the lifeline.
func (p *deviceProcess) ready() error {
	_ = p.life.SetReadDeadline(time.Now().Add(deviceStartTimeout))
	line, err := bufio.NewReader(p.life).ReadString('\n')
	_ = p.life.SetReadDeadline(time.Time{})
	line = strings.TrimSpace(line)
	switch {
	case line == "ready":
		return nil
	case strings.HasPrefix(line, "error "):
		return errors.New(strings.TrimPrefix(line, "error "))
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("not ready after %v", deviceStartTimeout)
	case err != nil:
		<-p.exited
		return fmt.Errorf("exited before it was ready: %v", p.waitErr)
	}
	return fmt.Errorf("unexpected first line %q", line)
}

// stop cuts the lifeline and waits for the child to remove its device,
// killing it if it does not within deviceStopTimeout.
func (p *deviceProcess) stop() {
	p.stopping.Store(true)
	p.life.Close()
	select {
	case <-p.exited:
	case <-time.After(deviceStopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// watch reports a child that exits while the node still needs it: the
// device and its interface are gone, and only a restart brings them back.
func (p *deviceProcess) watch(l *Link) <-chan error {
	lost := make(chan error, 1)
	go func() {
		<-p.exited
		if p.stopping.Load() {
			return
		}
		err := fmt.Errorf("userspace WireGuard device process (pid %d) exited: %v", p.cmd.Process.Pid, p.waitErr)
		l.log.Error("device lost", "err", err)
		lost <- err
	}()
	return lost
}

// relayDeviceLog turns the child's log lines into the node's log records
// and keeps the last for a start error.
func (l *Link) relayDeviceLog(r io.ReadCloser, pid int, last *lastLine) {
	defer r.Close()
	log := l.log.With("component", "wireguard-go", "pid", pid)
	s := bufio.NewScanner(r)
	for s.Scan() {
		line := s.Text()
		if msg, ok := strings.CutPrefix(line, "debug: "); ok {
			log.Debug(msg)
			continue
		}
		line = strings.TrimPrefix(line, "error: ")
		last.set(line)
		log.Warn(line)
	}
}

type lastLine struct{ v atomic.Pointer[string] }

func (l *lastLine) set(s string) { l.v.Store(&s) }
func (l *lastLine) get() string {
	if p := l.v.Load(); p != nil {
		return *p
	}
	return ""
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
