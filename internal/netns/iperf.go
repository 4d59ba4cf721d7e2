package netns

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/testkit"
)

// IperfServer is an iperf3 server listening inside a namespace.
type IperfServer struct {
	NS   *NS
	Addr string
	Port int
	proc *Process
}

// StartIperfServer starts `iperf3 -s` bound to addr:port in ns and waits
// until it accepts connections.
func StartIperfServer(t testing.TB, ns *NS, addr string, port int) *IperfServer {
	t.Helper()
	s := &IperfServer{NS: ns, Addr: addr, Port: port}
	s.proc = ns.Start(t, "iperf3", "-s", "-B", addr, "-p", strconv.Itoa(port))
	testkit.Eventually(t, 10*time.Second, func() error {
		if exited, err := s.proc.Exited(); exited {
			return fmt.Errorf("iperf3 server exited: %v: %s", err, s.proc.Output())
		}
		// The port is in the server's namespace: probe with ss there.
		out, err := ns.Run(context.Background(), "ss", "-Htln", "sport = :"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		if len(out) == 0 {
			return fmt.Errorf("iperf3 not listening on %s yet", net.JoinHostPort(addr, strconv.Itoa(port)))
		}
		return nil
	})
	return s
}

// IperfResult is the part of iperf3's JSON report the tests use.
type IperfResult struct {
	SentBitsPerSecond     float64 // sender side
	ReceivedBitsPerSecond float64 // receiver side: the figure to compare with a limit
	Retransmits           int
}

// Iperf runs an iperf3 TCP client in ns against server for the given time.
// reverse makes the server send (download from the server's view).
func Iperf(ctx context.Context, ns *NS, server string, port int, d time.Duration, reverse bool) (IperfResult, error) {
	args := []string{"-c", server, "-p", strconv.Itoa(port), "-J", "-t", strconv.FormatFloat(d.Seconds(), 'f', 1, 64), "-O", "1"}
	if reverse {
		args = append(args, "-R")
	}
	out, err := ns.Run(ctx, "iperf3", args...)
	var rep struct {
		End struct {
			SumSent struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Retransmits   int     `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		if err != nil {
			return IperfResult{}, err
		}
		return IperfResult{}, fmt.Errorf("iperf3 JSON: %w", jerr)
	}
	if rep.Error != "" {
		return IperfResult{}, fmt.Errorf("iperf3: %s", rep.Error)
	}
	if err != nil {
		return IperfResult{}, err
	}
	return IperfResult{
		SentBitsPerSecond:     rep.End.SumSent.BitsPerSecond,
		ReceivedBitsPerSecond: rep.End.SumReceived.BitsPerSecond,
		Retransmits:           rep.End.SumSent.Retransmits,
	}, nil
}
