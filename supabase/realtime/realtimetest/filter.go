package realtimetest

import (
	"fmt"
	"strings"
)

// filter is one postgres_changes filter, `column=op.value`, evaluated like
// the real server: in SQL, both sides cast to the column's type, on the new
// row (the old row for DELETE).
type filter struct {
	column string
	op     string // SQL operator
	in     bool
	value  string // for in: a PostgreSQL array literal
}

var filterOps = map[string]string{"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "in": "= ANY"}

// parseFilter reads a filter; "" means none.
func parseFilter(s string) (*filter, error) {
	if s == "" {
		return nil, nil
	}
	col, rest, ok := strings.Cut(s, "=")
	if !ok || col == "" {
		return nil, fmt.Errorf("invalid filter %q", s)
	}
	op, val, ok := strings.Cut(rest, ".")
	sqlOp, known := filterOps[op]
	if !ok || !known {
		return nil, fmt.Errorf("invalid filter %q: unknown operator %q", s, op)
	}
	f := &filter{column: col, op: sqlOp, value: val}
	if op == "in" {
		// (a,b,c) -> {a,b,c}
		if len(val) < 2 || val[0] != '(' || val[len(val)-1] != ')' {
			return nil, fmt.Errorf("invalid filter %q: in wants (a,b,...)", s)
		}
		f.in, f.value = true, "{"+val[1:len(val)-1]+"}"
	}
	return f, nil
}

// sql returns a boolean expression comparing the value placeholder v (text)
// with the filter value placeholder fv, both cast to typ.
func (f *filter) sql(v, fv, typ string) string {
	if f.in {
		return fmt.Sprintf("coalesce(%s::text::%s = ANY (%s::text::%s[]), false)", v, typ, fv, typ)
	}
	return fmt.Sprintf("coalesce(%s::text::%s %s %s::text::%s, false)", v, typ, f.op, fv, typ)
}
