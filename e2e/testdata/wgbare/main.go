// Command wgbare is wireguard-go's device with nothing around it: a TUN,
// the default UDP bind and the UAPI socket, built from the wireguard module
// version go.mod names. It is the baseline of e2e's BenchmarkUserspaceRSS:
// what the embedded device costs by itself, configured over UAPI like the
// node's. It lives under testdata so `go build ./...` and `go test ./...`
// leave it alone; the benchmark builds it by path.
//
// Usage: wgbare INTERFACE (foreground; SIGINT or SIGTERM stops it).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: wgbare INTERFACE")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "wgbare:", err)
		os.Exit(1)
	}
}

func run(name string) error {
	tdev, err := tun.CreateTUN(name, device.DefaultMTU)
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", name, err)
	}
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		tdev.Close()
		return fmt.Errorf("open UAPI socket: %w", err)
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "("+name+") "))
	defer dev.Close()
	uapi, err := ipc.UAPIListen(name, f)
	if err != nil {
		return fmt.Errorf("listen on UAPI socket: %w", err)
	}
	defer uapi.Close()
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-stop:
	case <-dev.Wait():
	}
	return nil
}
