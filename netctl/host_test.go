package netctl

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/waylume/waylume-node/internal/netns"
)

func TestHostReadsWithoutChanging(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: reads CAP_NET_ADMIN and opens /dev/net/tun as the node does")
	}
	name := netns.Name("wlh")
	h := Host(name)
	if !h.NetAdmin {
		t.Error("root without CAP_NET_ADMIN")
	}
	if h.ForwardErr != nil {
		t.Errorf("ip_forward unreadable: %v", h.ForwardErr)
	}
	if want := filepath.Join(uapiDir, name+".sock"); h.Socket != want || h.Existing {
		t.Fatalf("socket %q existing=%v, want %q absent", h.Socket, h.Existing, want)
	}
	if err := os.MkdirAll(uapiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.Socket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(h.Socket) })
	if !Host(name).Existing {
		t.Error("a device's UAPI socket is there but Host does not see it")
	}
}
