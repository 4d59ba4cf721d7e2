package netctl

import (
	"net/netip"
	"strconv"
)

func itoa(i int) string { return strconv.Itoa(i) }

func mustPrefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}
