package netctl

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// namespace is the network namespace the Link works in. A nil *namespace
// is the process's own namespace and costs nothing.
//
// Network namespaces belong to OS threads, not to goroutines, so every
// operation that creates a namespace-bound object (the TUN device, UDP and
// netlink sockets, /proc/sys/net files, child processes such as
// iptables-restore) runs through do, on a fresh locked thread switched
// into the namespace. Netlink for links and tc does not need that: it goes
// through a netlink.Handle opened in the namespace.
type namespace struct {
	path   string
	handle netns.NsHandle
}

func openNamespace(path string) (*namespace, error) {
	if path == "" {
		return nil, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return &namespace{path: path, handle: h}, nil
}

// tempNamespace makes a new network namespace that lives only as long as
// its handle: closing it takes everything made inside along. The thread
// that made it stays locked and ends with its goroutine, so the namespace
// never leaks into the rest of the process.
func tempNamespace() (*namespace, error) {
	type made struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan made, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.New()
		c <- made{h, err}
	}()
	m := <-c
	if m.err != nil {
		return nil, fmt.Errorf("new namespace: %w", m.err)
	}
	return &namespace{path: "(throwaway)", handle: m.h}, nil
}

// openNetlink opens a netlink handle in the namespace; for the process's
// own (nil) it is the calling thread's namespace.
func (n *namespace) openNetlink() (*netlink.Handle, error) {
	var h *netlink.Handle
	var err error
	if n != nil {
		h, err = netlink.NewHandleAt(n.handle)
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return h, nil
}

func (n *namespace) close() {
	if n != nil {
		n.handle.Close()
	}
}

// do runs fn on an OS thread inside the namespace. The goroutine locks its
// thread and only unlocks it after switching back; if switching back fails
// the goroutine exits still locked, and the runtime throws the thread away
// instead of reusing it in the wrong namespace.
func (n *namespace) do(fn func() error) error {
	if n == nil {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", n.path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", n.path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
