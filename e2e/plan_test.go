package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/testkit"
)

// `plan` names what run would do, an added peer and a changed limit, and
// leaves the kernel byte for byte as it was.
func TestPlanChangesNothing(t *testing.T) {
	e := newEnv(t)
	dev := e.nodeNS.Start(t, "wireguard-go", "-f", e.iface)
	testkit.Eventually(t, 10*time.Second, func() error {
		if exited, err := dev.Exited(); exited {
			return fmt.Errorf("wireguard-go exited: %v: %s", err, dev.Output())
		}
		_, err := os.Stat(filepath.Join("/var/run/wireguard", e.iface+".sock"))
		return err
	})
	limited, _ := e.addPeer(newKey(t).PublicKey(), "download_kbps=20000")
	n := e.startNode("kernel", time.Hour, time.Hour)
	waitStatus(t, e, limited, "active", "")
	if err := n.stop(t); err != nil {
		t.Fatalf("node stop: %v", err)
	}

	e.exec(`UPDATE waylume.peers SET download_kbps = 10000 WHERE id = $1`, limited)
	added, _ := e.addPeer(newKey(t).PublicKey(), "")
	before := kernelState(t, e)
	if !strings.Contains(before, "rate 20Mbit") || !strings.Contains(before, "WAYLUME-") {
		t.Fatalf("the kernel snapshot lacks the peer's class or the node's chains:\n%s", before)
	}
	out := e.runCommand(t, "plan", "--json")
	after := kernelState(t, e)
	if before != after {
		t.Errorf("plan changed the kernel:\n--- before\n%s\n--- after\n%s", before, after)
	}

	var rep struct {
		Changes []struct {
			Op     string   `json:"op"`
			PeerID string   `json:"peer_id"`
			Fields []string `json:"fields"`
		} `json:"changes"`
		Unchanged int            `json:"unchanged"`
		Firewall  []planFirewall `json:"firewall"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("plan --json: %v\n%s", err, out)
	}
	if len(rep.Firewall) != 0 {
		t.Errorf("plan with run's settings names firewall changes: %+v", rep.Firewall)
	}
	var sawAdd, sawLimit bool
	for _, c := range rep.Changes {
		switch {
		case c.Op == "add" && c.PeerID == added:
			sawAdd = true
		case c.Op == "update" && c.PeerID == limited && slices.Contains(c.Fields, "download_kbps 20000 -> 10000"):
			sawLimit = true
		default:
			t.Errorf("unexpected change %+v", c)
		}
	}
	if !sawAdd || !sawLimit {
		t.Errorf("plan did not name the added peer (%v) and the changed limit (%v):\n%s", sawAdd, sawLimit, out)
	}

	// Client isolation turned off: forwarding between clients is the
	// rule the chain lacks.
	out = e.runCommand(t, "plan", "--json", "--client-isolation=false")
	if now := kernelState(t, e); now != before {
		t.Errorf("plan changed the kernel:\n--- before\n%s\n--- after\n%s", before, now)
	}
	var open struct {
		Firewall []planFirewall `json:"firewall"`
	}
	if err := json.Unmarshal([]byte(out), &open); err != nil {
		t.Fatalf("plan --json: %v\n%s", err, out)
	}
	rule := "-i " + e.iface + " -o " + e.iface + " -j ACCEPT"
	if !slices.ContainsFunc(open.Firewall, func(f planFirewall) bool {
		return f.Family == "ipv4" && f.Chain == "WAYLUME-FORWARD" && f.What == "rewrite" && slices.Contains(f.Missing, rule)
	}) {
		t.Errorf("plan without isolation does not name %q in WAYLUME-FORWARD:\n%s", rule, out)
	}
}

type planFirewall struct {
	Family  string   `json:"family"`
	Chain   string   `json:"chain"`
	What    string   `json:"what"`
	Missing []string `json:"missing_rules"`
}

// runCommand runs a waylume-node subcommand in the node namespace with the
// node's settings and returns its stdout.
func (e *env) runCommand(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.nodeNS.Name, binPath}, args...)...)
	cmd.Env = append(os.Environ(),
		"WAYLUME_DATABASE_URL="+e.nodeURL,
		"WAYLUME_NODE_ID="+e.nodeID,
		"WAYLUME_INTERFACE="+e.iface,
		"WAYLUME_EGRESS_INTERFACE="+e.uplink,
		"WAYLUME_ALLOW_LOCAL=tcp/5201-5210", // as startNode runs the node
		"WAYLUME_LOG_FORMAT=text",
	)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("waylume-node %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

var chainCounters = regexp.MustCompile(`\[\d+:\d+\]`)

// kernelState is what the node namespace holds, counters left out: the
// WireGuard device, every link's qdiscs, classes and filters, and the
// firewall.
func kernelState(t *testing.T, e *env) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(e.nodeNS.MustRun(t, "wg", "show", e.iface, "dump"))
	links := e.nodeNS.MustRun(t, "ip", "-o", "link", "show")
	b.WriteString(links)
	for _, line := range strings.Split(strings.TrimSpace(links), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		dev := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
		for _, what := range []string{"qdisc", "class", "filter"} {
			b.WriteString(e.nodeNS.MustRun(t, "tc", what, "show", "dev", dev))
		}
		b.WriteString(e.nodeNS.MustRun(t, "tc", "filter", "show", "dev", dev, "ingress"))
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		for _, line := range strings.Split(e.nodeNS.MustRun(t, tool), "\n") {
			if !strings.HasPrefix(line, "#") { // "# Generated by ... on <time>"
				b.WriteString(chainCounters.ReplaceAllString(line, "[-]") + "\n")
			}
		}
	}
	return b.String()
}
