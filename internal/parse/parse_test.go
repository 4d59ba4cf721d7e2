package parse

import (
	"net/netip"
	"testing"
	"time"
)

func TestValues(t *testing.T) {
	if d, err := Interval("90s"); err != nil || d != 90*time.Second {
		t.Errorf("Interval(90s) = %v, %v", d, err)
	}
	for _, bad := range []string{"often", "10ms", ""} {
		if _, err := Interval(bad); err == nil {
			t.Errorf("Interval(%q) accepted", bad)
		}
	}
	if ps, err := Prefixes(" 10.20.0.0/16, ,fd00:1::/48"); err != nil || len(ps) != 2 || ps[1] != netip.MustParsePrefix("fd00:1::/48") {
		t.Errorf("Prefixes = %v, %v", ps, err)
	}
	for _, bad := range []string{"lan", "10.20.0.1/16"} {
		if _, err := Prefixes(bad); err == nil {
			t.Errorf("Prefixes(%q) accepted", bad)
		}
	}
	if _, err := RoutedSubnets("192.0.2.0/24,::/0"); err == nil {
		t.Error("RoutedSubnets accepted a default route")
	}
	if !IsUUID("0b5e6f1c-7d8a-4b3c-9e2f-1a2b3c4d5e6f") || IsUUID("0B5E6F1C-7D8A-4B3C-9E2F-1A2B3C4D5E6F") || IsUUID("node-1") {
		t.Error("IsUUID")
	}
	for v, ok := range map[string]bool{"wg0": true, "eth 0": false, "waylume-interface0": false, "..": false} {
		if err := CheckIfname(v); (err == nil) != ok {
			t.Errorf("CheckIfname(%q) = %v", v, err)
		}
	}
	for v, ok := range map[string]bool{"127.0.0.1:9586": true, ":9586": true, "[::1]:1": true, "9586": false,
		"127.0.0.1:99999": false, "metrics.example:9586": false} {
		if err := CheckListenAddr(v); (err == nil) != ok {
			t.Errorf("CheckListenAddr(%q) = %v", v, err)
		}
	}
	mode := OneOf("mode", "auto", "kernel", "userspace")
	if mode("kernel") != nil || mode("fast") == nil || OneOf("format", "json")("json") != nil {
		t.Error("OneOf")
	}
	if Optional(CheckUUID)("") != nil || Optional(CheckUUID)("node-1") == nil {
		t.Error("Optional(CheckUUID)")
	}
}
