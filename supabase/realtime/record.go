package realtime

// Decoding of postgres_changes records into the rows the reconciler uses.
// Current servers send values as native JSON by column type (numbers,
// booleans, arrays, ISO timestamps with offset); older ones send PostgreSQL
// text (wal2json's output). Each value is converted by its column's type
// from columns[] first, so both shapes decode to the same row. A value that
// does not decode fails the whole row: the consumer refetches it instead of
// applying half of it.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/waylume/waylume-node/events"
)

// record is one postgres_changes record with its column types.
type record struct {
	vals  map[string]any
	types map[string]string
}

func newRecord(cols []column, vals map[string]any) record {
	types := make(map[string]string, len(cols))
	for _, c := range cols {
		types[c.Name] = c.Type
	}
	return record{vals: vals, types: types}
}

func (r record) has(name string) bool {
	_, ok := r.vals[name]
	return ok
}

func (r record) str(name string) (string, error) {
	switch v := r.vals[name].(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case json.Number:
		return v.String(), nil
	case bool:
		return strconv.FormatBool(v), nil
	}
	return "", fmt.Errorf("column %s: %T is not text", name, r.vals[name])
}

func (r record) int(name string) (int64, error) {
	switch v := r.vals[name].(type) {
	case nil:
		return 0, nil
	case json.Number:
		n, err := v.Int64()
		if err != nil {
			return 0, fmt.Errorf("column %s (%s): %w", name, r.types[name], err)
		}
		return n, nil
	case string:
		// Older servers: "20000" for an int4.
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("column %s (%s): %w", name, r.types[name], err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("column %s (%s): %T is not an integer", name, r.types[name], r.vals[name])
}

func (r record) bool(name string) (bool, error) {
	switch v := r.vals[name].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		switch strings.ToLower(v) {
		case "t", "true":
			return true, nil
		case "f", "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("column %s (%s): %v is not a boolean", name, r.types[name], r.vals[name])
}

// timeLayouts covers to_jsonb output (ISO 8601 with offset) and the
// PostgreSQL text output older servers pass through.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02T15:04:05.999999999", // timestamp without time zone: UTC
	"2006-01-02 15:04:05.999999999",
}

func parseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a timestamp", s)
}

func (r record) time(name string) (time.Time, error) {
	switch v := r.vals[name].(type) {
	case nil:
		return time.Time{}, nil
	case string:
		t, err := parseTime(v)
		if err != nil {
			return time.Time{}, fmt.Errorf("column %s (%s): %w", name, r.types[name], err)
		}
		return t, nil
	}
	return time.Time{}, fmt.Errorf("column %s (%s): %T is not a timestamp", name, r.types[name], r.vals[name])
}

// parsePrefix reads inet/cidr text: "10.8.0.2" is a host (/32 or /128).
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (r record) prefix(name string) (netip.Prefix, error) {
	switch v := r.vals[name].(type) {
	case nil:
		return netip.Prefix{}, nil
	case string:
		p, err := parsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("column %s (%s): %w", name, r.types[name], err)
		}
		return p, nil
	}
	return netip.Prefix{}, fmt.Errorf("column %s (%s): %T is not an address", name, r.types[name], r.vals[name])
}

