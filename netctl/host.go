package netctl

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// HostReport is what the node needs from the host that reading alone can
// tell: unlike Probe it changes nothing, not even in a throwaway namespace.
type HostReport struct {
	// Tun is why /dev/net/tun does not open for the embedded device (nil:
	// it opens).
	Tun error
	// NetAdmin: CAP_NET_ADMIN is in the effective set.
	NetAdmin bool
	// Socket is where the UAPI socket of a userspace device of that name
	// lives; Existing that one is there, which kernel mode adopts.
	Socket   string
	Existing bool
	// Forward is IPv4 forwarding now; ForwardWritable whether the node can
	// turn it on itself; ForwardErr why it cannot be read.
	Forward, ForwardWritable bool
	ForwardErr               error
}

const forwardSysctl = "/proc/sys/net/ipv4/ip_forward"

// uapiDir is where wireguard-go (embedded or not) puts its UAPI sockets:
// one directory for every namespace on the host.
const uapiDir = "/var/run/wireguard"

// Host reads the host's state for a node on interface ifname.
func Host(ifname string) HostReport {
	var r HostReport
	if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		r.Tun = err
	} else {
		f.Close()
	}
	r.NetAdmin = hasCap(unix.CAP_NET_ADMIN)
	r.Socket = filepath.Join(uapiDir, ifname+".sock")
	r.Existing = fileExists(r.Socket)
	b, err := os.ReadFile(forwardSysctl)
	if err != nil {
		r.ForwardErr = err
		return r
	}
	r.Forward = strings.TrimSpace(string(b)) == "1"
	r.ForwardWritable = unix.Access(forwardSysctl, unix.W_OK) == nil
	return r
}

// hasCap reads the effective capability set of this process.
func hasCap(bit int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<uint(bit)) != 0
		}
	}
	return false
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
