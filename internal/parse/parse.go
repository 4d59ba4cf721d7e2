// Package parse reads and checks the values of the node's settings:
// durations, booleans, prefixes, ids, interface names and addresses. Errors
// are short reasons, quoting the value only where it cannot be a secret; the
// caller names the setting.
package parse

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// IsUUID reports whether v is a UUID in lower case, as waylume ids are
// printed and stored.
func IsUUID(v string) bool { return uuidRE.MatchString(v) }

// minInterval keeps a typo ("60ms") from hammering the database.
const minInterval = time.Second

// Interval is a duration of at least a second, e.g. 30s or 5m.
func Interval(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q: want e.g. 30s, 5m", v)
	}
	if d < minInterval {
		return 0, fmt.Errorf("duration %s is below the minimum %s", d, minInterval)
	}
	return d, nil
}

// Bool is true or false (strconv.ParseBool's spellings).
func Bool(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("bad boolean %q: want true or false", v)
	}
	return b, nil
}

// Prefixes parses a comma-separated list of network prefixes; "" is
// none. An address with host bits set is refused, not silently masked: it
// is more likely a typo than meant.
func Prefixes(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("bad prefix %q: want e.g. 10.20.0.0/16 or fd00:1::/48", f)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("prefix %q has host bits set: did you mean %v?", f, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

// RoutedSubnets is Prefixes refusing a default route: forwarding
// every source un-NATed is the spoofing the setting exists to prevent.
func RoutedSubnets(v string) ([]netip.Prefix, error) {
	ps, err := Prefixes(v)
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		if p.Bits() == 0 {
			return nil, fmt.Errorf("prefix %v would forward any source un-NATed: name the routed networks", p)
		}
	}
	return ps, nil
}

// Optional returns check for a setting that may be empty.
func Optional(check func(string) error) func(string) error {
	return func(v string) error {
		if v == "" {
			return nil
		}
		return check(v)
	}
}

// CheckUUID is IsUUID as a check.
func CheckUUID(v string) error {
	if !IsUUID(v) {
		return errors.New("not a UUID (waylume.nodes.id)")
	}
	return nil
}

// OneOf returns a check that v is one of allowed; noun names what v is
// ("mode", "level") in the error.
func OneOf(noun string, allowed ...string) func(v string) error {
	return func(v string) error {
		if slices.Contains(allowed, v) {
			return nil
		}
		want := allowed[len(allowed)-1]
		if n := len(allowed); n > 1 {
			want = strings.Join(allowed[:n-1], ", ") + " or " + want
		}
		return fmt.Errorf("unknown %s %q: want %s", noun, v, want)
	}
}

var ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// CheckIfname accepts a Linux interface name: 1-15 characters of letters,
// digits, '-', '_' and '.', not "." or "..".
func CheckIfname(v string) error {
	if !ifnameRE.MatchString(v) || v == "." || v == ".." {
		return fmt.Errorf("bad interface name %q: 1-15 letters, digits, '-', '_' or '.'", v)
	}
	return nil
}

// CheckListenAddr accepts host:port with an IP address, localhost or no
// host (every address).
func CheckListenAddr(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("bad address %q: want host:port, e.g. 127.0.0.1:9586", v)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("bad port %q in %q", port, v)
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return fmt.Errorf("bad host %q in %q: want an IP address", host, v)
	}
	return nil
}