// strings reads a one-dimensional array: a JSON array, or PostgreSQL array
// text ("{10.0.0.0/24,10.1.0.0/16}") from older servers.
func (r record) strings(name string) ([]string, error) {
	switch v := r.vals[name].(type) {
	case nil:
		return nil, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("column %s (%s): element %T is not text", name, r.types[name], e)
			}
			out = append(out, s)
		}
		return out, nil
	case string:
		s := strings.TrimSpace(v)
		if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
			return nil, fmt.Errorf("column %s (%s): %q is not an array", name, r.types[name], v)
		}
		s = s[1 : len(s)-1]
		if s == "" {
			return []string{}, nil
		}
		// inet/cidr elements never need quoting; a quote means something else.
		if strings.ContainsAny(s, `"{}\`) {
			return nil, fmt.Errorf("column %s (%s): nested or quoted array text", name, r.types[name])
		}
		return strings.Split(s, ","), nil
	}
	return nil, fmt.Errorf("column %s (%s): %T is not an array", name, r.types[name], r.vals[name])
}

func (r record) prefixes(name string) ([]netip.Prefix, error) {
	ss, err := r.strings(name)
	if err != nil || ss == nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("column %s (%s): %w", name, r.types[name], err)
		}
		out = append(out, p)
	}
	return out, nil
}

func (r record) addrs(name string) ([]netip.Addr, error) {
	ss, err := r.strings(name)
	if err != nil || ss == nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("column %s (%s): %w", name, r.types[name], err)
		}
		out = append(out, p.Addr())
	}
	return out, nil
}

// rowDecoder collects the first error so row mapping stays readable.
type rowDecoder struct {
	r   record
	err error
}

func (d *rowDecoder) keep(err error) {
	if d.err == nil && err != nil {
		d.err = err
	}
}

func (d *rowDecoder) str(n string) string          { v, err := d.r.str(n); d.keep(err); return v }
func (d *rowDecoder) int(n string) int64           { v, err := d.r.int(n); d.keep(err); return v }
func (d *rowDecoder) bool(n string) bool           { v, err := d.r.bool(n); d.keep(err); return v }
func (d *rowDecoder) time(n string) time.Time      { v, err := d.r.time(n); d.keep(err); return v }
func (d *rowDecoder) prefix(n string) netip.Prefix { v, err := d.r.prefix(n); d.keep(err); return v }
func (d *rowDecoder) addrs(n string) []netip.Addr  { v, err := d.r.addrs(n); d.keep(err); return v }
func (d *rowDecoder) prefixes(n string) []netip.Prefix {
	v, err := d.r.prefixes(n)
	d.keep(err)
	return v
}

// peerRequired and nodeRequired list the columns a record must carry to be applied whole: a
// record without them was trimmed (column privileges, size) and is refetched.
var (
	peerRequired = []string{"id", "node_id", "public_key", "address", "allowed_ips", "enabled"}
	nodeRequired = []string{"id", "address", "listen_port"}
)

func missing(r record, cols []string) error {
	for _, c := range cols {
		if !r.has(c) {
			return fmt.Errorf("column %s missing from record", c)
		}
	}
	return nil
}

// decodePeer maps a waylume.peers record.
func decodePeer(r record) (events.Peer, error) {
	if err := missing(r, peerRequired); err != nil {
		return events.Peer{}, err
	}
	d := rowDecoder{r: r}
	p := events.Peer{
		ID:                  d.str("id"),
		NodeID:              d.str("node_id"),
		PublicKey:           d.str("public_key"),
		PresharedKey:        d.str("preshared_key"),
		Address:             d.prefix("address"),
		Address6:            d.prefix("address6"),
		AllowedIPs:          d.prefixes("allowed_ips"),
		PersistentKeepalive: int(d.int("persistent_keepalive")),
		DownloadKbps:        d.int("download_kbps"),
		UploadKbps:          d.int("upload_kbps"),
		QuotaBytes:          d.int("quota_bytes"),
		QuotaResetAt:        d.time("quota_reset_at"),
		ExpiresAt:           d.time("expires_at"),
		Enabled:             d.bool("enabled"),
		CreatedAt:           d.time("created_at"),
		UpdatedAt:           d.time("updated_at"),
	}
	if d.err != nil {
		return events.Peer{}, d.err
	}
	return p, nil
}

// decodeNode maps a waylume.nodes record.
func decodeNode(r record) (events.Node, error) {
	if err := missing(r, nodeRequired); err != nil {
		return events.Node{}, err
	}
	d := rowDecoder{r: r}
	n := events.Node{
		ID:         d.str("id"),
		Name:       d.str("name"),
		Endpoint:   d.str("endpoint"),
		ListenPort: int(d.int("listen_port")),
		Address:    d.prefix("address"),
		Address6:   d.prefix("address6"),
		DNS:        d.addrs("dns"),
		MTU:        int(d.int("mtu")),
		Status:     d.str("status"),
		UpdatedAt:  d.time("updated_at"),
	}
	if d.err != nil {
		return events.Node{}, d.err
	}
	return n, nil
}
