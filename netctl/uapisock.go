package netctl

// The device process is read and configured over its UAPI socket, with the
// same streaming parse as the in-process device: wgctrl's socket client
// would build ~14 MB of short-lived objects per read of 10,000 peers, in
// the node's heap.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"time"
)

// uapiTimeout bounds one operation: a read of 10,000 peers takes ~50 ms.
const uapiTimeout = time.Minute

// uapiSocket speaks the UAPI text protocol on a device's socket.
type uapiSocket struct{ path string }

var _ uapiDevice = uapiSocket{}

// IpcGetOperation writes the device's key=value lines to w, as
// device.Device.IpcGetOperation does, and returns the device's errno as
// an error.
func (s uapiSocket) IpcGetOperation(w io.Writer) error {
	c, err := s.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "get=1\n\n"); err != nil {
		return fmt.Errorf("uapi get: %w", err)
	}
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("uapi get: %w", err)
		}
		if len(line) == 1 {
			return fmt.Errorf("uapi get: reply ended without errno")
		}
		if v, ok := bytes.CutPrefix(line, []byte("errno=")); ok {
			return errnoErr(v)
		}
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
}

// IpcSetOperation sends r's key=value lines as one set operation.
func (s uapiSocket) IpcSetOperation(r io.Reader) error {
	c, err := s.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	w := bufio.NewWriterSize(c, 64<<10)
	w.WriteString("set=1\n")
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("uapi set: %w", err)
	}
	w.WriteString("\n")
	if err := w.Flush(); err != nil {
		return fmt.Errorf("uapi set: %w", err)
	}
	line, err := bufio.NewReader(c).ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("uapi set: %w", err)
	}
	v, ok := bytes.CutPrefix(line, []byte("errno="))
	if !ok {
		return fmt.Errorf("uapi set: unexpected reply %q", bytes.TrimSpace(line))
	}
	return errnoErr(v)
}

func (s uapiSocket) dial() (net.Conn, error) {
	c, err := net.DialTimeout("unix", s.path, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("uapi: %w", err)
	}
	_ = c.SetDeadline(time.Now().Add(uapiTimeout))
	return c, nil
}

func errnoErr(v []byte) error {
	v = bytes.TrimSpace(v)
	if string(v) == "0" {
		return nil
	}
	return fmt.Errorf("device returned errno=%s", v)
}
