package status

import (
	"strings"
	"testing"
)

// The table without a kernel or a database: limits installed and wanted,
// handshake ages, byte counts, and a peer that only the rows know.
func TestWriteTable(t *testing.T) {
	want, age := int64(8000), 75.0
	rep := Report{Interface: "wg0", PublicKey: "pub", ListenPort: 51820, Peers: []Peer{
		{ID: "0b5e6f1c-7d8a", PublicKey: "AAAAAAAAAAAAAAAAAAAA", AllowedIPs: []string{"10.0.0.2/32"}, InKernel: true,
			DownloadKbps: 20000, UploadKbps: 5000, WantUploadKbps: &want, HandshakeAgeSec: &age, UploadBytes: 1536, DownloadBytes: 3 << 30},
		{PublicKey: "B", Address: "10.0.0.3", State: "blocked", Reason: "disabled"},
	}}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"interface wg0  public key pub  port 51820", "2 peers, 1 active", "0b5e6f1c ", "AAAAAAAAAAAA…",
		"10.0.0.2 ", "20Mbit/s", "5Mbit/s (want 8Mbit/s)", "1m15s ago", "1.5KiB", "3.0GiB", "not in kernel", "blocked (disabled)"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
}

func TestHumanUnits(t *testing.T) {
	for _, c := range [][2]string{
		{humanRate(999), "999kbit/s"}, {humanRate(1500), "1.5Mbit/s"}, {humanRate(2000000), "2Gbit/s"},
		{humanBytes(1023), "1023B"}, {humanBytes(1 << 20), "1.0MiB"},
		{humanAge(59e9), "59s"}, {humanAge(3 * 3600e9), "3h00m"}, {humanAge(72 * 3600e9), "3d"},
	} {
		if c[0] != c[1] {
			t.Errorf("got %q, want %q", c[0], c[1])
		}
	}
}
