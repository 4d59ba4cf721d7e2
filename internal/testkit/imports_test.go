package testkit

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/waylume/waylume-node/"

// testSupport are packages only tests may import.
var testSupport = []string{
	"internal/testkit", "internal/pgtest", "internal/dbfix", "internal/netns",
	"supabase/realtime/realtimetest", "supabase/auth/authtest",
}

// allowed lists, for the packages the layering rests on, every project
// package they may import: imports flow one way, from cmd down to the
// kernel and the database (docs/architecture.md).
var allowed = map[string][]string{
	"events":         {},
	"migrations":     {},
	"netctl":         {"internal/trim"},
	"internal/retry": {},
	"internal/trim":  {"internal/retry"},
	"reconcile":      {"events", "internal/retry"},
}

// TestImportRule fails when a package imports against the layering.
func TestImportRule(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, imports, _ := strings.Cut(line, ":")
		pkg := strings.TrimPrefix(path, module)
		pkgs++
		for _, imp := range strings.Fields(imports) {
			if dep, ok := strings.CutPrefix(imp, module); ok {
				checkImport(t, pkg, dep)
			}
		}
	}
	if pkgs < 10 {
		t.Fatalf("go list found only %d packages", pkgs)
	}
}

func checkImport(t *testing.T, pkg, dep string) {
	t.Helper()
	isSupport := func(p string) bool {
		for _, s := range testSupport {
			if p == s || strings.HasPrefix(p, s+"/") {
				return true
			}
		}
		return false
	}
	switch {
	case isSupport(dep) && !isSupport(pkg) && !strings.HasPrefix(pkg, "e2e"):
		t.Errorf("%s (production) imports test support %s", pkg, dep)
	case strings.HasPrefix(dep, "cmd/"):
		t.Errorf("%s imports the command %s", pkg, dep)
	case dep == "internal/node" && !strings.HasPrefix(pkg, "cmd/") && pkg != "e2e":
		t.Errorf("%s imports the node wiring; only cmd and e2e may", pkg)
	case strings.HasPrefix(pkg, "supabase") && !isSupport(pkg) && (dep == "reconcile" || dep == "netctl"):
		t.Errorf("%s (control plane) imports %s", pkg, dep)
	}
	if ok, listed := allowed[pkg]; listed && !contains(ok, dep) {
		t.Errorf("%s imports %s; it may import only %v", pkg, dep, ok)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
