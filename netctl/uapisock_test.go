package netctl

import (
	"bufio"
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// fakeUAPI answers every connection with reply after reading a request
// up to its blank line, and hands the requests to got.
func fakeUAPI(t *testing.T, reply string) (path string, got chan string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "wg.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var req strings.Builder
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				req.WriteString(line)
				if err != nil || line == "\n" {
					break
				}
			}
			got <- req.String()
			c.Write([]byte(reply))
			c.Close()
		}
	}()
	return path, got
}

// A set is framed as the protocol wants and the device's errno comes
// back as an error; a get hands over the key=value lines without errno.
func TestUAPISocket(t *testing.T) {
	path, got := fakeUAPI(t, "errno=0\n\n")
	if err := (uapiSocket{path}).IpcSetOperation(strings.NewReader("listen_port=1\n")); err != nil {
		t.Fatal(err)
	}
	if req := <-got; req != "set=1\nlisten_port=1\n\n" {
		t.Fatalf("set request %q", req)
	}

	path, _ = fakeUAPI(t, "errno=22\n\n")
	if err := (uapiSocket{path}).IpcSetOperation(strings.NewReader("x=1\n")); err == nil || !strings.Contains(err.Error(), "errno=22") {
		t.Fatalf("set answered errno=22: %v", err)
	}

	path, got = fakeUAPI(t, "private_key=00\nlisten_port=5\nerrno=0\n\n")
	var out bytes.Buffer
	if err := (uapiSocket{path}).IpcGetOperation(&out); err != nil {
		t.Fatal(err)
	}
	if req := <-got; req != "get=1\n\n" {
		t.Fatalf("get request %q", req)
	}
	if out.String() != "private_key=00\nlisten_port=5\n" {
		t.Fatalf("get lines %q", out.String())
	}

	// A reply cut short is an error, not a partial device.
	path, _ = fakeUAPI(t, "private_key=00\n")
	if err := (uapiSocket{path}).IpcGetOperation(&out); err == nil {
		t.Fatal("get of a reply without errno succeeded")
	}
	if err := (uapiSocket{filepath.Join(t.TempDir(), "none.sock")}).IpcGetOperation(&out); err == nil {
		t.Fatal("get on a missing socket succeeded")
	}
}
