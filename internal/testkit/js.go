package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireNodeModule is for a test that runs an official JavaScript client
// from dir (its js/ folder, set up by scripts/deps.sh with npm ci): without
// node or dir's node_modules/module the test skips, saying what is
// missing, and fails when CI=true.
func RequireNodeModule(t testing.TB, dir, module string) {
	t.Helper()
	missing := ""
	if _, err := exec.LookPath("node"); err != nil {
		missing = "node is not installed (apt-get install nodejs)"
	} else if _, err := os.Stat(filepath.Join(dir, "node_modules", module)); err != nil {
		missing = dir + "/node_modules is missing: run scripts/deps.sh (npm ci in " + dir + ")"
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s conformance cannot run: %s", module, missing)
	}
	t.Skipf("%s conformance not run: %s", module, missing)
}
