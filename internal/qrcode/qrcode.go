// Package qrcode draws QR codes as terminal text, for the WireGuard mobile
// apps to scan a client configuration off the screen.
package qrcode

import (
	"fmt"
	"io"
	"strings"

	qr "github.com/piglig/go-qr"
)

// qrQuiet is the light margin around the code, in modules, that scanners
// need to find it (the standard asks for 4).
const qrQuiet = 4

// Write draws text as a QR code with half blocks, two module rows per
// line, in black on white whatever the terminal's colours: an inverted
// code is not read by every scanner.
func Write(w io.Writer, text string) error {
	code, err := qr.EncodeText(text, qr.Medium)
	if err != nil {
		return fmt.Errorf("qr code: %w", err)
	}
	size := code.Size()
	dark := func(x, y int) bool {
		x, y = x-qrQuiet, y-qrQuiet
		return x >= 0 && y >= 0 && x < size && y < size && code.Module(x, y)
	}
	var b strings.Builder
	for y := 0; y < size+2*qrQuiet; y += 2 {
		b.WriteString("\x1b[30;107m")
		for x := range size + 2*qrQuiet {
			switch top, bottom := dark(x, y), dark(x, y+1); {
			case top && bottom:
				b.WriteString("█")
			case top:
				b.WriteString("▀")
			case bottom:
				b.WriteString("▄")
			default:
				b.WriteString(" ")
			}
		}
		b.WriteString("\x1b[0m\n")
	}
	_, err = io.WriteString(w, b.String())
	return err
}
