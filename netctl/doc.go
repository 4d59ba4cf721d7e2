// Package netctl is the node's Linux data plane: one WireGuard interface,
// per-peer tc shaping and the firewall/NAT around it. It turns a desired
// state into kernel state as a diff and reads the actual state back.
//
// # API
//
//	l, err := netctl.Open(ctx, cfg, log)   // create or adopt; never recreates a working interface
//	failed, err := l.SyncPeers(ctx, all)   // full desired set (resync)
//	failed, err := l.UpdatePeers(ctx, set, remove) // partial (events)
//	stats, err := l.Stats(ctx)             // endpoint, handshake, counters, installed limits
//	l.Epoch()                              // changes when the counters restart
//	l.Reconfigure(ctx, cfg)                // key, port, addresses, MTU, egress, isolation
//	l.Close()                              // keeps a kernel/adopted interface up; stops the embedded device
//	l.Teardown(ctx)                        // removes interface, our tc, our chains
//
// Without a Link, changing nothing in the node's namespace:
//
//	rep := netctl.Probe(ctx)               // shaper and firewall built for real in a throwaway namespace
//	ins, err := netctl.Inspect(ctx, name, "") // device, peers and installed limits of a live interface
//	iface, err := netctl.ResolveEgress(name) // the NAT uplink the firewall would use
//
// Additions to the agreed interface: Config.Netns (manage another network
// namespace, used by tests), ParseMode, Config.Validate, Config.Pool,
// Peer.ShapingAddr, PeerStats.AllowedIPs/DownloadKbps/UploadKbps,
// Link.Userspace and LoadOrCreateKey (the private key file, created 0600),
// Config.DeviceCommand, DeviceMain and Link.DeviceLost.
//
// # WireGuard
//
// ModeKernel means "a device the node does not own the process of": the
// kernel module, or an existing interface reachable by wgctrl over a UAPI
// socket (an external wireguard-go). It creates one only through the
// kernel, and says so when the kernel cannot. ModeUserspace runs
// golang.zx2c4.com/wireguard with its UAPI socket in /var/run/wireguard, so
// `wg show` and wgctrl work on it: in a process of its own with
// Config.DeviceCommand (devproc.go: DeviceMain, the lifeline, DeviceLost),
// else inside this one. ModeAuto adopts,
// else creates in the kernel, else runs the embedded device. Whatever the
// mode, an existing working interface is adopted with its peers.
//
// Epoch is boot id + ifindex, plus a random instance id for the embedded
// device: the reconciler compares it to notice counters that restarted.
//
// # Peers
//
// SyncPeers and UpdatePeers diff the desired peers against a mirror of the
// device (SyncPeers rereads the device first): missing peers are added,
// changed ones patched with UpdateOnly (allowed IPs replaced only for that
// peer), extra ones removed, unchanged ones not sent. ReplacePeers is never
// used. ConfigureDevice calls carry at most 32 peers and 256 allowed IPs.
// A failing chunk is retried peer by peer so the error lands on its peer;
// the others are applied. Applying the same state twice sends nothing.
//
// # Shaping
//
// See tc.go: HTB on the interface (download) and on an IFB fed by an
// ingress mirred redirect (upload). The tree is sharded: a root HTB 2:
// whose never-limiting classes each hold a small HTB qdisc of one shard
// (the address's last octet), so no qdisc holds thousands of classes and
// adding one stays cheap. u32 hash tables classify in both levels; every
// handle derives from the peer address, unique in any pool /8../30.
// Explicit quantum and burst, HTB's default pfifo leaves. Only limited
// peers get classes; a limited peer whose classes and filters cannot be
// installed is not served (ErrShaping). The peer's IPv6 address is shaped
// by the same classes, through IPv6 filters of their own.
//
// The installed classes are read back at Open and by SyncPeers when the
// mirror is older than five minutes; dumping 20,000 classes and filters
// costs more than a no-change apply may take.
//
// # Firewall
//
// Own chains WAYLUME-FORWARD, WAYLUME-INPUT, WAYLUME-SOURCE (filter) and
// WAYLUME-POSTROUTING (nat), the first, second and last hooked once at the
// top of FORWARD/INPUT/POSTROUTING, for IPv4 and IPv6; rewritten
// atomically with one iptables-restore --noflush only when they differ. A
// client reaches the internet and nothing else: from the tunnel only pool
// and routed-subnet sources pass, non-global destinations are dropped
// unless allowed, and the node itself answers only replies, ping and the
// allowed services. Replies to the tunnel are accepted, the pool is
// masqueraded on the egress interface (or on anything but the tunnel when
// there is no default route), client-to-client traffic is dropped when
// Isolation is on. There are no per-peer rules: blocking a peer (quota,
// expiry) is removing it from WireGuard, after which the device drops its
// packets. ip_forward is enabled in the node's namespace. Teardown removes
// only our chains and jumps.
//
// # Network namespaces
//
// Config.Netns lets a Link manage a namespace other than the process's
// (tests run the node side this way, in-process, so they can count what
// reaches the kernel). Namespaces belong to OS threads, so netlink goes
// through a handle opened in the namespace, and everything that creates a
// namespace-bound object (the TUN, wgctrl's netlink socket, UDP sockets,
// /proc/sys/net writes, iptables processes) runs on a locked thread
// switched into it. wireguard-go rebinds its UDP sockets from whichever
// goroutine sees the interface come up, so the embedded device gets a
// conn.Bind whose Open enters the namespace, and a TUN wrapper that reads
// the MTU there. A child process per test (ip netns exec) was the
// alternative; it would have hidden the kernel calls the tests assert on.
package netctl
