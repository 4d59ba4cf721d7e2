package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	vnetns "github.com/vishvananda/netns"
)

// ErrSilent is what Reach wraps when no answer came within its second:
// the packet or its answer was dropped. Any other error, such as a missing
// route, is the test's own set-up failing.
var ErrSilent = errors.New("no answer")

// Echo answers on sockets inside a namespace until the test ends (TCP:
// "k" to each connection; UDP: "k" to each datagram) and records whom it
// heard.
type Echo struct {
	mu   sync.Mutex
	from []netip.Addr
}

// Sources are the addresses the server heard from, in order.
func (e *Echo) Sources() []netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.from)
}

func (e *Echo) heard(a netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.from = append(e.from, a.Unmap())
}

// Serve starts one echo server on network ("tcp" or "udp") at each of
// addrs inside n. UDP needs a socket per address: an unbound one answers
// from whichever address routing picks, which the client's connected
// socket ignores.
func (n *NS) Serve(t testing.TB, network string, addrs ...string) *Echo {
	t.Helper()
	e := &Echo{}
	for _, addr := range addrs {
		var closer func() error
		err := n.Do(func() error {
			if network == "udp" {
				pc, err := net.ListenPacket("udp", addr)
				if err == nil {
					closer = pc.Close
					go e.serveUDP(pc.(*net.UDPConn))
				}
				return err
			}
			ln, err := net.Listen("tcp", addr)
			if err == nil {
				closer = ln.Close
				go e.serveTCP(ln)
			}
			return err
		})
		if err != nil {
			t.Fatalf("listen %s %s in %s: %v", network, addr, n.Name, err)
		}
		t.Cleanup(func() { closer() })
	}
	return e
}

func (e *Echo) serveTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			e.heard(ap.Addr())
		}
		c.Write([]byte("k"))
		c.Close()
	}
}

func (e *Echo) serveUDP(u *net.UDPConn) {
	buf := make([]byte, 1500)
	for {
		_, from, err := u.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		e.heard(from.Addr())
		u.WriteToUDPAddrPort([]byte("k"), from)
	}
}

// Reach sends from n (from local address laddr when set) to an echo
// server at network/addr and waits a second for its "k"; the error wraps
// ErrSilent when none came.
func (n *NS) Reach(network, laddr, addr string) error {
	var c net.Conn
	err := n.Do(func() error {
		d := net.Dialer{Timeout: time.Second}
		if laddr != "" {
			ip := net.ParseIP(laddr)
			if network == "udp" {
				d.LocalAddr = &net.UDPAddr{IP: ip}
			} else {
				d.LocalAddr = &net.TCPAddr{IP: ip}
			}
		}
		var err error
		c, err = d.Dial(network, addr)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", network, addr, silence(err))
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if network == "udp" {
		if _, err := c.Write([]byte("?")); err != nil {
			return err
		}
	}
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil {
		return fmt.Errorf("%s %s: %w", network, addr, silence(err))
	}
	if b[0] != 'k' {
		return fmt.Errorf("%s %s: answer %q", network, addr, b)
	}
	return nil
}

func silence(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %v", ErrSilent, err)
	}
	return err
}

// Do runs fn on an OS thread inside n; sockets made there keep the
// namespace. The thread is thrown away if it cannot switch back.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := vnetns.GetFromName(n.Name)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := vnetns.Set(h); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
