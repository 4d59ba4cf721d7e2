package qrcode

import (
	"bytes"
	"strings"
	"testing"

	qr "github.com/piglig/go-qr"
)

// The drawing read back half-block by half-block is the code's module
// matrix inside a quiet margin of qrQuiet light modules.
func TestWriteDrawsEveryModule(t *testing.T) {
	text := "[Interface]\nAddress = 10.8.0.2/32\n[Peer]\nEndpoint = vpn.example.com:51820\n"
	var out bytes.Buffer
	if err := Write(&out, text); err != nil {
		t.Fatal(err)
	}
	code, err := qr.EncodeText(text, qr.Medium)
	if err != nil {
		t.Fatal(err)
	}
	width := code.Size() + 2*qrQuiet
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if want := (width + 1) / 2; len(lines) != want {
		t.Fatalf("%d lines, want %d", len(lines), want)
	}
	for i, line := range lines {
		if !strings.HasPrefix(line, "\x1b[30;107m") || !strings.HasSuffix(line, "\x1b[0m") {
			t.Fatalf("line %d is not drawn black on white: %q", i, line)
		}
		cells := []rune(strings.TrimSuffix(strings.TrimPrefix(line, "\x1b[30;107m"), "\x1b[0m"))
		if len(cells) != width {
			t.Fatalf("line %d has %d cells, want %d", i, len(cells), width)
		}
		for x, c := range cells {
			top := c == '█' || c == '▀'
			bottom := c == '█' || c == '▄'
			if want := module(code, x, 2*i); top != want {
				t.Fatalf("module (%d,%d) dark %v, want %v", x, 2*i, top, want)
			}
			if want := module(code, x, 2*i+1); bottom != want {
				t.Fatalf("module (%d,%d) dark %v, want %v", x, 2*i+1, bottom, want)
			}
		}
	}
}

func module(code *qr.QrCode, x, y int) bool {
	x, y = x-qrQuiet, y-qrQuiet
	return x >= 0 && y >= 0 && x < code.Size() && y < code.Size() && code.Module(x, y)
}
